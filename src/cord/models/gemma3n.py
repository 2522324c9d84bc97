"""Model family ``gemma3n``: Google's Gemma 3n (``google/gemma-3n-E2B-it``, ``google/gemma-3n-E4B-it``),
audio and text only.

transformers' ``Gemma3nForConditionalGeneration`` cannot be built without ``timm`` (its vision
tower is a ``TimmWrapperModel``), which cord does not install. This family composes the parts
it needs from transformers' own gemma3n modules, under the checkpoint's parameter names so
the released safetensors load by name:

- ``model.audio_tower`` (``Gemma3nAudioEncoder``, a USM conformer), ``model.embed_audio``
  (``Gemma3nMultimodalEmbedder``: the projector into the decoder's width),
  ``model.language_model`` (``Gemma3nTextModel``: AltUp, LAuReL, per-layer inputs, KV sharing,
  sliding window) and ``lm_head`` (tied to the token embeddings).
- ``model.vision_tower.*`` and ``model.embed_vision.*`` in a checkpoint are **not loaded**
  (ignored on purpose: cord never gives the model an image). Any other unexpected or missing
  tensor is a :class:`cord.CordError`.

What differs from the Qwen families (whose adapter this one extends for completion hidden
states and cached decoding):

- **Logit soft cap**: logits = 30·tanh(lm_head(h)/30) (``final_logit_softcapping``). The
  adapter says so through ``logit_softcap``; the chunked objectives, the train step and the
  rollout engine apply it (``softcap=`` in :mod:`cord.objectives.divergence`).
- **Prompts** (Gemma 3n's chat template then ``Gemma3nProcessor``, built here as text):
  ``<bos><start_of_turn>user\\n{system}\\n\\n`` + for audio ``\\n\\n<start_of_audio>`` +
  188 × ``<audio_soft_token>`` + ``<end_of_audio>\\n\\n{instruction}``, for text
  ``{question}\\n{instruction}`` + ``<end_of_turn>\\n<start_of_turn>model\\n``. The assistant
  turn ends with ``<end_of_turn>``.
- **A fixed 188 soft tokens per clip** (a 30 s window, whatever the clip length, as the
  processor writes them): the encoder gives at most that many frames (4× conv subsampling
  then 4× reduction of 10 ms mel frames: one per 160 ms), the rest are filled with the
  embedding of the last audio-vocabulary id, exactly as ``Gemma3nModel.forward`` does.
- **One clip at a time through the encoder**: the conformer's output depends on the batch's
  padding (a 275-frame clip padded to 400 moves by up to 2.6e-4), so each clip is featurized
  and encoded alone, which is what the model sees for a single-clip request.
- **Token ids ≥ 262,144** (``vocab_size_per_layer_input``: the vision and audio vocabularies)
  are placeholders, never sampled: the engine suppresses them. Their per-layer inputs use id
  0, as transformers does.
- **Long audio**: the feature extractor's window is 30 s; ``model.max_audio_seconds`` is capped
  at it and ``model.long_audio`` decides what happens to longer clips.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
)
from transformers.models.gemma3n.configuration_gemma3n import (
    Gemma3nAudioConfig,
    Gemma3nConfig,
    Gemma3nTextConfig,
    Gemma3nVisionConfig,
)
from transformers.models.gemma3n.modeling_gemma3n import (
    Gemma3nAudioEncoder,
    Gemma3nMultimodalEmbedder,
    Gemma3nPreTrainedModel,
    Gemma3nTextModel,
)

from cord import CordError
from cord.data.audio import SAMPLE_RATE
from cord.data.paired import PairedExample
from cord.models.base import set_generation_ids
from cord.models.qwen import QwenAudioAdapter
from cord.types import PromptBatch

FAMILY = "gemma3n"

#: checkpoint tensors this family does not load (the vision tower and its embedder)
IGNORED_PREFIXES = ("model.vision_tower.", "model.embed_vision.")


class Gemma3nAudioTextCore(nn.Module):
    """``Gemma3nModel`` without its vision parts: audio encoder, audio embedder, text model.
    ``forward`` merges the audio into the placeholder positions and runs the text model."""

    def __init__(self, config: Gemma3nConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_tower = Gemma3nAudioEncoder(config.audio_config)
        self.embed_audio = Gemma3nMultimodalEmbedder(config.audio_config, config.text_config)
        self.language_model = Gemma3nTextModel(config.text_config)

    def audio_embeddings(self, input_features: torch.Tensor, input_features_mask: torch.Tensor,
                         audio_frames: torch.Tensor) -> torch.Tensor:
        """(N, soft tokens, H): each clip encoded alone over its own ``audio_frames`` mel frames,
        its padded encoder frames and the rest of the window filled with the padding embedding
        (the last audio-vocabulary id), as ``Gemma3nModel.forward`` fills them."""
        n_tok = int(self.config.audio_soft_tokens_per_image)
        pad_id = torch.tensor([[self.config.text_config.vocab_size - 1]], device=input_features.device)
        pad = self.embed_audio(input_ids=pad_id)  # (1, 1, H)
        out = []
        for i in range(input_features.shape[0]):
            n = int(audio_frames[i])
            feats = input_features[i : i + 1, :n]
            valid = input_features_mask[i : i + 1, :n].bool()
            enc = self.audio_tower(feats, ~valid, return_dict=True)
            emb = self.embed_audio(inputs_embeds=enc.last_hidden_state)
            emb = torch.where(enc.audio_mel_mask.unsqueeze(-1), pad.to(emb.dtype), emb)
            if emb.shape[1] > n_tok:
                raise CordError(f"gemma3n: a clip gives {emb.shape[1]} audio frames, more than the {n_tok} soft "
                                "tokens of the window (clips must be at most 30 s)")
            fill = pad.to(emb.dtype).expand(1, n_tok - emb.shape[1], emb.shape[-1])
            out.append(torch.cat([emb, fill], dim=1))
        return torch.cat(out, dim=0)

    def embed(self, input_ids: torch.Tensor, input_features=None, input_features_mask=None,
              audio_frames=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(token embeddings with the audio in place of the soft tokens, per-layer inputs)."""
        cfg = self.config
        lm = self.language_model
        vision_lo, audio_lo = int(cfg.vision_config.vocab_offset), int(cfg.audio_config.vocab_offset)
        if bool(((input_ids >= vision_lo) & (input_ids < audio_lo)).any()):
            raise CordError("gemma3n: the prompt holds vision-vocabulary tokens; this family has no vision tower")
        embeds = lm.embed_tokens(input_ids)
        per_layer = lm.get_per_layer_inputs(input_ids)  # ids outside its table (placeholders) -> id 0
        audio_mask = input_ids >= audio_lo
        if bool(audio_mask.any()):
            hard = self.embed_audio(input_ids=input_ids[audio_mask]).to(embeds.dtype)
            embeds = embeds.masked_scatter(audio_mask.unsqueeze(-1).expand_as(embeds), hard)
        if input_features is not None:
            feats = self.audio_embeddings(input_features, input_features_mask, audio_frames)
            slots = input_ids == cfg.audio_token_id
            have = slots.sum(dim=1).tolist()
            want = [feats.shape[1]] * feats.shape[0]
            if have != want:
                raise CordError(f"gemma3n: prompts hold {have} audio soft tokens but the audio gives {want}")
            embeds = embeds.masked_scatter(slots.unsqueeze(-1).expand_as(embeds), feats.to(embeds.dtype))
        return embeds, per_layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Any = None, use_cache: bool | None = None,
                input_features: torch.Tensor | None = None, input_features_mask: torch.Tensor | None = None,
                audio_frames: torch.Tensor | None = None, **kwargs: Any) -> BaseModelOutputWithPast:
        embeds, per_layer = self.embed(input_ids, input_features, input_features_mask, audio_frames)
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # counted over attended tokens, so left padding does not shift them
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        return self.language_model(inputs_embeds=embeds, per_layer_inputs=per_layer, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs)


