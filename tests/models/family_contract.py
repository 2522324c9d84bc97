"""What the family contract (tests/models/test_family_contract.py) runs on, family by family:
one :class:`Family` per family of the registry, holding only what differs between them (the
examples that stress the family's audio layout, how to count its encoder's outputs, how its
model computes full-sequence logits, where its presets live). The checks themselves are the
same for every family; each family's own file (tests/models/test_<family>.py) keeps what only
that family has (its chat layout, its feature extractor, its reference implementation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cord.config import ModelConfig
from cord.data.paired import PairedExample
from cord.models import load_adapter
from cord.types import PromptBatch
from tests.conftest import make_examples

ROOT = Path(__file__).resolve().parents[2]
#: every method (a preset per method in each family's configs folder)
METHODS = ["sft", "forward_kl", "opd", "opd_weighted", "grpo", "grpo_opd", "cord"]
#: what makes a preset's 2 steps run on the tiny model in seconds
FAST = ["model.name_or_path=tiny", "model.dtype=float32", "model.device=cpu", "data.train=builtin:tiny-arith",
        "data.limit=4", "train.batch_size=2", "train.grad_accum=1", "train.max_steps=2", "train.progress=false",
        "train.tensorboard=false", "train.bf16=false", "rollout.max_new_tokens=4", "rollout.seq_n=2"]
#: the decoder projections LoRA is asked for in the contract (a family keeps it off its experts)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ------------------------------------------------------------------------------- helpers
def sharpen(adapter, attention: bool = True) -> None:
    """Scale the decoder's q/k projections (x12, when ``attention``) and the head (x8): at init
    a wrong position or a wrong token barely shows in the logits."""
    with torch.no_grad():
        if attention:
            for name, p in adapter.model.named_parameters():
                if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                    p.mul_(12.0)
        adapter.lm_head().weight.mul_(8.0)


def completions(n: int, seed: int = 0, low: int = 40, high: int = 250):
    """n completions of 7 ids in [low, high), ragged: 3, 5, 7 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (n, 7), generator=g)
    mask = torch.ones(n, 7, dtype=torch.bool)
    for i in range(n):
        mask[i, 3 + 2 * i :] = False
    return ids, mask


def softcapped(adapter, logits: torch.Tensor) -> torch.Tensor:
    """The head's logits as the model's own forward gives them (Gemma's soft cap, where set)."""
    cap = getattr(adapter, "logit_softcap", None)
    return logits if cap is None else cap * torch.tanh(logits / cap)


def hf_logits(adapter, ids: torch.Tensor, attn: torch.Tensor, extra: dict, n_prompt: int) -> torch.Tensor:
    """Logits of a transformers-style forward over the whole sequence (prompt + completion)."""
    model_inputs = getattr(adapter, "model_inputs", lambda e: e)
    return adapter.model(input_ids=ids, attention_mask=attn, **model_inputs(extra)).logits


def mini_logits(adapter, ids: torch.Tensor, attn: torch.Tensor, extra: dict, n_prompt: int) -> torch.Tensor:
    """The miniature's forward written out: its embedding (audio over the prompt's placeholders
    only: an ``<audio>`` in a completion is an ordinary token), then its decoder; one
    unpadded row, so no mask."""
    core = adapter.model
    return core.language_model(inputs_embeds=core.embed(ids, extra, n_prompt=n_prompt)).logits


def argmax_loop(adapter, spec: "Family", prompts: PromptBatch, steps: int) -> list[list[int]]:
    """Greedy decoding by full forwards, no cache, placeholders never picked: the engines' reference."""
    out = []
    eos = set(adapter.eos_token_ids)
    for r in range(len(prompts)):
        one = prompts.select([r])
        n = int(one.attention_mask.sum())  # the row alone, without the batch's left padding
        ids, attn = one.input_ids[:, -n:], one.attention_mask[:, -n:]
        extra = spec.unpadded_extra(one.extra)
        got = []
        for _ in range(steps):
            with torch.no_grad():
                logits = spec.logits(adapter, ids, attn, extra, n)[0, -1]
            logits[adapter.placeholder_token_ids] = float("-inf")
            tok = int(logits.argmax())
            got.append(tok)
            if tok in eos:
                break
            ids = torch.cat([ids, torch.tensor([[tok]])], 1)
            attn = torch.cat([attn, torch.ones(1, 1, dtype=attn.dtype)], 1)
        out.append(got)
    return out


# ----------------------------------------------------------------- per-family encoders
def _qwen_encoder_tokens(adapter, prompts: PromptBatch) -> int:
    """Qwen2-Audio / Qwen2.5-Omni: the audio tower's own output-length formula."""
    tower = adapter.model.model.audio_tower
    return int(tower._get_feat_extract_output_lengths(prompts.extra["feature_attention_mask"].sum(-1))[1])


