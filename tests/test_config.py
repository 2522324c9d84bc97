"""Typed configs: nearest-key errors, clear type errors, overrides, every preset loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from cord import CordError
from cord.config import CordConfig, dump_config, load_config

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
        ["train.lr=1e-5", "rollout.seq_n=8", "train.trainable=[projector,lm_head]", "model.lora.r=4"],
    )
    assert cfg.train.lr == 1e-5 and cfg.rollout.seq_n == 8
    assert cfg.train.trainable == ["projector", "lm_head"]
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


# every cord config (accelerate launch configs are accelerate's, not cord's)
CONFIG_FILES = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[str(p.relative_to(ROOT)) for p in CONFIG_FILES])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, CordConfig)
    # a preset's file name is its method
    assert cfg.objective.method == path.stem


def test_every_family_has_all_seven_methods():
    from cord.train.methods import METHODS

    for family in ("tiny", "qwen2-audio-7b", "qwen2.5-omni-7b"):
        names = {p.stem for p in (ROOT / "configs" / family).glob("*.yaml")}
        assert names == set(METHODS), family
