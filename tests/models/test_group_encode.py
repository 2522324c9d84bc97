"""A GRPO group's audio is encoded once: ``PromptBatch.repeat_interleave(n)`` marks the rows of
a group, and the Qwen adapters run the audio encoder (and projector) on one row per group,
with the same hidden states and the same gradients as encoding every row."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cord.config import ModelConfig
from cord.models import load_adapter
from tests.conftest import make_examples

GROUPED = ["qwen2-audio", "qwen2.5-omni", "qwen3-omni"]


@pytest.fixture(scope="module", params=GROUPED)
def adapter(request):
    return load_adapter(ModelConfig(family=request.param, name_or_path="tiny", dtype="float32", device="cpu"))


def _completions(rows: int, t: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, min(vocab, 200), (rows, t), generator=g)
    lengths = torch.randint(1, t + 1, (rows,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    return ids, mask


def _count_encoder_rows(adapter):
    """Hook on the audio tower: how many calls, and how many audio rows (or frames) went in."""
    tower = adapter._generation_model().model.audio_tower
    seen = {"calls": 0, "rows": 0}

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["input_features"]
        seen["calls"] += 1
        seen["rows"] += x.shape[0] if x.dim() == 3 else x.shape[-1]  # Omni: (mel, frames of all rows)
        return None

    return seen, tower.register_forward_pre_hook(hook, with_kwargs=True)


def test_repeat_interleave_marks_the_group_and_select_forgets_it(adapter):
    batch = adapter.audio_prompts(make_examples(2))
    rep = batch.repeat_interleave(3)
    assert rep.group == 3 and batch.group == 1
    assert rep.repeat_interleave(2).group == 6
    assert rep.to("cpu").group == 3
    assert rep.select([0, 1]).group == 1


def test_group_is_encoded_once_with_the_same_hidden_states_and_gradients(adapter):
    torch.manual_seed(0)
    n = 3
    rep = adapter.audio_prompts(make_examples(2)).repeat_interleave(n)
    old = dataclasses.replace(rep, group=1)  # the plain path: every row encoded
    vocab = adapter.lm_head().weight.shape[0]
    ids, mask = _completions(len(rep), 5, vocab)
    model = adapter.model
    model.train(False)
    for p in model.parameters():
        p.requires_grad_(True)
    probe = torch.randn(len(rep), ids.shape[1], adapter.lm_head().weight.shape[1])

    def run(batch):
        model.zero_grad(set_to_none=True)
        seen, handle = _count_encoder_rows(adapter)
        try:
            h = adapter.completion_hidden(batch, ids, mask)
        finally:
            handle.remove()
        (h * probe * mask[..., None]).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()
                 if p.grad is not None and ("audio_tower" in k or "projector" in k)}
        return h.detach(), grads, seen

    h_new, g_new, seen_new = run(rep)
    h_old, g_old, seen_old = run(old)
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)

    assert seen_new["calls"] == 1 and seen_old["calls"] == 1
    assert seen_old["rows"] == n * seen_new["rows"]  # each distinct audio went in once
    assert (h_new - h_old).abs().max().item() <= 1e-6
    assert g_old and set(g_new) == set(g_old)
    assert any(k.endswith("weight") and "audio_tower" in k for k in g_old)
    for k in g_old:
        scale = g_old[k].abs().max().item() + 1e-12
        assert (g_new[k] - g_old[k]).abs().max().item() <= 1e-5 * max(1.0, scale), k


def test_group_rows_that_differ_are_rejected(adapter):
    from cord import CordError

    batch = adapter.audio_prompts(make_examples(3))
    bad = dataclasses.replace(batch, group=2)  # 3 rows are not groups of 2
    ids, mask = _completions(3, 4, adapter.lm_head().weight.shape[0])
    with pytest.raises(CordError, match="groups of 2"):
        adapter.completion_hidden(bad, ids, mask)


def test_text_prompts_and_other_families_ignore_the_group():
    """A text batch (no audio) and a family without the grouped path take the plain path."""
    for family in ("qwen2-audio", "voxtral"):
        ad = load_adapter(ModelConfig(family=family, name_or_path="tiny", dtype="float32", device="cpu"))
        ex = make_examples(2)
        for batch in (ad.text_prompts(ex), ad.audio_prompts(ex)):
            rep = batch.repeat_interleave(2)
            ids, mask = _completions(len(rep), 4, ad.lm_head().weight.shape[0])
            with torch.no_grad():
                a = ad.completion_hidden(rep, ids, mask)
                b = ad.completion_hidden(dataclasses.replace(rep, group=1), ids, mask)
            assert (a - b).abs().max().item() <= 1e-6
