"""The exported model (``<output_dir>/model``) is the trained model: same logits after reload.

The LoRA cases use an update of ~1e-4 of each weight's size (what a few hundred steps at
lr 3e-5 give): merged into bf16 weights (spacing 2^-8..2^-7 of a value) nearly all of it
rounds away, so a merge-into-bf16 export reloads as a different model. Stated tolerance:
bit-identical logits (atol = rtol = 0) on the same device and dtype.
"""

from __future__ import annotations

import copy
import json
import types
import warnings

import pytest
import torch
from safetensors import safe_open

from cord.config import LoraConfig, ModelConfig
from cord.models import load_adapter
from cord.models.export import export_model
from tests.conftest import make_examples

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REL_UPDATE = 1e-4


def _lora_layers(model):
    return [m for m in model.modules() if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})]


def _trained_lora(family: str, dtype: str, rel: float = REL_UPDATE):
    """A tiny LoRA adapter whose update B·A·α/r has Frobenius size ``rel``·‖W‖ in every layer."""
    adapter = load_adapter(
        ModelConfig(family=family, name_or_path="tiny", dtype=dtype, device="cpu",
                    lora=LoraConfig(r=4, alpha=8, target_modules=TARGETS))
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in _lora_layers(adapter.model):
            a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            a.copy_(torch.randn(a.shape, generator=g))
            b.copy_(torch.randn(b.shape, generator=g))
            delta = (b @ a) * mod.scaling["default"]
            b.mul_(rel * mod.base_layer.weight.float().norm() / delta.norm())
    adapter.model.eval()
    return adapter


def _logits(adapter, seed: int = 1) -> torch.Tensor:
    """Completion logits for two audio prompts (left-padded batch) and fixed completions."""
    prompts = adapter.audio_prompts(make_examples(2))
    ids = torch.randint(0, 250, (2, 6), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return adapter.lm_head()(adapter.completion_hidden(prompts, ids, torch.ones_like(ids, dtype=torch.bool))).float()


def _reload(path, family: str, dtype: str, **extra):
    return load_adapter(ModelConfig(family=family, name_or_path=str(path), dtype=dtype, device="cpu", **extra))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["qwen2-audio", "qwen2.5-omni"])
def test_lora_export_reloads_to_the_trained_model(tmp_path, family, dtype):
    trained = _trained_lora(family, dtype)
    want = _logits(trained)
    with trained.model.disable_adapter():
        base = _logits(trained)
    assert (want != base).float().mean() > 0.05  # the update is visible in the trained model

    export_model(trained, tmp_path / "model")
    again = _reload(tmp_path / "model", family, dtype)
    assert {p.dtype for n, p in again.model.named_parameters() if "lora_" in n} == {torch.float32}
    torch.testing.assert_close(_logits(again), want, atol=0, rtol=0)

    if dtype == "bfloat16":
        # the old export (merge_and_unload into the bf16 weights) would not pass: most of the
        # update rounds away and the merged model computes other logits
        lost = kept = 0.0
        for mod in _lora_layers(trained.model):
            w = mod.base_layer.weight
            delta = (mod.lora_B["default"].weight @ mod.lora_A["default"].weight) * mod.scaling["default"]
            merged_w = (w.float() + delta).to(w.dtype).float()
            lost += ((merged_w - w.float()) - delta).norm() ** 2
            kept += delta.norm() ** 2
        assert (lost / kept).sqrt() > 0.9
        merged = copy.copy(trained)
        merged.model = copy.deepcopy(trained.model).merge_and_unload()
        assert (_logits(merged) != want).float().mean() > 0.05


def test_lora_export_folder_holds_base_and_fp32_adapter(tmp_path):
    trained = _trained_lora("qwen2-audio", "bfloat16")
    out = export_model(trained, tmp_path / "model")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors",
            "tokenizer.json", "preprocessor_config.json"} <= names
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert keys and not any("lora_" in k or "base_layer" in k for k in keys)
        assert f.get_tensor(next(k for k in keys if k.endswith("q_proj.weight"))).dtype == torch.bfloat16
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert f.keys() and all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())
    # the base is this folder, not a hub model a peft loader could pair the adapter with
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] is None


