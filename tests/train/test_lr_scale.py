"""``train.lr_scale``: a multiplier of ``train.lr`` per trainable part (e.g. a pretrained audio
encoder moved ten times slower than the adapters)."""

from __future__ import annotations

import json

import pytest
import torch

from cord import CordError
from cord.config import load_config
from cord.train.sharding import param_groups
from cord.train.trainer import Trainer
from tests.train.test_trainer import ROOT, tiny_cfg

FULL = ("model.lora=null", "train.trainable=[language_model,projector,audio_encoder]", "train.warmup_steps=0",
        "train.weight_decay=0.0")


@pytest.mark.parametrize("value, said", [
    ("{projector: 0.1}", "train.lr_scale names 'projector', which train.trainable"),
    ("{audio_encoder: 0.0}", "train.lr_scale.audio_encoder=0.0: a multiplier of train.lr must be a positive"),
    ("{audio_encoder: -1}", "must be a positive"),
    ("{audio_encoder: .nan}", "must be a positive"),
    ("{vision_tower: 0.5}", "vision_tower"),
])
def test_a_bad_multiplier_is_one_clear_error(value, said):
    with pytest.raises(CordError) as e:
        load_config(ROOT / "configs" / "tiny" / "sft.yaml", ["train.trainable=[language_model,audio_encoder]",
                                                             f"train.lr_scale={value}"])
    assert said in str(e.value)
    assert "\n" not in str(e.value).strip()


def test_groups_by_multiplier_in_order_of_first_parameter():
    ps = [torch.nn.Parameter(torch.zeros(1)) for _ in range(5)]
    groups = param_groups(ps, 2e-3, [0.5, 1.0, 0.5, 3.0, 1.0])
    assert [g["lr_scale"] for g in groups] == [0.5, 1.0, 3.0]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 2e-3, 6e-3])
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(ps[0]), id(ps[2])], [id(ps[1]), id(ps[4])],
                                                             [id(ps[3])]]
    assert [len(g["params"]) for g in param_groups(ps, 1e-3)] == [5]  # no multiplier: one group
    with pytest.raises(ValueError):
        param_groups(ps, 1e-3, [1.0])


def _first_step(tmp_path, *extra):
    cfg = tiny_cfg("sft", tmp_path, "qwen2-audio", *FULL, "train.max_steps=1", *extra)
    trainer = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.adapter.model.named_parameters() if p.requires_grad}
    trainer.fit(export=False)
    after = dict(trainer.adapter.model.named_parameters())
    parts = {n: trainer.adapter.module_map for n in before}
    from cord.models.base import part_of

    delta = {n: (after[n].detach() - b).double() for n, b in before.items()}
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    return delta, {n: part_of(n, parts[n]) for n in before}, metrics


def test_each_part_moves_by_its_multiple_of_the_first_adam_step(tmp_path):
    """Adam's first update is lr · g / (|g| + eps) whatever the gradient's scale, and the first
    gradient does not depend on the lr: with ``lr_scale`` the encoder's first update is exactly
    0.1 × the unscaled run's, the projector's 3 ×, the language model's the same."""
    ref, part, m_ref = _first_step(tmp_path / "ref")
    got, _, m_got = _first_step(tmp_path / "scaled", "train.lr_scale={audio_encoder: 0.1, projector: 3.0}")
    want = {"audio_encoder": 0.1, "projector": 3.0, "language_model": 1.0}
    moved = {p: 0 for p in want}
    for n, d in ref.items():
        # float32 rounds each weight after its update: up to one ulp of weights near 1 (norms)
        torch.testing.assert_close(got[n], want[part[n]] * d, rtol=1e-4, atol=3e-7, msg=n)
        moved[part[n]] += int(d.abs().max() > 0)
    assert all(moved.values()), moved
    enc = [n for n in ref if part[n] == "audio_encoder" and ref[n].abs().max() > 1e-5]
    assert enc and all(got[n].abs().max() < 0.2 * ref[n].abs().max() for n in enc)  # not within rounding
    assert m_got["lr"] == m_ref["lr"] == pytest.approx(1e-3)  # the logged lr is the unscaled one


def test_a_run_with_multipliers_resumes_exactly_and_refuses_other_multipliers(tmp_path):
    scale = "train.lr_scale={audio_encoder: 0.1}"
    common = (*FULL, scale, "train.save_every=1")
    Trainer(tiny_cfg("sft", tmp_path / "a", "qwen2-audio", *common, "train.max_steps=2")).fit(export=False)
    Trainer(tiny_cfg("sft", tmp_path / "b", "qwen2-audio", *common, "train.max_steps=1")).fit(export=False)
    resumed = Trainer(tiny_cfg("sft", tmp_path / "b", "qwen2-audio", *common, "train.max_steps=2"))
    assert resumed.fit(export=False)["resumed_from"].endswith("step-00000001")
    from safetensors.torch import load_file

    ta, tb = (load_file(str(tmp_path / r / "run" / "checkpoints" / "step-00000002" / "trainable.safetensors"))
              for r in ("a", "b"))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    other = Trainer(tiny_cfg("sft", tmp_path / "b", "qwen2-audio", *FULL, "train.lr_scale={audio_encoder: 0.5}",
                             "train.max_steps=3"))
    with pytest.raises(CordError, match="lr_scale"):
        other.resume(None)
