"""The miniature's Stage A (text LM) and Stage B (audio alignment) on small budgets.

Stage A is run for real at the quick setting (≈20 s on two idle cores): it must reach high
held-out text accuracy, which a broken loss, mask or prompt would prevent."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from cord.config import ModelConfig
from cord.data.paired import PairedExample
from cord.mini.data import DataSettings, text_examples
from cord.mini.model import MiniAdapter, build_mini
from cord.mini.stages import RecipeConfig, choose_checkpoint, greedy_accuracy, stage_a, stage_b
from cord.mini.task import make_task
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
    metrics = stage_a(adapter, text_examples(cfg.a_text_examples, cfg.data), dev, cfg)
    return adapter, metrics, before, test


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


def test_stage_a_trains_only_the_language_model(stage_a_result):
    adapter, *_ = stage_a_result
    fresh, _ = build_mini(seed=0)
    for name in ("audio_encoder", "projector"):
        for (n, a), (_, b) in zip(getattr(adapter.model, name).named_parameters(), getattr(fresh, name).named_parameters()):
            assert torch.equal(a, b), f"{name}.{n} changed in Stage A"
    assert all(p.requires_grad for p in adapter.model.parameters())  # left trainable for the next stage


def test_choose_checkpoint_takes_the_best_dev_audio_accuracy():
    ev = lambda acc, text=1.0: {"audio_acc": acc, "gap": text - acc}  # noqa: E731
    assert choose_checkpoint([ev(0.05), ev(0.45), ev(0.72), ev(0.70), ev(0.71)])[0] == 2
    assert choose_checkpoint([ev(0.6), ev(0.7), ev(0.7)])[0] == 1  # ties: the earlier one
    # a single evaluation is chosen whatever it is
    assert choose_checkpoint([ev(0.0)])[0] == 0


def test_stage_b_converges_when_dev_audio_accuracy_stops_improving():
    from cord.mini.stages import converged

    ev = lambda accs: [{"audio_acc": a} for a in accs]  # noqa: E731
    # still climbing: not converged
    assert not converged(ev([0.3, 0.4, 0.5, 0.6, 0.7]), patience=2, min_delta=0.01)
    # two evaluations without beating 0.70 by more than 0.01: converged
    assert converged(ev([0.3, 0.5, 0.70, 0.71, 0.69]), patience=2, min_delta=0.01)
    # a gain of more than min_delta inside the window resets it
    assert not converged(ev([0.3, 0.5, 0.70, 0.69, 0.72]), patience=2, min_delta=0.01)
    # too few evaluations to judge
    assert not converged(ev([0.5, 0.5]), patience=2, min_delta=0.0)
    assert RecipeConfig().b_patience >= 3 and RecipeConfig().b_max_steps >= 1000  # room to converge


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_stage_b_trains_audio_side_only_and_restores_chosen_checkpoint(stage_a_result, tmp_path):
    from cord.mini.data import build_datasets, load_split

    trained, *_ = stage_a_result
    trained.save_pretrained(tmp_path / "a")
    adapter = load_adapter(ModelConfig(family="mini", name_or_path=str(tmp_path / "a"), dtype="float32", device="cpu"))
    dirs = build_datasets(tmp_path / "data", DataSettings(seed=0, n_train=64, n_dev=8, n_test=8))
    train, dev = load_split(dirs["train"]), load_split(dirs["dev"])
    cfg = replace(RecipeConfig.quick(), b_max_steps=24, b_eval_start=8, b_eval_every=8, b_patience=3,
                  b_batch_size=16)
    lm_before = {k: v.clone() for k, v in adapter.model.language_model.state_dict().items()}
    enc_before = {k: v.clone() for k, v in adapter.model.audio_encoder.state_dict().items()}
    metrics = stage_b(adapter, train, dev, cfg, dev_text_acc=1.0)
    history = metrics["history"]
    assert [h["step"] for h in history] == [8, 16, 24]
    assert history[-1]["ctc"] < history[0]["ctc"] or history[-1]["ce"] < history[0]["ce"]
    for k, v in adapter.model.language_model.state_dict().items():
        assert torch.equal(v, lm_before[k]), f"language_model.{k} changed in Stage B"
    assert any(not torch.equal(v, enc_before[k]) for k, v in adapter.model.audio_encoder.state_dict().items())
    # the weights left in the model are the chosen evaluation's: re-measuring gives its accuracy
    acc, _ = greedy_accuracy(adapter, dev, "audio")
    assert acc == pytest.approx(metrics["chosen"]["audio_acc"])
    assert metrics["chosen_step"] in [h["step"] for h in history]