def _qwen3_omni_encoder_tokens(adapter, prompts: PromptBatch) -> int:
    out = adapter.model.model.get_audio_features(prompts.extra["input_features"], prompts.extra["feature_attention_mask"])
    return out.last_hidden_state.shape[0]


def _voxtral_encoder_tokens(adapter, prompts: PromptBatch) -> int:
    feats = adapter.model_inputs(prompts.extra)["input_features"]
    return adapter.model.model.get_audio_features(feats).pooler_output.shape[0]


def _gemma3n_encoder_tokens(adapter, prompts: PromptBatch) -> int:
    """The window of soft tokens the encoder fills (188 per clip; tests/models/test_gemma3n.py
    checks the ragged encoder output inside it)."""
    x = prompts.extra
    return adapter.model.model.audio_embeddings(x["input_features"], x["input_features_mask"], x["audio_frames"]).shape[1]


def _step_audio2_encoder_tokens(adapter, prompts: PromptBatch) -> int:
    return adapter.core().audio_embeddings(prompts.extra["input_features"], prompts.extra["feature_lens"])[0].shape[0]


def _mini_encoder_tokens(adapter, prompts: PromptBatch) -> int:
    """Frame-rate tokens: the stacked encoder frames; ``words`` tokens (the default): the words
    on the greedy CTC path, collapsed here with itertools (runs of one id, blanks dropped; a clip
    with none gets one token)."""
    from itertools import groupby

    from cord.mini.model import stack_frames

    model = adapter.model
    hidden, valid = model.audio_encoder(prompts.extra["input_features"], prompts.extra["feature_attention_mask"])
    if model.config.audio_tokens != "words":
        return int(stack_frames(hidden, valid, model.config.projector_stack)[1].sum())
    path = model.audio_encoder.ctc_logits(hidden).argmax(-1)
    blank = model.config.pad_token_id
    return sum(max(1, sum(1 for k, _ in groupby(row[: int(n)]) if k != blank))
               for row, n in zip(path.tolist(), valid.sum(-1).tolist()))


# ------------------------------------------------------------------ per-family examples
def voxtral_examples() -> list[PairedExample]:
    """0.4 s, 31.4 s and 1.5 s of audio: the middle clip is two 30 s chunks (so flattening the
    chunks column by column instead of row by row would misplace them)."""
    exs = make_examples(3)
    exs[1].audio = np.concatenate([exs[1].audio] * 33)
    return exs


def gemma3n_examples() -> list[PairedExample]:
    """0.4 s, 3.8 s and 1.5 s of audio (ragged: 3, 24 and 10 encoder frames of the 188)."""
    exs = make_examples(3)
    exs[1].audio = np.concatenate([exs[1].audio] * 4)
    return exs


def step_audio2_clip(samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(samples)).astype(np.float32)


def step_audio2_examples() -> list[PairedExample]:
    """1 s; 2000 samples (13 frames: the reference's conv2 padding matters); 25 s + 2000
    samples (a second chunk of odd length in a batch padded to 2502 frames: the key-mask
    parity matters); 0.4 s."""
    from cord.models.step_audio2 import CHUNK_SAMPLES

    lengths = [16000, 2000, CHUNK_SAMPLES + 2000, 6400]
    qs = ["What is 2+3?", "Name a prime.", "Is 9 odd? Answer yes or no.", "7*6?"]
    return [PairedExample(f"e{i}", q, step_audio2_clip(n, i), answer="5") for i, (q, n) in enumerate(zip(qs, lengths))]


def mini_examples(seed: int = 0) -> list[PairedExample]:
    """Task questions with clips of very different lengths (so prompts pad differently)."""
    from cord.mini.task import make_task

    rng = np.random.default_rng(seed)
    rows = make_task(seed, n_train=4, n_dev=1, n_test=8)["test"][:4]
    out = []
    for i, r in enumerate(rows):
        seconds = [0.6, 2.9, 1.37, 4.1][i]
        audio = (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
        out.append(PairedExample(r["id"], r["question"], audio, r["answer"], r["solution"]))
    return out


def mini_completions(adapter, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random completions of different lengths, some ending in EOS; one holds
    an ``<audio>`` token (an ordinary token there, not a placeholder)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 11, 1, 8][:n]
    ids = torch.full((n, max(lengths)), adapter.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, max(lengths)), dtype=torch.bool)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.randint(5, len(adapter.tokenizer), (length,), generator=g)
        ids[i, length - 1] = adapter.eos_token_ids[0] if i % 2 else ids[i, length - 1]
        mask[i, :length] = True
    ids[1, 2] = adapter.audio_token_id
    return ids, mask


