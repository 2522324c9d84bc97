"""Audio at the edge: everything that enters cord becomes 16 kHz mono float32 here."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np

from cord import CordError

SAMPLE_RATE = 16_000


def to_16k_mono(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Convert ``audio`` of shape (samples,) or (samples, channels) at ``sample_rate`` to
    16 kHz mono float32. Integer PCM is scaled to [-1, 1]. Resampling is polyphase
    (scipy.signal.resample_poly), which is band-limited and exact for rational ratios."""
    audio = np.asarray(audio)
    if audio.ndim == 2:
        # (samples, channels) is the soundfile convention; accept (channels, samples) when obvious.
        if audio.shape[0] <= 8 < audio.shape[1]:
            audio = audio.T
        audio = audio.astype(np.float64).mean(axis=1) if np.issubdtype(audio.dtype, np.floating) else audio.mean(axis=1)
    elif audio.ndim != 1:
        raise CordError(f"audio must be 1-D (samples,) or 2-D (samples, channels), got shape {audio.shape}")
    if np.issubdtype(audio.dtype, np.integer):
        audio = audio.astype(np.float64) / float(np.iinfo(audio.dtype).max + 1)
    audio = audio.astype(np.float64)
    if sample_rate <= 0:
        raise CordError(f"sample rate must be positive, got {sample_rate}")
    if sample_rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        ratio = Fraction(SAMPLE_RATE, int(sample_rate))
        audio = resample_poly(audio, ratio.numerator, ratio.denominator)
    return audio.astype(np.float32)


def load_audio(path: str | Path) -> np.ndarray:
    """Read an audio file (any format soundfile reads) as 16 kHz mono float32."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise CordError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:  # soundfile raises several types for unreadable files
        raise CordError(f"cannot read audio {path}: {e}") from None
    return to_16k_mono(data, sr)


def apply_length_policy(audio: np.ndarray, max_seconds: float, policy: str, name: str = "audio") -> np.ndarray | None:
    """Enforce the encoder window. ``policy``: ``error`` raises, ``skip`` returns None (the
    caller counts it), ``truncate`` cuts to the window with a warning. Never silent."""
    limit = int(math.floor(max_seconds * SAMPLE_RATE))
    if audio.shape[0] <= limit:
        return audio
    seconds = audio.shape[0] / SAMPLE_RATE
    if policy == "error":
        raise CordError(
            f"{name} is {seconds:.1f} s, longer than the {max_seconds:g} s encoder window "
            "(set model.long_audio to 'skip' or 'truncate' to allow it)"
        )
    if policy == "skip":
        return None
    if policy == "truncate":
        warnings.warn(f"{name} is {seconds:.1f} s; truncated to the {max_seconds:g} s encoder window", stacklevel=2)
        return audio[:limit]
    raise CordError(f"unknown long-audio policy {policy!r}; use error, skip or truncate")
