"""The trained model as a folder (``<output_dir>/model``): how ``cord train`` writes it and how
:func:`cord.models.load_adapter` reads it back.

Full fine-tuning: the model as trained, in its dtype, with config, generation config,
tokenizer and feature extractor.

LoRA: base weights **plus the adapter, not merged**. The trained forward computes the base
layer in the model's dtype and adds the adapter's term ``B·A·x·α/r`` computed in fp32 (peft
keeps adapter weights in fp32 on a bf16/fp16 model). Merging instead adds the fp32 weight update
``B·A·α/r`` (typically ~1e-4 of a weight) into bf16 weights, whose spacing is 2^-8..2^-7 of the
value: rounding drops nearly all of it, and the merged model is a different model from the one
trained (``tests/models/test_export.py`` shows it). So the folder holds:

* ``config.json``, ``generation_config.json``, ``model*.safetensors``: the base the adapter was
  trained on, in the model's dtype — the language model as loaded, plus any part trained in
  full next to the adapter (``train.trainable: [audio_encoder, projector]``) as trained;
* ``adapter_config.json``, ``adapter_model.safetensors``: the LoRA adapter (peft format,
  fp32 weights);
* the tokenizer and feature extractor files.

:func:`load_lora_export` (called by ``load_adapter`` when the folder has an
``adapter_config.json``) loads the base from the folder and applies the adapter with peft,
exactly as in training: the reloaded model's logits equal the trained model's (bit-identical
on the same device and dtype in the tests). Plain transformers (>= 5, peft installed) also
attaches the adapter when it loads the folder, but casts the adapter weights to the model's
dtype (small differences in bf16). To serve one merged checkpoint, load with
``dtype=torch.float32`` and ``merge_and_unload()``: merged in fp32 the update survives.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
#: a subfolder that never exists: passed to transformers' from_pretrained as the adapter
#: subfolder so that it does not attach the folder's adapter itself (it would cast it to the
#: model dtype); cord attaches it with peft instead (:func:`load_lora_export`).
_NO_EMBEDDED_ADAPTER = ".cord-adapter-applied-by-peft"


def is_lora_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a local folder holding a LoRA adapter next to its base weights."""
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def base_only_kwargs(path: str | os.PathLike) -> dict[str, Any]:
    """Extra ``from_pretrained`` kwargs that load only the base weights of a LoRA export
    (transformers would otherwise attach the adapter found in the folder)."""
    return {"adapter_kwargs": {"subfolder": _NO_EMBEDDED_ADAPTER}} if is_lora_export(path) else {}


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def load_lora_export(model, path: str | os.PathLike, *, trainable: bool, lora_cfg: Any = None):
    """Wrap the base ``model`` (loaded from ``path``) with the adapter saved in ``path``.

    The adapter keeps fp32 weights on a bf16/fp16 base (peft's ``autocast_adapter_dtype``),
    as it had in training. ``trainable``: continue training the saved adapter (``model.lora``
    set); its saved r/alpha/targets win over ``lora_cfg`` (a warning names any difference)."""
    from peft import PeftModel

    with warnings.catch_warnings():
        # a model on the meta device (shapes only): peft's copy of the adapter weights is a no-op
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter", category=UserWarning)
        wrapped = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    if lora_cfg is not None:
        saved = wrapped.peft_config["default"]
        differ = [
            f"{name} {mine} (saved: {theirs})"
            for name, mine, theirs in (
                ("r", lora_cfg.r, saved.r),
                ("alpha", lora_cfg.alpha, saved.lora_alpha),
                ("dropout", lora_cfg.dropout, saved.lora_dropout),
            )
            if mine != theirs
        ]
        if differ:
            warnings.warn(
                f"{path} holds a LoRA adapter: training continues with it, ignoring model.lora "
                f"{', '.join(differ)}",
                stacklevel=3,
            )
    return wrapped


def base_state_dict(peft_model) -> dict[str, Any]:
    """The base model's state dict under the base model's own key names: LoRA tensors
    dropped, ``<module>.base_layer.<param>`` renamed ``<module>.<param>`` (no copies)."""
    out: dict[str, Any] = {}
    for key, value in peft_model.get_base_model().state_dict().items():
        if ".lora_" in key:
            continue
        name = key.replace(".base_layer.", ".")
        if name in out:
            raise RuntimeError(f"export: two base tensors map to {name}")
        out[name] = value
    return out


class _BaseAndAdapter:
    """Stands in for a PeftModel in ``adapter.save_pretrained``: writes base + adapter."""

    def __init__(self, peft_model) -> None:
        self.peft_model = peft_model

    def save_pretrained(self, directory: str) -> None:
        base = self.peft_model.get_base_model()
        base.save_pretrained(directory, state_dict=base_state_dict(self.peft_model))
        # cord never resizes the vocabulary, so no embedding copy (and no hub request to
        # compare vocabulary sizes, which "auto" makes at save time)
        self.peft_model.save_pretrained(directory, save_embedding_layers=False)
        # The base is this folder (it may hold parts trained in full), not the hub model the
        # run started from: a base name here would let a peft loader pair the adapter with
        # the wrong weights.
        cfg_path = Path(directory) / ADAPTER_CONFIG
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = None
        cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class _WithState:
    """Stands in for a model in ``adapter.save_pretrained``: writes ``state`` (name -> tensor)
    as its weights — e.g. gathered from a sharded run into a model built on the ``meta``
    device, which holds shapes and config but no values. Everything else is the model's."""

    def __init__(self, model, state: dict[str, Any]) -> None:
        self._model, self._state = model, state

    def save_pretrained(self, directory: str, **kwargs) -> None:
        self._model.save_pretrained(directory, state_dict=self._state, **kwargs)

    def state_dict(self, *args, **kwargs) -> dict[str, Any]:
        return dict(self._state)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def export_model(adapter, directory: str | os.PathLike, state_dict: dict[str, Any] | None = None) -> Path:
    """Write ``adapter``'s model to ``directory`` (replaced atomically: a ``.tmp`` sibling is
    written first), loadable with ``model.name_or_path: <directory>``. ``state_dict``: the
    weights to write instead of the model's own (the model may then be on ``meta``)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        if state_dict is not None:
            if is_peft_model(adapter.model):
                raise ValueError("export_model: state_dict is for a model without LoRA")
            exporter = copy.copy(adapter)
            exporter.model = _WithState(adapter.model, state_dict)
            exporter.save_pretrained(str(tmp))
        elif is_peft_model(adapter.model):
            exporter = copy.copy(adapter)
            exporter.model = _BaseAndAdapter(adapter.model)
            exporter.save_pretrained(str(tmp))
        else:
            adapter.save_pretrained(str(tmp))
    except Exception as e:  # a full disk: no half-written model.tmp left; the old export stays
        shutil.rmtree(tmp, ignore_errors=True)
        from cord.paths import write_failure

        reason = write_failure(e)
        if reason is None:
            raise
        from cord import CordError

        raise CordError(f"cannot write the model to {directory}: {reason}; free space and rerun the same command "
                        "(training resumes from its last checkpoint and exports again)") from None
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory
