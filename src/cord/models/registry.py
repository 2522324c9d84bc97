"""Model families by name, and loading one from a :class:`~cord.config.ModelConfig`.

A family registers a loader ``(ModelConfig) -> adapter``. ``name_or_path: tiny`` builds the
family's tiny offline model (no network); anything else is a hub name or local path.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import torch

from cord import CordError

_FAMILIES: dict[str, Callable[[Any], Any]] = {}


def register_family(name: str, loader: Callable[[Any], Any]) -> None:
    """Register ``loader(model_config) -> adapter`` under ``name`` (later wins)."""
    _FAMILIES[name] = loader


def families() -> list[str]:
    _ensure_builtin()
    return sorted(_FAMILIES)


def load_adapter(cfg) -> Any:
    """Build the adapter for ``cfg`` (a ModelConfig), with LoRA applied when configured."""
    _ensure_builtin()
    loader = _FAMILIES.get(cfg.family)
    if loader is None:
        near = difflib.get_close_matches(cfg.family, list(_FAMILIES), n=1)
        hint = f" — did you mean '{near[0]}'?" if near else ""
        raise CordError(f"model family '{cfg.family}' is not supported{hint} (supported: {', '.join(families())})")
    adapter = loader(cfg)
    if cfg.lora is not None:
        adapter.model = apply_lora(adapter.model, cfg.lora)
    return adapter


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def apply_lora(model, lora_cfg):
    """Wrap ``model`` with a peft LoRA adapter on the language model's ``target_modules``."""
    from peft import LoraConfig, get_peft_model

    names = "|".join(lora_cfg.target_modules)
    # Restrict to the decoder: the audio encoder has q/k/v projections with the same names.
    target = rf".*language_model.*\.({names})$"
    if not any(__import__("re").fullmatch(target, n) for n, _ in model.named_modules()):
        raise CordError(
            f"model.lora.target_modules {lora_cfg.target_modules} match no module of the language model"
        )
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, target_modules=target)
    return get_peft_model(model, config)


def _load_hf(model_cls_name: str, cfg):
    import transformers
    from transformers import AutoProcessor

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model_cls = getattr(transformers, model_cls_name)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        try:
            processor = AutoProcessor.from_pretrained(cfg.name_or_path)
            tokenizer, feature_extractor = processor.tokenizer, processor.feature_extractor
        except (OSError, ValueError, TypeError, AttributeError):
            # a directory written by save_pretrained of a tiny model has no processor config
            from transformers import AutoFeatureExtractor, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path)
            feature_extractor = AutoFeatureExtractor.from_pretrained(cfg.name_or_path)
        model = model_cls.from_pretrained(cfg.name_or_path, **kwargs)
    except OSError as e:
        raise CordError(f"cannot load model '{cfg.name_or_path}': {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    tokenizer.padding_side = "left"
    return model, tokenizer, feature_extractor


def _qwen_loader(adapter_cls, model_cls_name: str, tiny_builder):
    def load(cfg):
        if cfg.name_or_path == "tiny":
            model, tokenizer, fe = tiny_builder(seed=cfg.tiny_seed)
            device = resolve_device(cfg.device)
            model.to(device=device, dtype=resolve_dtype(cfg.dtype, device))
        else:
            model, tokenizer, fe = _load_hf(model_cls_name, cfg)
        return adapter_cls(
            model,
            tokenizer,
            fe,
            system_prompt=cfg.system_prompt,
            instruction=cfg.instruction,
            long_audio=cfg.long_audio,
            max_audio_seconds=cfg.max_audio_seconds,
        )

    return load


_BUILTIN_DONE = False


def _ensure_builtin() -> None:
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    from cord.models.qwen import Qwen2AudioAdapter, Qwen25OmniThinkerAdapter
    from cord.models.tiny import build_tiny_qwen2_5_omni_thinker, build_tiny_qwen2_audio

    register_family(
        "qwen2-audio", _qwen_loader(Qwen2AudioAdapter, "Qwen2AudioForConditionalGeneration", build_tiny_qwen2_audio)
    )
    register_family(
        "qwen2.5-omni",
        _qwen_loader(
            Qwen25OmniThinkerAdapter, "Qwen2_5OmniThinkerForConditionalGeneration", build_tiny_qwen2_5_omni_thinker
        ),
    )
    try:  # the CPU miniature's family (cord demo), when present
        import cord.mini.family  # noqa: F401
    except ImportError:
        pass
