"""Data loading at scale and the pre-flight data check.

* ``load_paired`` decodes nothing up front: host memory is bounded by what is read, not by
  the dataset (RSS measured around a 1,000-clip load).
* The header-only check finds every missing, unreadable, empty and too-long clip in one
  line before any model loads; ``skip`` / ``truncate`` say how many clips they affect. Its
  lengths agree with a full decode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cord import CordError
from cord.config import ModelConfig, load_config
from cord.data.audio import CLIP_CACHE, ClipCache, audio_header, load_audio
from cord.data.check import check_dataset, check_examples, check_out_dir, scan_examples
from cord.data.paired import PairedExample, load_paired

ROOT = Path(__file__).resolve().parents[2]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _write(d: Path, rows: list[dict]) -> Path:
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> None:
    n = int(round(rate * seconds))
    x = 0.1 * np.random.default_rng(seed).standard_normal((n, channels) if channels > 1 else n)
    sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")


@pytest.fixture
def mixed_dir(tmp_path):
    """ok (16 kHz), ok (22.05 kHz stereo), empty, unreadable, missing, two long clips."""
    d = tmp_path / "data"
    (d / "audio").mkdir(parents=True)
    specs = [("ok0", 0.5, 16000, 1), ("ok1", 0.9, 22050, 2), ("empty", 0.0, 16000, 1),
             ("long0", 2.5, 16000, 1), ("long1", 1.6, 8000, 1)]
    rows = []
    for i, (rid, sec, rate, ch) in enumerate(specs):
        _wav(d / "audio" / f"{rid}.wav", sec, rate, ch, seed=i)
        rows.append({"id": rid, "question": "q?", "answer": "1", "audio": f"audio/{rid}.wav"})
    (d / "audio" / "junk.wav").write_bytes(b"RIFF\x00\x00not a wave file at all")
    rows.append({"id": "junk", "question": "q?", "answer": "1", "audio": "audio/junk.wav"})
    rows.append({"id": "gone", "question": "q?", "answer": "1", "audio": "audio/gone.wav"})
    return _write(d, rows)


# --- lazy loading -------------------------------------------------------------------------


def test_loading_a_1000_clip_manifest_decodes_nothing(tmp_path):
    # 1,000 clips of 2.5 s at 16 kHz (hard links to one file: distinct paths, no disk): 160 KB
    # each decoded to float32 — 160 MB if decoded up front (what load_paired did), ~1 MB of
    # manifest rows when loaded lazily.
    d = tmp_path / "big"
    (d / "audio").mkdir(parents=True)
    _wav(d / "one.wav", 2.5)
    rows = []
    for i in range(1000):
        os.link(d / "one.wav", d / "audio" / f"c{i}.wav")
        rows.append({"id": f"c{i}", "question": f"What is {i}?", "answer": str(i), "audio": f"audio/c{i}.wav"})
    _write(d, rows)

    CLIP_CACHE.clear()
    before = _rss_bytes()
    data = load_paired(d)
    grown = _rss_bytes() - before
    assert len(data) == 1000 and grown < 100 * 2**20, f"RSS grew {grown / 2**20:.0f} MB"
    assert len(CLIP_CACHE) == 0  # nothing decoded yet

    # access decodes on demand, the same samples a direct decode gives
    ref = load_audio(d / "audio" / "c7.wav")
    assert data[7].audio.dtype == np.float32 and np.array_equal(data[7].audio, ref) and len(ref) == 40_000
    assert data[7].audio_samples == 40_000 and data[7].has_audio

    # reading every clip keeps memory bounded by the cache budget, not the dataset
    cache = ClipCache(max_bytes=8 * 2**20)
    total = 0
    for ex in data:
        total += int(cache.load(ex.audio_path).shape[0])
        assert cache.nbytes <= 8 * 2**20
    assert total == 1000 * 40_000 and len(cache) == 8 * 2**20 // (40_000 * 4)
    assert _rss_bytes() - before < 100 * 2**20


def test_lazy_example_keeps_the_old_interface(tmp_path):
    _wav(tmp_path / "a.wav", 0.3)
    ex = PairedExample("a", "q", audio_path=tmp_path / "a.wav", answer="1")
    first = ex.audio
    assert first.shape == (4800,) and ex.audio is first  # a second read in a batch is a cache hit
    with pytest.raises(ValueError):
        first[0] = 1.0  # shared: read-only
    ex.audio = np.zeros(10, np.float32)  # assignment still works, as with the dataclass
    assert ex.audio_path is None and ex.audio.shape == (10,) and ex.audio_samples == 10
    plain = PairedExample("b", "q", None, "2")
    assert plain.audio is None and not plain.has_audio and plain.audio_samples == 0
    missing = PairedExample("c", "q", audio_path=tmp_path / "nope.wav")
    with pytest.raises(CordError, match="audio file not found"):
        missing.audio
    # a rewritten file is read again (the cache key holds size and mtime)
    _wav(tmp_path / "a.wav", 0.5)
    assert PairedExample("a", "q", audio_path=tmp_path / "a.wav").audio.shape == (8000,)


# --- the check ------------------------------------------------------------------------------


def test_header_lengths_equal_a_full_decode(mixed_dir):
    for name in ("ok0", "ok1", "long0", "long1", "empty"):
        path = mixed_dir / "audio" / f"{name}.wav"
        head = audio_header(path)
        n = 0 if head.frames == 0 else len(load_audio(path))
        assert head.samples_16k == n, name
    assert audio_header(mixed_dir / "audio" / "ok1.wav")[1:] == (22050, 2)


def test_error_policy_lists_every_problem_in_one_line(mixed_dir):
    with pytest.raises(CordError) as e:
        check_dataset(mixed_dir, ModelConfig(long_audio="error", max_audio_seconds=1.5))
    msg = str(e.value)
    assert "\n" not in msg and f"data check of {mixed_dir} (7 examples)" in msg
    assert "1 audio file(s) missing (gone)" in msg
    assert "1 unreadable (junk;" in msg
    assert "1 empty, 0 samples (empty)" in msg
    assert "2 longer than the 1.5 s window under model.long_audio=error (long0 2.5 s, long1 1.6 s; longest 2.5 s)" in msg
    assert "set model.long_audio to skip or truncate" in msg and "before loading the model" in msg


def test_skip_and_truncate_still_refuse_broken_files_and_count_long_ones(mixed_dir):
    for policy in ("skip", "truncate"):
        with pytest.raises(CordError) as e:
            check_dataset(mixed_dir, ModelConfig(long_audio=policy, max_audio_seconds=1.5))
        assert "missing" in str(e.value) and "empty" in str(e.value) and "longer than" not in str(e.value)

    data = [ex for ex in load_paired(mixed_dir) if ex.id not in ("gone", "junk", "empty")]
    said: list[str] = []
    rep = check_examples(data, ModelConfig(long_audio="skip", max_audio_seconds=1.5), source="d", say=said.append)
    assert rep.bad == 0 and [i for i, _ in rep.too_long] == ["long0", "long1"]
    assert said == ["data check of d: 2 of 4 clip(s) are longer than the 1.5 s window and will be skipped "
                    "(model.long_audio=skip): long0 2.5 s, long1 1.6 s; longest 2.5 s"]
    said.clear()
    check_examples(data, max_seconds=1.5, policy="truncate", source="d", say=said.append)
    assert len(said) == 1 and "will be cut to 1.5 s (model.long_audio=truncate)" in said[0]
    said.clear()
    check_examples(data, max_seconds=1.5, policy="skip", say=said.append, quiet=True)
    assert said == []
    # exactly at the window is not too long (as apply_length_policy counts)
    assert scan_examples(data, 2.5, "error").too_long == []
    assert [i for i, _ in scan_examples(data, 2.4999, "error").too_long] == ["long0"]


def test_in_memory_examples_and_the_id_list_is_capped():
    exs = [PairedExample(f"e{i}", "q", np.zeros(0 if i < 8 else 100, np.float32)) for i in range(9)]
    exs.append(PairedExample("t", "q", None))
    with pytest.raises(CordError) as e:
        check_examples(exs, max_seconds=1.0, policy="error")
    msg = str(e.value)
    assert "8 empty, 0 samples (e0, e1, e2, e3, e4, … 3 more)" in msg and "1 without audio (t)" in msg


def test_out_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    with pytest.raises(CordError, match="exists and is not a directory"):
        check_out_dir(f)
    with pytest.raises(CordError, match="which is a file"):
        check_out_dir(f / "sub" / "dir")
    assert f.read_text() == "keep me"
    assert check_out_dir(tmp_path / "new" / "x") == tmp_path / "new" / "x" and not (tmp_path / "new").exists()


def test_cord_train_reports_every_data_problem_before_the_model_loads(mixed_dir, tmp_path, capsys):
    from cord.cli import main

    # the model path does not exist: had the data check not stopped the run first, the
    # error would be about the model
    argv = ["train", "--config", str(ROOT / "configs" / "tiny" / "sft.yaml"), "--set", f"data.train={mixed_dir}",
            "--set", "model.name_or_path=/nonexistent/model", "--set", "model.max_audio_seconds=1.5",
            "--set", f"train.output_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing (gone)" in err and "unreadable (junk" in err and "empty" in err
    assert "2 longer than the 1.5 s window" in err and "nonexistent" not in err


def test_trainer_notes_what_skip_will_leave_out(mixed_dir, tmp_path, capsys):
    from cord.train.trainer import Trainer

    rows = [json.loads(line) for line in (mixed_dir / "manifest.jsonl").read_text().splitlines()]
    _write(mixed_dir, [r for r in rows if r["id"] not in ("gone", "junk", "empty")])
    cfg = load_config(ROOT / "configs" / "tiny" / "sft.yaml",
                      [f"data.train={mixed_dir}", "model.long_audio=skip", "model.max_audio_seconds=1.5",
                       f"train.output_dir={tmp_path / 'run'}", "train.progress=false", "train.tensorboard=false"])
    trainer = Trainer(cfg)
    assert len(trainer.data) == 4
    err = capsys.readouterr().err
    assert "2 of 4 clip(s) are longer than the 1.5 s window and will be skipped (model.long_audio=skip)" in err
