"""Second, independent reference: Liger-Kernel's chunked fused-linear JSD loss (pure PyTorch).

With beta=1 Liger's generalized JSD is KL(student || teacher), summed over the vocabulary,
summed over positions and divided by the number of non-ignored positions: the token mean of
our per-position reverse KL. Liger is not a cord dependency (it pulls in triton); this test
skips unless ``liger_kernel`` is importable. Its chunked losses run on CPU with compiled=False.
"""

from __future__ import annotations

import pytest
import torch

from cord.objectives import reverse_kl_per_token

liger = pytest.importorskip("liger_kernel.chunked_loss")


@pytest.mark.optional
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_token_mean_reverse_kl_matches_liger(temperature):
    g = torch.Generator().manual_seed(0)
    n, h, v = 40, 16, 97
    hs = torch.randn(n, h, generator=g, requires_grad=True)
    ws = (0.5 * torch.randn(v, h, generator=g)).requires_grad_(True)
    bs = (0.3 * torch.randn(v, generator=g)).requires_grad_(True)
    ht, wt, bt = torch.randn(n, h, generator=g), 0.5 * torch.randn(v, h, generator=g), 0.3 * torch.randn(v, generator=g)
    mask = torch.rand(n, generator=g) > 0.25
    labels = torch.where(mask, torch.zeros(n, dtype=torch.long), torch.full((n,), -100))

    ours = reverse_kl_per_token(hs, ws, ht, wt, mask, student_bias=bs, teacher_bias=bt,
                                temperature=temperature, chunk_size=7).sum() / mask.sum()
    loss_fn = liger.LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=1.0,
                                            temperature=temperature, compiled=False, chunk_size=8)
    theirs = loss_fn(hs, ws, ht, wt, labels, bs, bt)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, (hs, ws, bs)), torch.autograd.grad(theirs, (hs, ws, bs))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
