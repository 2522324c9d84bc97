"""cord.objectives against independent straightforward references (float64, full logits)."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cord.objectives import (
    cord_loss,
    forward_kl_per_token,
    group_advantages,
    grpo_surrogate,
    position_decay_weights,
    reverse_kl_per_token,
    sampled_token_logratio,
    token_logprobs,
    token_weights,
    topk_kl_mask,
    weighted_token_loss,
)

B, T, H, V = 3, 7, 6, 37


# ---------------------------------------------------------------- references (full logits)

def ref_kl(kind, hs, ws, bs, ht, wt, bt, mask, temperature):
    """Straightforward float64 KL per position from materialised logits."""
    zs = (hs.double() @ ws.double().t() + (0 if bs is None else bs.double())) / temperature
    zt = (ht.double() @ wt.double().t() + (0 if bt is None else bt.double())) / temperature
    lp, lq = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
    if kind == "reverse":
        d = (lp.exp() * (lp - lq)).sum(-1)
    else:
        d = (lq.exp() * (lq - lp)).sum(-1)
    return d * mask.double() if mask is not None else d


def make_inputs(seed, dtype=torch.float32, bias=True, shape=(B, T)):
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    hs = rnd(*shape, H).requires_grad_(True)
    ws = rnd(V, H, scale=0.7).requires_grad_(True)
    bs = rnd(V, scale=0.5).requires_grad_(True) if bias else None
    # teacher: different weights and hidden states; marked requires_grad to prove it gets none
    ht = rnd(*shape, H).requires_grad_(True)
    wt = rnd(V, H, scale=0.7).requires_grad_(True)
    bt = rnd(V, scale=0.5).requires_grad_(True) if bias else None
    mask = torch.ones(shape, dtype=torch.bool)
    if len(shape) == 2:
        mask[1, 4:] = False  # right padding
        mask[2, 1:] = False  # a one-token completion
    else:
        mask[::3] = False
    return hs, ws, bs, ht, wt, bt, mask


def leaf_grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True)


KL_FNS = {"reverse": reverse_kl_per_token, "forward": forward_kl_per_token}


@contextlib.contextmanager
def patch_vocab_block(elems):
    """Smaller vocabulary blocks, so a small test head spans several of them."""
    from cord.objectives import divergence

    old, divergence._VOCAB_BLOCK_ELEMS = divergence._VOCAB_BLOCK_ELEMS, elems
    try:
        yield
    finally:
        divergence._VOCAB_BLOCK_ELEMS = old


# ---------------------------------------------------------------- chunked KL

@pytest.mark.parametrize("kind", ["reverse", "forward"])
@pytest.mark.parametrize("chunk_size,temperature", [(1, 1.0), (4, 0.7), (5, 1.0), (7, 1.6), (512, 1.0)])
def test_kl_values_and_grads_match_reference(kind, chunk_size, temperature):
    hs, ws, bs, ht, wt, bt, mask = make_inputs(seed=chunk_size)  # 12 valid positions: 5, 7 and 512 do not divide it
    out = KL_FNS[kind](hs, ws, ht, wt, mask, student_bias=bs, teacher_bias=bt,
                       temperature=temperature, chunk_size=chunk_size)
    ref = ref_kl(kind, hs, ws, bs, ht, wt, bt, mask, temperature)
    assert out.shape == (B, T) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert (out[~mask] == 0).all()

    g_out = torch.randn(B, T, dtype=torch.float64)
    got = leaf_grads(out, (hs, ws, bs), g_out.float())
    want = leaf_grads(ref, (hs, ws, bs), g_out)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)
    # the teacher is a constant: no gradient path reaches it
    for t in (ht, wt, bt):
        assert torch.autograd.grad(out.sum(), t, allow_unused=True)[0] is None


@pytest.mark.parametrize("kind", ["reverse", "forward"])
@pytest.mark.parametrize("hint", ["ones", "position", "random", "zeros", "exact_cord"])
def test_grad_hint_never_changes_the_gradient(kind, hint):
    hs, ws, bs, ht, wt, bt, mask = make_inputs(seed=11, dtype=torch.float64)
    ref = ref_kl(kind, hs, ws, bs, ht, wt, bt, mask, 1.3)
    w = token_weights(ref.detach(), mask, alpha=2.0, top_k=2, beta=2.0)
    hints = {
        "ones": torch.ones(B, T, dtype=torch.float64),
        "position": position_decay_weights(mask, 2.0),
        "random": torch.rand(B, T, dtype=torch.float64),
        "zeros": torch.zeros(B, T),
        "exact_cord": w / mask.sum(),
    }
    out = KL_FNS[kind](hs, ws, ht, wt, mask, student_bias=bs, teacher_bias=bt, temperature=1.3,
                       chunk_size=3, grad_hint=hints[hint])
    loss, loss_ref = (w * out).sum() / mask.sum(), (w * ref).sum() / mask.sum()
    got = torch.autograd.grad(loss, (hs, ws, bs))
    want = torch.autograd.grad(loss_ref, (hs, ws, bs))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_second_backward_is_exact_without_hint_and_refused_with_hint():
    hs, ws, bs, ht, wt, bt, mask = make_inputs(seed=12, dtype=torch.float64)
    out = reverse_kl_per_token(hs, ws, ht, wt, mask, chunk_size=5)
    first = torch.autograd.grad(out.sum(), (hs, ws), retain_graph=True)
    second = torch.autograd.grad(out.sum(), (hs, ws))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    out = reverse_kl_per_token(hs, ws, ht, wt, mask, grad_hint=torch.ones(B, T))
    torch.autograd.grad(out.sum(), ws, retain_graph=True)
    with pytest.raises(RuntimeError, match="grad_hint=None"):
        torch.autograd.grad(out.sum(), ws)


def test_kl_float64_gradcheck():
    g = torch.Generator().manual_seed(3)
    hs, ht = torch.randn(2, 3, 3, generator=g, dtype=torch.float64).requires_grad_(True), torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    ws, wt = torch.randn(7, 3, generator=g, dtype=torch.float64).requires_grad_(True), torch.randn(7, 3, generator=g, dtype=torch.float64)
    bs, bt = torch.randn(7, generator=g, dtype=torch.float64).requires_grad_(True), torch.randn(7, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)

    def f(h, w, b):
        return reverse_kl_per_token(h, w, ht, wt, mask, student_bias=b, teacher_bias=bt,
                                    temperature=0.9, chunk_size=2)

    assert torch.autograd.gradcheck(f, (hs, ws, bs))


def test_kl_flat_positions_and_frozen_head():
    hs, ws, bs, ht, wt, bt, mask = make_inputs(seed=4, bias=False, shape=(13,))
    ws.requires_grad_(False)  # the LoRA case: lm_head frozen, gradients to hidden states only
    out = reverse_kl_per_token(hs, ws, ht, wt, mask, chunk_size=4)
    ref = ref_kl("reverse", hs, ws, None, ht, wt, None, mask, 1.0)
    assert out.shape == (13,)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    (gh,) = torch.autograd.grad(out.sum(), hs)
    (gh_ref,) = torch.autograd.grad(ref.sum(), hs)
    torch.testing.assert_close(gh.double(), gh_ref.double(), rtol=1e-4, atol=1e-6)
    assert (gh[~mask] == 0).all()


def test_kl_same_head_for_student_and_teacher():
    """Teacher = the same lm_head tensor (adapter disabled): gradient only through the student side."""
    hs, ws, bs, ht, _, _, mask = make_inputs(seed=5, dtype=torch.float64, bias=False)
    out = reverse_kl_per_token(hs, ws, ht, ws, mask, chunk_size=5)
    ref = ref_kl("reverse", hs, ws, None, ht, ws.detach(), None, mask, 1.0)
    torch.testing.assert_close(out, ref)
    got = torch.autograd.grad(out.sum(), (hs, ws))
    want = torch.autograd.grad(ref.sum(), (hs, ws))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_kl_identical_sides_is_zero_and_all_masked_is_zero():
    hs, ws, bs, _, _, _, mask = make_inputs(seed=6, dtype=torch.float64)
    out = reverse_kl_per_token(hs, ws, hs, ws, mask, student_bias=bs, teacher_bias=bs)
    torch.testing.assert_close(out, torch.zeros(B, T, dtype=torch.float64), atol=1e-12, rtol=0)
    none = torch.zeros(B, T, dtype=torch.bool)
    out = reverse_kl_per_token(hs, ws, hs.detach() + 1, ws, none, student_bias=bs)
    assert (out == 0).all()
    out.sum().backward()
    assert (hs.grad == 0).all() and (ws.grad == 0).all() and (bs.grad == 0).all()


def bf16_case(seed, n=48, hdim=32, vocab=1500, noise=0.2):
    """bf16 student/teacher (hidden, head, bias) with logits of a few units (std ~4, as in
    real LMs), plus float64 leaf copies holding exactly the same (bf16) values."""
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return torch.randn(*s, generator=g, dtype=torch.float64) * scale

    hs, ws, bs = r(n, hdim), r(vocab, hdim, scale=0.7), r(vocab, scale=0.5)
    ht, wt, bt = hs + noise * r(n, hdim), ws + noise * r(vocab, hdim, scale=0.7), bs + noise * r(vocab, scale=0.5)
    low = [x.bfloat16() for x in (hs, ws, bs, ht, wt, bt)]
    exact = [x.double() for x in low]  # the bf16 values, exactly, in float64
    for x in low[:3] + exact[:3]:
        x.requires_grad_(True)
    return low, exact


def rel_err(a, b):
    return float((a.double() - b).norm() / b.norm())


# Precision of bf16 inputs, measured against float64 on the same bf16 values (the case
# below: logits std ~4). Values: the logits are accumulated in fp32 (exact products of bf16
# numbers), so the per-token error is fp32 softmax rounding, ~1e-6; when each chunk's
# logits were rounded to bf16 before the upcast it was 6e-3 to 4e-2 nats. Gradients come
# back in bf16, so their floor is bf16 rounding of the exact gradient (relative error
# 1.7e-3 here); rounded logits put 3e-2 to 1e-1 into them.
BF16_VALUE_ATOL = 2e-5
BF16_GRAD_REL = 2.5e-3


@pytest.mark.parametrize("kind", ["reverse", "forward", "logprob"])
@pytest.mark.parametrize("hint", [False, True])
def test_bf16_inputs_match_float64_reference_to_fp32_accuracy(kind, hint):
    (hs, ws, bs, ht, wt, bt), (hs64, ws64, bs64, ht64, wt64, bt64) = bf16_case(seed=7)
    n, temperature = hs.shape[0], 0.8
    grad_hint = torch.ones(n) if hint else None  # with the hint, the head gradient comes from the forward
    if kind == "logprob":
        ids = torch.randint(0, ws.shape[0], (n,), generator=torch.Generator().manual_seed(1))
        with patch_vocab_block(4096):  # 128-row blocks: the head is upcast in 12 pieces
            out = token_logprobs(hs, ws, ids, bias=bs, temperature=temperature, chunk_size=16, grad_hint=grad_hint)
        z = (hs64 @ ws64.t() + bs64) / temperature
        ref = torch.log_softmax(z, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    else:
        with patch_vocab_block(4096):
            out = KL_FNS[kind](hs, ws, ht, wt, student_bias=bs, teacher_bias=bt, temperature=temperature,
                               chunk_size=16, grad_hint=grad_hint)
        ref = ref_kl(kind, hs64, ws64, bs64, ht64, wt64, bt64, None, temperature)
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < BF16_VALUE_ATOL
    g_out = torch.rand(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    got = torch.autograd.grad(out, (hs, ws, bs), g_out.float())
    want = torch.autograd.grad(ref, (hs64, ws64, bs64), g_out)
    for a, b in zip(got, want):
        assert a.dtype == torch.bfloat16  # gradients in each input's dtype
        assert rel_err(a, b) < BF16_GRAD_REL


def test_mixed_precision_fp32_hidden_with_bf16_head():
    """fp32 hidden states through a frozen bf16 head (the LoRA case): fp32-accurate values
    and hidden-state gradients (in fp32), against float64."""
    (_, ws, _, _, wt, _), (hs64, ws64, _, ht64, wt64, _) = bf16_case(seed=8)
    hs = hs64.detach().float().requires_grad_(True)
    out = reverse_kl_per_token(hs, ws, ht64.float(), wt, chunk_size=16)
    ref = ref_kl("reverse", hs64, ws64, None, ht64, wt64, None, None, 1.0)
    assert (out.double() - ref).abs().max() < BF16_VALUE_ATOL
    (gh,) = torch.autograd.grad(out.sum(), hs)
    (gh_ref,) = torch.autograd.grad(ref.sum(), hs64)
    assert gh.dtype == torch.float32 and rel_err(gh, gh_ref) < 1e-5


def test_autocast_does_not_round_the_head_products():
    """Under autocast the head products would run in bf16 (a 1e-2 nat error here); the
    chunked functions keep them in fp32."""
    _, (hs64, ws64, bs64, ht64, wt64, bt64) = bf16_case(seed=9)
    args = (hs64.detach().float(), ws64.detach().float(), ht64.float(), wt64.float())
    plain = reverse_kl_per_token(*args, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = reverse_kl_per_token(*args, chunk_size=16)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, plain, rtol=1e-6, atol=1e-6)


class BigBuffers(TorchDispatchMode):
    """Records every float tensor of >= ``limit`` elements, 4+ bytes each, that an aten op
    returns, in forward and backward, except views of the inputs ``known`` (by storage).
    (A dispatch mode, because autograd carries it into backward, where a function mode is
    not active; its first use imports torch._dynamo, a few seconds once per session.)"""

    def __init__(self, limit, known):
        super().__init__()
        self.limit = limit
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.found = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.element_size() >= 4
                    and t.numel() >= self.limit):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self.known:
                    self.found.setdefault(ptr, (str(func), t.dtype, tuple(t.shape)))
        return out


@pytest.mark.parametrize("kind", ["reverse", "forward", "logprob"])
@pytest.mark.parametrize("hidden_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("trainable_head", [False, True])
def test_no_full_fp32_copy_of_a_bf16_head(kind, hidden_dtype, trainable_head):
    """A bf16 head is upcast one vocabulary block at a time: no (V, H) fp32 tensor exists in
    forward or backward, except the head's own gradient accumulator when it is trained."""
    n, hdim, vocab = 40, 64, 512  # V * H = 32768 > n * V: a head-sized buffer stands out
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(n, hdim, generator=g).to(hidden_dtype).requires_grad_(True)
    ws = (0.3 * torch.randn(vocab, hdim, generator=g)).bfloat16().requires_grad_(trainable_head)
    ht, wt = torch.randn(n, hdim, generator=g).to(hidden_dtype), (0.3 * torch.randn(vocab, hdim, generator=g)).bfloat16()
    ids = torch.randint(0, vocab, (n,), generator=g)
    with BigBuffers(vocab * hdim, known=(hs, ws, ht, wt)) as mode, patch_vocab_block(4096):
        if kind == "logprob":
            out = token_logprobs(hs, ws, ids, chunk_size=8)
        else:
            out = KL_FNS[kind](hs, ws, ht, wt, chunk_size=8)
        out.sum().backward()
    big = list(mode.found.values())
    if trainable_head:  # the fp32 gradient accumulator, then its bf16 copy (not counted: 2 bytes)
        assert len(big) == 1 and big[0][2] == (vocab, hdim), big
    else:
        assert big == []
    # and the mode does see a head copy when one is made
    with BigBuffers(vocab * hdim, known=(ws,)) as mode:
        ws.detach().float()
    assert len(mode.found) == 1


