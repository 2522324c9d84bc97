"""Sharded full fine-tuning with FSDP2 (``torch.distributed.fsdp.fully_shard``), applied directly.

Why directly and not through ``accelerator.prepare``: the adapters call submodules of the
model (the audio tower, the language model's hidden states, ``lm_head``'s weight, generate),
never the root ``forward``. FSDP2 works through forward hooks on each sharded module, so a
root-level wrap (what accelerate's FSDP plugin does) would never see its pre-forward hook run
and the root's parameters would stay sharded. Here each transformer layer (the families'
decoder and encoder layers: every block of a ``ModuleList`` under a part of the adapter's
``module_map``) is its own FSDP unit, so whichever submodule the adapter calls, each layer
all-gathers its weights on entry and frees them on exit (``reshard_after_forward=True``),
and reduce-scatters (averages) its gradients in backward.

Everything outside the layers (embeddings, final norm, ``lm_head``, projector, conv stems) is
kept whole on every process, as with DDP: the objectives read ``lm_head.weight`` directly
(the chunked KL), so it must be the full weight, and its gradient is averaged by the
trainer's explicit all-reduce like every replicated parameter.

Mixed precision: the parameters the optimizer sees are fp32 (master weights, fp32 AdamW
state); layers compute in ``param_dtype`` (bf16 on GPUs, fp32 on CPU) and reduce gradients
in fp32 (:class:`MixedPrecisionPolicy`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from cord.models.base import part_of


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def param_groups(params: Iterable[nn.Parameter], lr: float, scales: Sequence[float] | None = None) -> list[dict]:
    """The optimizer's parameter groups: one per lr multiplier (``scales``, parallel to
    ``params``: ``train.lr_scale`` of each parameter's part; None: all 1), and within it the
    sharded parameters (DTensors) and the plain ones apart. On CUDA, torch's AdamW takes its
    ``foreach`` path, whose ``torch._foreach_*`` ops refuse a list mixing ``torch.Tensor`` and
    ``DTensor`` (the FSDP units' weights beside the whole-kept embeddings, norms and
    ``lm_head``); each group is stepped as its own list. Each group holds its ``lr`` (``lr`` ×
    its multiplier) and its ``lr_scale``; groups are in the order their first parameter comes.
    Unsharded with no multiplier: one group, as a plain parameter list would be."""
    params = list(params)
    scales = [1.0] * len(params) if scales is None else [float(s) for s in scales]
    if len(scales) != len(params):
        raise ValueError(f"param_groups: {len(scales)} lr multipliers for {len(params)} parameters")
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for p, scale in zip(params, scales):
        groups.setdefault((scale, is_sharded(p)), []).append(p)
    order = sorted(groups, key=lambda k: (next(i for i, s in enumerate(scales) if s == k[0]), not k[1]))
    return [{"params": groups[k], "lr": lr * k[0], "lr_scale": k[0]} for k in order]


def init_single_process_group(device: torch.device, *, timeout_s: float) -> None:
    """A process group of one (NCCL on CUDA, gloo elsewhere) over an in-memory store, unless
    one exists: FSDP2 needs a group even when one process holds every shard."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from datetime import timedelta

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                            timeout=timedelta(seconds=timeout_s))


def fsdp_units(model: nn.Module, module_map: Mapping[str, Sequence[str]]) -> list[nn.Module]:
    """The modules to shard one by one: every element of a ``ModuleList`` that lies under a
    part of ``module_map`` and is a block of its own (a class not from ``torch.nn``, e.g.
    ``Qwen2DecoderLayer``, ``Qwen2AudioEncoderLayer``, ``Qwen2_5OmniDecoderLayer``, the mini
    family's encoder blocks; not a list of ``nn.Conv1d``)."""
    units = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or part_of(name, module_map) is None:
            continue
        for child in module:
            if type(child).__module__.startswith("torch.nn") or not any(True for _ in child.parameters()):
                continue
            units.append(child)
    return units