def _mini_unpadded_extra(extra: dict) -> dict:
    """One row's features without the batch's feature padding."""
    if "feature_attention_mask" not in extra:
        return extra
    f = int(extra["feature_attention_mask"].sum())
    return {"input_features": extra["input_features"][..., :f], "feature_attention_mask": extra["feature_attention_mask"][:, :f]}


# ------------------------------------------------------------------------------ families
@dataclass(frozen=True)
class Family:
    """One family's side of the contract."""

    name: str
    #: configs/<presets>/<method>.yaml: the family's presets, one per method
    presets: str
    #: how many embeddings the family's encoder (+ projector) gives for a one-clip audio batch
    encoder_tokens: Callable[[Any, PromptBatch], int]
    #: ModelConfig fields beyond family, name_or_path, dtype and device
    load: dict = field(default_factory=dict)
    #: 3 or 4 examples, ragged audio, chosen to stress the family's audio layout
    examples: Callable[[], list[PairedExample]] = lambda: make_examples(3)
    #: ragged completions for these examples (ids that are never placeholders)
    completions: Callable[[Any, int, int], tuple[torch.Tensor, torch.Tensor]] = lambda a, n, seed=0: completions(n, seed)
    #: logits of a full forward over one unpadded sequence (the reference the checks compare with)
    logits: Callable[..., torch.Tensor] = hf_logits
    #: one row's ``extra`` without the batch's padding (for families whose features pad to the batch)
    unpadded_extra: Callable[[dict], dict] = lambda extra: extra
    #: scale the decoder's q/k projections too when sharpening (not where norms undo it)
    sharpen_attention: bool = True
    #: the token the audio prompt holds once per encoder output
    audio_token: str = "audio_token_id"
    #: False where audio prompts have one fixed length (a fixed window of soft tokens)
    audio_prompt_lengths_differ: bool = True
    #: how many trailing ids audio and text prompts share (the instruction and the assistant turn)
    shared_tail: int = 8
    #: a reloaded model builds the same text prompts (False where the saved chat template renders
    #: the text prompt differently)
    same_text_prompts_after_reload: bool = True
    #: the presets train on ``FAST`` plus these
    preset_sets: tuple[str, ...] = ()
    #: the parts the module map puts the parameters in (no lm_head where it is tied to the embeddings)
    parts: frozenset[str] = frozenset({"audio_encoder", "projector", "language_model", "lm_head"})
    #: how many modules LoRA wraps for ``LORA_TARGETS`` (the tiny decoders have 2 layers)
    lora_modules: int = 2 * 7

    def __str__(self) -> str:
        return self.name

    def config(self, **kw) -> ModelConfig:
        fields = {"name_or_path": "tiny", "dtype": "float32", "device": "cpu", **self.load, **kw}
        return ModelConfig(family=self.name, **fields)

    def adapter(self, **kw):
        return load_adapter(self.config(**kw))


_NO_PROJECTOR = frozenset({"audio_encoder", "language_model", "lm_head"})  # the Omni thinkers' audio towers project

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("qwen2-audio", "qwen2-audio-7b", _qwen_encoder_tokens, completions=lambda a, n, seed=0: completions(n, seed, 0)),
    Family("qwen2.5-omni", "qwen2.5-omni-7b", _qwen_encoder_tokens,
           completions=lambda a, n, seed=0: completions(n, seed, 0), parts=_NO_PROJECTOR),
    # MoE: the mlp projections are inside the experts, which LoRA never wraps (2 layers x 4 attention)
    Family("qwen3-omni", "qwen3-omni", _qwen3_omni_encoder_tokens,
           completions=lambda a, n, seed=0: completions(n, seed, 0, 256), same_text_prompts_after_reload=False,
           parts=_NO_PROJECTOR, lora_modules=2 * 4),
    Family("voxtral", "voxtral", _voxtral_encoder_tokens, load={"max_audio_seconds": 60}, examples=voxtral_examples),
    # 4 layers x 7 projections, less k_proj/v_proj in the 2 KV-shared layers; the head is tied
    Family("gemma3n", "gemma3n", _gemma3n_encoder_tokens, examples=gemma3n_examples, sharpen_attention=False,
           audio_prompt_lengths_differ=False, parts=frozenset({"audio_encoder", "projector", "language_model"}),
           lora_modules=4 * 7 - 2 * 2),
    Family("step-audio2", "step-audio2-mini", _step_audio2_encoder_tokens, load={"max_audio_seconds": 60.0},
           examples=step_audio2_examples, audio_token="audio_patch_id",
           preset_sets=("model.lora.r=4", "model.lora.alpha=8")),
    Family("mini", "mini", _mini_encoder_tokens, examples=mini_examples, completions=mini_completions,
           logits=mini_logits, unpadded_extra=_mini_unpadded_extra, shared_tail=1,
           parts=_NO_PROJECTOR),  # its words tokens are the decoder's own embeddings: no projector
]}
