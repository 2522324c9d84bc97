"""fp32 master weights for parameters that train in bf16/fp16 outside LoRA.

``model.dtype: auto`` is bf16 on CUDA and the 7B presets say ``bfloat16``. LoRA adapters stay
fp32 on a bf16 model (peft), but a part that trains in full next to them (``train.trainable``
with ``projector`` / ``audio_encoder``) or an unsharded full fine-tuning holds its weights in
bf16. AdamW's update of such a weight is rounded to bf16 at every step: bf16 keeps 8
significant bits, so an update smaller than half the spacing at the weight's magnitude (2^-14
≈ 6e-5 at |w| ≈ 0.016, more above) vanishes, and at lr 3e-5 nearly every update does — the
weights never move (tests/train/test_precision.py).

:class:`MasterWeights` keeps an fp32 copy of each such parameter: gradients are accumulated
into the copies in fp32 (over micro-batches too), the optimizer, gradient averaging and
clipping see only the copies, and after each optimizer step the model's weights are the
copies rounded to the model dtype. The forward and the rollouts keep running on the model's
own low-precision weights. Checkpoints hold the fp32 copies (so a resumed run continues from
the same masters, not from rounded ones); exports hold the model's weights.

Sharded runs need none of this: FSDP's parameters are the fp32 masters and its units compute in
bf16 (:mod:`cord.train.sharding`).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

LOW_PRECISION = (torch.bfloat16, torch.float16)


class MasterWeights:
    """fp32 masters of the low-precision trainable parameters among ``params`` (see module
    docstring); the others are trained as they are. ``params``: what the optimizer, gradient
    averaging and clipping are given — each master in place of its parameter."""

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        self.pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        self.params: list[nn.Parameter] = []
        for p in params:
            if p.dtype in LOW_PRECISION:
                master = nn.Parameter(p.detach().to(torch.float32).clone())
                self.pairs.append((p, master))
                self.params.append(master)
            else:
                self.params.append(p)
        self._by_param = {id(p): m for p, m in self.pairs}

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def master_of(self, param: nn.Parameter) -> nn.Parameter | None:
        return self._by_param.get(id(param))

    def by_name(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Parameter name -> its master, for the parameters that have one."""
        return {n: self._by_param[id(p)] for n, p in model.named_parameters() if id(p) in self._by_param}

    def accumulate_grads(self) -> None:
        """After each backward: add the model parameters' gradients into their masters' in fp32
        and free them (so micro-batches accumulate in fp32, not in bf16)."""
        for p, m in self.pairs:
            if p.grad is None:
                continue
            g = p.grad.to(torch.float32)
            if m.grad is None:
                m.grad = g if g.data_ptr() != p.grad.data_ptr() else g.clone()
            else:
                m.grad.add_(g)
            p.grad = None

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """After an optimizer step: the model's weights = the masters rounded to its dtype."""
        for p, m in self.pairs:
            p.copy_(m)

    @torch.no_grad()
    def load(self, values: dict[str, torch.Tensor], model: nn.Module) -> None:
        """Masters (and the model's weights, rounded) from saved fp32 values, by parameter name."""
        for name, master in self.by_name(model).items():
            if name in values:
                master.copy_(values[name].to(master.device, master.dtype))
        self.copy_to_model()
