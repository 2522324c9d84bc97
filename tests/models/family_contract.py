"""Checks every audio family's adapter must pass, shared by the per-family test files
(tests/models/test_voxtral.py, tests/models/test_gemma3n.py, tests/models/test_qwen3_omni.py). Plain functions:
each family's file builds its adapter and examples and calls these from its own tests, and
keeps its family-specific tests to itself."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch

from cord.config import RolloutConfig
from cord.rollout.engine import make_engine

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["sft", "forward_kl", "opd", "opd_weighted", "grpo", "grpo_opd", "cord"]
FAST = ["model.name_or_path=tiny", "model.dtype=float32", "model.device=cpu", "data.train=builtin:tiny-arith",
        "data.limit=4", "train.batch_size=2", "train.grad_accum=1", "train.max_steps=2", "train.progress=false",
        "train.tensorboard=false", "train.bf16=false", "rollout.max_new_tokens=4", "rollout.seq_n=2"]


def _same(extra: dict) -> dict:
    return extra


def sharpen(adapter, attention: bool = True) -> None:
    """Scale the decoder's q/k projections (x12, when ``attention``) and the head (x8): at init
    a wrong position or a wrong token barely shows in the logits."""
    with torch.no_grad():
        if attention:
            for name, p in adapter.model.named_parameters():
                if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                    p.mul_(12.0)
        adapter.lm_head().weight.mul_(8.0)


def completions(n: int, seed: int = 0, low: int = 40, high: int = 250):
    """n completions of 7 ids in [low, high), ragged: 3, 5, 7 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (n, 7), generator=g)
    mask = torch.ones(n, 7, dtype=torch.bool)
    for i in range(n):
        mask[i, 3 + 2 * i :] = False
    return ids, mask


def check_batched_equals_one_by_one(adapter, exs, modality: str, ids, mask) -> None:
    """Completion hidden states of a batch equal each example's alone (fp32, 1e-5)."""
    make = adapter.audio_prompts if modality == "audio" else adapter.text_prompts
    with torch.no_grad():
        batched = adapter.completion_hidden(make(exs), ids, mask)
        for i in range(len(exs)):
            alone = adapter.completion_hidden(make(exs[i : i + 1]), ids[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(batched[i][mask[i]], alone[0][mask[i]], atol=1e-5, rtol=1e-5)


def check_completion_hidden_is_the_full_forward(adapter, prompts, ids, mask,
                                                model_inputs: Callable[[dict], dict] = _same,
                                                logits: Callable[[torch.Tensor], torch.Tensor] = lambda z: z) -> None:
    """The head (then ``logits``, e.g. a soft cap) over completion_hidden of one prompt equals the
    model's full forward at the first 3 completion positions."""
    with torch.no_grad():
        h = adapter.completion_hidden(prompts, ids, mask)
        full = adapter.model(
            input_ids=torch.cat([prompts.input_ids, ids], 1),
            attention_mask=torch.cat([prompts.attention_mask, mask.long()], 1),
            **model_inputs(prompts.extra),
        ).logits
    P = prompts.input_ids.shape[1]
    torch.testing.assert_close(logits(adapter.lm_head()(h))[0, :3], full[0, P - 1 : P + 2], atol=1e-4, rtol=1e-4)


def argmax_loop(adapter, prompts, steps: int, model_inputs: Callable[[dict], dict] = _same) -> list[list[int]]:
    """Greedy decoding by full forwards, no cache, placeholders never picked: the engines' reference."""
    out = []
    eos = set(adapter.eos_token_ids)
    for r in range(len(prompts)):
        one = prompts.select([r])
        ids, attn = one.input_ids, one.attention_mask
        got = []
        for _ in range(steps):
            with torch.no_grad():
                logits = adapter.model(input_ids=ids, attention_mask=attn, **model_inputs(one.extra)).logits[0, -1]
            logits[adapter.placeholder_token_ids] = float("-inf")
            tok = int(logits.argmax())
            got.append(tok)
            if tok in eos:
                break
            ids = torch.cat([ids, torch.tensor([[tok]])], 1)
            attn = torch.cat([attn, torch.ones(1, 1, dtype=attn.dtype)], 1)
        out.append(got)
    return out


def check_both_engines_equal_the_argmax_loop(adapter, prompts, steps: int,
                                             model_inputs: Callable[[dict], dict] = _same) -> None:
    """Greedy generation through the "hf" and "hf-generate" engines equals ``argmax_loop``, and
    the hf engine takes its prefill-once path (2 prompts per call, 3 prompts)."""
    ref = argmax_loop(adapter, prompts, steps, model_inputs)
    prefills = []
    adapter.prefill = lambda p, _f=type(adapter).prefill: prefills.append(len(p)) or _f(adapter, p)
    try:
        for name in ("hf", "hf-generate"):
            engine = make_engine(adapter, RolloutConfig(engine=name), batch_size=2)
            out = engine.generate(prompts, n=1, greedy=True, max_new_tokens=steps)
            assert [out.ids[r][out.mask[r]].tolist() for r in range(len(prompts))] == ref, name
    finally:
        del adapter.prefill
    assert prefills == [2, 1]


def check_save_and_reload(adapter, again, exs, ids, mask, same_text_prompts: bool = True) -> None:
    """``again`` (loaded from what ``adapter`` saved) gives identical audio-prompt hidden states
    (and, with ``same_text_prompts``, identical text prompts)."""
    with torch.no_grad():
        a = adapter.completion_hidden(adapter.audio_prompts(exs), ids, mask)
        b = again.completion_hidden(again.audio_prompts(exs), ids, mask)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    if same_text_prompts:
        assert again.text_prompts(exs).input_ids.tolist() == adapter.text_prompts(exs).input_ids.tolist()


def check_every_method_preset_runs_two_steps(preset_dir: str, tmp_path, capsys) -> None:
    """configs/<preset_dir>/<method>.yaml trains 2 finite, unskipped steps on the tiny model, each method."""
    from cord.cli import main

    for method in METHODS:
        out = tmp_path / method
        argv = ["train", "--config", str(ROOT / "configs" / preset_dir / f"{method}.yaml"),
                "--set", f"train.output_dir={out}"]
        for s in FAST:
            argv += ["--set", s]
        assert main(argv) == 0, capsys.readouterr().err
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2], method
        assert all(not r["skipped"] and math.isfinite(r["loss"]) for r in rows), method
