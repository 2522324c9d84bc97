"""Audio at the edge: everything that enters cord becomes 16 kHz mono float32 here."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

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


class AudioHeader(NamedTuple):
    """What a file's header says, without decoding it."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def samples_16k(self) -> int:
        """Length after :func:`to_16k_mono` (exactly: ``resample_poly`` gives ceil(n·up/down))."""
        return samples_at_16k(self.frames, self.sample_rate)

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate > 0 else 0.0


def samples_at_16k(frames: int, sample_rate: int) -> int:
    """How many 16 kHz samples ``frames`` at ``sample_rate`` become after :func:`to_16k_mono`."""
    if sample_rate <= 0:
        return 0
    if sample_rate == SAMPLE_RATE:
        return int(frames)
    ratio = Fraction(SAMPLE_RATE, int(sample_rate))
    return -(-int(frames) * ratio.numerator // ratio.denominator)


def audio_header(path: str | Path) -> AudioHeader:
    """Frames, sample rate and channels of an audio file from its header (no decoding);
    one clear error for a missing or unreadable file."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise CordError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises several types for unreadable files
        raise CordError(f"cannot read audio {path}: {e}") from None
    return AudioHeader(int(info.frames), int(info.samplerate), int(info.channels))


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


# --- decoded clips, bounded ----------------------------------------------------------------

#: default byte budget of the decoded-clip cache (``CORD_AUDIO_CACHE_MB`` overrides it)
AUDIO_CACHE_MB = 64


class ClipCache:
    """Recently decoded clips, least recently used first out, bounded in bytes.

    Lazy examples (:class:`cord.data.paired.PairedExample` with an ``audio_path``) decode
    on access through this cache: an adapter reads a clip more than once per micro-batch,
    and a small dataset (the tiny presets, the miniature) fits whole, so it is decoded once;
    a large one costs at most the budget. Keys include the file's size and mtime, so a
    rewritten file is read again. Cached arrays are read-only (shared between readers).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        from collections import OrderedDict
        import threading

        self._max = max_bytes
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def max_bytes(self) -> int:
        if self._max is not None:
            return self._max
        import os

        try:
            return int(float(os.environ.get("CORD_AUDIO_CACHE_MB", AUDIO_CACHE_MB)) * 2**20)
        except ValueError:
            raise CordError(f"CORD_AUDIO_CACHE_MB must be a number of MiB, got {os.environ['CORD_AUDIO_CACHE_MB']!r}") from None

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def load(self, path: str | Path) -> np.ndarray:
        path = Path(path)
        try:
            st = path.stat()
        except OSError:
            return load_audio(path)  # the one-line error for a missing file
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        audio = load_audio(path)
        audio.setflags(write=False)
        limit = self.max_bytes
        with self._lock:
            if audio.nbytes <= limit and key not in self._items:
                self._items[key] = audio
                self._bytes += audio.nbytes
                while self._bytes > limit:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return audio


#: the process-wide cache lazy examples read through
CLIP_CACHE = ClipCache()
