"""``cord reproduce``: the paper's Table 1 as one resumable pipeline of cord's own commands.

Stages, in order (``configs/<family>/reproduce.yaml`` says what each does)::

    synth            cord synth  --input <synth.input> --out OUT/synth            (the training set)
    eval-base        cord eval   --model <model.name_or_path> --out OUT/eval-base
    train-<m>        cord train  --config <presets>/<m>.yaml  (data.train=OUT/synth,
                                 train.output_dir=OUT/train-<m>)   for each m in train.methods
    eval-<m>         cord eval   --model OUT/train-<m>/model --out OUT/eval-<m>
    table            cord table  base=OUT/eval-base <m>=OUT/eval-<m> ... --out OUT/table

Each stage is a subprocess (``python -m cord.cli ...``; training under ``accelerate launch``
when ``train.processes`` > 1 or ``train.accelerate_config`` is set) whose output goes to
``OUT/<stage>/log.txt``; the stage's products are in ``OUT/<stage>/`` too.

**Fingerprints.** A stage's fingerprint is a hash of its exact command (the Python executable
left out), the ``env`` it runs with, the contents of the files the command reads (the method
preset, a local synth input, a local benchmark's manifest, the accelerate config) and the
*product* fingerprints of the stages it consumes (a product fingerprint leaves out what does
not change a stage's output: ``--workers``, ``--batch-size``). ``OUT/<stage>/stage.json`` is
written when a stage starts, ``OUT/<stage>/done.json`` when its command exits 0. A stage whose
``done.json`` holds its current fingerprint is done and skipped (nothing runs: a rerun of a
finished pipeline takes well under a second after Python starts). Otherwise it runs its
command again, which resumes by itself: ``cord train`` from its last checkpoint, ``cord eval``
and ``cord synth`` keeping finished items. When a train or eval stage's *inputs* changed (the
training data, the model under evaluation), its old outputs are another product: they are
moved aside to ``OUT/<stage>.old-<time>/`` (nothing is deleted) and the stage starts afresh.
So is a training whose own settings now change what it computes (:func:`training_changed`:
a key outside the checkpoint module's ``HARMLESS_KEYS``, e.g. ``train.lr`` in the method
preset, or the prompts per micro-batch); otherwise (a raised ``train.max_steps``, another
``save_every``) ``cord train`` runs in place and continues the run. Either way the stages
downstream of it run again.

**Training** runs as plain ``python -m cord.cli train`` when ``train.processes`` is 1 and no
``train.accelerate_config`` is given (one process needs no launcher: a debugger, a CPU run,
a one-GPU job see cord's own process), else as ``python -m accelerate.commands.launch
[--config_file F] [--multi_gpu] [--num_processes N] -m cord.cli train`` (``processes: null``
takes the accelerate config's count).

**Locks.** A whole-pipeline run holds ``OUT/.cord-reproduce.lock``; every stage holds a lock in
its own folder while it runs, so ``--stage`` jobs of different stages can run at once (one
cluster job per stage) while a second runner of the same stage is refused with one line.

A failed stage stops the pipeline with one line: the stage, its exit status, the last error
line of its log, the log's path and the command that reruns it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cord import CordError
from cord.config import ModelConfig, apply_overrides, format_validation_error, load_yaml, preset_files

STAGE_JSON, DONE_JSON, LOG = "stage.json", "done.json", "log.txt"
PIPELINE_LOCK, STAGE_LOCK = ".cord-reproduce.lock", ".cord-reproduce-stage.lock"
#: flags that change how a stage runs, not what it makes (left out of its product fingerprint)
VOLATILE_FLAGS = ("--workers", "--batch-size")
#: whole-file hashing up to this size; larger files enter the fingerprint by size and mtime
HASH_LIMIT = 256 * 2**20


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


# --- stages -------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One stage: its exact command and what its fingerprint is made of."""

    name: str
    kind: Literal["synth", "eval", "train", "table"]
    command: list[str]
    needs: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # path -> content digest
    fingerprint: str = ""
    product: str = ""
    upstream: dict[str, str] = field(default_factory=dict)
    #: a train stage: the config its command trains with, and its process count (None: unknown)
    train_config: Any = None
    processes: int | None = None

    def shell(self) -> str:
        return shlex.join(self.command)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """The content's sha256 (a file over HASH_LIMIT: its size and mtime)."""
    try:
        st = path.stat()
        if st.st_size > HASH_LIMIT:
            return f"size={st.st_size};mtime={st.st_mtime_ns}"
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:16]
    except OSError as e:
        raise CordError(f"cannot read {path}: {e.strerror or e}") from None


