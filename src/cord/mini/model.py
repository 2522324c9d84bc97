"""The miniature LALM: a word-level Qwen2 decoder, a small log-mel audio encoder, a projector.

Same shape as the real families (encoder → projector → placeholder tokens in the decoder's
input embeddings), at a size that trains from scratch on two CPU cores:

- ``language_model``: ``transformers.Qwen2ForCausalLM`` (hidden 128, 2 layers by default)
  over a word-level vocabulary built in code from the task (numbers are single tokens).
- ``audio_encoder``: 80-bin log-mel at 100 frames per second → three stride-2 convolutions
  (12.5 encoder frames per second) → 2 pre-norm transformer layers; plus ``ctc_head``, a linear
  CTC readout over the same vocabulary used only by Stage B's auxiliary loss (it stands in
  for the ASR pretraining Whisper brings to real LALMs).
- ``projector``: stacks ``projector_stack`` (2) consecutive encoder frames — the decoder sees
  6.25 audio tokens per second, like the pooling after Qwen2-Audio's encoder, so an audio
  prompt is about as long as the question's text — then a two-layer MLP into the decoder's
  embedding space. The CTC readout stays at the encoder's 12.5 frames per second.

Prompts are minimal because the model is trained from scratch on two tasks. Solving (the
default): text ``question words <sep>``, audio ``<audio>×n <sep>`` with n = decoder audio tokens
of that clip. Repeating the question (``task="repeat"``, what Stage B aligns the audio path
on): the same with ``<repeat>`` before ``<sep>``.
Clips are padded to the batch's longest clip (no 30 s window) with a feature mask; every
layer of the encoder zeroes padded frames, so a clip's encoding does not depend on what it
is batched with.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cord import CordError
from cord.data.audio import SAMPLE_RATE
from cord.models.adapter import AdapterBase
from cord.models.base import set_generation_ids
from cord.types import PromptBatch

PAD, EOS, UNK, SEP, AUDIO, REPEAT = "<pad>", "<eos>", "<unk>", "<sep>", "<audio>", "<repeat>"
SPECIAL_TOKENS = [PAD, EOS, UNK, SEP, AUDIO, REPEAT]  # PAD is id 0 and doubles as the CTC blank
#: the prompt tasks: "solve" (the default: answer with a worked solution) and "repeat" (say the
#: question back: the transcript); a task other than "solve" adds its token before <sep>
TASKS = ("solve", "repeat")
CONFIG_NAME = "mini_config.json"
WEIGHTS_NAME = "model.safetensors"


# ---------------------------------------------------------------------------- tokenizer
def build_word_tokenizer(words: list[str]):
    """A word-level ``PreTrainedTokenizerFast``: special tokens, then ``words`` (numbers are
    whole words). Decoding joins words with spaces and re-attaches punctuation, so a worked
    solution round-trips: ``"7 + 5 = 12. The answer is 12."``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+|[^\w\s]+
    # WordPiece's decoder with cleanup: "12 ." -> "12.", "now ?" -> "now?", "17 ," -> "17,"
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    fast.add_special_tokens({"additional_special_tokens": [SEP, AUDIO, REPEAT]})
    fast.padding_side = "left"
    return fast


# ------------------------------------------------------------------------------ config
@dataclass
class MiniConfig:
    """Sizes of the miniature. ``vocab_size`` is filled from the tokenizer."""

    vocab_size: int = 0
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    n_mels: int = 80
    hop_length: int = 160  # mel hop in samples: 10 ms, 100 frames per second
    #: eager attention: on sequences this short it is faster on CPU than sdpa
    attn_implementation: str = "eager"
    encoder_dim: int = 128
    encoder_layers: int = 2
    encoder_heads: int = 4
    encoder_ffn: int = 256
    encoder_convs: int = 3  # each halves the frame rate: 100 Hz -> 12.5 Hz
    projector_stack: int = 2  # encoder frames per decoder audio token: 12.5 Hz -> 6.25 Hz
    #: the decoder's input and output embeddings are one matrix (as in Qwen2-0.5B)
    tie_embeddings: bool = False
    #: what an audio token is (MiniLALM.encode_audio): "projected" (the projector's image of the
    #: stacked frames), "soft" (the CTC readout's posterior-weighted word embeddings of its frames),
    #: "both" (their sum) or "words" (one token per word the CTC readout hears: its frames'
    #: posterior-weighted word embeddings, averaged)
    audio_tokens: str = "words"
    pad_token_id: int = 0
    eos_token_id: int = 1
    audio_token_id: int = 4
    extra: dict = field(default_factory=dict)

    def qwen2_config(self):
        from transformers import Qwen2Config

        return Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=512,
            tie_word_embeddings=self.tie_embeddings,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            bos_token_id=None,
            attention_dropout=0.0,
            attn_implementation=self.attn_implementation,
        )


