"""Gradient averaging across processes in few collectives.

One ``all_reduce`` per tensor costs a launch and a round of latency each — hundreds per step for
a LoRA model (every adapter matrix is its own tensor). :func:`all_reduce_mean` flattens the
tensors into buckets of one device and dtype (at most ``bucket_bytes`` each, so the extra
memory is one bucket, not a second copy of every gradient), all-reduces each bucket once, and
copies the averages back. The sum and the division are those of a per-tensor all-reduce.
"""

from __future__ import annotations

from typing import Sequence

import torch

#: bucket size: large enough that a LoRA model's gradients are one or two collectives, small
#: enough to stay a small fraction of GPU memory (DDP's default is 25 MiB)
BUCKET_BYTES = 64 << 20


def buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[list[torch.Tensor]]:
    """``tensors`` grouped by (device, dtype), in order, each group cut into buckets of at most
    ``bucket_bytes`` (a tensor larger than that is a bucket of its own)."""
    groups: dict[tuple, list[list[torch.Tensor]]] = {}
    sizes: dict[tuple, int] = {}
    for t in tensors:
        key = (t.device, t.dtype)
        nbytes = t.numel() * t.element_size()
        runs = groups.setdefault(key, [[]])
        if runs[-1] and sizes[key] + nbytes > bucket_bytes:
            runs.append([])
            sizes[key] = 0
        runs[-1].append(t)
        sizes[key] = sizes.get(key, 0) + nbytes
    return [run for runs in groups.values() for run in runs if run]


def all_reduce_mean(tensors: Sequence[torch.Tensor], world: int, bucket_bytes: int = BUCKET_BYTES) -> int:
    """Average ``tensors`` (in place) over the ``world`` processes; returns the number of
    collectives issued. Every process must pass tensors of the same shapes in the same order."""
    import torch.distributed as dist

    calls = 0
    for bucket in buckets(tensors, bucket_bytes):
        if len(bucket) == 1:
            flat = bucket[0]
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(world)
        else:
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(world)
            offset = 0
            for t in bucket:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n
        calls += 1
    return calls
