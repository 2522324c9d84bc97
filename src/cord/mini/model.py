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

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cord import CordError
from cord.models.base import set_generation_ids

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
            # none: a heard word is the decoder's own embedding of it. (A trainable linear map
            # starting as the identity was tried: Stage C's Adam moved all its entries at once
            # and the decoder could no longer read the words, docs/demo/recipe.md.)
            self.projector = nn.Identity()
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
