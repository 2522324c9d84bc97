"""What every TTS backend is: the :class:`TTS` protocol, the per-item voice draw, WAV parsing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from cord import CordError


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


def item_rng(*key) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(str(k) for k in key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_voice(voices: list[str], seed: int, item_id: str, speed_range: tuple[int, int],
               pitch_range: tuple[int, int]) -> VoiceChoice:
    """Voice, speed and pitch for one item, from an RNG keyed on (seed, item id) only."""
    if not voices:
        raise CordError("no TTS voices to choose from (set synth.voices to a non-empty list)")
    rng = item_rng(seed, item_id)
    voice = voices[int(rng.integers(len(voices)))]
    lo, hi = sorted(speed_range)
    speed = int(rng.integers(lo, hi + 1))
    lo, hi = sorted(pitch_range)
    pitch = int(rng.integers(lo, hi + 1))
    return VoiceChoice(voice, speed, pitch)


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
