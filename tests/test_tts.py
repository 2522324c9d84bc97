"""TTS backends: espeak-ng through its binary, the seeded voice draw, Kokoro's error path."""

import shutil
import struct

import numpy as np
import pytest

from cord import CordError
from cord.config import SynthConfig
from cord.data.tts import (
    ESPEAK_DEFAULT_VOICES, TTS, EspeakTTS, KokoroTTS, draw_voice, make_tts, parse_wav_bytes,
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")


def _wav(samples: np.ndarray, rate: int, data_size: int | None = None) -> bytes:
    pcm = (samples * 32767).astype("<i2").tobytes()
    size = len(pcm) if data_size is None else data_size
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", size) + pcm


def test_parse_wav_bytes_accepts_streamed_placeholder_sizes():
    x = np.linspace(-0.5, 0.5, 100, dtype=np.float32)
    audio, rate = parse_wav_bytes(_wav(x, 22050, data_size=0x7FFFF000))  # what espeak-ng --stdout writes
    assert rate == 22050 and audio.shape == (100,)
    np.testing.assert_allclose(audio, x, atol=1e-4)
    with pytest.raises(ValueError):
        parse_wav_bytes(b"not a wav")


def test_draw_voice_depends_only_on_seed_and_id():
    a = draw_voice(ESPEAK_DEFAULT_VOICES, 0, "q-1", (140, 190), (30, 70))
    assert a == draw_voice(ESPEAK_DEFAULT_VOICES, 0, "q-1", (140, 190), (30, 70))
    assert a.voice in ESPEAK_DEFAULT_VOICES and 140 <= a.speed <= 190 and 30 <= a.pitch <= 70
    assert a.label == f"{a.voice} s={a.speed} p={a.pitch}"
    many = {draw_voice(ESPEAK_DEFAULT_VOICES, 0, f"q-{i}", (140, 190), (30, 70)).voice for i in range(200)}
    assert len(many) > len(ESPEAK_DEFAULT_VOICES) // 2  # the draw spreads over the voices
    other = [draw_voice(ESPEAK_DEFAULT_VOICES, 1, f"q-{i}", (140, 190), (30, 70)) for i in range(20)]
    same = [draw_voice(ESPEAK_DEFAULT_VOICES, 0, f"q-{i}", (140, 190), (30, 70)) for i in range(20)]
    assert other != same
    with pytest.raises(CordError):
        draw_voice([], 0, "x", (140, 190), (30, 70))


@needs_espeak
def test_espeak_synthesizes_deterministically():
    tts = EspeakTTS()
    assert isinstance(tts, TTS) and tts.version.startswith("espeak-ng")
    assert tts.voices() == ESPEAK_DEFAULT_VOICES
    text = "A train travels 120 miles in 2 hours."
    a, rate = tts.synthesize(text, "en-us+f3", 160, 50)
    b, _ = tts.synthesize(text, "en-us+f3", 160, 50)
    assert rate == 22050 and a.dtype == np.float32 and a.ndim == 1
    assert np.array_equal(a, b)
    assert 0.05 < np.abs(a).max() <= 1.0
    assert 1.5 < a.shape[0] / rate < 6.0
    c, _ = tts.synthesize(text, "en+m3", 160, 50)
    assert not np.array_equal(a[: min(len(a), len(c))], c[: min(len(a), len(c))])
    # a question starting with "-" is text, not an option (text goes on stdin)
    d, _ = tts.synthesize("-4 plus 2", "en-us", 160, 50)
    assert d.shape[0] > 0.3 * rate


@needs_espeak
def test_espeak_default_voices_are_distinct():
    tts = EspeakTTS()
    outs = {tts.synthesize("hello there", v, 160, 50)[0].tobytes() for v in ESPEAK_DEFAULT_VOICES}
    assert len(outs) == len(ESPEAK_DEFAULT_VOICES)


@needs_espeak
def test_espeak_bad_voices():
    with pytest.raises(CordError, match="variant"):
        EspeakTTS(voices=["en-us+nosuchvariant"])
    tts = EspeakTTS(voices=["xx-nosuchvoice"])
    with pytest.raises(RuntimeError, match="espeak-ng"):
        tts.synthesize("hello", "xx-nosuchvoice", 160, 50)


def test_espeak_missing_binary_is_one_clear_error():
    with pytest.raises(CordError, match="apt-get install espeak-ng"):
        EspeakTTS(binary="espeak-ng-definitely-not-installed")


def test_kokoro_missing_package_or_files_is_a_clear_error(tmp_path):
    with pytest.raises(CordError, match="kokoro"):
        KokoroTTS(model=None, config=None, voices_dir=str(tmp_path))
    with pytest.raises(CordError, match="kokoro"):
        make_tts(SynthConfig(tts="kokoro"))
