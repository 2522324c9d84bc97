"""espeak-ng (the default): offline, nothing downloaded, deterministic."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from cord import CordError
from cord.data.tts.base import parse_wav_bytes

# --------------------------------------------------------------------------------------
# espeak-ng


ESPEAK_DEFAULT_VOICES = [
    f"{accent}+{variant}"
    for accent in ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
    for variant in ("m1", "m3", "m7", "f2", "f3", "f4")
]


class EspeakTTS:
    """The ``espeak-ng`` binary: ``espeak-ng --stdout -v VOICE -s SPEED -p PITCH`` with the
    text on stdin (so a question starting with "-" is never taken for an option).
    Output 22,050 Hz mono PCM16."""

    name = "espeak-ng"

    def __init__(self, voices: list[str] | None = None, binary: str = "espeak-ng", timeout: float = 60.0):
        path = shutil.which(binary)
        if path is None:
            raise CordError(f"{binary} is not installed; install it: apt-get install espeak-ng "
                            "(or use --tts kokoro with local weights)")
        self.binary = path
        self.timeout = timeout
        self._voices = list(voices) if voices else list(ESPEAK_DEFAULT_VOICES)
        self.version, data_dir = self._version()
        self._check_variants(data_dir)

    def _version(self) -> tuple[str, Path | None]:
        """("espeak-ng 1.51", data folder) from ``espeak-ng --version``."""
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return "espeak-ng", None
        parts = out.split("text-to-speech:")
        version = f"espeak-ng {parts[1].split()[0]}" if len(parts) > 1 and parts[1].split() else "espeak-ng"
        data = out.split("Data at:")
        return version, (Path(data[1].strip()) if len(data) > 1 else None)

    def _check_variants(self, data_dir: Path | None) -> None:
        """espeak-ng silently ignores an unknown ``+variant``; refuse it up front instead.
        (An unknown base voice makes espeak-ng exit with an error, reported per item.)"""
        vdir = data_dir / "voices" / "!v" if data_dir else None
        if vdir is None or not vdir.is_dir():
            return
        known = {p.name for p in vdir.iterdir()}
        bad = [v for v in self._voices if "+" in v and v.split("+", 1)[1] not in known]
        if bad:
            raise CordError(f"unknown espeak-ng voice variant(s): {', '.join(bad)} "
                            f"(variants are the files in {vdir}, e.g. m3, f2)")

    def voices(self) -> list[str]:
        return list(self._voices)

    def synthesize(self, text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
        cmd = [self.binary, "--stdout", "-b", "1", "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch))]
        try:
            proc = subprocess.run(cmd, input=" ".join(text.split()).encode("utf-8"),
                                  capture_output=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"espeak-ng timed out after {self.timeout:g} s") from None
        err = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not proc.stdout:
            raise RuntimeError(f"espeak-ng failed (exit {proc.returncode}): {err or 'no audio'}")
        if err:  # e.g. an unknown voice: espeak-ng prints an error and may fall back
            raise RuntimeError(f"espeak-ng: {err.splitlines()[0]}")
        audio, rate = parse_wav_bytes(proc.stdout)
        if audio.size == 0:
            raise RuntimeError("espeak-ng produced no samples")
        return audio, rate