class Gemma3nAudioForCausalLM(Gemma3nPreTrainedModel, GenerationMixin):
    """Gemma 3n for audio and text: :class:`Gemma3nAudioTextCore` + the (tied) ``lm_head``, with
    the final logit soft cap in ``forward`` (for ``generate``; cord's training path projects
    the hidden states itself)."""

    config_class = Gemma3nConfig
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _keys_to_ignore_on_load_unexpected = [r"^model\.vision_tower\.", r"^model\.embed_vision\."]
    input_modalities = ("audio", "text")
    main_input_name = "input_ids"

    def __init__(self, config: Gemma3nConfig) -> None:
        super().__init__(config)
        self.model = Gemma3nAudioTextCore(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.language_model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def prepare_inputs_for_generation(self, *args: Any, is_first_iteration: bool | None = False, **kwargs: Any):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration:  # the audio is in the cache after the prompt's step
            for key in ("input_features", "input_features_mask", "audio_frames"):
                inputs.pop(key, None)
        return inputs

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Any = None, use_cache: bool | None = None,
                input_features: torch.Tensor | None = None, input_features_mask: torch.Tensor | None = None,
                audio_frames: torch.Tensor | None = None, logits_to_keep: int = 0, **kwargs: Any):
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         use_cache=use_cache, input_features=input_features, input_features_mask=input_features_mask,
                         audio_frames=audio_frames, **kwargs)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        cap = self.config.text_config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return CausalLMOutputWithPast(logits=logits, cache=out.cache)


