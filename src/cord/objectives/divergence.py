"""Chunked full-vocabulary divergences and token log-probabilities through an lm_head.

The model never returns logits. It returns hidden states of completion positions,
(B, T, H), and these functions project them through the lm_head (V, H) a chunk of
positions at a time, so no (N, V) tensor for all N positions ever exists: the peak extra
memory is a few (chunk, V) fp32 buffers. Each returns one value per position.

How the gradient stays cheap (the details matter for speed, see BENCHMARKS.md):

* Every per-position value f_t depends only on its own hidden state h_t. The forward pass
  already holds the chunk's logits, so it forms d f_t / d logits_t right there and stores
  the (N, H) product with the lm_head, unscaled. Backward then only multiplies row t by the
  incoming grad_output g_t: exact, and no recomputation. With a frozen lm_head (the LoRA
  case) that is the whole backward.
* The lm_head gradient, sum_t g_t (d f_t / d logits_t) outer h_t, needs g_t, which is only
  known in backward. Without a hint, backward recomputes the chunks' logits (about 1.5x the
  matmuls of naive autograd). With ``grad_hint`` c_t (an (B, T) guess of grad_output up
  to one scale factor), the forward also accumulates sum_t c_t (...) outer h_t; backward
  finds the scale s (median of g_t / c_t), uses s times that sum, and recomputes only the
  positions where g_t differs from s * c_t. The result is exact whatever the hint (up to
  fp rounding: positions with |g_t - s c_t| <= 8 eps |g_t| are taken as matching). For
  CORD's loss pass ``grad_hint=position_decay_weights(mask, beta)``: with the "tokens" or
  "weights" normalisation the top-K alpha boost then touches only K positions per
  sequence; for uniform OPD pass ``torch.ones``. (The "sequences" normalisation scales each
  sequence differently, so a hint saves little there.) The hint costs one extra matmul per
  chunk in the forward, so a wrong hint is slower than none.

Logit soft cap (Gemma 2/3/3n's ``final_logit_softcapping``): with ``softcap=c`` the logits are
c·tanh(z/c) of the raw head output z, before the temperature. The gradient with respect to z
is the uncapped one times 1 - tanh(z/c)^2, formed in the same pass from a second (chunk, V)
buffer kept only when a cap is set; without one the code path is the uncapped one, unchanged.

Precision: every product with the lm_head is accumulated and returned in the compute dtype,
float32 (float64 if any input is float64), never rounded to bf16 on the way: a bf16 head
is upcast one vocabulary block at a time (a few MiB, see ``_VOCAB_BLOCK_ELEMS``), so no
full-size float32 copy of the (V, H) head is ever made, and a chunk of bf16 hidden states
is upcast whole (it is small). The products of bf16 values are exact in float32, so the
logits are those of the bf16 inputs up to float32 accumulation, not a bf16-rounded version
of them (which, for logits of a few units, put ~1e-2 nats of error into the KL and several
percent into the gradients). On CUDA, bf16/fp16 hidden states and head of the same dtype use
``torch.mm(..., out_dtype=torch.float32)`` instead (tensor cores, float32 accumulation and
output, no copies) where the installed torch has it. Softmax, KL and the gradient with
respect to the logits are computed in the compute dtype; the gradient products with the
head (hidden-state gradient) use the same block scheme. Autocast is switched off inside
(it would round these products to bf16 again). Returned values are float32 (float64 for
float64 inputs); gradients come back in each input's dtype. The one full (V, H) buffer in
the compute dtype is the lm_head's gradient accumulator, and only when the head is trained.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Elementwise softmax/KL work runs on row blocks of about this many elements (16 MiB of
# fp32): the temporaries stay small next to the (chunk, V) buffers, and the blocks are big
# enough that per-op overhead (a thread-pool barrier each) stays negligible, which matters
# on a loaded CPU. Matmuls run on whole chunks.
_ROW_BLOCK_ELEMS = 1 << 22


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


# A low-precision lm_head is upcast this many elements at a time (16 MiB of fp32): small next
# to the (chunk, V) buffers, big enough that each block's matmul runs at full speed.
_VOCAB_BLOCK_ELEMS = 1 << 22


def _vocab_blocks(vocab: int, hdim: int):
    step = max(1, _VOCAB_BLOCK_ELEMS // max(hdim, 1))
    for v in range(0, vocab, step):
        yield slice(v, min(v + step, vocab))


_OUT_DTYPE_MM: dict[str, bool] = {}  # device type -> whether torch.mm(..., out_dtype=) works there


def _mm_out_dtype(h: Tensor, w: Tensor, cdtype: torch.dtype) -> Tensor | None:
    """h @ w.T with float32 accumulation and output straight from low-precision operands
    (CUDA only, where torch has it); None when not available here."""
    dev = h.device.type
    if dev != "cuda" or cdtype != torch.float32 or h.dtype != w.dtype or h.dtype not in (torch.bfloat16, torch.float16):
        return None
    if _OUT_DTYPE_MM.get(dev, True):
        try:
            return torch.mm(h, w.t(), out_dtype=torch.float32)
        except torch.OutOfMemoryError:
            raise  # a real OOM: the fallback would need more memory, not less
        except (RuntimeError, TypeError, NotImplementedError):
            _OUT_DTYPE_MM[dev] = False
    return None


def _logits(h: Tensor, w: Tensor, b: Tensor | None, inv_temp: float, cdtype: torch.dtype,
            softcap: float | None = None) -> tuple[Tensor, Tensor | None]:
    """(c, H) x (V, H) -> (c, V) logits / temperature, in ``cdtype`` (a fresh buffer), and the
    soft cap's derivative d(capped)/d(raw) = 1 - tanh(z/c)^2 (a second (c, V) buffer; None
    without a cap).

    With ``softcap`` c the logits are c·tanh(z/c) before the temperature (as Gemma's
    ``final_logit_softcapping``, applied by the model before any logits processor).
    Accumulated in ``cdtype`` whatever the operands' dtype; a lower-precision ``w`` is
    upcast one vocabulary block at a time (never as a whole)."""
    z = _mm_out_dtype(h, w, cdtype)
    if z is None:
        a = h.to(cdtype)
        if w.dtype == cdtype:
            z = torch.mm(a, w.t())
        else:
            z = torch.empty(h.shape[0], w.shape[0], dtype=cdtype, device=h.device)
            for blk in _vocab_blocks(w.shape[0], w.shape[1]):
                torch.mm(a, w[blk].to(cdtype).t(), out=z[:, blk])
    if b is not None:
        z.add_(b.to(cdtype))
    dcap = None
    if softcap is not None:
        z.div_(softcap).tanh_()
        dcap = torch.mul(z, z).neg_().add_(1.0)
        z.mul_(softcap)
    if inv_temp != 1.0:
        z.mul_(inv_temp)
    return z, dcap


def _times_head(g: Tensor, w: Tensor, out: Tensor) -> None:
    """out (c, H) = g (c, V) @ w (V, H) in ``g``'s dtype; a lower-precision ``w`` is upcast
    one vocabulary block at a time."""
    if w.dtype == g.dtype:
        torch.mm(g, w, out=out)
        return
    out.zero_()
    for blk in _vocab_blocks(w.shape[0], w.shape[1]):
        out.addmm_(g[:, blk], w[blk].to(g.dtype))


def _rows(n_rows: int, vocab: int):
    step = max(1, _ROW_BLOCK_ELEMS // max(vocab, 1))
    for r in range(0, n_rows, step):
        yield slice(r, min(r + step, n_rows))


def _reverse_kl_rows(zs: Tensor, zt: Tensor, out: Tensor) -> Tensor:
    """D_t = sum_v p (log p - log q), p = softmax(zs), q = softmax(zt).

    Overwrites ``zt`` with dD_t/dzs = p * (log p - log q - D_t) and returns it; ``zs`` is
    clobbered. ``out`` (c,) receives D_t.
    """
    for r in _rows(zs.shape[0], zs.shape[1]):
        a, b = zs[r], zt[r]
        lp = torch.log_softmax(a, -1)
        lq = torch.log_softmax(b, -1)
        torch.sub(lp, lq, out=b)  # log p - log q
        torch.exp(lp, out=a)  # p
        d = torch.linalg.vecdot(a, b)
        out[r] = d
        b.sub_(d.unsqueeze(-1)).mul_(a)
    return zt


def _forward_kl_rows(zs: Tensor, zt: Tensor, out: Tensor) -> Tensor:
    """D_t = sum_v q (log q - log p). Overwrites ``zt`` with dD_t/dzs = p - q."""
    for r in _rows(zs.shape[0], zs.shape[1]):
        a, b = zs[r], zt[r]
        lp = torch.log_softmax(a, -1)
        lq = torch.log_softmax(b, -1)
        q = lq.exp()
        out[r] = torch.linalg.vecdot(q, lq.sub_(lp))
        torch.exp(lp, out=a)
        torch.sub(a, q, out=b)
    return zt


def _logprob_rows(zs: Tensor, ids: Tensor, out: Tensor) -> Tensor:
    """f_t = log softmax(zs)[y_t]. Overwrites ``zs`` with df_t/dzs = onehot(y_t) - p."""
    for r in _rows(zs.shape[0], zs.shape[1]):
        a = zs[r]
        y = ids[r].unsqueeze(-1)
        lse = torch.logsumexp(a, -1, keepdim=True)
        out[r] = (a.gather(-1, y) - lse).squeeze(-1)
        a.sub_(lse).exp_().neg_()
        a.scatter_add_(-1, y, torch.ones_like(y, dtype=a.dtype))
    return zs


def _chunk_values_and_grad(kind, hs, ws, bs, target, wt, bt, inv_temp, cdtype, softcap=None):
    """Values f (c,) and df/d(raw logits) x temperature (c, V) for one chunk of positions
    (df/d(logits / temperature), times the soft cap's derivative when there is one)."""
    out = torch.empty(hs.shape[0], dtype=cdtype, device=hs.device)
    zs, dcap = _logits(hs, ws, bs, inv_temp, cdtype, softcap)
    if kind == "logprob":
        g = _logprob_rows(zs, target, out)
    else:
        zt, _ = _logits(target, wt, bt, inv_temp, cdtype, softcap)
        fn = _reverse_kl_rows if kind == "reverse_kl" else _forward_kl_rows
        g = fn(zs, zt, out)
    if dcap is not None:
        g.mul_(dcap)  # chain rule through c·tanh(z/c)
    return out, g


def _mm_into(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc += a @ b in ``acc``'s dtype (the operands here are a chunk's rows, never the head)."""
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


class _ChunkedHead(torch.autograd.Function):
    """Packed (n, H) positions -> (n,) values; see the module docstring for the scheme."""

    @staticmethod
    def forward(ctx, kind, inv_temp, chunk, need_h, need_w, need_b, hs, ws, bs, target, wt, bt, hint, softcap):
        # autocast would round the head products to bf16 again: the precision is ours here
        with torch.autocast(hs.device.type, enabled=False):
            return _ChunkedHead._forward(ctx, kind, inv_temp, chunk, need_h, need_w, need_b, hs, ws, bs,
                                         target, wt, bt, hint, softcap)

    @staticmethod
    def _forward(ctx, kind, inv_temp, chunk, need_h, need_w, need_b, hs, ws, bs, target, wt, bt, hint, softcap):
        cdtype = _compute_dtype(hs, ws, bs, target if kind != "logprob" else None, wt, bt)
        n, hdim = hs.shape
        vocab = ws.shape[0]
        use_hint = hint is not None and (need_w or need_b)
        out = torch.empty(n, dtype=cdtype, device=hs.device)
        gh = torch.empty(n, hdim, dtype=cdtype, device=hs.device) if need_h else None
        pre_w = torch.zeros(vocab, hdim, dtype=cdtype, device=hs.device) if use_hint and need_w else None
        pre_b = torch.zeros(vocab, dtype=cdtype, device=hs.device) if use_hint and need_b else None
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            vals, g = _chunk_values_and_grad(kind, hs[s:e], ws, bs, target[s:e], wt, bt, inv_temp, cdtype,
                                             softcap)
            out[s:e] = vals
            if not (need_h or use_hint):
                del g
                continue
            if inv_temp != 1.0:
                g.mul_(inv_temp)  # d/d(logits) = d/d(logits/temperature) / temperature
            if need_h:
                _times_head(g, ws, gh[s:e])
            if use_hint:
                g.mul_(hint[s:e].to(cdtype).unsqueeze(-1))
                if pre_w is not None:
                    _mm_into(pre_w, g.t(), hs[s:e])
                if pre_b is not None:
                    pre_b.add_(g.sum(0))
            # free this chunk's (c, V) buffer before the next chunk allocates two more:
            # holding it across the loop would make the peak three buffers, not two
            del g
        ctx.kind, ctx.inv_temp, ctx.chunk, ctx.cdtype, ctx.softcap = kind, inv_temp, chunk, cdtype, softcap
        ctx.flags = (need_h, need_w, need_b)
        ctx.use_hint, ctx.hint_used = use_hint, False
        ctx.hs_dtype = hs.dtype
        ctx.save_for_backward(
            hs if (need_w or need_b) else None,
            target if (need_w or need_b) else None,
            ws, bs, wt, bt, gh,
            hint if use_hint else None, pre_w, pre_b,
        )
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _ChunkedHead._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        if ctx.use_hint:
            # The forward's lm_head accumulation is reused in place (no second (V, H)
            # buffer), so it can serve one backward only; say so before autograd's
            # version check fails with a less helpful message.
            if ctx.hint_used:
                raise RuntimeError(
                    "a second backward through a chunked divergence computed with grad_hint is not "
                    "supported (its lm_head gradient buffer is reused); pass grad_hint=None"
                )
            ctx.hint_used = True
        hs, target, ws, bs, wt, bt, gh, hint, pre_w, pre_b = ctx.saved_tensors
        need_h, need_w, need_b = ctx.flags
        cdtype = ctx.cdtype
        g = grad_out.to(cdtype)
        grad_h = grad_w = grad_b = None
        if need_h:
            grad_h = (gh * g.unsqueeze(-1)).to(ctx.hs_dtype)
        if need_w or need_b:
            vocab, hdim = ws.shape
            if hint is not None:
                # exact whatever the hint: grad = s * (forward's accumulation) + corrections
                scale, delta = _split_on_hint(g, hint.to(cdtype))
                redo = delta.abs() > 8 * torch.finfo(cdtype).eps * g.abs()
                grad_w = pre_w.mul_(scale) if need_w else None
                grad_b = pre_b.mul_(scale) if need_b else None
            else:
                delta = g
                redo = g != 0
                grad_w = torch.zeros(vocab, hdim, dtype=cdtype, device=g.device) if need_w else None
                grad_b = torch.zeros(vocab, dtype=cdtype, device=g.device) if need_b else None
            idx = redo.nonzero().squeeze(-1)
            for s in range(0, idx.numel(), ctx.chunk):
                i = idx[s : s + ctx.chunk]
                h_i = hs.index_select(0, i)
                _, d = _chunk_values_and_grad(
                    ctx.kind, h_i, ws, bs, target.index_select(0, i), wt, bt, ctx.inv_temp, cdtype, ctx.softcap
                )
                d.mul_((delta.index_select(0, i) * ctx.inv_temp).unsqueeze(-1))
                if grad_w is not None:
                    _mm_into(grad_w, d.t(), h_i)
                if grad_b is not None:
                    grad_b.add_(d.sum(0))
                del d  # as in forward: at most two (c, V) buffers alive
            grad_w = grad_w.to(ws.dtype) if grad_w is not None else None
            grad_b = grad_b.to(bs.dtype) if grad_b is not None else None
        return None, None, None, None, None, None, grad_h, grad_w, grad_b, None, None, None, None, None


def _split_on_hint(g: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """g = s * c + delta with s the median ratio g/c, so delta is zero where g matches c."""
    nz = c != 0
    if bool(nz.any()):
        scale = (g[nz] / c[nz]).median()
    else:
        scale = g.new_zeros(())
    return scale, g - scale * c


def _flatten(hidden: Tensor, mask: Tensor | None, name: str) -> tuple[Tensor, Tensor | None, tuple[int, ...]]:
    """(B, T, H) or (N, H) -> (rows (B*T or N, H), valid flat index or None, value shape)."""
    if hidden.dim() not in (2, 3):
        raise ValueError(f"{name} must be (B, T, H) or (N, H), got shape {tuple(hidden.shape)}")
    shape = tuple(hidden.shape[:-1])
    flat = hidden.reshape(-1, hidden.shape[-1])
    if mask is None:
        return flat, None, shape
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {name} positions {shape}")
    idx = mask.reshape(-1).to(torch.bool).nonzero().squeeze(-1)
    return flat, idx, shape


def _gather(x: Tensor | None, idx: Tensor | None) -> Tensor | None:
    if x is None or idx is None:
        return x
    return x.index_select(0, idx)


def _scatter(vals: Tensor, idx: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    if idx is None:
        return vals.reshape(shape)
    total = 1
    for s in shape:
        total *= s
    return vals.new_zeros(total).index_copy(0, idx, vals).reshape(shape)


def _apply(kind, student_hidden, student_weight, student_bias, target, teacher_weight, teacher_bias,
           mask, temperature, chunk_size, grad_hint, softcap=None):
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if softcap is not None:
        softcap = float(softcap)
        if not softcap > 0 or softcap == float("inf"):
            raise ValueError(f"softcap must be a finite number > 0 or None, got {softcap}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    flat, idx, shape = _flatten(student_hidden, mask, "student_hidden")
    if student_weight.dim() != 2 or student_weight.shape[1] != flat.shape[1]:
        raise ValueError(
            f"student_weight must be (V, H={flat.shape[1]}), got shape {tuple(student_weight.shape)}"
        )
    hs = _gather(flat, idx)
    if kind == "logprob":
        if tuple(target.shape) != shape:
            raise ValueError(f"ids shape {tuple(target.shape)} does not match hidden positions {shape}")
        tgt = _gather(target.reshape(-1).long(), idx)
    else:
        tflat, _, tshape = _flatten(target, None, "teacher_hidden")
        if tshape != shape:
            raise ValueError(f"teacher_hidden positions {tshape} do not match student_hidden positions {shape}")
        if teacher_weight.shape[0] != student_weight.shape[0]:
            raise ValueError(
                f"teacher vocabulary {teacher_weight.shape[0]} != student vocabulary {student_weight.shape[0]}"
            )
        tgt = _gather(tflat.detach(), idx)  # the teacher is a constant: never any grad for it
        teacher_weight = teacher_weight.detach()
        teacher_bias = teacher_bias.detach() if teacher_bias is not None else None
    grad_on = torch.is_grad_enabled()
    need_h = grad_on and hs.requires_grad
    need_w = grad_on and student_weight.requires_grad
    need_b = grad_on and student_bias is not None and student_bias.requires_grad
    hint = None
    if grad_hint is not None and (need_w or need_b):
        if tuple(grad_hint.shape) != shape:
            raise ValueError(f"grad_hint shape {tuple(grad_hint.shape)} does not match positions {shape}")
        hint = _gather(grad_hint.detach().reshape(-1), idx)
    vals = _ChunkedHead.apply(
        kind, 1.0 / float(temperature), int(chunk_size), need_h, need_w, need_b,
        hs, student_weight, student_bias, tgt, teacher_weight, teacher_bias, hint, softcap,
    )
    return _scatter(vals, idx, shape)


def reverse_kl_per_token(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    mask: Tensor | None = None,
    *,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 512,
    grad_hint: Tensor | None = None,
    softcap: float | None = None,
) -> Tensor:
    """Per-position reverse KL, KL(p_student || p_teacher), over the full vocabulary.

    Args:
        student_hidden: (B, T, H) or (N, H) final hidden states of the student at the
            completion positions (position t predicts token t).
        student_weight: (V, H) student lm_head weight. Gets a gradient when it requires one.
        teacher_hidden: same shape as ``student_hidden``; treated as a constant (detached).
        teacher_weight: (V, H) teacher lm_head weight (may be the same tensor as the
            student's); treated as a constant.
        mask: (B, T) or (N,) bool / 0-1, True at valid completion positions; None = all.
            Only valid positions are computed.
        student_bias, teacher_bias: optional (V,) lm_head biases (teacher's is constant).
        temperature: both distributions are softmax(logits / temperature).
        chunk_size: positions per chunk; peak extra memory is a few (chunk_size, V) fp32
            buffers.
        grad_hint: optional (B, T) guess of the gradient that will flow into the result, up
            to one global scale (e.g. ``position_decay_weights(mask, beta)`` for CORD's loss).
            Only used when the lm_head needs a gradient; never changes the result, only how
            much the backward recomputes (see the module docstring).
        softcap: the head's final logit soft cap c (Gemma's ``final_logit_softcapping``):
            logits = c·tanh((h·W + b)/c), then divided by the temperature; applies to the
            student's and the teacher's head alike (the teacher is the same network). None:
            no cap (bit-identical to the uncapped code). A cap costs one more (chunk_size, V)
            buffer at the peak.

    Returns:
        (B, T) or (N,) float32 (float64 for float64 inputs): D_t = sum_v p_s (log p_s - log p_t)
        at valid positions, 0 at masked ones. Differentiable with respect to the student
        hidden states, weight and bias only.
    """
    return _apply("reverse_kl", student_hidden, student_weight, student_bias, teacher_hidden,
                  teacher_weight, teacher_bias, mask, temperature, chunk_size, grad_hint, softcap)


def forward_kl_per_token(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    mask: Tensor | None = None,
    *,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 512,
    grad_hint: Tensor | None = None,
    softcap: float | None = None,
) -> Tensor:
    """Per-position forward KL, KL(p_teacher || p_student) = sum_v p_t (log p_t - log p_s).

    Same arguments, shapes, memory behaviour and gradient rules as
    :func:`reverse_kl_per_token` (the teacher is a constant). Used by the off-policy
    ``forward_kl`` baseline, where the student follows the teacher's own samples.
    """
    return _apply("forward_kl", student_hidden, student_weight, student_bias, teacher_hidden,
                  teacher_weight, teacher_bias, mask, temperature, chunk_size, grad_hint, softcap)


def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    ids: Tensor,
    mask: Tensor | None = None,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 512,
    grad_hint: Tensor | None = None,
    softcap: float | None = None,
) -> Tensor:
    """log softmax(cap(hidden @ weight.T + bias) / temperature)[ids], chunked like the KLs.

    Args:
        hidden: (B, T, H) or (N, H) hidden states; position t scores token ``ids[..., t]``.
        weight: (V, H) lm_head weight; bias: optional (V,).
        ids: (B, T) or (N,) integer token ids (values at masked positions are ignored).
        mask: valid positions (None = all); 0 is returned elsewhere.
        grad_hint: as in :func:`reverse_kl_per_token` (e.g. ``torch.ones`` for a plain
            token-mean NLL with a trainable lm_head).
        softcap: the head's logit soft cap (see :func:`reverse_kl_per_token`); None: none.

    Returns:
        (B, T) or (N,) float32 log-probabilities, differentiable with respect to hidden,
        weight and bias (for SFT's NLL and GRPO's policy ratio).
    """
    return _apply("logprob", hidden, weight, bias, ids, None, None, mask, temperature,
                  chunk_size, grad_hint, softcap)


def head_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None = None, *, softcap: float | None = None) -> Tensor:
    """(R, V) float32 logits of (R, H) ``hidden`` through the head, exactly as the objectives
    form them: products accumulated in float32 (a bf16 head upcast a vocabulary block at a
    time, never rounded to bf16 on the way) and the soft cap c·tanh(z/c) applied in float32.
    What the rollout engine samples from, so the sampler's distribution is the one the loss
    trains (a bf16 ``lm_head(hidden)`` is rounded to steps of 0.125 near |z| ≈ 20). No grad."""
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        cdtype = _compute_dtype(hidden, weight, bias)
        z, _ = _logits(hidden.reshape(-1, hidden.shape[-1]), weight, bias, 1.0, cdtype, softcap)
    return z.reshape(*hidden.shape[:-1], weight.shape[0])


def sampled_token_logratio(student_logprobs: Tensor, teacher_logprobs: Tensor, mask: Tensor | None = None) -> Tensor:
    """The k1 estimator of the reverse KL from sampled tokens only: log p_s(y_t) - log p_t(y_t).

    Args:
        student_logprobs, teacher_logprobs: (B, T) log-probabilities of the rollout's own
            tokens y_t under student and teacher (e.g. from :func:`token_logprobs`).
        mask: (B, T) valid completion positions (None = all); 0 elsewhere.

    Returns:
        (B, T) float32, detached. On-policy (y_t ~ p_s) its expectation is the reverse KL
        D_t, but with high variance. Backpropagating through it directly has zero expected
        gradient on-policy (E_p[grad log p] = 0), which is why it is returned detached: use
        its negative as a per-token REINFORCE reward (advantage) in
        :func:`cord.objectives.grpo_surrogate`, which is unbiased for the reverse-KL
        gradient. A cheap alternative to the full-vocabulary KL; off by default in CORD.
    """
    k1 = (student_logprobs.detach().float() - teacher_logprobs.detach().float())
    if mask is not None:
        k1 = k1 * mask.to(k1.dtype)
    return k1