def test_kl_no_grad_mode_builds_no_graph():
    hs, ws, bs, ht, wt, bt, mask = make_inputs(seed=8)
    with torch.no_grad():
        out = reverse_kl_per_token(hs, ws, ht, wt, mask, student_bias=bs, teacher_bias=bt)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out.double(), ref_kl("reverse", hs, ws, bs, ht, wt, bt, mask, 1.0),
                               rtol=1e-5, atol=1e-6)


def test_kl_rejects_bad_shapes_with_clear_errors():
    hs, ws, bs, ht, wt, bt, mask = make_inputs(seed=9)
    with pytest.raises(ValueError, match="mask shape"):
        reverse_kl_per_token(hs, ws, ht, wt, mask[:, :3])
    with pytest.raises(ValueError, match="teacher_hidden"):
        reverse_kl_per_token(hs, ws, ht[:, :3], wt, mask)
    with pytest.raises(ValueError, match="student_weight"):
        reverse_kl_per_token(hs, ws[:, :3], ht, wt, mask)
    with pytest.raises(ValueError, match="temperature"):
        reverse_kl_per_token(hs, ws, ht, wt, mask, temperature=0.0)


# ---------------------------------------------------------------- memory: what autograd keeps

def saved_numels(fn):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sizes


@pytest.mark.parametrize("trainable_head", [False, True])
@pytest.mark.parametrize("hint", [False, True])
def test_chunked_kl_saves_no_positions_by_vocab_tensor(trainable_head, hint):
    n, hdim, vocab = 120, 4, 50  # n * vocab = 6000 > vocab * hdim, so an (N, V) tensor stands out
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(n, hdim, generator=g, requires_grad=True)
    ws = torch.randn(vocab, hdim, generator=g, requires_grad=trainable_head)
    ht, wt = torch.randn(n, hdim, generator=g), torch.randn(vocab, hdim, generator=g)
    grad_hint = torch.ones(n) if hint else None

    out, sizes = saved_numels(lambda: reverse_kl_per_token(hs, ws, ht, wt, chunk_size=16, grad_hint=grad_hint))
    assert sizes and max(sizes) < n * vocab
    out.sum().backward()  # and the graph it kept is enough for backward
    # the naive formula, for contrast, keeps (N, V) tensors: the hook does see them
    _, naive = saved_numels(lambda: ref_kl("reverse", hs, ws, None, ht, wt, None, None, 1.0))
    assert max(naive) >= n * vocab


