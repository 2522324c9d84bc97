"""The shared vocabulary at the bottom of cord: the types every layer passes to the next.

Nothing here imports another cord module, and every package may import this one: imports run
one way, in the order ``tests/test_layers.py`` holds (docs/architecture.md, "Layout").

- :class:`PromptBatch` — a left-padded batch of prompts (an adapter builds it, engines and
  objectives consume it);
- :class:`Rollouts` — completions sampled by an engine;
- :class:`MethodSpec`, :data:`METHODS` — the paper's methods as settings of one machinery;
- :class:`JudgeResult` — a judge's verdict on one answer;
- :func:`unwrapped_name` — a parameter path without wrapper prefixes (peft, compile, DDP).

The methods:

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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads where tensors are made, so the config can import this cheaply
    import torch


@dataclass
class PromptBatch:
    """A left-padded batch of prompts.

    input_ids, attention_mask: (B, P). ``extra`` holds modality tensors the model's forward
    needs (e.g. ``input_features`` (B, mel, frames) and ``feature_attention_mask`` (B, frames)
    for Whisper-style encoders); ``modality`` is "audio" or "text". ``keep`` lists, for each
    row, the index of the example it came from (examples whose audio was skipped by the
    long-audio policy are absent). ``group`` (set by :meth:`repeat_interleave`) says that rows
    ``b·group .. b·group+group-1`` are copies of one prompt: an adapter may encode each
    distinct audio once and reuse it for its group (the Qwen adapters do); others ignore it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    modality: str
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    keep: list[int] = field(default_factory=list)
    group: int = 1
    #: the 16 kHz mono float32 waveform of each row, after the long-audio policy (what the
    #: features were computed from), for engines that encode audio themselves (vLLM); None
    #: for text prompts and adapters that do not record it
    audio: list[Any] | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> "PromptBatch":
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.modality,
            {k: v.to(device) for k, v in self.extra.items()},
            list(self.keep),
            self.group,
            self.audio,
        )

    def select(self, rows: list[int] | torch.Tensor) -> "PromptBatch":
        """Rows ``rows`` of this batch (left padding kept as is)."""
        import torch

        idx = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        extra = {k: v.index_select(0, idx.to(v.device)) for k, v in self.extra.items()}
        keep = [self.keep[i] for i in idx.tolist()] if self.keep else []
        audio = [self.audio[i] for i in idx.tolist()] if self.audio is not None else None
        return PromptBatch(self.input_ids[idx], self.attention_mask[idx], self.modality, extra, keep, audio=audio)

    def repeat_interleave(self, n: int) -> "PromptBatch":
        """Each row repeated ``n`` times in place: rows b*n .. b*n+n-1 come from row b (the
        result's ``group`` records it; :meth:`select` forgets it)."""
        import torch

        rows = torch.arange(len(self)).repeat_interleave(n)
        out = self.select(rows)
        out.group = self.group * n
        return out



@dataclass
class Rollouts:
    """Completions for a batch of prompts, ``n`` per prompt, grouped.

    ids: (R, T) long, right-padded with the pad id; mask: (R, T) bool, valid tokens (up to and
    including the first end-of-sequence token, or up to a stop string); text: decoded valid
    tokens with special tokens removed; prompt_index[r] = the prompt row of rollout r, with
    rollouts b·n .. b·n+n−1 belonging to prompt b. logprobs: (R, T) float32 log-probability of
    each valid token under the distribution it was sampled from (temperature, top_p, no
    placeholder tokens), 0 elsewhere; None when the engine does not report them (greedy).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    text: list[str]
    prompt_index: list[int]
    n: int = 1
    finished: list[bool] = field(default_factory=list)
    logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)



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


@dataclass(frozen=True)
class JudgeResult:
    """``score`` 1 if the candidate agrees with the reference, else 0. ``candidate_answer``
    and ``reference_answer`` are the extracted final answers (None: none found). ``note``
    says why a 0 is a 0 when that is not a plain mismatch."""

    score: int
    candidate_answer: str | None
    reference_answer: str | None
    kind: str
    note: str = ""

    @property
    def failed_extraction(self) -> bool:
        """No answer could be read from the candidate (the fail rate counts these)."""
        return self.candidate_answer is None



def missing_note(cand: str | None, ref: str | None) -> str:
    """The ``note`` of a result whose candidate (or reference) gave no answer."""
    if cand is None:
        return "no answer found in the candidate"
    if ref is None:
        return "no answer found in the reference"
    return ""


#: Wrapper prefixes that are not part of a family's module paths: peft's ``PeftModel``
#: (``base_model.model.``), ``torch.compile`` (``_orig_mod.``), DDP (``module.``).
WRAPPER_PREFIXES = ("base_model.model.", "_orig_mod.", "module.")


def unwrapped_name(name: str) -> str:
    """``name`` (a parameter or module path) without wrapper prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name
