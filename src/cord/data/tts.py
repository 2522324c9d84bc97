"""Text-to-speech backends behind one small interface.

``EspeakTTS`` (the default) runs the ``espeak-ng`` binary: offline, nothing downloaded,
deterministic (the same text, voice, speed and pitch give the same samples). ``KokoroTTS``
wraps the ``kokoro`` package with local weights for better-sounding speech.

Voice, speed and pitch are drawn per item by :func:`draw_voice` from an RNG keyed on
(seed, item id), so the choice does not depend on worker scheduling or on which items
were already done in an earlier run.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from cord import CordError

__all__ = ["TTS", "EspeakTTS", "KokoroTTS", "VoiceChoice", "draw_voice", "make_tts", "parse_wav_bytes"]


@runtime_checkable
class TTS(Protocol):
    """A speech synthesiser. ``synthesize`` returns (float32 samples of shape (n,), sample rate)."""

    name: str

    def voices(self) -> list[str]: ...

    def synthesize(self, text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]: ...


@dataclass(frozen=True)
class VoiceChoice:
    voice: str
    speed: int
    pitch: int

    @property
    def label(self) -> str:
        """What the manifest records, e.g. ``en-us+f3 s=160 p=50``."""
        return f"{self.voice} s={self.speed} p={self.pitch}"


def draw_voice(voices: list[str], seed: int, item_id: str, speed_range: tuple[int, int],
               pitch_range: tuple[int, int]) -> VoiceChoice:
    """Voice, speed and pitch for one item, from an RNG keyed on (seed, item id) only."""
    if not voices:
        raise CordError("no TTS voices to choose from (set synth.voices to a non-empty list)")
    digest = hashlib.sha256(f"{seed}\x1f{item_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    voice = voices[int(rng.integers(len(voices)))]
    lo, hi = sorted(speed_range)
    speed = int(rng.integers(lo, hi + 1))
    lo, hi = sorted(pitch_range)
    pitch = int(rng.integers(lo, hi + 1))
    return VoiceChoice(voice, speed, pitch)


# --------------------------------------------------------------------------------------
# espeak-ng


def parse_wav_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """PCM16 WAV bytes → (float32 mono samples, sample rate).

    ``espeak-ng --stdout`` streams a WAV whose RIFF and data sizes are placeholders
    (0x7ffff000), so a strict reader would refuse it; the data simply runs to the end."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    pos, rate, channels, bits = 12, None, 1, 16
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            fmt = int.from_bytes(data[body:body + 2], "little")
            channels = int.from_bytes(data[body + 2:body + 4], "little")
            rate = int.from_bytes(data[body + 4:body + 8], "little")
            bits = int.from_bytes(data[body + 14:body + 16], "little")
            if fmt != 1 or bits != 16:
                raise ValueError(f"unsupported WAV format {fmt} with {bits} bits")
        elif chunk == b"data":
            if rate is None:
                raise ValueError("WAV data before fmt chunk")
            end = min(len(data), body + size)
            end -= (end - body) % (2 * channels)
            pcm = np.frombuffer(data[body:end], dtype="<i2").astype(np.float32) / 32768.0
            if channels > 1:
                pcm = pcm.reshape(-1, channels).mean(axis=1)
            return pcm, rate
        pos = body + size + (size & 1)
    raise ValueError("WAV stream has no data chunk")


#: Accents × variants that espeak-ng 1.51 ships without MBROLA: ``--voices=en`` lists the
#: accents, ``espeak-ng-data/voices/!v`` the variants (m1–m8, f1–f5 …). British English is
#: spelled ``en``: in 1.51 ``en-gb+f3`` silently ignores the variant (same samples as plain
#: ``en-gb``), while ``en+f3`` applies it. All 36 combinations give distinct audio.
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


# --------------------------------------------------------------------------------------
# Kokoro