def encoder_output_length(n_frames: int | torch.Tensor, n_convs: int):
    """Encoder frames for ``n_frames`` mel frames (each conv: kernel 3, stride 2, padding 1)."""
    for _ in range(n_convs):
        n_frames = (n_frames - 1) // 2 + 1
    return n_frames


# ----------------------------------------------------------------------------- modules
class _EncoderBlock(nn.Module):
    """Pre-norm self-attention + MLP with a key padding mask (written out rather than
    ``nn.TransformerEncoderLayer`` so eval mode takes no nested-tensor fast path: batched and
    one-by-one encodings then agree to float precision)."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :].bool())
        x = x + self.out(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class MiniAudioEncoder(nn.Module):
    """(B, mel, F) log-mel + (B, F) mask → (B, N, D) frames + (B, N) mask, N = F / 2^convs."""

    def __init__(self, cfg: MiniConfig) -> None:
        super().__init__()
        self.n_convs = cfg.encoder_convs
        dims = [cfg.n_mels] + [cfg.encoder_dim] * cfg.encoder_convs
        self.convs = nn.ModuleList(nn.Conv1d(i, o, 3, stride=2, padding=1) for i, o in zip(dims[:-1], dims[1:]))
        self.blocks = nn.ModuleList(
            _EncoderBlock(cfg.encoder_dim, cfg.encoder_heads, cfg.encoder_ffn) for _ in range(cfg.encoder_layers)
        )
        self.norm = nn.LayerNorm(cfg.encoder_dim)
        self.ctc_head = nn.Linear(cfg.encoder_dim, cfg.vocab_size)

    def output_lengths(self, n_frames):
        return encoder_output_length(n_frames, self.n_convs)

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = feature_mask.long().sum(-1)
        x = features * feature_mask[:, None, :].to(features.dtype)
        for conv in self.convs:
            lengths = (lengths - 1) // 2 + 1
            x = F.gelu(conv(x))
            # zero the frames past each clip's end, so the next conv sees the same zeros
            # (its own padding) whether or not the clip was padded to a longer batch
            valid = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
            x = x * valid[:, None, :].to(x.dtype)
        x = x.transpose(1, 2)  # (B, N, D)
        x = x + _sinusoids(x.shape[1], x.shape[2], x.device, x.dtype)
        for block in self.blocks:
            x = block(x, valid)
        return self.norm(x), valid

    def ctc_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.ctc_head(hidden)


def stack_frames(hidden: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D), (B, N) → (B, ⌈N/k⌉, k·D), (B, ⌈N/k⌉): each group of k consecutive frames
    concatenated; frames past a clip's end are zeroed first, so a clip's last (partial)
    group is the same whether or not the clip was padded to a longer batch."""
    if k == 1:
        return hidden, valid
    b, n, d = hidden.shape
    pad = (-n) % k
    hidden = F.pad(hidden * valid[..., None].to(hidden.dtype), (0, 0, 0, pad))
    lengths = valid.long().sum(-1)
    groups = (lengths + k - 1) // k
    out_valid = torch.arange((n + pad) // k, device=valid.device)[None, :] < groups[:, None]
    return hidden.reshape(b, (n + pad) // k, k * d), out_valid


def ctc_segments(path: torch.Tensor, valid: torch.Tensor, blank: int) -> list[list[tuple[int, int]]]:
    """Per clip, the [start, end) frame spans of the words on a greedy CTC path (B, N): maximal
    runs of one non-blank id (a blank between two equal ids splits them; padding is blank)."""
    out = []
    for ids, ok in zip(path.tolist(), valid.tolist()):
        spans: list[tuple[int, int]] = []
        prev, start = blank, 0
        for t, (i, v) in enumerate(zip(ids, ok)):
            i = i if v else blank
            if i != prev:
                if prev != blank:
                    spans.append((start, t))
                start = t
            prev = i
        if prev != blank:
            spans.append((start, len(ids)))
        out.append(spans)
    return out


def _sinusoids(length: int, dim: int, device, dtype) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(pos * inv)
    out[:, 1::2] = torch.cos(pos * inv)
    return out.to(dtype)


class MiniLALM(nn.Module):
    """All parameters of the miniature, under the names the trainer selects by:
    ``audio_encoder``, ``projector``, ``language_model`` (whose ``lm_head`` is untied)."""

    def __init__(self, cfg: MiniConfig) -> None:
        super().__init__()
        from transformers import Qwen2ForCausalLM

        self.config = cfg
        self.audio_encoder = MiniAudioEncoder(cfg)
        if cfg.audio_tokens == "words":
            # a linear map (no bias) of each heard word's soft embedding, starting as the identity
            self.projector = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False))
            with torch.no_grad():
                self.projector[0].weight.copy_(torch.eye(cfg.hidden_size))
        elif cfg.audio_tokens == "soft":
            # a linear map (no bias) of the stacked soft word embeddings, starting as their sum
            self.projector = nn.Sequential(nn.Linear(cfg.hidden_size * cfg.projector_stack, cfg.hidden_size, bias=False))
            with torch.no_grad():
                self.projector[0].weight.copy_(torch.eye(cfg.hidden_size).repeat(1, cfg.projector_stack))
        else:
            self.projector = nn.Sequential(
                nn.Linear(cfg.encoder_dim * cfg.projector_stack, cfg.hidden_size), nn.GELU(),
                nn.Linear(cfg.hidden_size, cfg.hidden_size)
            )
        self.language_model = Qwen2ForCausalLM(cfg.qwen2_config())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def audio_token_count(self, n_frames: int) -> int:
        """Decoder audio tokens for a clip of ``n_frames`` mel frames (not for ``words`` tokens,
        whose count depends on what is heard: :meth:`audio_token_counts`)."""
        k = self.config.projector_stack
        return -(-int(self.audio_encoder.output_lengths(n_frames)) // k)

    def audio_token_counts(self, features: torch.Tensor, feature_mask: torch.Tensor) -> list[int]:
        """Decoder audio tokens of each clip of a (B, mel, F) batch: one per ``projector_stack``
        encoder frames, or with ``words`` tokens one per word heard (at least one)."""
        if self.config.audio_tokens != "words":
            return [self.audio_token_count(int(n)) for n in feature_mask.sum(-1)]
        with torch.no_grad():
            hidden, valid = self.audio_encoder(features.to(self.dtype), feature_mask)
            path = self.audio_encoder.ctc_logits(hidden).argmax(-1)
        return [max(1, len(s)) for s in ctc_segments(path, valid, self.config.pad_token_id)]

    @property
    def generation_config(self):
        return self.language_model.generation_config

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Linear:
        return self.language_model.get_output_embeddings()

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.language_model.gradient_checkpointing_enable(**kwargs)

    def encode_audio(self, features: torch.Tensor, feature_mask: torch.Tensor):
        """(B, mel, F) features → decoder audio tokens (B, M, H) with mask (B, M), and the
        encoder output ``(frames (B, N, D), mask (B, N))`` they were stacked from.

        A token is the projector's image of its ``projector_stack`` stacked frames plus, with
        ``soft_tokens``, the sum over those frames of Σ_v p_ctc(v | frame) · E[v]: the decoder's own
        input embeddings weighted by the CTC readout's posterior, blank (id 0) left out. The soft
        part is what a recogniser hears, as text embeddings; the projected part is everything else."""
        hidden, valid = self.audio_encoder(features, feature_mask)
        kind = self.config.audio_tokens
        if kind == "words":
            return (*self._word_tokens(hidden, valid), (hidden, valid))
        k = self.config.projector_stack
        stacked, stacked_valid = stack_frames(hidden, valid, k)
        if kind == "projected":
            return self.projector(stacked), stacked_valid, (hidden, valid)
        first = len(SPECIAL_TOKENS)  # words only: no blank, no prompt token
        probs = self.audio_encoder.ctc_logits(hidden).float().softmax(-1)[..., first:]
        embed = self.get_input_embeddings().weight[first:].float()
        soft = ((probs @ embed) * valid[..., None].to(probs.dtype)).to(hidden.dtype)  # (B, N, H), 0 past the end
        soft_stacked, _ = stack_frames(soft, valid, k)  # (B, M, k·H)
        if kind == "soft":
            return self.projector(soft_stacked), stacked_valid, (hidden, valid)
        b, m, _ = soft_stacked.shape
        return self.projector(stacked) + soft_stacked.view(b, m, k, -1).sum(2), stacked_valid, (hidden, valid)

    def _word_tokens(self, hidden: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``words`` tokens: one per segment of the greedy CTC path (:func:`ctc_segments`). Its
        value is the decoder's own embedding of the word heard there (E[argmax of the segment's
        mean posterior]); its gradient is that of the soft mix, the mean over the segment's
        frames of Σ_v q(v | frame)·E[v] with q the readout's posterior over the words
        (renormalised without blank and prompt tokens) — a straight-through estimator, so later
        stages can train the recogniser through the decoder. (The soft mix itself as the value
        was tried first: the frozen decoder could not read it, docs/demo/recipe.md.) A clip with
        no word heard gets one token over all its frames."""
        first = len(SPECIAL_TOKENS)
        logits = self.audio_encoder.ctc_logits(hidden).float()
        q = logits[..., first:].softmax(-1)
        soft = q @ self.get_input_embeddings().weight[first:].float()  # (B, N, H)
        segments = ctc_segments(logits.detach().argmax(-1), valid, self.config.pad_token_id)
        m = max(max(1, len(s)) for s in segments)
        weights = torch.zeros(hidden.shape[0], m, hidden.shape[1], dtype=soft.dtype, device=soft.device)
        token_valid = torch.zeros(hidden.shape[0], m, dtype=torch.bool, device=soft.device)
        for b, segs in enumerate(segments):
            if not segs:
                segs = [(0, max(1, int(valid[b].sum())))]
            for j, (start, end) in enumerate(segs):
                weights[b, j, start:end] = 1.0 / (end - start)
            token_valid[b, : len(segs)] = True
        soft_tokens = weights @ soft  # (B, M, H)
        heard = (weights @ q.detach()).argmax(-1) + first  # (B, M) the word each segment most likely is
        hard = self.get_input_embeddings().weight[heard].float().detach()
        tokens = (hard + soft_tokens - soft_tokens.detach()).to(hidden.dtype)
        return self.projector(tokens), token_valid

    def embed(
        self,
        input_ids: torch.Tensor,
        extra: dict[str, torch.Tensor],
        return_encoder: bool = False,
        n_prompt: int | None = None,
    ):
        """Decoder input embeddings (B, L, H) with each clip's projected encoder frames written
        over its ``<audio>`` placeholders (placeholders of a row are consecutive, in order).
        ``n_prompt``: only the first n_prompt columns hold placeholders (an ``<audio>`` in a
        completion after them is an ordinary token). With ``return_encoder``: also the encoder
        output ``(frames (B, N, D), mask (B, N))`` (None for text prompts), for losses on the
        encoder itself (Stage B's CTC)."""
        embeds = self.get_input_embeddings()(input_ids)
        if "input_features" not in extra:
            return (embeds, None) if return_encoder else embeds
        tokens, token_valid, (hidden, valid) = self.encode_audio(
            extra["input_features"].to(embeds.dtype), extra["feature_attention_mask"]
        )
        audio = tokens[token_valid]  # (sum of audio tokens, H), row-major
        is_audio = input_ids == self.config.audio_token_id
        if n_prompt is not None:
            is_audio[:, n_prompt:] = False
        if int(is_audio.sum()) != audio.shape[0]:
            raise CordError(
                f"audio placeholders ({int(is_audio.sum())}) do not match encoder frames ({audio.shape[0]}); "
                "build audio prompts with the mini adapter's audio_prompts"
            )
        embeds = embeds.masked_scatter(is_audio[..., None], audio.to(embeds.dtype))
        return (embeds, (hidden, valid)) if return_encoder else embeds


def build_mini(cfg: MiniConfig | None = None, seed: int = 0, words: list[str] | None = None):
    """(model, tokenizer) for a freshly initialised miniature over the task vocabulary."""
    from cord.mini.task import vocabulary

    tokenizer = build_word_tokenizer(words if words is not None else vocabulary())
    cfg = MiniConfig(**asdict(cfg)) if cfg is not None else MiniConfig()
    cfg.vocab_size = len(tokenizer)
    cfg.pad_token_id = tokenizer.pad_token_id
    cfg.eos_token_id = tokenizer.eos_token_id
    cfg.audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO)
    torch.manual_seed(seed)
    model = MiniLALM(cfg).eval()
    set_generation_ids(model.generation_config, tokenizer)
    return model, tokenizer


