"""Second, independent implementations of the chunked objectives.

1. ``torch.nn.functional`` on full float64 logits (always runs): ``F.kl_div`` for both KL
   directions, ``F.cross_entropy`` for the token log-probabilities, values and gradients;
   plus ``gradcheck`` of the forward KL and the log-probabilities (the reverse KL's is in
   test_objectives.py).
2. Liger-Kernel's chunked fused-linear JSD / distillation loss (pure PyTorch, runs on CPU
   with ``compiled=False``; installed by the ``dev`` extra on Linux). With beta=1 its
   generalized JSD is KL(student || teacher), with beta=0 KL(teacher || student), each
   summed over the vocabulary and positions and divided by the number of non-ignored
   positions; its hard loss (weight_hard_loss=1) is the token-mean NLL. Skipped, with the
   reason, where liger_kernel is not installed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cord.objectives import forward_kl_per_token, reverse_kl_per_token, token_logprobs

KL_FNS = {"reverse": reverse_kl_per_token, "forward": forward_kl_per_token}


def inputs(seed, n=40, h=16, v=97, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (scale * torch.randn(*s, generator=g, dtype=torch.float64)).to(dtype)

    hs = r(n, h).requires_grad_(True)
    ws = r(v, h, scale=0.5).requires_grad_(True)
    bs = r(v, scale=0.3).requires_grad_(True)
    ht, wt, bt = r(n, h), r(v, h, scale=0.5), r(v, scale=0.3)
    mask = torch.rand(n, generator=g) > 0.25
    return hs, ws, bs, ht, wt, bt, mask


# ---------------------------------------------------------------- torch.nn.functional, float64


@pytest.mark.parametrize("kind", ["reverse", "forward"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_kl_matches_functional_kl_div(kind, temperature):
    hs, ws, bs, ht, wt, bt, mask = inputs(seed=1)
    ours = KL_FNS[kind](hs, ws, ht, wt, mask, student_bias=bs, teacher_bias=bt, temperature=temperature,
                        chunk_size=6, grad_hint=torch.ones(mask.shape))
    ls = F.log_softmax(F.linear(hs.double(), ws.double(), bs.double()) / temperature, -1)
    lt = F.log_softmax(F.linear(ht.double(), wt.double(), bt.double()) / temperature, -1)
    # F.kl_div(input, target) = sum target_p (log target - input): target is the first argument of KL
    first, second = (ls, lt) if kind == "reverse" else (lt, ls)
    theirs = F.kl_div(second, first, reduction="none", log_target=True).sum(-1) * mask
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)
    g_out = torch.randn(mask.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = torch.autograd.grad(ours, (hs, ws, bs), g_out.float())
    want = torch.autograd.grad(theirs, (hs, ws, bs), g_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_token_logprobs_match_functional_cross_entropy(temperature):
    hs, ws, bs, _, _, _, mask = inputs(seed=3)
    ids = torch.randint(0, ws.shape[0], mask.shape, generator=torch.Generator().manual_seed(4))
    ours = token_logprobs(hs, ws, ids, mask, bias=bs, temperature=temperature, chunk_size=5)
    z = F.linear(hs.double(), ws.double(), bs.double()) / temperature
    theirs = -F.cross_entropy(z, ids, reduction="none") * mask
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)
    g_out = torch.randn(mask.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(ours, (hs, ws, bs), g_out.float()),
                    torch.autograd.grad(theirs, (hs, ws, bs), g_out)):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


def test_forward_kl_and_logprobs_float64_gradcheck():
    hs, ws, bs, ht, wt, bt, mask = inputs(seed=6, n=5, h=3, v=7, dtype=torch.float64)
    ids = torch.randint(0, 7, (5,), generator=torch.Generator().manual_seed(7))

    def kl(h, w, b):
        return forward_kl_per_token(h, w, ht, wt, mask, student_bias=b, teacher_bias=bt, temperature=0.9,
                                    chunk_size=2)

    def lp(h, w, b):
        return token_logprobs(h, w, ids, mask, bias=b, temperature=1.2, chunk_size=2)

    assert torch.autograd.gradcheck(kl, (hs, ws, bs))
    assert torch.autograd.gradcheck(lp, (hs, ws, bs))


# ---------------------------------------------------------------- Liger-Kernel (optional)


@pytest.fixture(scope="module")
def liger():
    return pytest.importorskip(
        "liger_kernel.chunked_loss",
        reason="liger-kernel is not installed (bash scripts/setup.sh --dev installs it on Linux, or pip install --no-deps liger-kernel)",
    )


@pytest.mark.optional
@pytest.mark.parametrize("kind,beta", [("reverse", 1.0), ("forward", 0.0)])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_token_mean_kl_matches_liger(liger, kind, beta, temperature):
    hs, ws, bs, ht, wt, bt, mask = inputs(seed=0)
    n = mask.shape[0]
    labels = torch.where(mask, torch.zeros(n, dtype=torch.long), torch.full((n,), -100))
    ours = KL_FNS[kind](hs, ws, ht, wt, mask, student_bias=bs, teacher_bias=bt,
                        temperature=temperature, chunk_size=7).sum() / mask.sum()
    loss_fn = liger.LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta,
                                            temperature=temperature, compiled=False, chunk_size=8)
    theirs = loss_fn(hs, ws, ht, wt, labels, bs, bt)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, (hs, ws, bs)), torch.autograd.grad(theirs, (hs, ws, bs))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.optional
def test_token_mean_nll_matches_liger_hard_loss(liger):
    hs, ws, bs, ht, wt, bt, mask = inputs(seed=8)
    ids = torch.randint(0, ws.shape[0], mask.shape, generator=torch.Generator().manual_seed(9))
    ours = -token_logprobs(hs, ws, ids, mask, bias=bs, chunk_size=7).sum() / mask.sum()
    labels = torch.where(mask, ids, torch.full_like(ids, -100))
    loss_fn = liger.LigerFusedLinearJSDLoss(weight_hard_loss=1.0, weight_soft_loss=0.0, compiled=False, chunk_size=8)
    theirs = loss_fn(hs, ws, ht, wt, labels, bs, bt)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, (hs, ws, bs)), torch.autograd.grad(theirs, (hs, ws, bs))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
