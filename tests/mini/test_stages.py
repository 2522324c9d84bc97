"""The miniature's Stage A (text LM: solve + repeat) and Stage B (audio → transcript) on small budgets.

Stage A is run for real at the quick setting (≈80 s on two cores): it must reach high
held-out text accuracy on both tasks, which a broken loss, mask or prompt would prevent."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from cord.config import ModelConfig
from cord.data.paired import PairedExample
from cord.mini.adapter import MiniAdapter
from cord.mini.data import DataSettings, text_examples
from cord.mini.model import build_mini
from cord.mini.recipe import RecipeConfig
from cord.mini.scoring import greedy_accuracy, transcript_accuracy
from cord.mini.stage_a import stage_a
from cord.mini.stage_b import stage_b
from cord.mini.task import make_task, transcript
from cord.models import load_adapter


def held_out_text(n_dev: int, n_test: int, seed: int = 0) -> tuple[list[PairedExample], list[PairedExample]]:
    task = make_task(seed, n_train=1, n_dev=n_dev, n_test=n_test)
    to_ex = lambda r: PairedExample(r["id"], r["question"], None, r["answer"], r["solution"])  # noqa: E731
    return [to_ex(r) for r in task["dev"]], [to_ex(r) for r in task["test"]]


@pytest.fixture(scope="module")
def stage_a_result():
    cfg = RecipeConfig.quick(seed=0)
    dev, test = held_out_text(cfg.data.n_dev, cfg.data.n_test)
    model, tokenizer = build_mini(seed=0)
    adapter = MiniAdapter(model, tokenizer)
    before, _ = greedy_accuracy(adapter, test, "text")
    metrics = stage_a(adapter, text_examples(cfg.a_text_examples, cfg.data, repeat_share=cfg.a_repeat_share), dev, cfg)
    return adapter, metrics, before, test


@pytest.mark.slow  # the module's Stage A (450 steps) takes ~40 s
def test_stage_a_reaches_high_held_out_text_accuracy(stage_a_result):
    adapter, metrics, before, test = stage_a_result
    acc, items = greedy_accuracy(adapter, test, "text")
    assert before < 0.1  # a fresh model does not solve the task by accident
    assert acc >= 0.9, [i for i in items if not i["correct"]][:3]
    assert metrics["final_loss"] < 0.05 * metrics["first_loss"]
    assert metrics["steps"] <= RecipeConfig.quick().a_max_steps
    # the per-item record is what the accuracy counts
    assert len(items) == len(test) and sum(i["correct"] for i in items) / len(items) == acc
    assert all(i["modality"] == "text" for i in items)
    assert all(i["predicted"] is None or i["predicted"].isdigit() for i in items)
    # the second task: the question repeated back, word for word
    scores, outs = transcript_accuracy(adapter, test, modality="text")
    assert scores["exact"] >= 0.9 and scores["wer"] < 0.05, outs[:3]
    assert outs[0] == transcript(test[0].question_text) or scores["exact"] < 1


@pytest.mark.slow
def test_stage_a_trains_only_the_language_model(stage_a_result):
    adapter, *_ = stage_a_result
    fresh, _ = build_mini(seed=0)
    for name in ("audio_encoder", "projector"):
        for (n, a), (_, b) in zip(getattr(adapter.model, name).named_parameters(), getattr(fresh, name).named_parameters()):
            assert torch.equal(a, b), f"{name}.{n} changed in Stage A"
    assert all(p.requires_grad for p in adapter.model.parameters())  # left trainable for the next stage


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_stage_b_trains_the_audio_path_on_transcripts_only_and_keeps_the_averaged_weights(
        stage_a_result, tmp_path, monkeypatch):
    import cord.mini.stage_b as stages_mod
    from cord.mini.data import build_datasets, load_split

    trained, *_ = stage_a_result
    trained.save_pretrained(tmp_path / "a")
    adapter = load_adapter(ModelConfig(family="mini", name_or_path=str(tmp_path / "a"), dtype="float32", device="cpu"))
    dirs = build_datasets(tmp_path / "data", DataSettings(seed=0, n_train=64, n_dev=8, n_test=8, n_unseen=4))
    train, dev = load_split(dirs["train"]), load_split(dirs["dev"])
    cfg = replace(RecipeConfig.quick(), b_steps=24, b_eval_every=8, b_batch_size=16, b_ema=0.9)
    lm_before = {k: v.clone() for k, v in adapter.model.language_model.state_dict().items()}
    enc_before = {k: v.clone() for k, v in adapter.model.audio_encoder.state_dict().items()}
    # every decoder target Stage B trains on, and the prompts it trains them from
    targets, tasks = [], []
    real_ctc, real_prompts = stages_mod.ctc_targets, adapter.audio_prompts

    def ctc_targets(a, exs):  # what CTC is trained to read out, decoded back to words
        flat, lengths = real_ctc(a, exs)
        for part in flat.split(lengths.tolist()):
            targets.append(a.tokenizer.decode(part.tolist()))
        return flat, lengths

    monkeypatch.setattr(stages_mod, "ctc_targets", ctc_targets)
    monkeypatch.setattr(adapter, "audio_prompts",
                        lambda exs, task="solve", augment=None: (tasks.append(task), real_prompts(exs, task, augment))[1])
    monkeypatch.setattr(stages_mod, "evaluate_dev", lambda *a, **k: {"audio_acc": 0.0})  # no evaluation noise here
    metrics = stage_b(adapter, train, dev, cfg, dev_text_acc=1.0)
    monkeypatch.undo()
    assert [h["step"] for h in metrics["history"]] == [8, 16, 24] and metrics["steps"] == 24
    # Stage B never sees a solution: its (CTC) targets are the questions' transcripts
    questions = {transcript(ex.question_text) for ex in train}
    assert len(targets) == 24 * 16 and set(targets) <= questions
    assert not any("answer" in t or "=" in t for t in targets)
    assert set(tasks) == {"repeat"}
    for k, v in adapter.model.language_model.state_dict().items():
        assert torch.equal(v, lm_before[k]), f"language_model.{k} changed in Stage B"
    assert any(not torch.equal(v, enc_before[k]) for k, v in adapter.model.audio_encoder.state_dict().items())
    assert "moving average" in metrics["kept"]
