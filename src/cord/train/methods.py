"""The paper's methods as settings of one machinery.

| method         | token level                              | sequence level (GRPO) |
|----------------|------------------------------------------|-----------------------|
| ``sft``        | NLL of the reference solution from audio | —                     |
| ``forward_kl`` | KL(teacher ‖ student) on teacher samples | —                     |
| ``opd``        | reverse KL on audio rollouts, uniform    | —                     |
| ``opd_weighted``| reverse KL, top-K α and position β      | —                     |
| ``grpo``       | —                                        | judge reward          |
| ``grpo_opd``   | reverse KL, uniform                      | judge reward          |
| ``cord``       | reverse KL, top-K α and position β       | judge reward          |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    token: str | None  # "reverse_kl" | "forward_kl" | "sft" | None
    weighted: bool  # CORD's importance weights (else uniform: α = β = 1)
    seq: bool  # GRPO term


METHODS: dict[str, MethodSpec] = {
    "sft": MethodSpec("sft", False, False),
    "forward_kl": MethodSpec("forward_kl", False, False),
    "opd": MethodSpec("reverse_kl", False, False),
    "opd_weighted": MethodSpec("reverse_kl", True, False),
    "grpo": MethodSpec(None, False, True),
    "grpo_opd": MethodSpec("reverse_kl", False, True),
    "cord": MethodSpec("reverse_kl", True, True),
}