def load_mini(directory: str | Path):
    """(model, tokenizer) from a directory written by :meth:`MiniAdapter.save_pretrained`."""
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise CordError(
            f"no mini model at {directory}: {CONFIG_NAME} not found (use name_or_path: tiny, or a directory "
            "written by the mini adapter's save_pretrained)"
        )
    cfg = MiniConfig(**json.loads(cfg_path.read_text())["model"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
    tokenizer.padding_side = "left"
    model = MiniLALM(cfg)
    state = load_file(str(directory / WEIGHTS_NAME))
    if cfg.tie_embeddings:  # the lm_head is the input embedding matrix (saved once)
        state["language_model.lm_head.weight"] = state["language_model.model.embed_tokens.weight"]
    model.load_state_dict(state)
    if cfg.tie_embeddings:
        model.language_model.lm_head.weight = model.language_model.model.embed_tokens.weight
    set_generation_ids(model.generation_config, tokenizer)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- adapter
class MiniAdapter(AdapterBase):
    """The adapter contract (cord.models.base) for the miniature, on
    :class:`cord.models.adapter.AdapterBase` (the loader's fields, pad id, device, peft unwrap
    (:meth:`core`: the :class:`MiniLALM`, its language model holding any LoRA layers), encoding,
    left padding, the long-audio policy). What is its own: the two prompt tasks, the log-mel
    features (cached per clip), the decoder calls and the saved format.

    The model has no system prompt or instruction: it is trained from scratch on the fixed
    prompts described in the module docstring (``model.system_prompt`` and
    ``model.instruction`` are not used).
    """

    family = "mini"
    module_map = {
        "audio_encoder": ("audio_encoder",),
        "projector": ("projector",),
        "language_model": ("language_model",),
        "lm_head": ("language_model.lm_head",),
    }
    lora_scope = ("language_model.model",)

    def __init__(self, model: MiniLALM, tokenizer: Any, feature_extractor: Any = None, *,
                 feature_cache_size: int = 50_000, **kwargs: Any) -> None:
        if feature_extractor is None:
            from transformers import WhisperFeatureExtractor

            # Whisper's own log-mel recipe (80 bins, 25 ms window, log10, clamp to max − 8,
            # scaled) from a maintained class instead of a hand-written STFT (a 20 ms hop was
            # tried to halve the first conv's cost: the encoder then learned far more slowly).
            # It runs on one clip at a time (no padding), so a clip's features never depend on
            # its batch; audio_prompts pads afterwards and masks the padding.
            feature_extractor = WhisperFeatureExtractor(
                feature_size=model.config.n_mels, hop_length=model.config.hop_length
            )
        super().__init__(model, tokenizer, feature_extractor, **kwargs)
        # no prompt text to put them in; without an instruction, cord eval refuses an item
        # whose question is about its clip (cord.eval.runner) instead of dropping the question
        del self.system_prompt, self.instruction
        self.sep_token_id = tokenizer.convert_tokens_to_ids(SEP)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO)
        self.repeat_token_id = tokenizer.convert_tokens_to_ids(REPEAT)
        self._features: dict[bytes, torch.Tensor] = {}
        self._cache_size = feature_cache_size

    # ----------------------------------------------------------------- tokens
    @property
    def eos_token_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id]

    @property
    def placeholder_token_ids(self) -> list[int]:
        """Never sampled: a sampled <audio> would be taken for an audio slot."""
        return [self.audio_token_id]

    def lm_head(self) -> nn.Linear:
        return self.core().get_output_embeddings()

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` (no special tokens added)."""
        return self._encode(text)

    # ---------------------------------------------------------------- prompts
    def _task_suffix(self, task: str) -> list[int]:
        """The prompt's last tokens for ``task`` (one of :data:`TASKS`)."""
        if task == "solve":
            return [self.sep_token_id]
        if task == "repeat":
            return [self.repeat_token_id, self.sep_token_id]
        raise CordError(f"unknown mini prompt task {task!r} (one of {', '.join(TASKS)})")

    def text_prompt_ids(self, question: str, task: str = "solve") -> list[int]:
        return self._encode(question) + self._task_suffix(task)

    def text_prompts(self, examples: list, task: str = "solve") -> PromptBatch:
        """Text prompts; ``task``: "solve" (the trainer's and ``cord eval``'s) or "repeat"."""
        ids, mask = self._left_pad([self.text_prompt_ids(ex.question_text, task) for ex in examples])
        return PromptBatch(ids, mask, "text", {}, list(range(len(examples))))

    def clip_features(self, audio: np.ndarray) -> torch.Tensor:
        """(mel, frames) log-mel of one 16 kHz clip; cached by content (Stage B and the trainer
        see the same clips every epoch)."""
        key = hashlib.blake2b(np.ascontiguousarray(audio).view(np.uint8), digest_size=16).digest()
        hit = self._features.get(key)
        if hit is not None:
            return hit
        feats = self.feature_extractor(
            audio, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="pt", device="cpu"
        )["input_features"][0]
        if len(self._features) >= self._cache_size:
            self._features.pop(next(iter(self._features)))
        self._features[key] = feats
        return feats

    def audio_prompts(self, examples: list, task: str = "solve", augment=None) -> PromptBatch:
        """Audio prompts; ``task``: "solve" (the trainer's and ``cord eval``'s) or "repeat";
        ``augment(features, mask)``: applied to the padded features before anything reads them
        (Stage B's SpecAugment; with ``words`` tokens the count of audio tokens depends on it)."""
        suffix = self._task_suffix(task)
        arrays, keep = self.prepare_audio(examples)
        if not arrays:
            empty = torch.zeros((0, 1), dtype=torch.long)
            return PromptBatch(empty, empty.clone(), "audio", {}, [])
        feats = [self.clip_features(a) for a in arrays]
        n_frames = max(f.shape[1] for f in feats)
        features = torch.zeros(len(feats), feats[0].shape[0], n_frames)
        fmask = torch.zeros(len(feats), n_frames, dtype=torch.long)
        for i, f in enumerate(feats):
            features[i, :, : f.shape[1]] = f
            fmask[i, : f.shape[1]] = 1
        if augment is not None:
            features = augment(features, fmask)
        counts = self.core().audio_token_counts(features, fmask)
        ids, mask = self._left_pad([[self.audio_token_id] * n + suffix for n in counts])
        extra = {"input_features": features.to(self.core().dtype), "feature_attention_mask": fmask}
        return PromptBatch(ids, mask, "audio", extra, keep)

    # ----------------------------------------------------------------- hidden
    def decoder_hidden(self, input_ids, attention_mask, extra, inputs_embeds=None, n_prompt=None) -> torch.Tensor:
        """(B, L, H) last-layer hidden states of the decoder for a left-padded batch
        (``inputs_embeds``: precomputed :meth:`MiniLALM.embed` output; ``n_prompt``: prompt
        columns, the only ones that hold audio placeholders)."""
        if inputs_embeds is None:
            inputs_embeds = self.core().embed(input_ids, extra, n_prompt=n_prompt)
        embeds = inputs_embeds
        # positions count only attended tokens, so left padding does not shift them
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self._language_model().model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    def _language_model(self):
        # through the (possibly peft-wrapped) model, so LoRA layers are used when present
        return self.model.language_model

    def completion_hidden(
        self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, H) hidden states predicting each completion token (see cord.models.base)."""
        ids, attn, extra = self.joined(prompts, completion_ids, completion_mask)
        hidden = self.decoder_hidden(ids, attn, extra, n_prompt=prompts.input_ids.shape[1])
        return self.completion_slice(hidden, prompts, completion_ids.shape[1])

    def joined(self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor):
        """(ids, attention_mask, extra) of ``prompt ⊕ completion`` on the model's device."""
        device = self.device
        prompts = prompts.to(device)
        completion_ids = completion_ids.to(device)
        completion_mask = completion_mask.to(device).bool()
        ids = torch.cat([prompts.input_ids, completion_ids.masked_fill(~completion_mask, self.pad_token_id)], dim=1)
        attn = torch.cat([prompts.attention_mask, completion_mask.long()], dim=1)
        return ids, attn, prompts.extra

    @staticmethod
    def completion_slice(hidden: torch.Tensor, prompts: PromptBatch, n_completion: int) -> torch.Tensor:
        # position width-1+t (the <sep>, then completion tokens) predicts completion token t
        width = prompts.input_ids.shape[1]
        return hidden[:, width - 1 : width - 1 + n_completion]

    # --------------------------------------------------------------- generate
    def generate(self, prompts: PromptBatch, **kwargs: Any) -> torch.Tensor:
        """Qwen2 ``generate`` with a KV cache from the merged input embeddings; returns only the
        new tokens (B, T_new). Positions come from the attention mask (left padding safe)."""
        from cord.rollout.sampling import clean_generation_defaults

        prompts = prompts.to(self.device)
        embeds = self.core().embed(prompts.input_ids, prompts.extra)
        lm = self._language_model()
        with clean_generation_defaults(lm.get_base_model() if hasattr(lm, "get_base_model") else lm):
            out = lm.generate(
                input_ids=prompts.input_ids, inputs_embeds=embeds, attention_mask=prompts.attention_mask, **kwargs
            )
        sequences = out.sequences if hasattr(out, "sequences") else out
        return sequences[:, prompts.input_ids.shape[1] :]

    def prefill(self, prompts: PromptBatch):
        """Encode each clip and prefill the decoder once (cord.rollout.decode): the last prompt
        position's hidden state (B, H) and the DecodeState; no logits."""
        from cord.rollout.decode import DecodeState, cache_kwargs, new_cache, next_positions

        prompts = prompts.to(self.device)
        embeds = self.core().embed(prompts.input_ids, prompts.extra)
        position_ids = (prompts.attention_mask.cumsum(-1) - 1).clamp(min=0)
        decoder = self._language_model().model
        cache = new_cache(self.core().language_model.config)
        out = decoder(inputs_embeds=embeds, attention_mask=prompts.attention_mask, position_ids=position_ids,
                      **cache_kwargs(decoder, cache))
        state = DecodeState(cache, prompts.attention_mask.long(), next_positions(position_ids, prompts.attention_mask))
        return out.last_hidden_state[:, -1], state

    def decode(self, state, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row (R,) against the cache; the new hidden states (R, H)."""
        from cord.rollout.decode import cache_kwargs

        decoder = self._language_model().model
        position_ids = state.position[:, None]
        state.advance()
        out = decoder(input_ids=tokens[:, None], attention_mask=state.attention_mask, position_ids=position_ids,
                      **cache_kwargs(decoder, state.cache))
        return out.last_hidden_state[:, -1]

    # ------------------------------------------------------------------- save
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write weights (safetensors), ``mini_config.json`` and the tokenizer to ``directory``
        (via a temporary sibling, renamed into place). Load back with family ``mini`` and
        ``name_or_path: <directory>``.

        A LoRA-wrapped model (a peft model, or cord.models.export's base-and-adapter stand-in)
        is written as cord.models.export describes: the base weights (LoRA tensors dropped,
        every part trained in full as trained) plus the unmerged adapter, which
        ``load_adapter`` applies again on load."""
        import shutil

        from safetensors.torch import save_file

        from cord.models.export import ADAPTER_CONFIG, base_state_dict, is_peft_model

        peft = getattr(self.model, "peft_model", None)  # export's _BaseAndAdapter
        if peft is None and is_peft_model(self.model):
            peft = self.model
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        core = peft.get_base_model() if peft is not None else self.core()
        state = base_state_dict(peft) if peft is not None else core.state_dict()
        if core.config.tie_embeddings:  # one matrix: stored once, as the input embeddings
            state = {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps({"family": "mini", "model": asdict(core.config)}, indent=2))
        self.tokenizer.save_pretrained(str(tmp))
        if peft is not None:
            peft.save_pretrained(str(tmp), save_embedding_layers=False)
            cfg_path = tmp / ADAPTER_CONFIG  # the base is this folder, not a hub model
            data = json.loads(cfg_path.read_text(encoding="utf-8"))
            data["base_model_name_or_path"] = None
            cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
        return directory
