"""Logit soft cap (Gemma's ``final_logit_softcapping``) through the chunked head code and the
decode loop: float64 naive references (values and gradients), gradcheck, and ``softcap=None``
unchanged."""

from __future__ import annotations

import pytest
import torch

from cord.objectives import forward_kl_per_token, reverse_kl_per_token, token_logprobs

CAP = 2.0  # small next to the logits below, so the cap really bends them


def _capped(h, w, b, cap, temp=1.0):
    z = h @ w.T + (b if b is not None else 0)
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    return z / temp


def _naive(kind, hs, ws, bs, ht, wt, bt, ids, cap, temp):
    lp = torch.log_softmax(_capped(hs, ws, bs, cap, temp), -1)
    if kind == "logprob":
        return lp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    lq = torch.log_softmax(_capped(ht, wt, bt, cap, temp), -1)
    if kind == "reverse_kl":
        return (lp.exp() * (lp - lq)).sum(-1)
    return (lq.exp() * (lq - lp)).sum(-1)


def _ours(kind, hs, ws, bs, ht, wt, bt, ids, mask, cap, temp, chunk, hint=None):
    if kind == "logprob":
        return token_logprobs(hs, ws, ids, mask, bias=bs, temperature=temp, chunk_size=chunk,
                              softcap=cap, grad_hint=hint)
    fn = reverse_kl_per_token if kind == "reverse_kl" else forward_kl_per_token
    return fn(hs, ws, ht, wt, mask, student_bias=bs, teacher_bias=bt, temperature=temp, chunk_size=chunk,
              softcap=cap, grad_hint=hint)


def _data(dtype, seed=0, B=2, T=5, H=6, V=11):
    g = torch.Generator().manual_seed(seed)
    hs = (3 * torch.randn(B, T, H, generator=g, dtype=dtype)).requires_grad_()
    ws = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    bs = torch.randn(V, generator=g, dtype=dtype).requires_grad_()
    ht = 3 * torch.randn(B, T, H, generator=g, dtype=dtype)
    wt = torch.randn(V, H, generator=g, dtype=dtype)
    bt = torch.randn(V, generator=g, dtype=dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[-1, 3:] = False
    return hs, ws, bs, ht, wt, bt, ids, mask


KINDS = ("reverse_kl", "forward_kl", "logprob")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temp", [1.0, 0.7])
def test_softcap_values_and_grads_match_float64_naive(kind, temp):
    hs, ws, bs, ht, wt, bt, ids, mask = _data(torch.float64)
    # the cap must matter here, or this test would not see a missing cap
    assert (hs.detach() @ ws.detach().T).abs().max() > 3 * CAP
    gout = torch.randn(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = _naive(kind, hs, ws, bs, ht, wt, bt, ids, CAP, temp) * mask
    ref_g = torch.autograd.grad((ref * gout).sum(), (hs, ws, bs))
    for hint in (None, mask.double()):  # the hinted head gradient is exact too
        out = _ours(kind, hs, ws, bs, ht, wt, bt, ids, mask, CAP, temp, chunk=3, hint=hint)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        got = torch.autograd.grad((out * gout).sum(), (hs, ws, bs))
        for a, b in zip(got, ref_g, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    uncapped = _naive(kind, hs, ws, bs, ht, wt, bt, ids, None, temp) * mask
    assert (uncapped - ref).abs().max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_softcap_gradcheck(kind):
    hs, ws, bs, ht, wt, bt, ids, mask = _data(torch.float64, seed=3, B=1, T=3, H=3, V=5)

    def f(h, w, b):
        return _ours(kind, h, w, b, ht, wt, bt, ids, mask, CAP, 0.9, chunk=2)

    assert torch.autograd.gradcheck(f, (hs, ws, bs), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_softcap_float32_close_to_float64(kind):
    hs, ws, bs, ht, wt, bt, ids, mask = _data(torch.float64, seed=5)
    ref = _naive(kind, hs, ws, bs, ht, wt, bt, ids, CAP, 1.0) * mask
    f32 = [t.detach().float() if t.is_floating_point() else t for t in (hs, ws, bs, ht, wt, bt)]
    out = _ours(kind, *f32, ids, mask, CAP, 1.0, chunk=4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_softcap_none_is_bit_identical_to_default(kind):
    hs, ws, bs, ht, wt, bt, ids, mask = _data(torch.float32, seed=7)
    a = _ours(kind, hs, ws, bs, ht, wt, bt, ids, mask, None, 1.3, chunk=3)
    ga = torch.autograd.grad(a.sum(), (hs, ws, bs))
    if kind == "logprob":
        b = token_logprobs(hs, ws, ids, mask, bias=bs, temperature=1.3, chunk_size=3)
    else:
        fn = reverse_kl_per_token if kind == "reverse_kl" else forward_kl_per_token
        b = fn(hs, ws, ht, wt, mask, student_bias=bs, teacher_bias=bt, temperature=1.3, chunk_size=3)
    gb = torch.autograd.grad(b.sum(), (hs, ws, bs))
    assert torch.equal(a, b)
    for x, y in zip(ga, gb, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_softcap_rejects_bad_values(bad):
    hs, ws, bs, ht, wt, bt, ids, mask = _data(torch.float32)
    with pytest.raises(ValueError, match="softcap"):
        token_logprobs(hs, ws, ids, mask, softcap=bad)


class _CappedAdapter:
    """A minimal cached-decoding adapter over a fixed bigram table: hidden = onehot(token)."""

    def __init__(self, V=7, cap=None):
        g = torch.Generator().manual_seed(11)
        self.head = torch.nn.Linear(V, V, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(4 * torch.randn(V, V, generator=g))
        self.logit_softcap = cap
        self.eos_token_ids = [V - 1]
        self.pad_token_id = 0
        self.placeholder_token_ids = [1]
        self.V = V

    def lm_head(self):
        return self.head

    def prefill(self, prompts):
        from cord.rollout.decode import DecodeState

        last = prompts.input_ids[:, -1]
        state = DecodeState(None, prompts.attention_mask, torch.zeros(len(last), dtype=torch.long))
        return torch.nn.functional.one_hot(last, self.V).float(), state

    def decode(self, state, tok):
        return torch.nn.functional.one_hot(tok, self.V).float()


def test_decode_loop_samples_from_the_capped_distribution():
    from cord.types import PromptBatch
    from cord.rollout.engine import decode_loop

    adapter = _CappedAdapter(cap=CAP)
    prompts = PromptBatch(torch.tensor([[2], [3]]), torch.ones(2, 1, dtype=torch.long), "text")
    torch.manual_seed(0)
    ids, lp = decode_loop(adapter, prompts, n=3, temperature=1.0, top_p=1.0, max_new_tokens=4, greedy=False)
    # reference: the log-prob of each sampled token under softmax(cap(W onehot(prev)))
    w = adapter.head.weight.detach().double()
    prev = torch.tensor([2, 3]).repeat_interleave(3)
    done = torch.zeros(6, dtype=torch.bool)
    for t in range(ids.shape[1]):
        z = CAP * torch.tanh(w[:, prev].T / CAP)
        z[:, 1] = float("-inf")
        ref = torch.log_softmax(z, -1).gather(1, ids[:, t : t + 1]).squeeze(1)
        torch.testing.assert_close(lp[:, t].double()[~done], ref[~done], rtol=1e-5, atol=1e-5)
        done |= ids[:, t] == adapter.V - 1
        prev = ids[:, t]
