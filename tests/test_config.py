"""Typed configs: nearest-key errors, clear type errors, overrides, every preset loads."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from cord import CordError
from cord.config import CordConfig, config_from_dict, dump_config, load_config, read_preset

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_typo_names_the_nearest_key(tmp_path):
    with pytest.raises(CordError, match="unknown key 'train.lr_rate' — did you mean 'train.lr'"):
        load_config(_write(tmp_path, "train:\n  lr_rate: 1e-5\n"))
    with pytest.raises(CordError, match="did you mean 'objective.top_k'"):
        load_config(_write(tmp_path, "objective:\n  topk: 5\n"))
    with pytest.raises(CordError, match="did you mean 'rollout'"):
        load_config(_write(tmp_path, "rollouts:\n  seq_n: 2\n"))


def test_bad_type_and_range_are_one_line(tmp_path):
    with pytest.raises(CordError) as e:
        load_config(_write(tmp_path, "train:\n  max_steps: many\n"))
    msg = str(e.value)
    assert "train.max_steps" in msg and "'many'" in msg and "\n" not in msg
    with pytest.raises(CordError, match="objective.alpha: Input should be greater than or equal to 1"):
        load_config(None, ["objective.alpha=0.5"])
    with pytest.raises(CordError, match="model.long_audio"):
        load_config(None, ["model.long_audio=drop"])


def test_overrides_apply_and_parse_yaml_scalars(tmp_path):
    cfg = load_config(
        _write(tmp_path, "train:\n  lr: 3e-5\n"),
        ["train.lr=1e-5", "rollout.seq_n=8", "train.trainable=[projector,audio_encoder]", "model.lora.r=4"],
    )
    assert cfg.train.lr == 1e-5 and cfg.rollout.seq_n == 8
    assert cfg.train.trainable == ["projector", "audio_encoder"]
    assert cfg.model.lora is not None and cfg.model.lora.r == 4
    with pytest.raises(CordError, match="section.key=value"):
        load_config(None, ["train.lr"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(CordError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(CordError, match="not valid YAML"):
        load_config(_write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(CordError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_defaults_are_the_papers():
    cfg = CordConfig()
    o, r = cfg.objective, cfg.rollout
    assert (o.alpha, o.top_k, o.beta, o.lam) == (2.0, 20, 2.0, 1.0)
    assert (r.token_n, r.token_temperature, r.seq_n, r.seq_temperature, r.max_new_tokens) == (1, 1.0, 4, 1.5, 200)
    assert cfg.train.lr == 3e-5


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=2e-5", "objective.method=opd"])
    again = load_config(_write(tmp_path, dump_config(cfg)))
    assert again == cfg


# every cord config (accelerate launch configs are accelerate's, not cord's; a file named _*.yaml
# is a part that presets name in ``base:``; reproduce.yaml is `cord reproduce`'s, tested in
# tests/reproduce/test_reproduce.py)
CONFIG_FILES = sorted(p for p in (ROOT / "configs").rglob("*.yaml")
                      if "accelerate" not in p.parts and not p.name.startswith("_") and p.name != "reproduce.yaml")


FOLDER_FAMILY = {"tiny": None, "warmup": None, "mini": "mini", "qwen2-audio-7b": "qwen2-audio", "qwen2.5-omni-7b": "qwen2.5-omni",
                 "qwen3-omni": "qwen3-omni", "step-audio2-mini": "step-audio2", "voxtral": "voxtral",
                 "gemma3n": "gemma3n"}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[str(p.relative_to(ROOT)) for p in CONFIG_FILES])
def test_every_shipped_config_loads_as_written(path):
    import yaml

    cfg = load_config(path)
    # a preset's file name is its method (<method>_full: full fine-tuning, sharded), its folder its model family
    assert cfg.objective.method == path.stem.removesuffix("_full")
    family = FOLDER_FAMILY[path.parent.name]
    assert cfg.model.family == (family or "qwen2-audio")
    # every value the file and its parts set is the value the run gets (nothing dropped or coerced)
    written = _flatten(read_preset(path))
    loaded = _flatten(cfg.model_dump(mode="json"))
    for key, value in written.items():
        assert loaded[key] == value, (key, loaded[key], value)
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


# ---------------------------------------------------------------------------------------
# Cross-field rules: found when the config loads, before any model does


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.lora.r=2", "train.trainable=[language_model,lm_head]"],
         "train.trainable: lm_head cannot train with model.lora"),
        (["objective.method=opd", "rollout.share_rollouts=true"],
         "rollout.share_rollouts: method 'opd' has no GRPO term"),
        (["objective.method=sft", "rollout.share_rollouts=true"],
         "rollout.share_rollouts: method 'sft' has no GRPO term"),
        (["objective.method=grpo", "rollout.share_rollouts=true"],
         "rollout.share_rollouts: method 'grpo' has no reverse-KL token term"),
        (["objective.method=cord", "rollout.seq_n=1"], "rollout.seq_n=1: method 'cord' has a GRPO term"),
        (["judge.kind=llm"], "judge kind 'llm' needs judge.base_url and judge.model"),
        (["train.trainable=[]"], "train.trainable is empty"),
        (["model.lora.target_modules=[]"], "model.lora.target_modules must name at least one module"),
        (["objective.method=cordd"], r"objective.method: unknown method 'cordd' — did you mean 'cord'\? \(one of sft,"),
        (["judge.kind=maths"], r"judge.kind: unknown judge kind 'maths' — did you mean 'math'\?"),
    ],
)
def test_cross_field_mistakes_are_one_line_at_load(overrides, message):
    with pytest.raises(CordError, match=message) as e:
        load_config(ROOT / "configs" / "tiny" / "cord.yaml", overrides)
    assert "\n" not in str(e.value) and "Value error" not in str(e.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["objective.method=cord", "rollout.share_rollouts=true"],
        ["objective.method=grpo_opd", "rollout.share_rollouts=true"],
        ["objective.method=sft", "rollout.seq_n=1"],  # no GRPO term: the group size is unused
        ["model.lora.r=2", "train.trainable=[language_model,projector]"],
        ["train.trainable=[lm_head]"],  # full fine-tuning may train the head
        ["judge.kind=llm", "judge.base_url=http://localhost:8000/v1", "judge.model=m"],
    ],
)
def test_valid_combinations_pass(overrides):
    load_config(ROOT / "configs" / "tiny" / "cord.yaml", overrides)


def test_method_and_judge_names_come_from_their_registries(monkeypatch):
    """One place defines each list: a method added to METHODS, a judge kind added to the
    judge registry, is accepted by the config with no second edit; one removed is refused."""
    import cord.judges.api as judges_api
    from cord import types as methods

    monkeypatch.setitem(methods.METHODS, "my_method", methods.MethodSpec("reverse_kl", False, False))
    monkeypatch.setitem(judges_api._REGISTERED, "my-judge", lambda c, r, ctx: None)
    cfg = load_config(None, ["objective.method=my_method", "judge.kind=my-judge"])
    assert (cfg.objective.method, cfg.judge.kind) == ("my_method", "my-judge")
    for kind in judges_api.JUDGE_KINDS:  # every registered kind, e.g. ones added by eval modules
        extra = ["judge.base_url=http://localhost:1/v1", "judge.model=m"] if kind == "llm" else []
        assert load_config(None, [f"judge.kind={kind}", *extra]).judge.kind == kind
    monkeypatch.delitem(methods.METHODS, "opd")
    with pytest.raises(CordError, match="unknown method 'opd'"):
        load_config(None, ["objective.method=opd"])
    monkeypatch.setattr(judges_api, "_CORE_KINDS", ("math",))
    monkeypatch.setattr(judges_api, "_REGISTERED", {})
    with pytest.raises(CordError, match=r"unknown judge kind 'mcq' .*\(one of math\)"):
        load_config(None, ["judge.kind=mcq"])


def test_loading_a_config_does_not_import_torch():
    """The name registries are read without heavy imports (cord synth / --help stay fast)."""
    import subprocess
    import sys

    code = ("import sys; from cord.config import load_config; "
            "load_config(None, ['objective.method=grpo_opd', 'judge.kind=mcq']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_every_family_has_all_seven_methods():
    from cord.types import METHODS

    for family in ("tiny", "qwen2-audio-7b", "qwen2.5-omni-7b"):
        names = {p.stem for p in (ROOT / "configs" / family).glob("*.yaml")
                 if not p.stem.endswith("_full") and not p.name.startswith("_") and p.stem != "reproduce"}
        assert names == set(METHODS), family


# --------------------------------------------------------------------------------------
# Issue #27: silent duplicate keys, errors blamed on the wrong source


def test_a_key_given_twice_is_refused_not_silently_dropped(tmp_path):
    """A second ``train:`` block used to replace the first whole (its lr was lost)."""
    path = _write(tmp_path, "train:\n  lr: 1.0e-5\nmodel:\n  family: qwen2-audio\ntrain:\n  max_steps: 3\n")
    with pytest.raises(CordError) as e:
        load_config(path)
    msg = str(e.value)
    assert "'train' appears twice (lines 1 and 5)" in msg and "merge" in msg and "\n" not in msg
    with pytest.raises(CordError, match="'lr' appears twice"):  # inside a section too
        load_config(_write(tmp_path, "train:\n  lr: 1.0e-5\n  lr: 2.0e-5\n"))
    # a YAML merge key may still be overridden, as YAML intends
    cfg = load_config(_write(tmp_path, "train:\n  <<: {lr: 1.0e-5, max_steps: 2}\n  lr: 2.0e-5\n"))
    assert (cfg.train.lr, cfg.train.max_steps) == (2e-5, 2)


def test_set_errors_name_the_set_flag_not_the_file(tmp_path):
    path = _write(tmp_path, "train:\n  lr: 1.0e-5\n")
    with pytest.raises(CordError) as e:
        load_config(path, ["train.lr=abc"])
    assert str(e.value).startswith("--set train.lr=abc: train.lr:") and str(path) not in str(e.value)
    with pytest.raises(CordError) as e:  # an empty value is the empty string, not "None"
        load_config(path, ["train.lr="])
    assert str(e.value).startswith("--set train.lr=: train.lr:") and "got ''" in str(e.value)
    assert "None" not in str(e.value)
    assert load_config(None, ["model.instruction="]).model.instruction == ""
    with pytest.raises(CordError, match=r"^--set train.lr_rate=3: unknown key 'train.lr_rate'"):
        load_config(path, ["train.lr_rate=3"])
    with pytest.raises(CordError, match=rf"^{path}: train.max_steps"):  # the file's own mistakes still name it
        load_config(_write(tmp_path, "train:\n  max_steps: many\n"), ["train.lr=1e-4"])
    with pytest.raises(CordError, match=r"^--limit 0: synth.limit"):  # a command flag names that flag
        load_config(None, [("synth.limit=0", "--limit 0")])


def test_a_config_folder_is_called_a_folder(tmp_path):
    with pytest.raises(CordError, match="is a folder, not a YAML file"):
        load_config(tmp_path)
    with pytest.raises(CordError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------------------
# Presets composed from parts (base:)


def test_a_preset_is_its_parts_merged_in_order_with_its_own_keys_on_top(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "family.yaml").write_text(
        "model:\n  family: qwen2-audio\n  name_or_path: tiny\n  lora: {r: 4, alpha: 8, dropout: 0.0}\n"
        "train:\n  lr: 1.0e-4\n  trainable: [language_model, projector]\n")
    (tmp_path / "parts" / "fast.yaml").write_text("base: family.yaml\ntrain:\n  lr: 3.0e-4\n  max_steps: 7\n")
    (tmp_path / "method.yaml").write_text("objective:\n  method: grpo\ntrain:\n  max_steps: 9\n")
    preset = tmp_path / "p.yaml"
    preset.write_text("base: [parts/fast.yaml, method.yaml]\nmodel:\n  lora: null\ntrain:\n  trainable: [projector]\n")
    cfg = load_config(preset, ["train.lr=5e-4"])
    assert (cfg.model.name_or_path, cfg.model.lora, cfg.objective.method) == ("tiny", None, "grpo")
    # later parts win key by key, the file beats its parts, lists and null replace, --set beats all
    assert (cfg.train.max_steps, cfg.train.trainable, cfg.train.lr) == (9, ["projector"], 5e-4)
    assert "base" not in read_preset(preset)


@pytest.mark.parametrize("base, message", [
    ("missing.yaml", r"p.yaml: base 'missing.yaml' not found"),
    ("p.yaml", r"base 'p.yaml' includes itself"),
    ("loop.yaml", r"base 'p.yaml' includes itself"),
    ("[1, 2]", r"base must be a file name or a list of them"),
])
def test_a_bad_base_is_one_line(tmp_path, base, message):
    (tmp_path / "loop.yaml").write_text("base: p.yaml\n")
    (tmp_path / "p.yaml").write_text(f"base: {base}\n")
    with pytest.raises(CordError, match=message) as err:
        load_config(tmp_path / "p.yaml")
    assert "\n" not in str(err.value)


def test_presets_are_composed_and_every_part_is_used():
    """Each model folder holds one part and one short file per method: the presets stay
    well under half the lines of the copies they replaced (3,099 lines in 60 files)."""
    parts = sorted((ROOT / "configs").rglob("_*.yaml"))
    assert parts
    used = {(p.parent / read_base).resolve() for p in CONFIG_FILES
            for read_base in _bases(p)}
    assert {p.resolve() for p in parts} <= used
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "configs").rglob("*.yaml"))
    assert lines < 3099 / 2


def _bases(path):
    import yaml

    base = (yaml.safe_load(path.read_text()) or {}).get("base") or []
    return [base] if isinstance(base, str) else base


# ------------------------------------------------------- presets (issue 11 item 5)

PRESET_DIRS = ["tiny", "mini", "qwen2-audio-7b", "qwen2.5-omni-7b", "qwen3-omni", "step-audio2-mini", "voxtral",
               "gemma3n"]


def _presets():
    root = ROOT / "configs"
    # _*.yaml: parts presets name in base:; reproduce.yaml: `cord reproduce`'s config (tests/reproduce/test_reproduce.py)
    found = sorted(p for d in PRESET_DIRS for p in (root / d).glob("*.yaml")
                   if not p.name.startswith("_") and p.name != "reproduce.yaml")
    # every folder of cord presets is covered (configs/accelerate holds accelerate's own files)
    assert {p.name for p in root.iterdir() if p.is_dir()} == {*PRESET_DIRS, "accelerate"}
    return found


def test_every_shipped_preset_loads_and_has_no_lora_dropout():
    from cord.config import load_config

    presets = _presets()
    assert len(presets) >= 20
    with_lora = 0
    for path in presets:
        cfg = load_config(path)
        if cfg.model.lora is not None:
            with_lora += 1
            assert cfg.model.lora.dropout == 0.0, path
    assert with_lora >= 14  # the 7B presets train LoRA adapters


def test_lora_dropout_with_an_on_policy_method_warns_at_validation():
    from cord.config import load_config
    from cord.types import METHODS

    on_policy = {name for name, spec in METHODS.items() if spec.seq or spec.token == "reverse_kl"}
    assert on_policy == {"opd", "opd_weighted", "grpo", "grpo_opd", "cord"}
    for method in METHODS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_config(None, [f"objective.method={method}", "model.lora.dropout=0.05"])
            load_config(None, [f"objective.method={method}", "model.lora.dropout=0"])
        hits = [w for w in caught if "no longer on-policy" in str(w.message)]
        assert len(hits) == (method in on_policy), method
        if hits:
            assert "model.lora.dropout=0.05" in str(hits[0].message) and repr(method) in str(hits[0].message)