# ---------------------------------------------------------------- token log-probs

@pytest.mark.parametrize("chunk_size,temperature,hint", [(1, 1.0, False), (4, 0.8, True), (64, 1.0, False)])
def test_token_logprobs_match_reference(chunk_size, temperature, hint):
    hs, ws, bs, _, _, _, mask = make_inputs(seed=20 + chunk_size)
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    out = token_logprobs(hs, ws, ids, mask, bias=bs, temperature=temperature, chunk_size=chunk_size,
                         grad_hint=torch.ones(B, T) if hint else None)
    z = (hs.double() @ ws.double().t() + bs.double()) / temperature
    ref = torch.log_softmax(z, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    g_out = torch.randn(B, T, dtype=torch.float64)
    for a, b in zip(leaf_grads(out, (hs, ws, bs), g_out.float()), leaf_grads(ref, (hs, ws, bs), g_out)):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- sampled-token estimator

def test_sampled_token_logratio_is_detached_masked_and_unbiased_on_policy():
    g = torch.Generator().manual_seed(0)
    ps = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), -1)
    pt = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), -1)
    y = torch.multinomial(ps, 200_000, replacement=True, generator=g)
    ls = ps.log()[y].requires_grad_(True)
    k1 = sampled_token_logratio(ls.view(1, -1), pt.log()[y].view(1, -1))
    assert not k1.requires_grad
    kl = float((ps * (ps.log() - pt.log())).sum())
    assert abs(float(k1.mean()) - kl) < 0.02
    m = torch.tensor([[True, False]])
    assert sampled_token_logratio(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-3.0, -1.0]]), m).tolist() == [[2.0, 0.0]]