def shard_model(model: nn.Module, module_map: Mapping[str, Sequence[str]], *,
                param_dtype: torch.dtype | None = None) -> list[nn.Module]:
    """``fully_shard`` each unit of :func:`fsdp_units` over all processes (in place); returns
    the units. Parameters of the units become DTensors (Shard(0)); the others stay plain
    tensors, replicated."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    # Units hand their outputs back in the master dtype: the modules kept whole (norms, the
    # projector, lm_head) hold fp32 master weights and are also called outside autocast (the
    # rollout engine), where a bf16 activation meeting an fp32 weight would fail.
    master = next(model.parameters()).dtype
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                  output_dtype=master if param_dtype is not None else None)
    units = fsdp_units(model, module_map)
    for unit in units:
        # reshard_after_forward given explicitly: each unit is its own FSDP root (the root
        # forward never runs), and FSDP keeps an auto-configured root unsharded after forward
        fully_shard(unit, mesh=mesh, reshard_after_forward=True, mp_policy=policy)
    return units


@contextlib.contextmanager
def gathered(units: Sequence[nn.Module]):
    """Keep every unit's full weights for the duration (a rollout phase): one all-gather per
    layer for the whole generate call instead of one per layer per decoded token. Peak
    memory: the full policy in ``param_dtype`` while inside."""
    if not units:
        yield
        return
    for u in units:
        u.set_reshard_after_forward(False, recurse=False)
        u.unshard()
    try:
        yield
    finally:
        for u in units:
            u.reshard()
            u.set_reshard_after_forward(True, recurse=False)


def average_replicated_grads(params: Iterable[nn.Parameter], world: int) -> None:
    """All-reduce (mean) the gradients of the replicated (non-DTensor) parameters; FSDP has
    already averaged the sharded ones (reduce-scatter). A parameter without a gradient
    contributes zeros, so every process runs the same collectives in the same order."""
    from cord.train.collectives import all_reduce_mean

    plain = [p for p in params if not is_sharded(p)]
    for p in plain:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_mean([p.grad for p in plain], world)


def clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float) -> float:
    """The global L2 norm of all gradients (sharded and replicated), then every gradient
    scaled by ``min(1, max_norm / (norm + 1e-6))`` — torch's ``clip_grad_norm_`` over the
    whole model. Sharded gradients contribute the sum of squares of their local shards,
    summed over processes; replicated ones (identical everywhere after averaging) once."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    device = grads[0].device
    sharded = torch.zeros((), dtype=torch.float64, device=device)
    replicated = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        if is_sharded(g):
            sharded += g.to_local().double().pow(2).sum()
        else:
            replicated += g.double().pow(2).sum()
    dist.all_reduce(sharded, op=dist.ReduceOp.SUM)
    total = math.sqrt(float(sharded + replicated))
    if math.isfinite(max_norm) and math.isfinite(total):
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            for g in grads:
                (g.to_local() if is_sharded(g) else g).mul_(coef)
    return total


def gather_state_dict(model: nn.Module, *, rank: int, dtypes: Mapping[str, torch.dtype] | None = None,
                      dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's state dict whole, on process 0's CPU (empty elsewhere), gathered one tensor at
    a time and cast there: a sharded layer's weight is all-gathered (a collective every
    process runs, in the same order), cast on its device to ``dtypes[name]`` (else ``dtype``
    for floating tensors; else kept) and only then copied to the host. Process 0's peak host
    memory is the model in the export dtype, not the fp32 masters."""
    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        whole = value.full_tensor() if is_sharded(value) else value
        if rank != 0:
            continue
        target = (dtypes or {}).get(name, dtype if whole.is_floating_point() else None)
        out[name] = whole.detach().to(dtype=target or whole.dtype).to("cpu", copy=True)
    return out


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` whole, on the CPU, on process 0 (empty on the
    others); a collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class GatheredEngine:
    """A rollout engine whose ``generate`` runs inside :func:`gathered` of the model's FSDP
    units (everything else is the wrapped engine's)."""

    def __init__(self, engine, units: Sequence[nn.Module]) -> None:
        self._engine, self._units = engine, list(units)

    def generate(self, *args, **kwargs):
        with gathered(self._units):
            return self._engine.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._engine, name)
