"""`cord analyze`: per-token KL diagnostics that agree with an independent float64
recomputation on the same rollouts, and valid PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from cord import CordError
from cord.cli import main
from cord.config import CordConfig, ModelConfig
from cord.eval import analyze, kl_diagnostics, plot_kl_comparison
from cord.models import load_adapter

MODEL = dict(family="qwen2-audio", name_or_path="tiny", dtype="float32", device="cpu", long_audio="skip",
             max_audio_seconds=1.5)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def paired_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("paired")
    (d / "audio").mkdir()
    rows = []
    for i, sec in enumerate([0.4, 0.7, 1.0, 2.0, 0.55]):  # the 2.0 s clip is skipped (window 1.5 s)
        x = 0.2 * np.random.default_rng(i).standard_normal(int(16000 * sec))
        sf.write(d / "audio" / f"p{i}.wav", x.astype(np.float32), 16000)
        rows.append({"id": f"p{i}", "question": f"What is {i} plus {i + 2}?", "answer": str(2 * i + 2),
                     "audio": f"audio/p{i}.wav"})
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def sharp_adapter():
    """The tiny model with a scaled lm_head: its near-uniform predictions become peaked, so
    the audio/text KL is far from rounding level and the comparison below means something."""
    a = load_adapter(ModelConfig(**MODEL))
    with torch.no_grad():
        a.lm_head().weight.mul_(40.0)
    return a


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


def _rollouts(out: Path) -> list[dict]:
    """The rollout lines (an example the long-audio policy skipped has a status line)."""
    return [r for r in _lines(out) if r.get("status") != "skipped"]


def _naive_kl(adapter, example, ids: list[int]) -> np.ndarray:
    """float64, full logits, one example at a time: sum_v p_a (log p_a - log p_t)."""
    y = torch.tensor([ids])
    m = torch.ones_like(y, dtype=torch.bool)
    with torch.no_grad():
        ha = adapter.completion_hidden(adapter.audio_prompts([example]), y, m)[0].double()
        ht = adapter.completion_hidden(adapter.text_prompts([example]), y, m)[0].double()
    w = adapter.lm_head().weight.detach().double()
    la, lt = torch.log_softmax(ha @ w.T, -1), torch.log_softmax(ht @ w.T, -1)
    return (la.exp() * (la - lt)).sum(-1).numpy()


def test_analysis_matches_a_naive_float64_recomputation(tmp_path, paired_dir, sharp_adapter):
    from cord.data.paired import load_paired

    cfg = CordConfig(model=ModelConfig(**MODEL))
    res = analyze(cfg, sharp_adapter, out=tmp_path, data=paired_dir, max_new_tokens=12, batch_size=2, seed=5,
                  progress=False)
    on_disk = json.loads((tmp_path / "analysis.json").read_text())
    assert on_disk["n_tokens"] == res["n_tokens"] and on_disk["kl"] == pytest.approx(res["kl"])

    rolls = _rollouts(tmp_path)
    assert res["n_examples"] == 5 and res["n_skipped"] == 1 and res["n_rollouts"] == 4 == len(rolls)
    assert [r["id"] for r in rolls] == ["p0", "p1", "p2", "p4"]
    assert [(r["id"], r.get("status")) for r in _lines(tmp_path)][3] == ("p3", "skipped")
    assert res["n_tokens"] == sum(len(r["ids"]) for r in rolls) == sum(len(r["kl"]) for r in rolls)

    examples = {ex.id: ex for ex in load_paired(paired_dir)}
    naive = [_naive_kl(sharp_adapter, examples[r["id"]], r["ids"]) for r in rolls]
    flat = np.concatenate(naive)
    assert flat.mean() > 1e-3  # a real divergence, not rounding noise
    np.testing.assert_allclose(np.concatenate([r["kl"] for r in rolls]), flat, rtol=1e-3, atol=1e-6)
    assert res["kl"]["mean"] == pytest.approx(flat.mean(), rel=1e-4)

    # the statistics, recomputed by hand from the naive values
    kl = res["kl"]
    assert kl["min"] <= kl["p50"] <= kl["p80"] <= kl["p90"] <= kl["p99"] <= kl["max"]
    assert kl["p80"] == pytest.approx(np.percentile(flat, 80), rel=1e-3)
    c = flat - flat.mean()
    assert kl["skewness"] == pytest.approx((c**3).mean() / (c**2).mean() ** 1.5, rel=1e-2)
    pos = np.concatenate([np.arange(len(n)) for n in naive])
    assert res["pearson_position"] == pytest.approx(np.corrcoef(pos, flat)[0, 1], abs=1e-3)
    by_pos = res["kl_by_position"]
    assert sum(by_pos["count"]) == res["n_tokens"]
    assert by_pos["mean_kl"][0] == pytest.approx(np.mean([n[0] for n in naive]), rel=1e-3)
    top = res["top_tokens"]
    assert top and all(t["count_top"] <= t["count"] for t in top)
    n_top = sum(v >= res["top_tokens_threshold"] for r in rolls for v in r["kl"])
    assert sum(t["count_top"] for t in top) == n_top  # fewer than 30 distinct tokens here
    assert [t["count_top"] for t in top] == sorted((t["count_top"] for t in top), reverse=True)
    assert all(isinstance(t["token"], str) for t in top)

    # seeded: the same seed gives the same rollouts, another seed others
    again = analyze(cfg, sharp_adapter, out=tmp_path / "again", data=paired_dir, max_new_tokens=12, batch_size=2,
                    seed=5, plots=False, progress=False)
    other = analyze(cfg, sharp_adapter, out=tmp_path / "other", data=paired_dir, max_new_tokens=12, batch_size=2,
                    seed=6, plots=False, progress=False)
    assert _rollouts(tmp_path / "again") == rolls and again["kl"] == res["kl"]
    assert [r["ids"] for r in _rollouts(tmp_path / "other")] != [r["ids"] for r in rolls]

    # before/after comparison plot from two results
    png = plot_kl_comparison({"seed 5": res, "seed 6": other}, tmp_path / "cmp.png")
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_cli_writes_json_and_valid_pngs(tmp_path, paired_dir, capsys):
    import matplotlib.image

    out = tmp_path / "an"
    argv = ["analyze", "--model", "tiny", "--family", "qwen2-audio", "--data", str(paired_dir), "--out", str(out),
            "--limit", "3", "--set", "model.dtype=float32", "--set", "model.device=cpu",
            "--set", "rollout.max_new_tokens=8"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "rollouts" in captured.out
    # stderr is not a terminal here: progress comes as plain lines (a log shows them)
    assert any(line.startswith("cord analyze: 3/3 examples (100%), ") for line in captured.err.split("\n"))
    res = json.loads((out / "analysis.json").read_text())
    assert res["n_rollouts"] == 3 and res["max_new_tokens"] == 8
    assert res["n_tokens"] == sum(len(r["ids"]) for r in _rollouts(out)) and res["mean_length"] <= 8
    for name in ("kl_hist.png", "kl_by_position.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        img = matplotlib.image.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert res["files"] == {"rollouts": "rollouts.jsonl", "histogram": "kl_hist.png", "by_position": "kl_by_position.png"}


class CountingEngine:
    """HFEngine that counts its calls and can raise at call ``fail_at`` (an interruption)."""

    def __init__(self, adapter, fail_at: int | None = None):
        from cord.rollout import HFEngine

        self.inner, self.fail_at, self.calls = HFEngine(adapter, batch_size=2), fail_at, []

    def generate(self, prompts, **kw):
        self.calls.append(kw["seed"])
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        return self.inner.generate(prompts, **kw)


def test_interrupted_analyze_resumes_to_the_uninterrupted_result(tmp_path, paired_dir, sharp_adapter):
    cfg = CordConfig(model=ModelConfig(**MODEL))
    kw = dict(data=paired_dir, max_new_tokens=10, batch_size=2, seed=3, plots=False, progress=False)
    full = tmp_path / "full"
    analyze(cfg, sharp_adapter, out=full, engine=CountingEngine(sharp_adapter), **kw)

    # batches: [p0, p1] seed 3, [p2, p3 (skipped)] seed 4, [p4] seed 5; stop in the second
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        analyze(cfg, sharp_adapter, out=part, engine=CountingEngine(sharp_adapter, fail_at=2), **kw)
    assert [r["id"] for r in _lines(part)] == ["p0", "p1"]  # the finished batch is on disk
    assert _lines(part) == _lines(full)[:2] and not (part / "analysis.json").exists()

    engine = CountingEngine(sharp_adapter)
    res = analyze(cfg, sharp_adapter, out=part, engine=engine, **kw)
    assert engine.calls == [4, 5]  # only the unfinished batches, with their own seeds
    assert (part / "analysis.json").read_text() == (full / "analysis.json").read_text()
    assert (part / "rollouts.jsonl").read_text() == (full / "rollouts.jsonl").read_text()
    assert res["n_rollouts"] == 4 and res["n_skipped"] == 1

    # a killed run's torn last line is dropped and its batch redone; a finished run asks nothing
    text = (part / "rollouts.jsonl").read_text()
    (part / "rollouts.jsonl").write_text(text[: len(text) - 40])
    engine = CountingEngine(sharp_adapter)
    analyze(cfg, sharp_adapter, out=part, engine=engine, **kw)
    assert engine.calls == [5] and (part / "analysis.json").read_text() == (full / "analysis.json").read_text()
    engine = CountingEngine(sharp_adapter)
    analyze(cfg, sharp_adapter, out=part, engine=engine, **kw)
    assert engine.calls == []

    # rollouts from other settings are not mixed in
    with pytest.raises(CordError, match="another analysis.*seed: 3, now 4"):
        analyze(cfg, sharp_adapter, out=part, engine=CountingEngine(sharp_adapter), **{**kw, "seed": 4})


def test_data_problems_and_a_file_as_out_fail_before_the_model_loads(tmp_path, paired_dir):
    bad = tmp_path / "bad"
    (bad / "audio").mkdir(parents=True)
    sf.write(bad / "audio" / "e.wav", np.zeros(0, np.float32), 16000)
    rows = [{"id": "e", "question": "q", "audio": "audio/e.wav"}, {"id": "m", "question": "q", "audio": "audio/m.wav"}]
    (bad / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CordConfig(model=ModelConfig(name_or_path="/nonexistent/model"))  # never reached
    with pytest.raises(CordError, match=r"1 audio file\(s\) missing \(m\); 1 empty, 0 samples \(e\)"):
        analyze(cfg, out=tmp_path / "o", data=bad)
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(CordError, match="exists and is not a directory"):
        analyze(cfg, out=f, data=paired_dir)
    assert f.read_text() == "keep" and not (tmp_path / "o").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["analyze", "--model", "tiny", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing" in err
    code = main(["analyze", "--model", "tiny", "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--out" in err


def test_kl_diagnostics_on_handmade_values():
    res = kl_diagnostics([[1.0, 2.0, 3.0], [4.0]], [[5, 6, 5], [7]], decode=lambda i: f"<{i}>", top_fraction=0.25)
    assert res["n_tokens"] == 4 and res["n_rollouts"] == 2 and res["mean_length"] == 2.0
    assert res["kl"]["mean"] == 2.5 and res["kl"]["p50"] == 2.5 and res["kl"]["max"] == 4.0
    assert res["kl"]["top25pct_share"] == pytest.approx(0.4)
    assert res["kl_by_position"] == {"position": [0, 1, 2], "mean_kl": [2.5, 2.0, 3.0], "count": [2, 1, 1]}
    assert res["top_tokens"] == [{"id": 7, "token": "<7>", "count_top": 1, "count": 1, "mean_kl": 4.0,
                                  "mean_kl_top": 4.0}]
    assert res["kl"]["skewness"] == pytest.approx(0.0)
    assert res["pearson_position"] == pytest.approx(np.corrcoef([0, 1, 2, 0], [1, 2, 3, 4])[0, 1])
    # constant input: undefined statistics are None, not NaN
    flat = kl_diagnostics([[0.5, 0.5]], [[1, 2]])
    assert flat["kl"]["skewness"] is None and flat["pearson_position"] is None
    assert kl_diagnostics([[0.5]], [[1]])["pearson_position"] is None


def test_a_model_retrained_into_the_same_folder_is_another_model(tmp_path):
    from cord.eval.analyze import _model_stamp

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"a" * 10)
    first = _model_stamp(str(tmp_path / "m"))
    assert first == _model_stamp(str(tmp_path / "m"))
    os.utime(tmp_path / "m" / "model.safetensors", ns=(1, 1))  # rewritten (export replaces the folder)
    assert _model_stamp(str(tmp_path / "m")) != first
    assert _model_stamp("Qwen/Qwen2-Audio-7B-Instruct") is None
