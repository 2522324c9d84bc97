"""`cord synth`: sources, synthesis, the manifest contract, resume and skip accounting."""

import json
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

MANIFEST_KEYS = {"id", "question", "answer", "solution", "source", "audio", "duration", "tts", "voice", "spoken"}

# The fake backend is source text so that the killed-subprocess test can use it too.
FAKE_TTS_SRC = '''
import time
import numpy as np

class FakeTTS:
    """22.05 kHz tones, 0.06 s per character; "FAIL" raises, "LONG" gives 31 s."""
    name = "fake"
    version = "fake 1"

    def __init__(self, delay=0.0):
        self.delay = delay

    def voices(self):
        return ["v1", "v2", "v3", "v4", "v5"]

    def synthesize(self, text, voice, speed, pitch):
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
    n = 30
    src = write_jsonl(tmp_path / "q.jsonl", [{"question": f"Question number {i}: what is {i} plus {i}?", "answer": str(2 * i)} for i in range(n)])
    out = tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(FAKE_TTS_SRC + textwrap.dedent(f"""
        from cord.config import SynthConfig
        from cord.data.synth import synthesize
        synthesize(SynthConfig(input={str(src)!r}, out={str(out)!r}, workers=1), progress=False, tts=FakeTTS(delay=0.25))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file() and manifest.read_text().count("\n") >= 3:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        _, err = proc.communicate()
    finished = manifest.read_text().count("\n")
    assert 3 <= finished < n, err.decode()[-2000:]

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
        with pytest.raises(CordError, match=r"pip install cord\[hub\]"):
            load_rows(SynthConfig(input="AI-MO/NuminaMath-CoT"))
    else:
        pytest.skip("datasets is installed; the hub path needs the network")


def test_resume_with_another_seed_is_noted(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", WORD_PROBLEMS)
    synthesize(cfg_for(tmp_path, src, seed=0, limit=2), progress=False, tts=FakeTTS())
    summary = synthesize(cfg_for(tmp_path, src, seed=1), progress=False, tts=FakeTTS())
    assert summary["already_done"] == 2 and summary["written"] == 2
    assert any("seed 0" in n for n in summary["notes"])
