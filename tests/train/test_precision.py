"""fp32 master weights for bf16 parameters that train outside LoRA (cord.train.precision).

The reproduction of the bug: the tiny SFT preset with ``model.dtype=bfloat16``, no LoRA, lr
3e-5. Every AdamW update (~lr per step) is below half a bf16 step for weights of magnitude
> 0.016, so in pure bf16 none of them ever moves; with fp32 masters the updates accumulate.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SFT = ROOT / "configs" / "tiny" / "sft.yaml"
BF16 = ["model.dtype=bfloat16", "model.lora=null", "train.lr=3e-5", "train.progress=false",
        "train.tensorboard=false", "data.limit=8"]


def _trainer(out: Path, *extra: str):
    from cord.config import load_config
    from cord.train.trainer import Trainer

    return Trainer(load_config(SFT, [*BF16, f"train.output_dir={out}", *extra]))


def _trained(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.adapter.model.named_parameters() if p.requires_grad}


def test_bf16_weights_move_under_a_small_lr(tmp_path):
    trainer = _trainer(tmp_path / "a", "train.max_steps=11")
    before = _trained(trainer)
    assert {t.dtype for t in before.values()} == {torch.bfloat16}
    trainer.fit(export=False)
    after = _trained(trainer)
    big = changed = 0
    for n, w in before.items():
        sel = w.float().abs() > 0.016
        big += int(sel.sum())
        changed += int((after[n] != w)[sel].sum())
    assert big > 10_000
    # fp32 masters: about a fifth move in 11 steps (pure bf16: none)
    assert changed / big > 0.05, (changed, big)
    # the model holds its masters rounded to bf16, and only the masters are in the optimizer
    masters = trainer.master.by_name(trainer.adapter.model)
    assert set(masters) == set(before)
    for n, m in masters.items():
        assert m.dtype == torch.float32 and torch.equal(after[n], m.detach().to(torch.bfloat16)), n
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(m) for m in masters.values()}


def test_micro_batches_accumulate_into_the_masters_in_fp32():
    """Each backward's bf16 gradient is added into the master's fp32 gradient (and freed): a
    sum a bf16 accumulator would round away survives; one optimizer step then moves the bf16
    weight by the rounded master."""
    from cord.train.precision import MasterWeights

    p = torch.nn.Parameter(torch.tensor([1.0, 0.02], dtype=torch.bfloat16))
    masters = MasterWeights([p])
    (m,) = masters.params
    for g in ([1.0, 0.0], [2.0 ** -9, 0.0]):  # 1 + 2^-9 is 1 in bf16 (its step at 1 is 2^-7)
        p.grad = torch.tensor(g, dtype=torch.bfloat16)
        masters.accumulate_grads()
        assert p.grad is None
    assert m.grad.dtype == torch.float32 and m.grad[0].item() == 1.0 + 2.0 ** -9
    opt = torch.optim.SGD(masters.params, lr=1.0)
    with torch.no_grad():
        m.grad[1] = 2.0 ** -16  # far below half a bf16 step at 0.02
    for _ in range(64):
        opt.step()
        masters.copy_to_model()
    assert p[1].item() != torch.tensor(0.02, dtype=torch.bfloat16).item()  # 64 small steps added up
    assert torch.equal(p.detach(), m.detach().to(torch.bfloat16))


def test_a_resumed_bf16_run_continues_from_the_fp32_masters(tmp_path):
    straight = _trainer(tmp_path / "straight", "train.max_steps=4")
    straight.fit(export=False)
    run = tmp_path / "run"
    _trainer(run, "train.max_steps=2").fit(export=False)
    resumed = _trainer(run, "train.max_steps=4")
    resumed.fit(resume="auto", export=False)
    from safetensors.torch import load_file

    saved = load_file(str(run / "checkpoints" / "step-00000002" / "trainable.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the masters, not the rounded weights
    a, b = straight.master.by_name(straight.adapter.model), resumed.master.by_name(resumed.adapter.model)
    for n in a:
        assert torch.equal(a[n], b[n]), n


@pytest.mark.parametrize("dtype", ["float32"])
def test_fp32_and_lora_parameters_get_no_master(tmp_path, dtype):
    from cord.train.precision import MasterWeights

    trainer = _trainer(tmp_path, f"model.dtype={dtype}", "train.max_steps=1")
    assert not trainer.master and trainer.params == [p for p in trainer.adapter.model.parameters() if p.requires_grad]
    lora = _trainer(tmp_path / "lora", "model.lora.r=2", "train.max_steps=1")  # adapters stay fp32 on bf16
    assert not MasterWeights(lora.params)