# ---------------------------------------------------------------- token weights

def test_token_weights_hand_checked():
    kl = torch.tensor([[0.1, 0.5, 0.3, 0.5, 0.2], [0.3, 0.3, 0.3, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    w = token_weights(kl, mask, alpha=2.0, top_k=2, beta=2.0)
    # row 0: w_pos = 2, 1.75, 1.5, 1.25, 1; top-2 = the two 0.5s (positions 1, 3)
    # row 1: 3 valid, w_pos = 2, 1.5, 1; all-equal KL -> the earliest two; padding -> 0
    want = torch.tensor([[2.0, 3.5, 1.5, 2.5, 1.0], [4.0, 3.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(w, want)


def test_token_weights_edge_cases():
    kl = torch.tensor([[0.2, 0.1, 0.3, 0.0], [5.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    w = token_weights(kl, mask, alpha=3.0, top_k=20, beta=2.0)
    assert not w.requires_grad and w.grad_fn is None
    # T < K: every valid token boosted; T = 1: beta (times alpha, it is in the top-K)
    torch.testing.assert_close(w[0], torch.tensor([6.0, 4.5, 3.0, 0.0]))
    torch.testing.assert_close(w[1], torch.tensor([6.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(w[2], 3.0 * torch.tensor([2.0, 5 / 3, 4 / 3, 1.0]))
    # ties with K < T: earliest positions win
    top = topk_kl_mask(torch.ones(1, 6), None, 2)
    assert top.tolist() == [[True, True, False, False, False, False]]
    # alpha = beta = 1: uniform OPD weights
    assert token_weights(kl, mask, alpha=1.0, top_k=2, beta=1.0).tolist() == mask.float().tolist()


def test_position_weights_rank_among_valid_positions():
    mask = torch.tensor([[0, 1, 0, 1, 1]], dtype=torch.bool)  # a non-prefix mask
    torch.testing.assert_close(position_decay_weights(mask, 3.0), torch.tensor([[0.0, 3.0, 0.0, 2.0, 1.0]]))


# ---------------------------------------------------------------- GRPO

def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, 4)
    torch.testing.assert_close(a, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    s = group_advantages(r, 4, scale_std=True)
    std = float(np.std([1, 0, 0, 1], ddof=1))
    torch.testing.assert_close(s[:4], a[:4] / (std + 1e-6))
    assert (s[4:] == 0).all()
    with pytest.raises(ValueError):
        group_advantages(r, 3)


def test_equal_rewards_give_zero_gradient():
    logp = torch.randn(4, 5, requires_grad=True)
    adv = group_advantages(torch.ones(4), 4)
    loss = grpo_surrogate(logp, adv, torch.ones(4, 5, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == 0.0 and (logp.grad == 0).all()


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "sum_norm"])
def test_surrogate_gradient_is_reinforce_on_a_toy_policy(aggregation):
    """Context-free softmax policy over 5 tokens; 4 sampled rollouts of different lengths."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    lengths = [3, 1, 4, 2]
    tmax = max(lengths)
    ys = torch.multinomial(torch.softmax(theta.detach(), -1), 4 * tmax, replacement=True, generator=g).view(4, tmax)
    mask = torch.arange(tmax).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    adv = group_advantages(rewards, 4)
    logp = torch.log_softmax(theta, -1)[ys]
    loss = grpo_surrogate(logp, adv, mask, aggregation=aggregation)
    torch.testing.assert_close(loss.detach().double(), {  # value -A, aggregated
        "token_mean": -(adv.double() * torch.tensor(lengths)).sum() / sum(lengths),
        "seq_mean": -adv.double().mean(),
        "sum_norm": -(adv.double() * torch.tensor(lengths)).sum() / (4 * tmax),
    }[aggregation])
    (grad,) = torch.autograd.grad(loss, theta)

    # analytic REINFORCE: -sum_i A_i sum_t (onehot(y_it) - pi) / normaliser
    pi = torch.softmax(theta.detach(), -1).numpy()
    want = np.zeros(5)
    for i, n_i in enumerate(lengths):
        glogp = sum(np.eye(5)[int(ys[i, t])] - pi for t in range(n_i))
        scale = {"token_mean": 1 / sum(lengths), "seq_mean": 1 / (4 * n_i), "sum_norm": 1 / (4 * tmax)}[aggregation]
        want -= float(adv[i]) * glogp * scale
    np.testing.assert_allclose(grad.numpy(), want, rtol=1e-10, atol=1e-12)


def test_ppo_clip_zeroes_gradient_on_the_clipped_side():
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    # ratios exp(logp - old): 1.5, 1.0, 0.5 on both rows
    old = -torch.log(torch.tensor([[1.5, 1.0, 0.5], [1.5, 1.0, 0.5]], dtype=torch.float64))
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss = grpo_surrogate(logp, adv, mask, old_logprobs=old, clip_eps=0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    # A > 0: ratio 1.5 > 1.2 clipped -> 0; A < 0: ratio 0.5 < 0.8 clipped -> 0; others -A*ratio/6
    want = torch.tensor([[0.0, -1.0 / 6, -0.5 / 6], [1.5 / 6, 1.0 / 6, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, want)
    value = -(1.2 + 1.0 + 0.5 - 1.5 - 1.0 - 0.8) / 6
    assert abs(float(loss.detach()) - value) < 1e-12


# ---------------------------------------------------------------- combined loss

def test_cord_loss_hand_computed():
    kl = torch.tensor([[0.2, 0.4, 0.1], [0.3, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    # row 0: w_pos 3, 2, 1; top-1 = position 1 -> w = 3, 4, 1. row 1: one token -> 3 * 2 = 6.
    kw = dict(alpha=2.0, top_k=1, beta=3.0, lam=0.5)
    loss, m = cord_loss(kl, mask, **kw)
    assert abs(float(loss.detach()) - 4.1 / 4) < 1e-6
    (g,) = torch.autograd.grad(loss, kl)
    torch.testing.assert_close(g, torch.tensor([[3.0, 4.0, 1.0], [6.0, 0.0, 0.0]]) / 4)
    assert abs(cord_loss(kl, mask, normalization="weights", **kw)[0].detach().item() - 4.1 / 14) < 1e-6
    seq = (2.3 / 8 + 1.8 / 6) / 2
    assert abs(cord_loss(kl, mask, normalization="sequences", **kw)[0].detach().item() - seq) < 1e-6

    vals = np.array([0.2, 0.4, 0.1, 0.3])
    assert m["kl_mean"] == pytest.approx(vals.mean())
    assert m["kl_p80"] == pytest.approx(np.percentile(vals, 80))
    assert m["kl_weighted"] == pytest.approx(4.1 / 14)
    assert m["topk_weight_share"] == pytest.approx(10 / 14)
    assert m["loss_tok"] == pytest.approx(1.025) and m["loss_seq"] == 0.0
    assert math.isnan(m["reward_mean"]) and math.isnan(m["adv_std"])

    # with the sequence term: L = L_tok + lam * L_seq, L_seq on-policy = -mean A per token
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    rewards = torch.tensor([1.0, 0.0])
    loss, m = cord_loss(kl, mask, seq_logprobs=logp, rewards=rewards, group_size=2, **kw)
    # A = [0.5, -0.5]; token_mean over 4 tokens: -(3 * 0.5 - 0.5) / 4 = -0.25
    assert float(loss.detach()) == pytest.approx(1.025 + 0.5 * -0.25)
    assert m["loss_seq"] == pytest.approx(-0.25) and m["reward_mean"] == 0.5
    assert m["reward_std"] == pytest.approx(0.5) and m["adv_std"] == pytest.approx(0.5)


def test_cord_loss_metrics_match_numpy_on_random_inputs():
    g = torch.Generator().manual_seed(1)
    kl = torch.rand(4, 9, generator=g)
    mask = torch.arange(9).unsqueeze(0) < torch.tensor([[9], [5], [1], [7]])
    kl = kl * mask
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    adv = group_advantages(rewards, 2, scale_std=True)
    logp = -torch.rand(4, 9, generator=g)
    loss, m = cord_loss(kl, mask, alpha=2.0, top_k=3, beta=2.0, lam=1.0, seq_logprobs=logp,
                        advantages=adv, rewards=rewards)

    k, mk = kl.numpy(), mask.numpy()
    w = np.zeros_like(k)
    for b in range(4):
        idx = np.flatnonzero(mk[b])
        n = len(idx)
        order = sorted(idx, key=lambda t: (-k[b, t], t))[:3]
        for r, t in enumerate(idx):
            w[b, t] = (2.0 - (r / (n - 1) if n > 1 else 0.0)) * (2.0 if t in order else 1.0)
    valid = k[mk]
    assert m["kl_mean"] == pytest.approx(valid.mean(), rel=1e-6)
    assert m["kl_p80"] == pytest.approx(np.percentile(valid, 80), rel=1e-6)
    assert m["kl_weighted"] == pytest.approx((w * k).sum() / w.sum(), rel=1e-6)
    top = np.zeros_like(mk)
    for b in range(4):
        idx = np.flatnonzero(mk[b])
        for t in sorted(idx, key=lambda t: (-k[b, t], t))[:3]:
            top[b, t] = True
    assert m["topk_weight_share"] == pytest.approx(w[top].sum() / w.sum(), rel=1e-6)
    assert m["reward_mean"] == pytest.approx(0.75) and m["reward_std"] == pytest.approx(np.std([1, 0, 1, 1]))
    assert m["adv_std"] == pytest.approx(np.std(adv.numpy()), rel=1e-6)
    l_tok = (w * k).sum() / mk.sum()
    l_seq = -(adv.numpy()[:, None] * mk).sum() / mk.sum()
    assert m["loss_tok"] == pytest.approx(l_tok, rel=1e-6)
    assert m["loss"] == pytest.approx(l_tok + l_seq, rel=1e-6)
    torch.testing.assert_close(weighted_token_loss(kl, torch.tensor(w), mask), torch.tensor(float(l_tok)))


def test_cord_loss_grpo_only_and_errors():
    logp = torch.randn(4, 3, requires_grad=True)
    mask = torch.ones(4, 3, dtype=torch.bool)
    loss, m = cord_loss(None, None, alpha=2.0, top_k=20, beta=2.0, lam=1.0, seq_logprobs=logp,
                        seq_mask=mask, rewards=torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4)
    assert math.isnan(m["kl_mean"]) and m["loss_tok"] == 0.0 and m["loss"] == pytest.approx(m["loss_seq"])
    loss.backward()
    assert logp.grad is not None
    with pytest.raises(ValueError, match="kl"):
        cord_loss(None, None, alpha=2.0, top_k=20, beta=2.0, lam=1.0)
    with pytest.raises(ValueError, match="advantages"):
        cord_loss(None, mask, alpha=2.0, top_k=20, beta=2.0, lam=1.0, seq_logprobs=logp)
    with pytest.raises(ValueError, match="normalization"):
        cord_loss(torch.ones(4, 3), mask, alpha=2.0, top_k=20, beta=2.0, lam=1.0, normalization="nope")


def test_cord_loss_end_to_end_with_chunked_kl_and_hint():
    """The trainer's path: chunked KL with the position hint, trainable head, CORD loss."""
    hs, ws, bs, ht, wt, bt, mask = make_inputs(seed=30, dtype=torch.float64)
    kl = reverse_kl_per_token(hs, ws, ht, wt, mask, student_bias=bs, teacher_bias=bt, chunk_size=4,
                              grad_hint=position_decay_weights(mask, 2.0))
    loss, _ = cord_loss(kl, mask, alpha=2.0, top_k=2, beta=2.0, lam=1.0)
    ref = ref_kl("reverse", hs, ws, bs, ht, wt, bt, mask, 1.0)
    loss_ref, _ = cord_loss(ref, mask, alpha=2.0, top_k=2, beta=2.0, lam=1.0)
    torch.testing.assert_close(loss, loss_ref)
    for a, b in zip(torch.autograd.grad(loss, (hs, ws, bs)), torch.autograd.grad(loss_ref, (hs, ws, bs))):
        torch.testing.assert_close(a, b)