def _local(text: str, base: Path) -> Path | None:
    """``text`` as an existing local path: relative to the config's folder, then to the
    working directory; None when it is neither (a hub or registry name)."""
    p = Path(text).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for root in (base, Path.cwd()):
        q = root / p
        if q.exists():
            return q.resolve()
    return None


def _looks_like_file(text: str) -> bool:
    """A synth input meant as a local file (a hub name is ``owner/name``, no extension)."""
    return (text.startswith((".", "/", "~")) or text.count("/") > 1
            or text.lower().endswith((".jsonl", ".json", ".csv", ".parquet", ".tsv")))


def _set_value(v: Any) -> str:
    """A --set value that YAML reads back as ``v``."""
    import yaml

    if isinstance(v, str):
        try:
            if yaml.safe_load(v) == v:
                return v
        except yaml.YAMLError:
            pass
        return json.dumps(v)
    return json.dumps(v)


def _sets(items: list[str]) -> list[str]:
    out: list[str] = []
    for s in items:
        out += ["--set", s]
    return out


def _drop_volatile(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in VOLATILE_FLAGS:
            skip = True
            continue
        out.append(a)
    return out


@dataclass
class Pipeline:
    """The stages of one reproduce config in one output folder."""

    cfg: ReproduceConfig
    config_path: Path
    out: Path
    overrides: list[str]
    stages: list[Stage]

    def get(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        import difflib

        names = [s.name for s in self.stages]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CordError(f"--stage {name}: no such stage{hint}; the stages are {', '.join(names)}")

    def rerun_hint(self, stage: str | None = None) -> str:
        parts = ["cord", "reproduce", "--config", str(self.config_path), "--out", str(self.out)]
        for o in self.overrides:
            parts += ["--set", o]
        if stage:
            parts += ["--stage", stage]
        return shlex.join(parts)


def build_pipeline(cfg: ReproduceConfig, config_path: str | Path, out: str | Path | None = None,
                   overrides: list[str] | None = None) -> Pipeline:
    """Every stage's exact command and fingerprint (nothing runs, nothing is written)."""
    from cord.config import load_config

    config_path = Path(config_path).resolve()
    base = config_path.parent
    out_text = out if out is not None else cfg.out
    if not out_text:
        raise CordError(f"no output folder: pass --out DIR (or set out: in {config_path})")
    from cord.data.check import check_out_dir

    out = check_out_dir(Path(out_text).expanduser(), "--out" if out is not None else "out:").resolve()
    py = [sys.executable, "-m", "cord.cli"]
    model_sets = {k: v for k, v in cfg.model.model_dump(exclude_unset=True).items()}
    family = cfg.model.family

    def model_flags(skip: tuple[str, ...] = ()) -> list[str]:
        return _sets([f"model.{k}={_set_value(v)}" for k, v in model_sets.items() if k not in skip])

    env_prefix = ["env", *(f"{k}={v}" for k, v in cfg.env.items())] if cfg.env else []
    stages: list[Stage] = []

    # synth
    sy = cfg.synth
    files: dict[str, str] = {}
    local = _local(sy.input, base)
    if local is not None and local.is_file():
        synth_input = str(local)
        files[synth_input] = file_digest(local)
    elif local is not None:
        raise CordError(f"synth.input {sy.input}: {local} is a folder; give a JSONL/CSV/Parquet file or a hub name")
    elif _looks_like_file(sy.input):
        raise CordError(f"synth.input {sy.input}: no such file (relative paths are read from {base} or the working "
                        "directory); give a JSONL/CSV/Parquet file or a hub dataset name")
    else:
        synth_input = sy.input
    args = [*py, "synth", "--input", synth_input, "--out", str(out / "synth"), "--seed", str(sy.seed)]
    if sy.limit is not None:
        args += ["--limit", str(sy.limit)]
    if sy.workers is not None:
        args += ["--workers", str(sy.workers)]
    if sy.tts is not None:
        args += ["--tts", sy.tts]
    args += _sets(sy.set)
    stages.append(Stage("synth", "synth", env_prefix + args, files=files))

    # evaluations share everything but the model
    ev = cfg.eval
    benches: list[str] = []
    bench_files: dict[str, str] = {}
    for b in ev.benchmarks:
        if b.startswith("builtin:"):  # cord eval makes it in cord's cache on first use
            from cord.data.builtin import BUILTINS

            name = b.split(":", 1)[1]
            if name not in BUILTINS:
                raise CordError(f"eval.benchmarks: unknown built-in dataset {name!r} (available: {', '.join(sorted(BUILTINS))})")
            benches.append(b)
            continue
        p = _local(b, base)
        if p is not None:
            benches.append(str(p))
            for fname in ("manifest.jsonl", "mmau-test-mini.json"):
                if (p / fname).is_file():
                    bench_files[str(p / fname)] = file_digest(p / fname)
            if p.is_file():
                bench_files[str(p)] = file_digest(p)
        elif "/" in b or os.sep in b or b.startswith((".", "~")):  # registry names have no slash
            raise CordError(f"eval.benchmarks: {b}: no such folder (relative paths are read from {base} or the working "
                            "directory); give a registered benchmark name or a local benchmark folder")
        else:
            benches.append(b)

    def eval_args(model: str, stage: str) -> list[str]:
        a = [*py, "eval", "--model", model, "--family", family, "--benchmarks", ",".join(benches),
             "--modalities", ",".join(ev.modalities), "--protocol", ev.protocol, "--out", str(out / stage),
             "--batch-size", str(ev.batch_size), "--max-new-tokens", str(ev.max_new_tokens)]
        if ev.limit is not None:
            a += ["--limit", str(ev.limit)]
        return a + model_flags(skip=("name_or_path", "family")) + _sets(ev.set)

    stages.append(Stage("eval-base", "eval", env_prefix + eval_args(cfg.model.name_or_path, "eval-base"),
                        files=dict(bench_files)))

    # training: one per method preset
    tr = cfg.train
    preset_dir = _local(tr.presets, base)
    if preset_dir is None or not preset_dir.is_dir():
        raise CordError(f"train.presets {tr.presets}: no such folder (relative to {base})")
    launcher: list[str] = []
    launch_files: dict[str, str] = {}
    world: int | None = tr.processes or 1
    if tr.accelerate_config is not None or (tr.processes or 1) > 1:
        launcher = [sys.executable, "-m", "accelerate.commands.launch"]
        if tr.accelerate_config is not None:
            acc = _local(tr.accelerate_config, base)
            if acc is None or not acc.is_file():
                raise CordError(f"train.accelerate_config {tr.accelerate_config}: no such file (relative to {base})")
            launcher += ["--config_file", str(acc)]
            launch_files[str(acc)] = file_digest(acc)
            if tr.processes is None:
                acc_cfg = load_yaml(acc)
                n = acc_cfg.get("num_processes") if isinstance(acc_cfg, dict) else None
                world = int(n) if isinstance(n, int) else None
        elif tr.processes and tr.processes > 1:
            launcher += ["--multi_gpu"]
        if tr.processes is not None:
            launcher += ["--num_processes", str(tr.processes)]
        launcher += ["-m", "cord.cli"]
    available = sorted(p.stem for p in preset_dir.glob("*.yaml") if p.stem != "reproduce")
    for m in tr.methods:
        preset = preset_dir / f"{m}.yaml"
        if not preset.is_file():
            import difflib

            close = difflib.get_close_matches(m, available, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else f" (presets there: {', '.join(available)})"
            raise CordError(f"train.methods: no preset {preset}{hint}")
        stage_sets = [f"data.train={out / 'synth'}", f"train.output_dir={out / f'train-{m}'}",
                     *[f"model.{k}={_set_value(v)}" for k, v in model_sets.items()], *tr.set]
        labels = [f"{config_path}: {o} (over {preset.name})" if i < len(stage_sets) - len(tr.set)
                  else f"train.set {o} (over {preset.name})" for i, o in enumerate(stage_sets)]
        train_cfg = load_config(preset, list(zip(stage_sets, labels)))  # a typo fails now, before any stage runs
        core = [*(launcher or py), "train", "--config", str(preset), *_sets(stage_sets)]
        stages.append(Stage(f"train-{m}", "train", env_prefix + core, needs=["synth"],
                            files={**{str(f): file_digest(f) for f in preset_files(preset)}, **launch_files},
                            train_config=train_cfg, processes=world))
        stages.append(Stage(f"eval-{m}", "eval", env_prefix + eval_args(str(out / f"train-{m}" / "model"), f"eval-{m}"),
                            needs=[f"train-{m}"], files=dict(bench_files)))

    tb = cfg.table
    inputs = [f"base={out / 'eval-base'}", *(f"{m}={out / f'eval-{m}'}" for m in tr.methods)]
    args = [*py, "table", *inputs, "--base", "base", "--out", str(out / "table"), "--replicates", str(tb.replicates),
            "--seed", str(tb.seed), "--anchors", tb.anchors or cfg.model.name_or_path, "--title", cfg.name]
    stages.append(Stage("table", "table", env_prefix + args, needs=["eval-base", *(f"eval-{m}" for m in tr.methods)]))

    by_name: dict[str, Stage] = {}
    for s in stages:
        s.upstream = {n: by_name[n].product for n in s.needs}
        core = s.command[len(env_prefix) + 1:]  # without the env prefix and the Python executable
        parts = {"env": cfg.env, "files": s.files, "upstream": s.upstream}
        s.fingerprint = _digest({**parts, "args": core})
        s.product = _digest({**parts, "args": _drop_volatile(core)})
        by_name[s.name] = s
    return Pipeline(cfg, Path(config_path), out, list(overrides or []), stages)


# --- state --------------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, data: dict[str, Any]) -> None:
    from cord.eval.report import dump_json, write_atomic

    write_atomic(path, dump_json(data))


def stage_state(pipe: Pipeline, stage: Stage) -> tuple[str, dict[str, Any] | None]:
    """(``done`` | ``changed`` | ``failed`` | ``interrupted`` | ``running`` | ``pending``, the record)."""
    d = pipe.out / stage.name
    done = _read(d / DONE_JSON)
    if done is not None and done.get("fingerprint") == stage.fingerprint:
        return "done", done
    if _lock_busy(d / STAGE_LOCK):
        return "running", _read(d / STAGE_JSON)
    started = _read(d / STAGE_JSON)
    if started is not None and started.get("fingerprint") == stage.fingerprint:
        return ("failed" if started.get("exit") not in (None, 0) else "interrupted"), started
    if done is not None or started is not None:
        return "changed", started or done
    return "pending", None


def _lock_busy(path: Path) -> bool:
    """Whether a process holds the flock of ``path`` (taken and released at once)."""
    if not path.is_file():
        return False
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _move_aside(d: Path, keep: tuple[str, ...]) -> Path | None:
    """Move ``d``'s contents (but ``keep``) into a new sibling ``<d>.old-<time>``."""
    names = [p for p in d.iterdir() if p.name not in keep]
    if not names:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = d.with_name(f"{d.name}.old-{stamp}"), 1
    while dest.exists():
        n += 1
        dest = d.with_name(f"{d.name}.old-{stamp}-{n}")
    try:
        dest.mkdir(parents=True)
        for p in names:
            os.replace(p, dest / p.name)
    except OSError as e:
        raise CordError(f"could not move the old outputs of {d} aside to {dest}: {e.strerror or e}") from None
    return dest


def training_changed(stage: Stage, d: Path) -> str | None:
    """Why the run in ``d`` cannot continue under ``stage``'s settings, or None when it can.

    ``cord train`` in a folder that holds a run continues it when only settings that do not
    change what is computed differ (``train.max_steps``, ``train.save_every``, ... — the
    checkpoint module's ``HARMLESS_KEYS``) and refuses otherwise; here such a run is another
    computation: it is moved aside and the stage starts afresh. The same for prompts per
    micro-batch (processes x ``train.grad_accum``), which seeds the rollouts."""
    saved = d / "config.yaml"
    if stage.train_config is None or not saved.is_file():
        return None
    from cord.train.checkpoint import config_changes, latest_checkpoint, read_state

    changes = config_changes(saved.read_text(encoding="utf-8"), stage.train_config)
    if changes:
        more = f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
        return f"its settings change what training computes ({'; '.join(changes[:3])}{more})"
    ckpt = latest_checkpoint(d)
    if ckpt is not None and stage.processes:
        tr = stage.train_config.train
        micro = tr.batch_size // (stage.processes * tr.grad_accum)
        was = read_state(ckpt).get("micro_batch")
        if was is not None and int(was) != micro:
            return (f"its prompts per micro-batch changed ({was} → {micro}: processes x train.grad_accum), "
                    "which changes each micro-batch's normalisation and rollout seeds")
    return None


# --- running ------------------------------------------------------------------------------------


class StageFailed(CordError):
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the stage's command gets SIGTERM if this process dies (even by SIGKILL), so a
    killed pipeline leaves no training running behind it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()


def run_command(command: list[str], log_path: Path) -> int:
    """Run ``command`` with stdout and stderr appended to ``log_path``; its exit status. An
    interrupted wait (Ctrl-C, SIGTERM) stops the command first (SIGTERM, then SIGKILL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} cord reproduce runs:\n$ {shlex.join(command)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        except OSError as e:
            raise CordError(f"cannot start {command[0]}: {e.strerror or e}") from None
        try:
            return proc.wait()
        except BaseException:
            _stop(proc)
            raise


def _error_line(log_path: Path) -> str:
    """The command's own error line from the end of its log (else its last line)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.split("\r")[-1].strip() for ln in tail.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("$ ") and not ln.startswith("# ")]
    for ln in reversed(lines):
        if ln.startswith("cord ") and ": error: " in ln:
            return ln
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else ""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a cluster's job kill, ``kill PID``) is handled like Ctrl-C: the running stage's
    command is stopped and the run ends, resumable."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_stage(pipe: Pipeline, stage: Stage, *, say=print) -> float:
    """Run one stage's command now (whatever its state), recording it; seconds taken."""
    from cord.locking import folder_lock

    d = pipe.out / stage.name
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CordError(f"cannot create {d}: {e.strerror or e}; give an --out you can write to") from None
    hint = f"wait for it to finish (it runs stage {stage.name} of {pipe.out})"
    with folder_lock(d, "reproduce", hint, name=STAGE_LOCK):
        prev = _read(d / DONE_JSON) or _read(d / STAGE_JSON)
        why = None
        if prev is not None and stage.kind in ("train", "eval") and prev.get("upstream") != stage.upstream:
            why = "its inputs changed since it ran"
        elif prev is not None and stage.kind == "train" and prev.get("fingerprint") != stage.fingerprint:
            why = training_changed(stage, d)
        if why:
            moved = _move_aside(d, keep=(STAGE_LOCK,))
            if moved is not None:
                say(f"  {stage.name}: {why}; its old outputs are in {moved}")
        (d / DONE_JSON).unlink(missing_ok=True)
        record = {"stage": stage.name, "fingerprint": stage.fingerprint, "product": stage.product,
                  "upstream": stage.upstream, "command": stage.command, "files": stage.files,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()}
        _write(d / STAGE_JSON, record)
        t0 = time.time()
        rc = run_command(stage.command, d / LOG)
        seconds = time.time() - t0
        if rc != 0:
            _write(d / STAGE_JSON, {**record, "exit": rc, "seconds": seconds})
            why = _error_line(d / LOG)
            raise StageFailed(f"stage {stage.name} failed (exit {rc})" + (f": {why}" if why else "")
                              + f"; log: {d / LOG}; rerun: {pipe.rerun_hint(stage.name)}")
        _write(d / DONE_JSON, {**record, "exit": 0, "seconds": round(seconds, 3),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return seconds


def _check_needs(pipe: Pipeline, stage: Stage) -> None:
    for n in stage.needs:
        state, _ = stage_state(pipe, pipe.get(n))
        if state != "done":
            what = "is not done" if state in ("pending", "interrupted", "failed", "running") else "changed since it ran"
            raise CordError(f"stage {stage.name} needs {n}, which {what} ({state}); run it first: "
                            f"{pipe.rerun_hint(n)}")


def run_pipeline(pipe: Pipeline, only: str | None = None, *, say=print) -> dict[str, str]:
    """Run every stage that is not done (or only ``only``); {stage: ran | skipped}."""
    from cord.locking import folder_lock

    try:
        pipe.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CordError(f"--out {pipe.out}: cannot create it ({e.strerror or e}); give an --out you can write to") from None
    result: dict[str, str] = {}
    targets = [pipe.get(only)] if only else pipe.stages
    lock = contextlib.nullcontext() if only else folder_lock(
        pipe.out, "reproduce", "wait for it to finish, or use another --out", name=PIPELINE_LOCK)
    total = len(pipe.stages)
    with lock, _sigterm_interrupts():
        t_all = time.time()
        for stage in targets:
            k = pipe.stages.index(stage) + 1
            state, rec = stage_state(pipe, stage)
            if state == "done":
                say(f"[{k}/{total}] {stage.name}: done (skipped)")
                result[stage.name] = "skipped"
                continue
            if only:
                _check_needs(pipe, stage)
            note = {"interrupted": ", resuming", "failed": ", again", "changed": " (changed)"}.get(state, "")
            say(f"[{k}/{total}] {stage.name}: running{note} — log: {pipe.out / stage.name / LOG}")
            seconds = run_stage(pipe, stage, say=say)
            say(f"[{k}/{total}] {stage.name}: done in {seconds:.1f} s")
            result[stage.name] = "ran"
        if not only or only == "table":
            md = pipe.out / "table" / "table.md"
            if md.is_file() and any(v == "ran" for v in result.values()):
                say(md.read_text(encoding="utf-8").rstrip())
        if any(v == "ran" for v in result.values()):
            say(f"finished in {time.time() - t_all:.1f} s; table: {pipe.out / 'table'}")
        else:
            say(f"nothing to do: every stage is done; table: {pipe.out / 'table' / 'table.md'}")
    return result


def format_plan(pipe: Pipeline) -> str:
    """One line per stage: ``NAME<TAB>COMMAND`` (exactly what ``--stage NAME`` runs)."""
    return "".join(f"{s.name}\t{s.shell()}\n" for s in pipe.stages)


def format_status(pipe: Pipeline) -> str:
    lines = [f"cord reproduce: {pipe.out} ({pipe.config_path})"]
    width = max(len(s.name) for s in pipe.stages)
    counts: dict[str, int] = {}
    for s in pipe.stages:
        state, rec = stage_state(pipe, s)
        counts[state] = counts.get(state, 0) + 1
        extra = ""
        if state == "done" and rec:
            extra = f"{rec.get('seconds', 0):.1f} s, finished {rec.get('finished', '?')}"
        elif state == "failed" and rec:
            extra = f"exit {rec.get('exit')}; log: {pipe.out / s.name / LOG}"
        elif state == "interrupted":
            extra = f"started {rec.get('started', '?') if rec else '?'}; rerun to resume; log: {pipe.out / s.name / LOG}"
        elif state == "running" and rec:
            extra = f"pid {rec.get('pid', '?')}, started {rec.get('started', '?')}"
        elif state == "changed":
            extra = "its settings or inputs changed since it ran: it runs again"
        elif state == "pending" and s.needs:
            extra = f"needs {', '.join(s.needs)}"
        lines.append(f"  {s.name:<{width}}  {state:<11}  {extra}".rstrip())
    done = counts.get("done", 0)
    lines.append(f"{done} of {len(pipe.stages)} stages done")
    if _lock_busy(pipe.out / PIPELINE_LOCK):
        from cord.locking import lock_holder

        holder = lock_holder(pipe.out / PIPELINE_LOCK) or {}
        lines.append(f"a cord reproduce is running in this folder (pid {holder.get('pid', '?')})")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    """``cord reproduce``."""
    if not args.config:
        raise CordError("cord reproduce needs --config FILE (e.g. configs/tiny/reproduce.yaml)")
    overrides = list(args.overrides)
    cfg = load_reproduce_config(args.config, overrides)
    pipe = build_pipeline(cfg, args.config, args.out, overrides)
    if args.plan:
        sys.stdout.write(format_plan(pipe))
        return 0
    if args.status:
        sys.stdout.write(format_status(pipe))
        return 0
    run_pipeline(pipe, args.stage)
    return 0
