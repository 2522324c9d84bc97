"""Model families by name, and loading one from a :class:`~cord.config.ModelConfig`.

A family is a plug-in: its module calls :func:`register_family` (a loader
``(ModelConfig) -> adapter``) when it is imported, and is found lazily by name — the built-in
ones through :data:`BUILTIN_FAMILIES` (name -> module), a third party's through the
``cord.families`` entry-point group (``name = "pkg.module"`` for a module that registers
itself, or ``"pkg.module:load"`` for the loader). This module imports no family: adding one
touches only its own files, presets and tests. ``name_or_path: tiny`` builds the family's
tiny offline model (no network); anything else is a hub name or local path. A local folder
written by ``cord train`` with LoRA holds base weights plus the adapter
(:mod:`cord.models.export`); the adapter is applied with peft as it was in training.

Models load straight onto the configured device in the configured dtype
(:func:`from_pretrained_on`: ``device_map={"": device}``): no full host copy per rank; on the
``meta`` device they are built from their config alone.
"""

from __future__ import annotations

import difflib
import importlib
import os
from typing import Any, Callable

import torch

from cord import CordError
from cord.models.export import base_only_kwargs, is_lora_export, load_lora_export

_FAMILIES: dict[str, Callable[[Any], Any]] = {}

#: built-in families: name -> the module that registers it when imported
BUILTIN_FAMILIES: dict[str, str] = {
    "qwen2-audio": "cord.models.qwen",
    "qwen2.5-omni": "cord.models.qwen",
    "qwen3-omni": "cord.models.qwen3_omni",
    "mini": "cord.mini.family",
    "step-audio2": "cord.models.step_audio2",
    "voxtral": "cord.models.voxtral",
    "gemma3n": "cord.models.gemma3n",
}

#: the entry-point group third-party families register under (see the module docstring)
ENTRY_POINT_GROUP = "cord.families"


def register_family(name: str, loader: Callable[[Any], Any]) -> None:
    """Register ``loader(model_config) -> adapter`` under ``name`` (later wins). A family's
    module calls this at import time."""
    _FAMILIES[name] = loader


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def families() -> list[str]:
    """Every family name that can be loaded (nothing is imported to list them)."""
    return sorted(set(_FAMILIES) | set(BUILTIN_FAMILIES) | set(_entry_points()))


def family_loader(name: str) -> Callable[[Any], Any]:
    """The loader registered under ``name``, importing its module on first use."""
    if name not in _FAMILIES:
        module = BUILTIN_FAMILIES.get(name)
        if module is not None:
            importlib.import_module(module)
        else:
            ep = _entry_points().get(name)
            if ep is not None:
                try:
                    obj = ep.load()
                except ImportError as e:
                    raise CordError(f"model family '{name}' (entry point {ep.value}) cannot be imported: {e}") from None
                if name not in _FAMILIES and callable(obj):
                    register_family(name, obj)  # "pkg.module:load": the loader itself
    loader = _FAMILIES.get(name)
    if loader is None:
        known = families()
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" — did you mean '{near[0]}'?" if near else ""
        if name in known:
            raise CordError(f"model family '{name}': its module did not call register_family('{name}', ...)")
        raise CordError(f"model family '{name}' is not supported{hint} (supported: {', '.join(known)})")
    return loader


def weights_error(name: str, e: BaseException) -> CordError:
    """One line for a weights file safetensors cannot read (cut short by a full disk or an
    interrupted copy, or not a safetensors file at all)."""
    detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return CordError(f"cannot load model '{name}': a weights file is truncated or corrupt ({detail}); copy or "
                     "export the model again")


def load_adapter(cfg) -> Any:
    """Build the adapter for ``cfg`` (a ModelConfig), with LoRA applied when configured.
    Weights a family's own loader cannot read and a missing tokenizer are one line."""
    try:
        adapter = family_loader(cfg.family)(cfg)
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        raise weights_error(cfg.name_or_path, e) from None
    if cfg.name_or_path != "tiny":
        check_tokenizer(getattr(adapter, "tokenizer", None), cfg.name_or_path)
    local = os.path.expanduser(cfg.name_or_path)
    if cfg.name_or_path != "tiny" and is_lora_export(local):
        # an export of a LoRA run: base weights + adapter; with model.lora set, training
        # continues the saved adapter rather than stacking a fresh one on it
        adapter.model = load_lora_export(adapter.model, local, trainable=cfg.lora is not None, lora_cfg=cfg.lora)
    elif cfg.lora is not None:
        adapter.model = apply_lora(adapter.model, cfg.lora, adapter=adapter)
    return adapter


def looks_like_path(name: str) -> bool:
    """A name that can only be a local path, never a hub id (``org/name``)."""
    return (
        name in (".", "..")
        or name.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or name.endswith(("/", os.sep))
        or name.count("/") >= 2
        or (os.sep != "/" and os.sep in name)
    )


