"""What a run trains and in what order: the trainable parameters by part, activation
checkpointing, the learning-rate schedule, the data order, a dataset's path."""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch

from cord import CordError
from cord.config import CordConfig
from cord.models.base import part_of


def parameter_part(name: str, module_map: Mapping[str, Sequence[str]]) -> str | None:
    """Which trainable part a parameter belongs to: the family adapter's ``module_map`` says
    (cord.models.base.part_of); None for modules no part names (e.g. a vision tower)."""
    return part_of(name, module_map)


def select_trainable(
    model: torch.nn.Module, parts: list[str], lora: bool, module_map: Mapping[str, Sequence[str]]
) -> list[torch.nn.Parameter]:
    """Set requires_grad by part (``module_map``: the adapter's, see cord.models.base); with
    LoRA the language model trains through its adapter."""
    if lora and "lm_head" in parts:
        raise CordError("train.trainable: lm_head cannot train with model.lora; use full fine-tuning or drop lm_head")
    for name, p in model.named_parameters():
        part = parameter_part(name, module_map)
        if lora and "lora_" in name:
            p.requires_grad_("language_model" in parts)
        elif lora and part == "language_model":
            p.requires_grad_(False)
        else:
            p.requires_grad_(part in parts)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CordError(f"train.trainable {parts} selects no parameter of this model")
    return params


def lr_scales(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], lr_scale: Mapping[str, float],
              module_map: Mapping[str, Sequence[str]]) -> list[float]:
    """``train.lr_scale``'s multiplier for each of ``params`` (parameters of ``model``), by the
    part it belongs to (a LoRA adapter's part is the module it adapts: ``language_model``);
    1.0 for a part not named."""
    part = {id(p): parameter_part(n, module_map) for n, p in model.named_parameters()}
    return [float(lr_scale.get(part.get(id(p)), 1.0)) for p in params]


def make_optimizer(params: Sequence[torch.nn.Parameter], scales: Sequence[float], train) -> torch.optim.AdamW:
    """AdamW over ``params`` as ``train`` (the config's train section) says, one group per lr
    multiplier (``scales``, :func:`lr_scales`) with sharded and plain parameters apart
    (:func:`cord.train.sharding.param_groups`)."""
    from cord.train.sharding import param_groups

    return torch.optim.AdamW(param_groups(params, train.lr, scales), lr=train.lr, betas=tuple(train.adam_betas),
                             weight_decay=train.weight_decay)


def unscaled_lr(optimizer: torch.optim.Optimizer, scheduler) -> float:
    """The schedule's current ``train.lr`` (what is logged): the first group's lr over its multiplier."""
    return scheduler.get_last_lr()[0] / optimizer.param_groups[0].get("lr_scale", 1.0)


def enable_checkpointing(model: torch.nn.Module) -> bool:
    """Non-reentrant activation checkpointing of every transformer layer, without input-grad hooks.

    transformers' ``activation_checkpointing_enable`` (and peft, and the older
    ``gradient_checkpointing_enable``) also call ``enable_input_require_grads``, which marks the
    output of *every* sub-model's input embedding as requiring grad: for an LALM that includes the
    audio encoder's first convolution, so a frozen Whisper encoder joins the autograd graph, holds
    its activations and is recomputed and backpropagated through on every step for nothing. The
    hooks exist for reentrant checkpointing (whose segments need an input that requires grad);
    non-reentrant checkpointing gives trainable parameters inside a segment their gradients
    without them, so they are removed. Returns False for a model without checkpointing support."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        with warnings.catch_warnings():  # its deprecation notice, where it is only an alias
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        return False
    for module in model.modules():  # every (sub-)model that registered hooks
        disable = getattr(module, "disable_input_require_grads", None)
        if disable is not None and getattr(module, "_require_grads_hooks", None):
            disable()
    return True


def lr_lambda(cfg: CordConfig):
    warm, total, kind = cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.schedule

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return f


class DataOrder:
    """A deterministic stream over the dataset: epoch e is a permutation seeded by (seed, e).
    Item i of the stream depends only on i, so resuming needs only the step."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._cache: dict[int, np.ndarray] = {}

    def __getitem__(self, i: int) -> int:
        epoch, pos = divmod(i, self.n)
        if not self.shuffle:
            return pos
        if epoch not in self._cache:
            self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return int(self._cache[epoch][pos])


def resolve_data(path: str) -> str:
    if path.startswith("builtin:"):
        from cord.data.builtin import ensure_builtin

        return str(ensure_builtin(path.split(":", 1)[1]))
    return path