# --------------------------------------------------------------------------- tiny
#: the tiny byte tokenizer's special tokens, in id order after the 256 bytes; the vocabulary
#: is laid out like the real one: text ids, then a vision block, then an audio block
TINY_TEXT_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_audio>",
                      "<start_of_image>", "<unused0>"]
TINY_VISION_TOKENS = ["<end_of_image>", "<image_soft_token>", "<unused_v2>", "<unused_v3>"]
TINY_AUDIO_TOKENS = ["<end_of_audio>", "<audio_soft_token>", "<unused_a2>", "<unused_a3>"]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = TINY_TEXT_SPECIALS + TINY_VISION_TOKENS + TINY_AUDIO_TOKENS
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.padding_side = "left"
    ids = fast.convert_tokens_to_ids(specials)
    assert ids == list(range(256, 256 + len(specials))), ids
    return fast


def build_tiny_gemma3n(seed: int = 0, device: str | torch.device = "cpu"):
    """(model, tokenizer, feature extractor) at toy size, random weights, no network."""
    from transformers import Gemma3nAudioFeatureExtractor

    tokenizer = build_tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text_vocab = 256 + len(TINY_TEXT_SPECIALS)
    vision_lo, audio_lo = text_vocab, text_vocab + len(TINY_VISION_TOKENS)
    vocab = audio_lo + len(TINY_AUDIO_TOKENS)
    text = Gemma3nTextConfig(
        vocab_size=vocab, vocab_size_per_layer_input=text_vocab, hidden_size=32, intermediate_size=64,
        num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        hidden_size_per_layer_input=8, laurel_rank=4, altup_num_inputs=2, num_kv_shared_layers=2,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"] * 2,
        activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0], max_position_embeddings=2048,
        pad_token_id=ids("<pad>"), eos_token_id=[ids("<eos>"), ids("<end_of_turn>")], bos_token_id=ids("<bos>"),
        final_logit_softcapping=30.0,
    )
    audio = Gemma3nAudioConfig(
        vocab_size=len(TINY_AUDIO_TOKENS), vocab_offset=audio_lo, hidden_size=16, conf_num_attention_heads=2,
        conf_num_hidden_layers=2, sscp_conv_channel_size=(8, 4), conf_attention_chunk_size=4,
        conf_attention_context_left=5, conf_conv_kernel_size=3,
    )
    vision = Gemma3nVisionConfig(vocab_size=len(TINY_VISION_TOKENS), vocab_offset=vision_lo, hidden_size=16)
    config = Gemma3nConfig(
        text_config=text, audio_config=audio, vision_config=vision, audio_soft_tokens_per_image=188,
        boi_token_id=ids("<start_of_image>"), eoi_token_id=ids("<end_of_image>"),
        image_token_id=ids("<image_soft_token>"), boa_token_id=ids("<start_of_audio>"),
        eoa_token_id=ids("<end_of_audio>"), audio_token_id=ids("<audio_soft_token>"), tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Gemma3nAudioForCausalLM(config).eval()
    set_generation_ids(model.generation_config, tokenizer, _end_ids(tokenizer))
    return model, tokenizer, Gemma3nAudioFeatureExtractor()


# --------------------------------------------------------------------------- adapter
class Gemma3nAdapter(QwenAudioAdapter):
    family = FAMILY
    default_system_prompt = ""
    module_map = {
        "audio_encoder": ("model.audio_tower",),
        "projector": ("model.embed_audio",),
        "language_model": ("model.language_model",),
        "lm_head": ("lm_head",),
    }
    lora_scope = ("model.language_model",)

    #: the feature extractor's window (``max_length`` 480,000 samples)
    window_seconds = 30.0

    def __init__(self, model, tokenizer, feature_extractor, **kwargs) -> None:
        super().__init__(model, tokenizer, feature_extractor, **kwargs)
        self.max_audio_seconds = min(float(self.max_audio_seconds), self.window_seconds)
        cfg = self._config()
        self.audio_token_id = int(cfg.audio_token_id)
        self.audio_token = tokenizer.convert_ids_to_tokens(self.audio_token_id)
        self.boa_token = tokenizer.convert_ids_to_tokens(int(cfg.boa_token_id))
        self.eoa_token = tokenizer.convert_ids_to_tokens(int(cfg.eoa_token_id))
        self.soft_tokens = int(cfg.audio_soft_tokens_per_image)
        self.eot_id = self._special("<end_of_turn>")

    def _config(self) -> Gemma3nConfig:
        return self._generation_model().config

    def _special(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid < 0 or tid == self.tokenizer.unk_token_id:
            raise CordError(f"gemma3n tokenizer has no {token} token: not a Gemma 3n tokenizer")
        return tid

    # ----------------------------------------------------------------- tokens
    @property
    def logit_softcap(self) -> float | None:
        """Gemma's ``final_logit_softcapping`` (30.0): logits = c·tanh(z/c)."""
        cap = self._config().text_config.final_logit_softcapping
        return None if cap is None else float(cap)

    @property
    def eos_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id, self.eot_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
        return sorted(i for i in ids if i is not None)

    @property
    def end_of_turn_token_id(self) -> int:
        return self.eot_id

    @property
    def placeholder_token_ids(self) -> list[int]:
        """Every id of the vision and audio vocabularies (≥ ``vocab_size_per_layer_input``,
        262,144): soft tokens and their markers, never text."""
        text = self._config().text_config
        return list(range(int(text.vocab_size_per_layer_input), int(text.vocab_size)))

    # ---------------------------------------------------------------- prompts
    def render(self, user_content: str) -> str:
        system = f"{self.system_prompt.strip()}\n\n" if self.system_prompt else ""
        return f"<bos><start_of_turn>user\n{system}{user_content}<end_of_turn>\n<start_of_turn>model\n"

    def audio_user_content(self) -> str:
        soft = self.audio_token * self.soft_tokens
        return f"\n\n{self.boa_token}{soft}{self.eoa_token}\n\n{self.instruction.strip()}"

    def text_user_content(self, question: str) -> str:
        return f"{question.strip()}\n{self.instruction.strip()}".rstrip()

    def audio_features(self, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Each clip featurized alone (as the processor does for one clip), stacked with its
        frame count: input_features (B, F, 128), input_features_mask (B, F), audio_frames (B,)."""
        feats, masks = [], []
        for a in arrays:
            f = self.feature_extractor([a], sampling_rate=SAMPLE_RATE, return_tensors="pt")
            feats.append(f["input_features"][0])
            masks.append(f["input_features_mask"][0].bool())
        width = max(f.shape[0] for f in feats)
        x = torch.zeros(len(feats), width, feats[0].shape[-1], dtype=torch.float32)
        m = torch.zeros(len(feats), width, dtype=torch.bool)
        for i, (f, k) in enumerate(zip(feats, masks, strict=True)):
            x[i, : f.shape[0]] = f
            m[i, : k.shape[0]] = k
        frames = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        return {"input_features": x.to(self.model.dtype), "input_features_mask": m, "audio_frames": frames}

    def audio_prompts(self, examples: list[PairedExample]) -> PromptBatch:
        arrays, keep = self.prepare_audio(examples)
        if not arrays:
            return PromptBatch(torch.zeros((0, 1), dtype=torch.long), torch.zeros((0, 1), dtype=torch.long),
                               "audio", {}, [])
        extra = self.audio_features(arrays)
        seq = self._encode(self.render(self.audio_user_content()))
        ids, mask = self._left_pad([list(seq) for _ in arrays])
        return PromptBatch(ids, mask, "audio", extra, keep)

    # ----------------------------------------------------------------- hidden
    def _decoder_hidden(self, input_ids, attention_mask, extra):
        core = self._generation_model().model
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = core(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, **extra)
        return out.last_hidden_state


# --------------------------------------------------------------------------- loading
def load_model(name_or_path: str, *, device: torch.device, dtype: torch.dtype, attn_implementation: str | None = None):
    """(model, tokenizer, feature extractor) from a hub name or folder of a Gemma 3n checkpoint
    (``Gemma3nForConditionalGeneration`` names; the vision tensors are skipped) or of a folder
    cord wrote. Missing or unexpected tensors are a CordError."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    from cord.models.export import base_only_kwargs
    from cord.models.registry import check_model_path, from_pretrained_on

    name = check_model_path(name_or_path)
    kwargs: dict[str, Any] = {"output_loading_info": True}
    if os.path.isdir(name):
        kwargs.update(base_only_kwargs(name))
    try:
        config = Gemma3nConfig.from_pretrained(name)
        if getattr(config, "model_type", None) != "gemma3n":
            raise CordError(f"{name_or_path} is not a Gemma 3n model (model_type {config.model_type!r})")
        model, info = from_pretrained_on(Gemma3nAudioForCausalLM, name, config=config, device=device, dtype=dtype,
                                         attn_implementation=attn_implementation, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name)
        fe = AutoFeatureExtractor.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise CordError(f"cannot load model '{name_or_path}': {str(e).strip().splitlines()[0]}") from None
    check_loading_info(info, name_or_path)
    model.to(device).eval()
    tokenizer.padding_side = "left"
    set_generation_ids(model.generation_config, tokenizer, _end_ids(tokenizer))
    return model, tokenizer, fe


def _end_ids(tokenizer) -> list[int]:
    """Gemma 3n ends a turn with <end_of_turn> as well as its eos."""
    eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")}
    return sorted(i for i in eos if i is not None)


def check_loading_info(info: dict, name: str) -> None:
    """A CordError for tensors the checkpoint lacks or has beyond the audio/text model (the
    vision tensors are expected and ignored; the tied ``lm_head`` may be absent)."""
    missing = [k for k in info.get("missing_keys", []) if k != "lm_head.weight"]
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith(IGNORED_PREFIXES)]
    mismatched = list(info.get("mismatched_keys", []))
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        if keys:
            shown = ", ".join(str(k) for k in sorted(keys, key=str)[:3])
            raise CordError(f"gemma3n checkpoint {name}: {len(keys)} {what} tensors ({shown}{', ...' if len(keys) > 3 else ''})")


def load(cfg) -> Gemma3nAdapter:
    """The family loader: ``cfg`` is a :class:`cord.config.ModelConfig`."""
    from cord.models.registry import (
        _load_like_checkpoint,
        resolve_device,
        resolve_dtype,
    )

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.name_or_path == "tiny":
        model, tokenizer, fe = build_tiny_gemma3n(seed=cfg.tiny_seed, device="meta" if device.type == "meta" else "cpu")
        model = _load_like_checkpoint(model, device, dtype)
    else:
        model, tokenizer, fe = load_model(cfg.name_or_path, device=device, dtype=dtype,
                                          attn_implementation=cfg.attn_implementation)
    return Gemma3nAdapter.from_config(model, tokenizer, fe, cfg)


def _register() -> None:
    from cord.models.registry import register_family

    register_family(FAMILY, load)


_register()