def check_model_path(name: str) -> str:
    """``name`` with ``~`` expanded when it is a local path; a CordError when it has the form
    of a path that does not exist (else the hub reports "Repo id must be in the form ...")."""
    local = os.path.expanduser(name)
    if os.path.isdir(local) and not os.path.isfile(os.path.join(local, "config.json")):
        raise CordError(
            f"model folder {name} has no config.json: not a saved model (use a folder written by "
            "save_pretrained, e.g. <train.output_dir>/model)"
        )
    if os.path.exists(local):
        return local
    if looks_like_path(name):
        raise CordError(
            f"model path {name} does not exist (and is not a hub name: those look like 'org/name', "
            "e.g. Qwen/Qwen2-Audio-7B-Instruct)"
        )
    return name


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_device(name: str) -> torch.device:
    """``model.device`` as a torch device; one line for a device this machine does not have
    (``cuda`` without a CUDA build or GPU, ``cuda:3`` on a 2-GPU machine, ``mps`` off a Mac)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise CordError(f"model.device={name!r} is not a device name (use auto, cpu, cuda, cuda:N, mps or meta)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "torch sees no CUDA GPU on this machine")
            raise CordError(f"model.device={name!r}, but {why}: use model.device=auto (or cpu), or install the CUDA "
                            "build of torch that matches your driver")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CordError(f"model.device={name!r}, but this machine has {count} CUDA GPU(s) (cuda:0 … cuda:{count - 1})")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CordError(f"model.device={name!r}, but MPS is not available here: use model.device=auto (or cpu)")
    return device


def check_tokenizer(tokenizer, name: str) -> None:
    """One line for a model folder without tokenizer files: transformers then builds an empty
    tokenizer (one token), every prompt encodes to nothing, and the model fails far away
    (an IndexError on a 0-length attention mask)."""
    try:
        n = len(tokenizer)
    except TypeError:  # a tokenizer without a length: nothing to check
        return
    if n > 1:
        return
    raise CordError(f"model '{name}' has no tokenizer (its folder holds no tokenizer.json, vocab.json + merges.txt "
                    "or tokenizer.model): copy the tokenizer files of its base model into it, or export it with "
                    "save_pretrained of the model and its tokenizer")


def apply_lora(model, lora_cfg, *, adapter):
    """Wrap ``model`` with a peft LoRA adapter on the ``target_modules`` inside the adapter's
    ``lora_scope`` (its decoder: the audio encoder has q/k/v projections with the same names),
    never inside a module named in its ``lora_exclude`` (an MoE's experts)."""
    import re

    from peft import LoraConfig, get_peft_model

    from cord.models.base import lora_target_regex

    scope = tuple(getattr(adapter, "lora_scope", ()) or ())
    if not scope:
        raise CordError(f"adapter {type(adapter).__name__} has no lora_scope: it cannot train with model.lora")
    target = lora_target_regex(scope, lora_cfg.target_modules, tuple(getattr(adapter, "lora_exclude", ()) or ()))
    # Resolved here to full module paths: peft rewrites a regex on MoE models whose layout
    # changed in transformers 5 (Qwen3-Omni) into bare leaf names, which would reach the
    # audio encoder's q/k/v too; a list of full paths matches exactly those modules.
    paths = [n for n, _ in model.named_modules() if re.fullmatch(target, n)]
    if not paths:
        raise CordError(
            f"model.lora.target_modules {lora_cfg.target_modules} match no module of the language model "
            f"({', '.join(scope)})"
        )
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, target_modules=paths)
    wrapped = get_peft_model(model, config)
    exclude = tuple(getattr(adapter, "lora_exclude", ()) or ())
    inside = sorted({n.split(".lora_")[0] for n, _ in wrapped.named_parameters()
                     if ".lora_" in n and any(f".{e}." in n or n.startswith(f"{e}.") for e in exclude)})
    if inside:
        # peft maps an MoE model's mlp gate/up/down_proj targets onto its fused experts
        raise CordError(
            f"model.lora.target_modules {lora_cfg.target_modules} put LoRA inside {', '.join(exclude)} "
            f"({inside[0]}, peft's MoE mapping of gate/up/down_proj): drop gate_proj/up_proj/down_proj"
        )
    return wrapped


def _deepspeed_zero3() -> bool:
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return False
    return bool(is_deepspeed_zero3_enabled())