class KokoroTTS:
    """Kokoro-82M through the ``kokoro`` package (24 kHz), from local files only:
    ``config`` (config.json), ``model`` (kokoro-v1_0.pth) and ``voices_dir`` (``*.pt`` voice
    packs such as af_heart.pt). Voice names are the file stems; the first letter picks the
    G2P language (a = American, b = British English).

    ``speed`` is espeak-style words per minute and is mapped to Kokoro's multiplier as
    speed / 170; Kokoro has no pitch control, so ``pitch`` is ignored (still recorded).
    Kokoro's English G2P (misaki) may want a spaCy model on first use; install it
    beforehand when offline."""

    name = "kokoro"
    thread_safe = False  # one torch model: cord synth runs it with one worker
    REPO_ID = "hexgrad/Kokoro-82M"
    SAMPLE_RATE = 24_000

    def __init__(self, model: str | None, config: str | None, voices_dir: str | None,
                 voices: list[str] | None = None, device: str | None = None):
        try:
            import kokoro  # noqa: F401
        except ImportError:
            raise CordError("the kokoro TTS needs the kokoro package: pip install kokoro "
                            "(or use the default --tts espeak)") from None
        missing = [n for n, v in (("synth.kokoro_model", model), ("synth.kokoro_config", config),
                                  ("synth.kokoro_voices_dir", voices_dir)) if not v]
        if missing:
            raise CordError(f"--tts kokoro needs local files: set {', '.join(missing)} "
                            "(config.json, kokoro-v1_0.pth and a folder of voice .pt files)")
        for label, p in (("kokoro_model", model), ("kokoro_config", config)):
            if not Path(p).is_file():
                raise CordError(f"synth.{label}: file not found: {p}")
        vdir = Path(voices_dir)
        if not vdir.is_dir():
            raise CordError(f"synth.kokoro_voices_dir: folder not found: {voices_dir}")
        available = sorted(p.stem for p in vdir.glob("*.pt"))
        if not available:
            raise CordError(f"synth.kokoro_voices_dir: no voice .pt files in {voices_dir}")
        chosen = list(voices) if voices else available
        unknown = [v for v in chosen if v not in available]
        if unknown:
            raise CordError(f"kokoro voice(s) {', '.join(unknown)} not in {voices_dir} "
                            f"(found: {', '.join(available[:10])}{' …' if len(available) > 10 else ''})")
        self._voices = chosen
        self.voices_dir = vdir
        from kokoro import KModel, KPipeline

        try:
            kmodel = KModel(repo_id=self.REPO_ID, config=str(config), model=str(model))
        except TypeError:  # older kokoro without repo_id
            kmodel = KModel(config=str(config), model=str(model))
        if device:
            kmodel = kmodel.to(device)
        self._model = kmodel.eval()
        self._pipelines: dict[str, object] = {}
        self._KPipeline = KPipeline
        self.version = f"kokoro {getattr(__import__('kokoro'), '__version__', '')}".strip()

    def voices(self) -> list[str]:
        return list(self._voices)

    def _pipeline(self, lang: str):
        if lang not in self._pipelines:
            self._pipelines[lang] = self._KPipeline(lang_code=lang, repo_id=self.REPO_ID, model=self._model)
        return self._pipelines[lang]

    def synthesize(self, text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
        lang = voice[0] if voice[:1] in ("a", "b") else "a"
        pipe = self._pipeline(lang)
        chunks = []
        for result in pipe(text, voice=str(self.voices_dir / f"{voice}.pt"), speed=max(0.5, min(2.0, speed / 170))):
            audio = result.audio if hasattr(result, "audio") else result[2]
            if audio is not None:
                chunks.append(np.asarray(audio.detach().cpu().numpy() if hasattr(audio, "detach") else audio,
                                         dtype=np.float32).reshape(-1))
        if not chunks:
            raise RuntimeError("kokoro produced no audio")
        return np.concatenate(chunks), self.SAMPLE_RATE


def make_tts(cfg) -> TTS:
    """The backend named by ``cfg.tts`` (a :class:`cord.config.SynthConfig`)."""
    if cfg.tts == "espeak":
        return EspeakTTS(voices=cfg.voices)
    if cfg.tts == "kokoro":
        return KokoroTTS(cfg.kokoro_model, cfg.kokoro_config, cfg.kokoro_voices_dir, voices=cfg.voices)
    raise CordError(f"unknown TTS backend {cfg.tts!r}; use espeak or kokoro")
