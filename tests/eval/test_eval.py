"""`cord eval`: per-item JSONL, report recomputed from it, resume, baseline, CLI errors.

Accuracies are checked against numbers known by construction (an engine whose answers the
test controls) and, for the real tiny model, against an independent one-by-one greedy
generation judged in the test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from cord import CordError
from cord.cli import main
from cord.config import CordConfig, EvalConfig, ModelConfig
from cord.eval import add_gap_reduction, evaluate, load_benchmark, read_records, report_from_items
from cord.judges import judge
from cord.models import load_adapter
from cord.rollout import Rollouts

MODEL = dict(family="qwen2-audio", name_or_path="tiny", dtype="float32", device="cpu", long_audio="skip",
             max_audio_seconds=1.5)

# id, question, answer, seconds; the last one is longer than the 1.5 s window → skipped as audio
SPOKEN = [
    ("m0", "What is 2 + 3?", "5", 0.30),
    ("m1", "What is 6 times 7?", "42", 0.40),
    ("m2", "What is 10 - 4?", "6", 0.50),
    ("m3", "What is half of 18?", "9", 0.60),
    ("long", "What is 1 + 1?", "2", 2.00),
]
# audio answers: m0, m1 right, m2 wrong, m3 no answer at all (a fail); text answers all right
AUDIO_RESPONSES = {"m0": "The answer is 5.", "m1": "So 6*7 = 42. The answer is 42.", "m2": "The answer is 7.",
                   "m3": "I could not hear the question."}
# questions about a sound (MMAU-style): no text-only form
SOUNDS = [
    ("s0", "Which animal makes this sound?", "dog", ["cat", "dog", "cow"], 0.70),
    ("s1", "What instrument is playing?", "piano", ["violin", "piano", "drums"], 0.80),
]
SOUND_RESPONSES = {"s0": "The answer is (B) dog.", "s1": "It sounds like a violin."}


def _write_wav(path: Path, seconds: float, seed: int, rate: int = 16000) -> None:
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(rate * seconds))
    sf.write(path, x.astype(np.float32), rate)


@pytest.fixture(scope="module")
def bench_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    spoken, sounds = root / "spoken", root / "sounds"
    for d in (spoken, sounds):
        (d / "audio").mkdir(parents=True)
    rows = []
    for i, (rid, q, a, sec) in enumerate(SPOKEN):
        _write_wav(spoken / "audio" / f"{rid}.wav", sec, i, rate=22050 if i == 1 else 16000)  # one resampled
        rows.append({"id": rid, "question": q, "answer": a, "audio": f"audio/{rid}.wav", "category": f"c{i % 2}"})
    (spoken / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = []
    for i, (rid, q, a, choices, sec) in enumerate(SOUNDS):
        _write_wav(sounds / "audio" / f"{rid}.wav", sec, 10 + i)
        rows.append({"id": rid, "question": q, "answer": a, "choices": choices, "audio": f"audio/{rid}.wav",
                     "judge": "mmau", "text_with_audio": True})
    (sounds / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return spoken, sounds


@pytest.fixture(scope="module")
def adapter():
    return load_adapter(ModelConfig(**MODEL))


class ScriptedEngine:
    """Answers each prompt with a text the test chooses, identified by the prompt itself
    (text prompts by their tokens, audio prompts by their number of mel frames); records
    what was asked."""

    def __init__(self, adapter, items, audio_answers, text_answer):
        self.adapter = adapter
        self.audio_answers, self.text_answer = audio_answers, text_answer
        self.by_frames, self.by_tokens, self.ref = {}, {}, {}
        for it in items:
            self.ref[it.id] = it.answer
            p = adapter.text_prompts([it])
            self.by_tokens[tuple(p.input_ids[0].tolist())] = it.id
            if it.audio is not None and len(it.audio) <= 1.5 * 16000:
                frames = int(adapter.audio_prompts([it]).extra["feature_attention_mask"][0].sum())
                assert frames not in self.by_frames
                self.by_frames[frames] = it.id
        self.asked: list[tuple[str, str]] = []
        self.prompt_texts: dict[str, str] = {}

    def generate(self, prompts, *, n=1, temperature=1.0, top_p=1.0, max_new_tokens=200, greedy=False, seed=None):
        assert n == 1 and greedy
        texts = []
        for r in range(len(prompts)):
            if prompts.modality == "audio":
                rid = self.by_frames[int(prompts.extra["feature_attention_mask"][r].sum())]
                texts.append(self.audio_answers[rid])
            else:
                valid = prompts.input_ids[r][prompts.attention_mask[r].bool()]
                rid = self.by_tokens[tuple(valid.tolist())]
                texts.append(self.text_answer(rid))
            self.asked.append((prompts.modality, rid))
            self.prompt_texts[f"{prompts.modality}:{rid}"] = self.adapter.tokenizer.decode(
                prompts.input_ids[r][prompts.attention_mask[r].bool()].tolist())
        R = len(texts)
        return Rollouts(ids=torch.zeros((R, 1), dtype=torch.long), mask=torch.ones((R, 1), dtype=torch.bool),
                        text=texts, prompt_index=list(range(R)), n=1, finished=[True] * R)


def _engine(adapter, bench_dirs):
    spoken, sounds = bench_dirs
    items = load_benchmark(spoken).items + load_benchmark(sounds).items
    answers = {**AUDIO_RESPONSES, **SOUND_RESPONSES}
    return ScriptedEngine(adapter, items, answers, lambda rid: f"Let me think. The answer is {dict((s[0], s[2]) for s in SPOKEN)[rid]}.")


def _cfg(out, benchmarks, **ev) -> CordConfig:
    return CordConfig(model=ModelConfig(**MODEL),
                      eval=EvalConfig(benchmarks=[str(b) for b in benchmarks], out=str(out), **ev))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scripted_accuracies_skips_and_report_from_jsonl(tmp_path, adapter, bench_dirs):
    spoken, sounds = bench_dirs
    engine = _engine(adapter, bench_dirs)
    report = evaluate(_cfg(tmp_path, [spoken, sounds], batch_size=2), adapter, progress=False, engine=engine)

    s = report["spoken"]
    # known by construction: audio 2 right of 4 answered (long audio skipped, not wrong), text 5 of 5
    assert (s["audio_acc"], s["text_acc"], s["gap"], s["n"]) == (0.5, 1.0, 0.5, 5)
    assert (s["audio_n"], s["audio_skipped"], s["text_n"], s["text_skipped"]) == (4, 1, 5, 0)
    assert s["audio_fail_rate"] == 0.25 and s["text_fail_rate"] == 0.0 and s["fail_rate"] == pytest.approx(1 / 9)
    assert s["by_category"] == {"c0": {"audio_acc": 0.5, "text_acc": 1.0, "n": 3},
                                "c1": {"audio_acc": 0.5, "text_acc": 1.0, "n": 2}}
    q = report["sounds"]  # MMAU-style: option text vs "(B) dog"; no text-only form
    assert (q["audio_acc"], q["text_acc"], q["gap"], q["text_skipped"]) == (0.5, None, None, 2)
    assert report["average"]["gap"] == 0.5 and report["average"]["averaged_over"] == ["spoken"]

    # the long clip never reached the engine; sound questions were asked with their text
    assert ("audio", "long") not in engine.asked and ("text", "s0") not in engine.asked
    assert "Which animal makes this sound?" in engine.prompt_texts["audio:s0"]
    assert "What is 2 + 3?" not in engine.prompt_texts["audio:m0"]

    # independent recomputation from the JSONL, by hand
    for mod in ("audio", "text"):
        recs = _lines(tmp_path / "spoken" / f"{mod}.jsonl")
        assert sorted(r["id"] for r in recs) == sorted(x[0] for x in SPOKEN)
        answered = [r for r in recs if r["status"] == "answered"]
        assert s[f"{mod}_acc"] == sum(r["correct"] for r in answered) / len(answered)
        for r in answered:  # each record: response, extracted answer, reference, 0/1
            assert r["reference"] == dict((x[0], x[2]) for x in SPOKEN)[r["id"]]
            assert r["correct"] == judge(r["response"], r["reference"], "math").score
    audio = {r["id"]: r for r in _lines(tmp_path / "spoken" / "audio.jsonl")}
    assert audio["long"]["status"] == "skipped" and audio["long"]["correct"] is None
    assert audio["m0"]["answer"] == "5" and audio["m2"]["answer"] == "7" and audio["m3"]["answer"] is None

    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk == json.loads(json.dumps(report_from_items(tmp_path)))
    md = (tmp_path / "report.md").read_text()
    assert "| spoken | 5 | 50.0% | 100.0% | +50.0 pts |" in md and "1 audio item(s) skipped" in md
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_after_a_killed_run_asks_only_missing_items(tmp_path, adapter, bench_dirs):
    spoken, _ = bench_dirs
    cfg = _cfg(tmp_path, [spoken], batch_size=2)
    first = evaluate(cfg, adapter, progress=False, engine=_engine(adapter, bench_dirs))

    path = tmp_path / "spoken" / "audio.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    kept = json.loads(lines[0])["id"]
    path.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed mid-write of line 2
    (tmp_path / "spoken" / "text.jsonl").unlink()
    (tmp_path / "report.json").unlink()

    engine = _engine(adapter, bench_dirs)
    second = evaluate(cfg, adapter, progress=False, engine=engine)
    audio_asked = sorted(rid for mod, rid in engine.asked if mod == "audio")
    assert audio_asked == sorted({"m0", "m1", "m2", "m3"} - {kept})
    assert sorted(rid for mod, rid in engine.asked if mod == "text") == sorted(x[0] for x in SPOKEN)
    recs = _lines(path)  # every line parses, each id once
    assert sorted(r["id"] for r in recs) == sorted(x[0] for x in SPOKEN)
    assert second == first

    engine = _engine(adapter, bench_dirs)
    assert evaluate(cfg, adapter, progress=False, engine=engine) == first and engine.asked == []

    # answers from other generation settings are not mixed in
    with pytest.raises(CordError, match="another run"):
        evaluate(_cfg(tmp_path, [spoken], max_new_tokens=7), adapter, progress=False, engine=engine)


def test_read_records_torn_tail_and_corrupt_middle(tmp_path):
    path = tmp_path / "audio.jsonl"
    path.write_text('{"id": "a", "correct": 1}\n{"id": "b", "correct": 0}')  # complete, lacks newline
    assert sorted(read_records(path)) == ["a", "b"]
    assert sorted(read_records(path, repair=True)) == ["a", "b"]
    assert path.read_text().endswith('"correct": 0}\n')  # appending continues on a new line
    path.write_text('{"id": "a", "correct": 1}\n{"id": "b", "corr')
    assert list(read_records(path, repair=True)) == ["a"]
    assert path.read_text() == '{"id": "a", "correct": 1}\n'
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(CordError, match=r"audio.jsonl:2"):
        read_records(path)


def test_gap_reduction_and_its_guards():
    report = {"a": {"gap": 0.2}, "b": {"gap": 0.1}, "c": {"gap": 0.3}, "d": {"gap": None}}
    base = {"a": {"gap": 0.4}, "b": {"gap": 0.0}, "d": {"gap": 0.5}, "average": {"gap": 0.3}}
    add_gap_reduction(report, base)
    assert report["a"]["gap_reduction"] == pytest.approx(0.5)
    assert report["b"]["gap_reduction"] is None and "<= 0" in report["b"]["gap_reduction_note"]
    assert report["c"]["gap_reduction"] is None and "not in the baseline" in report["c"]["gap_reduction_note"]
    assert report["d"]["gap_reduction"] is None
    assert report["average"]["gap_reduction"] == pytest.approx(0.5)
    assert report["average"]["gap_reduction_benchmarks"] == 1


def _greedy(adapter, item, modality: str, max_new_tokens: int) -> str:
    """Independent: one item alone, HF greedy straight through the adapter."""
    from transformers import GenerationConfig

    gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=adapter.eos_token_ids,
                           pad_token_id=adapter.pad_token_id, suppress_tokens=adapter.placeholder_token_ids)
    prompts = adapter.audio_prompts([item]) if modality == "audio" else adapter.text_prompts([item])
    with torch.no_grad():
        new = adapter.generate(prompts, generation_config=gen)[0].tolist()
    cut = next((k + 1 for k, t in enumerate(new) if t in adapter.eos_token_ids), len(new))
    return adapter.tokenizer.decode(new[:cut], skip_special_tokens=True)


def test_cli_tiny_model_matches_independent_greedy_and_baseline(tmp_path, adapter, bench_dirs, capsys):
    """The real tiny model through `cord eval`, on a benchmark whose references are the
    model's own independent greedy answers ("exact" judge): m0, m1 from the audio prompt,
    m2 from the text prompt, none for m3 and long. So the accuracies are known and not
    0 = 0: audio at least 2 of 4 answered (the long clip is skipped by eval's default),
    text at least 1 of 5, plus any item whose two answers happen to agree (computed below
    with the judge, independently of eval)."""
    spoken, _ = bench_dirs
    greedy = {(it.id, mod): _greedy(adapter, it, mod, 6) for it in load_benchmark(spoken).items
              for mod in ("audio", "text") if not (mod == "audio" and it.id == "long")}
    assert all(greedy.values())  # each item has a non-empty answer to be judged on
    assert "no such answer" not in greedy.values()
    bench = tmp_path / "spoken"
    (bench / "audio").mkdir(parents=True)
    rows = []
    for rid, q, _, _ in SPOKEN:
        (bench / "audio" / f"{rid}.wav").write_bytes((spoken / "audio" / f"{rid}.wav").read_bytes())
        ref = greedy[(rid, "audio")] if rid in ("m0", "m1") else greedy[(rid, "text")] if rid == "m2" else "no such answer"
        rows.append({"id": rid, "question": q, "answer": ref, "audio": f"audio/{rid}.wav", "judge": "exact"})
    (bench / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    refs = {r["id"]: r["answer"].strip() for r in rows}
    expected = {}
    for mod in ("audio", "text"):
        scores = [judge(greedy[(rid, mod)], refs[rid], "exact").score for rid in refs if (rid, mod) in greedy]
        expected[mod] = sum(scores) / len(scores)
    assert expected["audio"] >= 0.5 and expected["text"] >= 0.2 and expected["audio"] != expected["text"]

    base = tmp_path / "base.json"
    base.write_text(json.dumps({"spoken": {"gap": 0.5}}))
    out = tmp_path / "out"
    # no model.long_audio given: eval skips the 2 s clip (window 1.5 s) instead of stopping
    argv = ["eval", "--model", "tiny", "--family", "qwen2-audio", "--benchmarks", str(bench), "--out", str(out),
            "--max-new-tokens", "6", "--batch-size", "3", "--baseline", str(base), "--set", "model.dtype=float32",
            "--set", "model.device=cpu", "--set", "model.max_audio_seconds=1.5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    s = report["spoken"]
    assert "| spoken | 5 |" in printed and "gap reduction" in (out / "report.md").read_text()
    assert "1 audio item(s) longer than model.max_audio_seconds=1.5 s were skipped (model.long_audio=skip" in printed
    assert (s["audio_n"], s["audio_skipped"], s["text_n"], s["text_skipped"]) == (4, 1, 5, 0)
    assert json.loads((out / "eval-run.json").read_text())["fingerprint"]["long_audio"] == "skip"

    for mod in ("audio", "text"):
        recs = {r["id"]: r for r in _lines(out / "spoken" / f"{mod}.jsonl")}
        for rid in refs:
            if (rid, mod) in greedy:
                assert recs[rid]["response"] == greedy[(rid, mod)]
            else:
                assert recs[rid]["status"] == "skipped"
        assert s[f"{mod}_acc"] == expected[mod]
    assert s["gap"] == pytest.approx(expected["text"] - expected["audio"])
    assert s["gap_reduction"] == pytest.approx((0.5 - s["gap"]) / 0.5)


def test_cli_one_line_errors(tmp_path, bench_dirs, capsys):
    code = main(["eval", "--model", "tiny", "--benchmarks", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "benchmark folder not found" in err and "nope" in err
    assert not (tmp_path / "o").exists()

    code = main(["eval", "--benchmarks", "voicebench-mmsuu", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "voicebench-mmsu" in err

    code = main(["eval", "--benchmarks", str(tmp_path), "--modalities", "audio,video", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--modalities" in err

    code = main(["eval", "--benchmarks", str(bench_dirs[0]), "--baseline", str(tmp_path / "none.json"),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "baseline report not found" in err

    bad = tmp_path / "bad.json"
    bad.write_text('{"a": {"gap": 0.1,}}')
    code = main(["eval", "--benchmarks", str(bench_dirs[0]), "--baseline", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "bad.json: malformed JSON" in err and "line 1" in err

    # a non-numeric gap in the baseline: refused before any model loads or item is asked
    bad.write_text(json.dumps({"spoken": {"gap": "n/a"}, "average": {"gap": 0.1}}))
    code = main(["eval", "--model", "tiny", "--benchmarks", str(bench_dirs[0]), "--baseline", str(bad),
                 "--out", str(tmp_path / "o"), "--set", "model.long_audio=skip"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "spoken.gap must be a number or null" in err
    assert not (tmp_path / "o").exists()

    # --out is a file (or inside one): one line, the file untouched
    f = tmp_path / "file.txt"
    f.write_text("keep")
    for out in (f, f / "sub"):
        code = main(["eval", "--model", "tiny", "--benchmarks", str(bench_dirs[0]), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"--out {out}:" in err
    assert f.read_text() == "keep"

    # an explicit long_audio=error keeps its meaning: the long clip is named before the model loads
    code = main(["eval", "--model", "/nonexistent/model", "--benchmarks", str(bench_dirs[0]), "--out",
                 str(tmp_path / "o"), "--set", "model.long_audio=error", "--set", "model.max_audio_seconds=1.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "1 longer than the 1.5 s window" in err and "(long 2.0 s" in err
    assert "nonexistent" not in err and not (tmp_path / "o").exists()


def test_progress_lines_in_a_log(tmp_path, adapter, bench_dirs, capsys):
    """Not a terminal (pytest's captured stderr): plain progress lines, not a bar."""
    spoken, _ = bench_dirs
    evaluate(_cfg(tmp_path, [spoken], batch_size=2), adapter, progress=True, engine=_engine(adapter, bench_dirs))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cord eval spoken")]
    assert lines[0].startswith("cord eval spoken [audio]: 2/5 items (40%), ")
    assert "cord eval spoken [audio]: 5/5 items (100%), " in err and "cord eval spoken [text]: 5/5 items (100%), " in err
    assert all("\r" not in line and ("items/s" in line or "s/item" in line) for line in lines)


def test_local_mmau_copy_is_found_by_path(tmp_path):
    from cord.eval.benchmarks import check_benchmark, open_benchmark

    _write_wav(tmp_path / "a.wav", 0.3, 0)
    row = {"id": "x1", "audio_id": "a.wav", "question": "What is heard?", "choices": ["rain", "wind"],
           "answer": "wind", "task": "sound"}
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps([row]))
    for given in (tmp_path, tmp_path / "mmau-test-mini.json"):
        check_benchmark(str(given))
        bench = open_benchmark(str(given))
        assert bench.name == "mmau-test-mini" and bench.items[0].meta["text_with_audio"]
    with pytest.raises(CordError, match="no hub copy"):
        check_benchmark("mmau-test-mini")


# --------------------------------------------------------------------------------------
# Issue #27: eval and analyze in one folder; what the eval fingerprint covers


def test_eval_and_analyze_in_one_folder_keep_their_own_records(tmp_path, bench_dirs, capsys):
    """Both wrote run.json: analyze in an eval folder replaced eval's record, and the eval
    rerun was refused for a setting it never had (long_audio: 'error', now 'skip') with
    advice to delete the folder of finished answers."""
    spoken, _ = bench_dirs
    out = tmp_path / "shared"
    common = ["--model", "tiny", "--family", "qwen2-audio", "--out", str(out), "--set", "model.dtype=float32",
              "--set", "model.device=cpu", "--set", "model.max_audio_seconds=1.5"]
    ev = ["eval", *common, "--benchmarks", str(spoken), "--max-new-tokens", "3", "--limit", "3",
          "--modalities", "text"]
    an = ["analyze", *common, "--data", str(spoken), "--limit", "2", "--set", "rollout.max_new_tokens=3"]
    assert main(ev) == 0
    answers = (out / "spoken" / "text.jsonl").read_bytes()
    assert main(an) == 0
    rollouts = (out / "rollouts.jsonl").read_bytes()
    capsys.readouterr()
    assert main(ev) == 0, capsys.readouterr().err  # resumes (analyze's long_audio is 'error'): nothing asked again
    assert (out / "spoken" / "text.jsonl").read_bytes() == answers
    assert main(an) == 0, capsys.readouterr().err
    assert (out / "rollouts.jsonl").read_bytes() == rollouts
    assert json.loads((out / "eval-run.json").read_text())["fingerprint"]["long_audio"] == "skip"
    assert "temperature" in json.loads((out / "analyze-run.json").read_text())["fingerprint"]
    assert not (out / "run.json").exists()


def test_a_legacy_run_json_is_read_by_its_own_command_only(tmp_path, adapter, bench_dirs):
    spoken, _ = bench_dirs
    out = tmp_path / "o"
    cfg = _cfg(out, [spoken], batch_size=2)
    evaluate(cfg, adapter, progress=False, engine=_engine(adapter, bench_dirs))
    record = json.loads((out / "eval-run.json").read_text())
    (out / "eval-run.json").unlink()
    # an old folder whose run.json analyze overwrote: not evidence about eval, which resumes
    (out / "run.json").write_text(json.dumps({"fingerprint": {"long_audio": "error", "temperature": 1.0}}))
    engine = _engine(adapter, bench_dirs)
    evaluate(cfg, adapter, progress=False, engine=engine)
    assert engine.asked == [] and json.loads((out / "run.json").read_text())["fingerprint"]["long_audio"] == "error"
    # an old eval run.json is read (and replaced by eval-run.json)
    (out / "eval-run.json").unlink()
    (out / "run.json").write_text(json.dumps({**record, "fingerprint": {**record["fingerprint"], "max_new_tokens": 9}}))
    with pytest.raises(CordError, match="max_new_tokens: 9, now 512"):
        evaluate(cfg, adapter, progress=False, engine=_engine(adapter, bench_dirs))
    (out / "run.json").write_text(json.dumps(record))
    evaluate(cfg, adapter, progress=False, engine=_engine(adapter, bench_dirs))
    assert not (out / "run.json").exists() and (out / "eval-run.json").is_file()


def test_the_eval_fingerprint_covers_model_files_and_item_content(tmp_path, adapter, bench_dirs):
    """The fingerprint recorded only the model path: a model retrained into the same folder,
    or a benchmark folder whose items changed, reused the old answers."""
    from cord.eval.answer import run_fingerprint

    spoken, _ = bench_dirs
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x" * 8)
    cfg = CordConfig(model=ModelConfig(**{**MODEL, "name_or_path": str(model)}))
    first = run_fingerprint(cfg, adapter)
    import os

    os.utime(model / "model.safetensors", ns=(1, 1))  # retrained: the files are new
    second = run_fingerprint(cfg, adapter)
    assert second["model_files"] != first["model_files"]
    assert second["dtype"] == "float32" and "batch_size" not in second
    from cord.eval.records import check_fingerprint

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "eval-run.json").write_text(json.dumps({"fingerprint": second, "benchmarks": []}))
    fp = run_fingerprint(cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "bfloat16"})}), adapter)
    with pytest.raises(CordError, match="dtype: 'float32', now 'bfloat16'"):
        check_fingerprint(tmp_path / "o", fp, resumable=True, holds="answers", command="eval")

    # an edited item of a local benchmark is asked again; the others are kept
    bench = tmp_path / "bench"
    shutil.copytree(spoken, bench)
    out = tmp_path / "out"
    run_cfg = _cfg(out, [bench], batch_size=2)
    evaluate(run_cfg, adapter, progress=False, engine=_engine(adapter, bench_dirs))
    rows = [json.loads(line) for line in (bench / "manifest.jsonl").read_text().splitlines()]
    rows[2]["answer"] = "7"  # m2's reference fixed: its audio answer "The answer is 7." is now right
    (bench / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    engine = _engine(adapter, bench_dirs)
    engine.ref["m2"] = "7"
    engine.text_answer = lambda rid: "The answer is 7." if rid == "m2" else f"The answer is {dict((s[0], s[2]) for s in SPOKEN)[rid]}."
    report = evaluate(run_cfg, adapter, progress=False, engine=engine)
    assert sorted(engine.asked) == [("audio", "m2"), ("text", "m2")]
    assert report["bench"]["audio_acc"] == 0.75 and report["bench"]["text_acc"] == 1.0


def test_builtin_benchmark_names_resolve_to_the_cached_folder(monkeypatch, tmp_path):
    """``--benchmarks builtin:NAME`` (what `cord reproduce`'s tiny plan prints) is the built-in
    dataset's folder in cord's cache, made on first use; other names pass through; an unknown
    built-in is one line naming the ones there are."""
    from cord.eval.benchmarks import resolve_builtin

    made = []
    monkeypatch.setattr("cord.data.builtin.ensure_builtin", lambda name: made.append(name) or tmp_path / name)
    assert resolve_builtin("builtin:tiny-arith") == str(tmp_path / "tiny-arith") and made == ["tiny-arith"]
    assert resolve_builtin("voicebench-mmsu") == "voicebench-mmsu" and resolve_builtin("data/dev") == "data/dev"
    monkeypatch.undo()
    with pytest.raises(CordError, match="unknown built-in dataset 'tiny-arth' \\(available: tiny-arith\\)"):
        resolve_builtin("builtin:tiny-arth")