def test_plain_transformers_loads_the_export_with_its_adapter(tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    trained = _trained_lora("qwen2-audio", "float32")
    want = _logits(trained)
    with trained.model.disable_adapter():
        base = _logits(trained)
    export_model(trained, tmp_path / "model")
    plain = copy.copy(trained)
    plain.model = Qwen2AudioForConditionalGeneration.from_pretrained(str(tmp_path / "model"), dtype=torch.float32)
    got = _logits(plain)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert (got - base).abs().max() > 100 * (got - want).abs().max()


def test_continuing_from_a_lora_export_trains_the_saved_adapter(tmp_path):
    trained = _trained_lora("qwen2-audio", "float32")
    export_model(trained, tmp_path / "model")
    saved = {n: p.detach().clone() for n, p in trained.model.named_parameters() if "lora_" in n}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = _reload(tmp_path / "model", "qwen2-audio", "float32", lora=LoraConfig(r=8, alpha=8, target_modules=TARGETS))
    assert any("ignoring model.lora r 8 (saved: 4)" in str(w.message) for w in caught)
    lora = {n: p for n, p in again.model.named_parameters() if "lora_" in n}
    assert set(lora) == set(saved)  # the saved adapter, not a fresh one stacked on it
    assert all(p.requires_grad for p in lora.values())
    for n, p in lora.items():
        torch.testing.assert_close(p, saved[n], atol=0, rtol=0)


def test_full_finetune_export_reloads_exactly_in_bf16(tmp_path):
    adapter = load_adapter(ModelConfig(family="qwen2.5-omni", name_or_path="tiny", dtype="bfloat16", device="cpu"))
    with torch.no_grad():
        for p in adapter.model.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(p.dtype))
    want = _logits(adapter)
    export_model(adapter, tmp_path / "model")
    torch.testing.assert_close(_logits(_reload(tmp_path / "model", "qwen2.5-omni", "bfloat16")), want, atol=0, rtol=0)


def test_trainer_export_writes_the_unmerged_export_and_replaces_the_old_one(tmp_path):
    from cord.train.trainer import Trainer

    trained = _trained_lora("qwen2-audio", "float32")
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("old run")
    Trainer.export(types.SimpleNamespace(adapter=trained, sharded=False), target)
    names = {p.name for p in target.iterdir()}
    assert "adapter_config.json" in names and "stale.bin" not in names
    assert not (tmp_path / "model.tmp").exists()


def test_a_lora_training_run_exports_the_model_it_trained(tmp_path):
    """End to end: `cord train` (Trainer.fit) with LoRA, then the export loaded as `cord eval`
    loads it (model.name_or_path: <run>/model, no model.lora) computes the trained logits."""
    from pathlib import Path

    from cord.config import load_config
    from cord.train.trainer import Trainer

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "tiny" / "opd.yaml", [
        f"train.output_dir={tmp_path}/run", "train.batch_size=2", "train.max_steps=2", "train.lr=1e-2",
        "train.progress=false", "train.tensorboard=false", "rollout.max_new_tokens=4", "data.limit=4",
        "model.lora.r=4", "model.lora.target_modules=[q_proj,v_proj]",
    ])
    trainer = Trainer(cfg)
    trainer.fit()
    trainer.adapter.model.eval()
    want = _logits(trainer.adapter)
    with trainer.adapter.model.disable_adapter():
        assert (_logits(trainer.adapter) != want).any()  # training moved the adapter
    exported = load_adapter(cfg.model.model_copy(update={"name_or_path": str(tmp_path / "run" / "model"), "lora": None}))
    torch.testing.assert_close(_logits(exported), want, atol=0, rtol=0)
