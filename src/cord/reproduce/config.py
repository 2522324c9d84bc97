"""A reproduce config (``configs/<family>/reproduce.yaml``): its sections, loading and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cord import CordError
from cord.config import (
    ModelConfig,
    apply_overrides,
    format_validation_error,
    load_yaml,
)

# --- the config ---------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class SynthStage(_Section):
    """``cord synth`` of the training set (``data.train`` of every training stage)."""

    #: a local JSONL/CSV/Parquet file (relative to the config file, or the working directory) or a hub name
    input: str
    limit: int | None = Field(None, ge=1)
    workers: int | None = Field(None, ge=1)
    seed: int = 0
    tts: str | None = None
    #: more ``--set synth.key=value`` overrides
    set: list[str] = Field(default_factory=list)


class TrainStage(_Section):
    """One ``cord train`` per method preset."""

    #: preset names: ``<presets>/<name>.yaml`` (e.g. cord, forward_kl, sft, cord_full)
    methods: list[str] = Field(min_length=1)
    #: the folder of the presets (relative to the config file)
    presets: str = "."
    #: processes per training stage; > 1 (or an accelerate_config) runs it under accelerate launch.
    #: null: the accelerate config's own count
    processes: int | None = Field(1, ge=1)
    #: an accelerate config file (relative to the config file), e.g. ../accelerate/ddp.yaml
    accelerate_config: str | None = None
    #: ``--set key=value`` overrides for every method (train.max_steps=..., ...)
    set: list[str] = Field(default_factory=list)

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({m for m in v if v.count(m) > 1})
        if dup:
            raise ValueError(f"method(s) listed twice: {', '.join(dup)}")
        bad = [m for m in v if not m or "/" in m or m.startswith(".")]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a preset name (a file stem such as cord or forward_kl)")
        return v


class WarmupStage(_Section):
    """Optional: one ``cord train`` before every other model stage; its exported model is the
    base of everything after it (``eval-base``, every method's training). E.g. the tiny preset
    teaches its random model the questions from text, so the base has a gap to reduce."""

    #: a training preset (relative to the config file); its own data.train is kept
    preset: str
    #: ``--set key=value`` overrides of the warm-up run
    set: list[str] = Field(default_factory=list)


class EvalStage(_Section):
    """``cord eval`` of the base model and of every trained run, with the same settings."""

    #: registry names (voicebench-mmsu, voicebench-openbookqa, gsm8k-audio), local benchmark or
    #: MMAU folders (relative to the config file, or the working directory), or builtin:NAME
    #: (a built-in spoken dataset, made in cord's cache on first use)
    benchmarks: list[str] = Field(min_length=1)
    modalities: list[Literal["audio", "text"]] = Field(default_factory=lambda: ["audio", "text"])
    protocol: Literal["cord", "official"] = "cord"
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(512, ge=1)
    #: more ``--set`` overrides for every evaluation
    set: list[str] = Field(default_factory=list)


class TableStage(_Section):
    """``cord table`` of every evaluation against the base."""

    replicates: int = Field(2000, ge=100)
    seed: int = 0
    #: whose published numbers to show (default: model.name_or_path)
    anchors: str | None = None


class ReproduceConfig(_Section):
    """``configs/<family>/reproduce.yaml``."""

    #: the table's title
    name: str = "cord reproduce"
    #: the default output folder (--out overrides it)
    out: str | None = None
    #: model.* settings for every stage that loads the model (train: as --set over the preset;
    #: eval: the base model, and the family and loading settings of the trained runs)
    model: ModelConfig = Field(default_factory=ModelConfig)
    #: environment variables of every stage's command (e.g. OMP_NUM_THREADS for tiny CPU models)
    env: dict[str, str] = Field(default_factory=dict)
    synth: SynthStage
    warmup: WarmupStage | None = None
    train: TrainStage
    eval: EvalStage
    table: TableStage = Field(default_factory=TableStage)

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): str(x) for k, x in v.items()}
        return v


def load_reproduce_config(path: str | Path, overrides: list | None = None) -> ReproduceConfig:
    """Read a reproduce YAML, apply ``--set`` overrides, validate (one line per mistake)."""
    path = Path(path)
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CordError(f"{path}: the top level must be a mapping (name:, model:, synth:, train:, eval:, table:)")
    apply_overrides(data, list(overrides or []))
    try:
        cfg = ReproduceConfig.model_validate(data)
    except ValidationError as e:
        raise CordError(_reproduce_hint(e, format_validation_error(e, _blame(e, str(path), overrides)))) from None
    for key, value in cfg.model.model_dump(exclude_unset=True).items():
        if isinstance(value, (dict, list)) and value:
            raise CordError(f"{path}: model.{key}: reproduce passes model settings as --set flags to every stage; "
                            f"set {key} in the method presets instead")
    return cfg


def _blame(err: ValidationError, source: str, overrides: list | None) -> str:
    """The --set flag that set the key the first error is about, else the file."""
    loc = tuple(str(p) for p in err.errors()[0]["loc"])
    for o in reversed(list(overrides or [])):
        key = tuple(p for p in str(o).split("=", 1)[0].strip().split(".") if p)
        n = min(len(key), len(loc))
        if key and key[:n] == loc[:n]:
            return f"--set {o}"
    return source


def _reproduce_hint(err: ValidationError, msg: str) -> str:
    """Nearest-key hints for the reproduce schema (format_validation_error knows cord's)."""
    import difflib

    first = err.errors()[0]
    if first["type"] != "extra_forbidden":
        return msg
    loc = tuple(str(p) for p in first["loc"])
    model: type[BaseModel] = ReproduceConfig
    for part in loc[:-1]:
        ann = model.model_fields.get(part)
        nxt = getattr(ann, "annotation", None) if ann else None
        if not (isinstance(nxt, type) and issubclass(nxt, BaseModel)):
            return msg
        model = nxt
    options = sorted(model.model_fields)
    close = difflib.get_close_matches(loc[-1], options, n=1, cutoff=0.5)
    dotted = ".".join(loc)
    source = msg.split(": unknown key", 1)[0]
    if close:
        return f"{source}: unknown key '{dotted}' — did you mean '{'.'.join((*loc[:-1], close[0]))}'?"
    return f"{source}: unknown key '{dotted}' (valid keys: {', '.join(options)})"