def from_pretrained_on(model_cls, name, *, device: torch.device, dtype: torch.dtype, config=None,
                       attn_implementation: str | None = None, **kwargs):
    """``model_cls.from_pretrained(name, ...)`` straight onto ``device`` in ``dtype`` (no full host
    copy per process; ZeRO-3 partitions the weights itself and refuses a device map).

    ``device="meta"`` builds the model from its config under ``torch.device("meta")``: shapes
    and dtypes only, no memory, no file read but the config (transformers >= 5.25 refuses a
    ``device_map`` on the meta device, and no version needs the weights for it). With
    ``output_loading_info=True`` the meta model comes with empty loading info, like a
    checkpoint that matched."""
    if device.type == "meta":
        if config is None:
            config = model_cls.config_class.from_pretrained(name)
        if attn_implementation:
            config._attn_implementation = attn_implementation
        with torch.device("meta"):
            model = model_cls(config).to(dtype=dtype)
        if kwargs.get("output_loading_info"):
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model
    kwargs = {"dtype": dtype, **kwargs}
    if config is not None:
        kwargs["config"] = config
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    on_device = not _deepspeed_zero3()
    if on_device:
        kwargs["device_map"] = {"": device}
    out = model_cls.from_pretrained(name, **kwargs)
    if not on_device:
        (out[0] if isinstance(out, tuple) else out).to(device)
    return out


def _load_hf(model_cls_name: str, cfg):
    import transformers
    from transformers import AutoProcessor

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    name = check_model_path(cfg.name_or_path)
    model_cls = getattr(transformers, model_cls_name)
    kwargs: dict[str, Any] = base_only_kwargs(name)  # a LoRA export: load_adapter applies its adapter
    try:
        from huggingface_hub.errors import HFValidationError
    except ImportError:  # pragma: no cover
        HFValidationError = ValueError  # noqa: N806
    try:
        try:
            processor = AutoProcessor.from_pretrained(name)
            tokenizer, feature_extractor = processor.tokenizer, processor.feature_extractor
        except HFValidationError:
            raise
        except (OSError, ValueError, TypeError, AttributeError):
            # a directory written by save_pretrained of a tiny model has no processor config
            from transformers import AutoFeatureExtractor, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(name)
            feature_extractor = AutoFeatureExtractor.from_pretrained(name)
        check_tokenizer(tokenizer, cfg.name_or_path)  # before the weights load
        model = from_pretrained_on(model_cls, name, device=device, dtype=dtype,
                                   attn_implementation=cfg.attn_implementation, **kwargs)
    except (HFValidationError, OSError, ValueError) as e:
        where = "" if os.path.exists(name) else " (and no local folder has that name)"
        raise CordError(f"cannot load model '{cfg.name_or_path}'{where}: {str(e).strip().splitlines()[0]}") from None
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        raise weights_error(cfg.name_or_path, e) from None
    model.eval()
    tokenizer.padding_side = "left"
    return model, tokenizer, feature_extractor


def _load_like_checkpoint(model, device: torch.device, dtype: torch.dtype):
    """``model`` as ``from_pretrained`` would load it from a checkpoint of its weights: cast to
    ``dtype`` and placed on ``device`` by transformers' loader. A plain ``.to(dtype)`` would
    also cast the buffers transformers keeps in fp32 (rotary ``inv_freq``, sinusoidal audio
    positions), so a bf16 tiny model would compute differently from a bf16 saved one."""
    if device.type == "meta" or _deepspeed_zero3():
        return model.to(device=device, dtype=dtype).eval()
    import copy

    loaded = type(model).from_pretrained(
        None, config=model.config, state_dict=model.state_dict(), dtype=dtype, device_map={"": device}
    )
    loaded.generation_config = copy.deepcopy(model.generation_config)
    loaded.config.name_or_path = model.config.name_or_path  # not the string "None"
    return loaded.eval()


def hf_family_loader(adapter_cls, model_cls_name: str, tiny_builder, **adapter_kwargs):
    """A loader for a family whose model is a transformers class (``model_cls_name``) and whose
    adapter is a :class:`cord.models.adapter.AdapterBase` (built with its ``from_config``);
    ``tiny_builder(seed, device)`` returns the tiny offline ``(model, tokenizer, feature_extractor)``."""

    def load(cfg):
        if cfg.name_or_path == "tiny":
            device = resolve_device(cfg.device)
            # Tiny weights are drawn on the CPU in fp32 whatever the target, so that tiny_seed
            # gives the same model on every device and dtype (CUDA's generator draws other
            # numbers); they are a few hundred kB. "meta" builds without memory or init.
            model, tokenizer, fe = tiny_builder(seed=cfg.tiny_seed, device="meta" if device.type == "meta" else "cpu")
            model = _load_like_checkpoint(model, device, resolve_dtype(cfg.dtype, device))
        else:
            model, tokenizer, fe = _load_hf(model_cls_name, cfg)
        return adapter_cls.from_config(model, tokenizer, fe, cfg, **adapter_kwargs)

    return load
