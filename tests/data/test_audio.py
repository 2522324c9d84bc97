"""Audio at the edge: resampling, channel mixing and the long-audio policy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from cord import CordError
from cord.data.audio import apply_length_policy, load_audio, to_16k_mono
from tests.conftest import make_examples


def _tone(freq: float, sr: int, seconds: float) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


@pytest.mark.parametrize("sr", [22050, 44100, 8000, 48000])
def test_resampling_keeps_duration_and_pitch(sr):
    out = to_16k_mono(_tone(440.0, sr, 1.0), sr)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 16000) <= 1
    assert abs(_dominant_freq(out, 16000) - 440.0) < 2.0
    # amplitude preserved by a band-limited resampler
    assert abs(np.abs(out[1000:-1000]).max() - 0.5) < 0.02


def test_stereo_is_mixed_to_mono_in_either_layout():
    left, right = _tone(300, 44100, 0.5), _tone(300, 44100, 0.5) * 0.0
    stereo = np.stack([left, right], axis=1)  # (samples, channels)
    a = to_16k_mono(stereo, 44100)
    b = to_16k_mono(stereo.T, 44100)  # (channels, samples)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert abs(np.abs(a[500:-500]).max() - 0.25) < 0.02  # mean of the two channels


def test_int16_pcm_is_scaled():
    pcm = (np.ones(1600) * 16384).astype(np.int16)
    assert np.allclose(to_16k_mono(pcm, 16000), 0.5)


def test_load_audio_file_at_other_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.stack([_tone(500, 22050, 0.8)] * 2, axis=1), 22050)
    out = load_audio(path)
    assert abs(len(out) - int(0.8 * 16000)) <= 1
    with pytest.raises(CordError, match="not found"):
        load_audio(tmp_path / "missing.wav")


def test_long_audio_policies():
    audio = np.zeros(31 * 16000, dtype=np.float32)
    with pytest.raises(CordError, match="31.0 s, longer than the 30 s"):
        apply_length_policy(audio, 30, "error")
    assert apply_length_policy(audio, 30, "skip") is None
    with pytest.warns(UserWarning, match="truncated"):
        cut = apply_length_policy(audio, 30, "truncate")
    assert len(cut) == 30 * 16000
    short = np.zeros(16000, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_length_policy(short, 30, "error") is short


@pytest.mark.parametrize("policy", ["error", "skip", "truncate"])
def test_adapter_applies_policy_to_31s_audio(policy):
    from cord.config import ModelConfig
    from cord.models import load_adapter

    adapter = load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="float32", long_audio=policy))
    examples = make_examples(2)
    examples[0].audio = np.zeros(31 * 16000, dtype=np.float32)
    if policy == "error":
        with pytest.raises(CordError, match="encoder window"):
            adapter.audio_prompts(examples)
    elif policy == "skip":
        batch = adapter.audio_prompts(examples)
        assert batch.keep == [1] and len(batch) == 1 and adapter.skipped_long_audio == 1
    else:
        with pytest.warns(UserWarning, match="truncated"):
            batch = adapter.audio_prompts(examples)
        assert batch.keep == [0, 1]
        assert (batch.input_ids[0] == adapter.audio_token_id).sum() == 750  # full 30 s window
