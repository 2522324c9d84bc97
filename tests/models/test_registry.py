"""Families as plug-ins (found lazily by name, no import cycle) and adapters that own their
module map (which parameters are the audio encoder, projector, language model and head, and
which modules LoRA targets), so a family with other module names trains the right parts
without the trainer knowing its names. (Every built-in family's own map: the contract, in
tests/models/test_family_contract.py.)"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest
from torch import nn

from cord import CordError
from cord.config import LoraConfig, ModelConfig
from cord.models import registry
from cord.models.base import lora_target_regex, module_map_of, part_of
from cord.train.setup import select_trainable


_STAGES = """
import sys
def mods():
    return sorted(m for m in sys.modules if m.startswith("cord."))
import cord.models.registry as r
names = r.families()
print(" ".join(mods()))
from cord.config import ModelConfig
r.load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", device="meta"))
print(" ".join(mods()))
import cord.mini.family  # the old cycle's entry point, imported first
r.family_loader("mini")
print(" ".join(names))
"""


def test_registry_imports_no_family_a_family_imports_only_its_module_and_there_is_no_cycle():
    out = subprocess.run([sys.executable, "-c", _STAGES], capture_output=True, text=True, check=True).stdout
    after_registry, after_qwen, names = (set(line.split()) for line in out.strip().splitlines())
    families = ("cord.mini", "cord.models.qwen", "cord.models.voxtral", "cord.models.qwen3_omni")
    assert not {m for m in after_registry if m.startswith(families)}  # listing names imports nothing
    assert "cord.models.qwen" in after_qwen
    assert not {m for m in after_qwen if m.startswith(("cord.mini", "cord.models.voxtral", "cord.models.qwen3_omni"))}
    assert {"qwen2-audio", "qwen2.5-omni", "qwen3-omni", "mini"} <= names


def _toy_family_module(tmp_path, monkeypatch, body: str) -> None:
    pkg = tmp_path / "toyfam"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("value", ["toyfam", "toyfam:load"])
def test_a_third_party_family_is_found_through_its_entry_point(tmp_path, monkeypatch, value):
    body = "from cord.models.registry import register_family\n\n\ndef load(cfg):\n    return ('toy adapter', cfg.name_or_path)\n"
    if value == "toyfam":  # a module that registers itself
        body += "\n\nregister_family('toy', load)\n"
    _toy_family_module(tmp_path, monkeypatch, body)
    ep = EntryPoint(name="toy", value=value, group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: {"toy": ep})
    monkeypatch.delitem(registry._FAMILIES, "toy", raising=False)
    monkeypatch.delitem(sys.modules, "toyfam", raising=False)
    assert "toy" in registry.families()
    assert registry.family_loader("toy")(ModelConfig(family="toy", name_or_path="x")) == ("toy adapter", "x")
    registry._FAMILIES.pop("toy", None)


def test_an_unknown_family_is_one_line_with_the_nearest_name():
    with pytest.raises(CordError, match="did you mean 'qwen2-audio'"):
        registry.family_loader("qwen2-audi")


# ------------------------------------------------------------------ the module map
class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(4, 4)
        self.v_proj = nn.Linear(4, 4)


class _OddlyNamed(nn.Module):
    """A model whose parts have names no built-in family uses."""

    def __init__(self) -> None:
        super().__init__()
        self.ear = nn.ModuleDict({"block": _Attn()})  # audio encoder, with its own q/v projections
        self.bridge = nn.Linear(4, 4)  # projector
        self.brain = nn.ModuleDict({"layer": _Attn(), "moe": nn.ModuleDict({"experts": _Attn()})})
        self.head = nn.Linear(4, 8)  # lm_head
        self.eye = nn.Linear(4, 4)  # a vision tower: no part


class _OddAdapter:
    module_map = {"audio_encoder": ("ear",), "projector": ("bridge",), "language_model": ("brain",), "lm_head": ("head",)}
    lora_scope = ("brain",)
    lora_exclude = ("experts",)

    def __init__(self) -> None:
        self.model = _OddlyNamed()


def _trainable_prefixes(model) -> set[str]:
    return {n.split(".")[0] if not n.startswith("base_model") else n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "parts, expected",
    [
        (["audio_encoder"], {"ear"}),
        (["projector"], {"bridge"}),
        (["language_model"], {"brain"}),
        (["lm_head"], {"head"}),
        (["language_model", "audio_encoder", "projector", "lm_head"], {"ear", "bridge", "brain", "head"}),
    ],
)
def test_a_family_with_other_module_names_trains_the_parts_its_map_names(parts, expected):
    adapter = _OddAdapter()
    select_trainable(adapter.model, parts, lora=False, module_map=module_map_of(adapter))
    assert _trainable_prefixes(adapter.model) == expected  # the vision tower "eye" never trains


def test_lora_targets_only_the_decoder_the_adapter_names_and_never_its_experts():
    adapter = _OddAdapter()
    model = registry.apply_lora(adapter.model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]), adapter=adapter)
    wrapped = {n.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith("lora_A")}
    assert wrapped == {"brain.layer.q_proj", "brain.layer.v_proj"}
    select_trainable(model, ["language_model"], lora=True, module_map=module_map_of(adapter))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n and ".brain.layer." in n for n in trained)


def test_module_map_matching_is_by_module_path_not_substring():
    mm = {"language_model": ("language_model",), "lm_head": ("language_model.lm_head",), "projector": ("projector",)}
    assert part_of("language_model.lm_head.weight", mm) == "lm_head"  # longest path wins
    assert part_of("base_model.model.language_model.model.layers.0.q_proj.lora_A.default.weight", mm) == "language_model"
    assert part_of("audio.projector_norm.weight", mm) is None  # "projector" inside a name is not the projector
    assert part_of("my_language_model.x", mm) is None
    r = lora_target_regex(["model.language_model"], ["q_proj"], ["experts"])
    import re

    assert re.fullmatch(r, "model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(r, "model.audio_tower.layers.0.self_attn.q_proj")
    assert not re.fullmatch(r, "model.language_model.layers.0.mlp.experts.q_proj")


def test_an_adapter_without_a_module_map_is_one_line():
    with pytest.raises(CordError, match="has no module_map"):
        module_map_of(object())
    with pytest.raises(CordError, match="unknown parts"):
        module_map_of(type("A", (), {"module_map": {"decoder": ("x",)}})())
