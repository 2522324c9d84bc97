"""Activation checkpointing as the trainer enables it (cord.train.setup.enable_checkpointing).

transformers' checkpointing call also hooks every sub-model's input embedding to require grad;
for an LALM that is the audio encoder's first convolution, which pulled a frozen Whisper
encoder into the autograd graph (held, recomputed and backpropagated through on every step,
for no gradient). These tests hold the fix: a frozen encoder stays out of the graph, the
gradients equal those without checkpointing (frozen or trainable encoder), and checkpointing
holds less than no checkpointing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from cord.config import load_config
from cord.models.base import module_map_of
from cord.train.step import run_micro_step
from cord.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_memory import LiveTensorBytes  # noqa: E402

LORA = ["model.lora.r=4", "model.lora.alpha=8", "model.lora.dropout=0.0",
        "model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"]


def _trainer(tmp_path, family: str, checkpointing: bool, trainable: str) -> Trainer:
    cfg = load_config(ROOT / "configs" / "tiny" / "sft.yaml", [
        f"model.family={family}", f"train.output_dir={tmp_path}/{checkpointing}-{trainable}",
        "train.batch_size=2", "train.progress=false", "train.tensorboard=false", "data.limit=4",
        f"train.gradient_checkpointing={str(checkpointing).lower()}", f"train.trainable=[{trainable}]", *LORA,
    ])
    trainer = Trainer(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero: move it so every LoRA weight has a gradient
        for p in trainer.params:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return trainer


def _encoder(trainer: Trainer) -> torch.nn.Module:
    path = module_map_of(trainer.adapter)["audio_encoder"][0]
    model = trainer.adapter.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_submodule(path)


def _step(trainer: Trainer):
    """One SFT micro-step (no sampling: deterministic); (gradients by name, did any output of
    the audio encoder require grad, live bytes held between the forward and the backward)."""
    outputs_require_grad = []
    hook = _encoder(trainer).register_forward_hook(
        lambda mod, args, out: outputs_require_grad.append(
            (out.last_hidden_state if hasattr(out, "last_hidden_state") else out).requires_grad))
    live = LiveTensorBytes()
    try:
        with live.mode():
            loss, _ = run_micro_step(trainer.ctx, trainer.micro_examples(0, 0), step=0, micro=0)
            held = live.current
        loss.backward()
    finally:
        hook.remove()
    grads = {n: p.grad.detach().clone() for n, p in trainer.adapter.model.named_parameters() if p.requires_grad}
    assert outputs_require_grad, "the student forward must run the audio encoder"
    return grads, any(outputs_require_grad), held


@pytest.mark.parametrize("family", ["qwen2-audio", "qwen2.5-omni"])
def test_lora_checkpointing_leaves_a_frozen_audio_encoder_out_of_the_graph_with_equal_gradients(family, tmp_path):
    on, encoder_in_graph, _ = _step(_trainer(tmp_path, family, True, "language_model"))
    off, encoder_in_graph_off, _ = _step(_trainer(tmp_path, family, False, "language_model"))
    assert not encoder_in_graph_off
    assert not encoder_in_graph, "a frozen audio encoder joined the autograd graph under checkpointing"
    assert on.keys() == off.keys() and any("lora_" in n for n in on)
    for name in on:
        assert float(on[name].abs().max()) > 0, name
        torch.testing.assert_close(on[name], off[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_trainable_audio_encoder_gets_the_same_gradients_with_and_without_checkpointing(tmp_path):
    on, encoder_in_graph, _ = _step(_trainer(tmp_path, "qwen2-audio", True, "audio_encoder,projector,language_model"))
    off, _, _ = _step(_trainer(tmp_path, "qwen2-audio", False, "audio_encoder,projector,language_model"))
    assert encoder_in_graph
    encoder = [n for n in on if "audio_tower" in n]
    assert encoder and on.keys() == off.keys()
    for name in on:
        torch.testing.assert_close(on[name], off[name], rtol=1e-5, atol=1e-7, msg=name)
    assert max(float(on[n].abs().max()) for n in encoder) > 0


def test_checkpointing_holds_less_between_forward_and_backward_than_no_checkpointing(tmp_path):
    _, _, held_on = _step(_trainer(tmp_path, "qwen2-audio", True, "language_model"))
    _, _, held_off = _step(_trainer(tmp_path, "qwen2-audio", False, "language_model"))
    assert 0 < held_on < 0.5 * held_off, (held_on, held_off)
