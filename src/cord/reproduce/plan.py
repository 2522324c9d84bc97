"""The pipeline's stages: each one's exact command and what its fingerprint is made of (nothing runs)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cord import CordError
from cord.config import (
    load_yaml,
    preset_files,
)
from cord.reproduce.config import ReproduceConfig

STAGE_JSON, DONE_JSON, LOG = "stage.json", "done.json", "log.txt"
PIPELINE_LOCK, STAGE_LOCK = ".cord-reproduce.lock", ".cord-reproduce-stage.lock"
#: flags that change how a stage runs, not what it makes (left out of its product fingerprint)
VOLATILE_FLAGS = ("--workers", "--batch-size")
#: whole-file hashing up to this size; larger files enter the fingerprint by size and mtime
HASH_LIMIT = 256 * 2**20


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

    # training runs share the launcher
    tr = cfg.train
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

    def train_stage(name: str, preset: Path, own: list[str], model: dict, extra: list[str], extra_key: str,
                    needs: list[str] | None = None) -> Stage:
        """A ``cord train`` of ``preset`` with the stage's own --set flags, the model settings and
        the user's ``extra`` ones (each blamed on where it came from: a typo fails now, before
        any stage runs)."""
        stage_sets = [*own, *[f"model.{k}={_set_value(v)}" for k, v in model.items()], *extra]
        labels = [f"{config_path}: {o} (over {preset.name})" if i < len(stage_sets) - len(extra)
                  else f"{extra_key} {o} (over {preset.name})" for i, o in enumerate(stage_sets)]
        train_cfg = load_config(preset, list(zip(stage_sets, labels)))
        core = [*(launcher or py), "train", "--config", str(preset), *_sets(stage_sets)]
        return Stage(name, "train", env_prefix + core, needs=list(needs or []),
                     files={**{str(f): file_digest(f) for f in preset_files(preset)}, **launch_files},
                     train_config=train_cfg, processes=world)

    # the base model: the config's, or the warm-up run's export
    base_model, base_needs = cfg.model.name_or_path, []
    if cfg.warmup is not None:
        wu = cfg.warmup
        preset = _local(wu.preset, base)
        if preset is None or not preset.is_file():
            raise CordError(f"warmup.preset {wu.preset}: no such file (relative to {base})")
        stages.append(train_stage("warmup", preset, [f"train.output_dir={out / 'warmup'}"], model_sets,
                                  wu.set, "warmup.set"))
        base_model, base_needs = str(out / "warmup" / "model"), ["warmup"]
    stages.append(Stage("eval-base", "eval", env_prefix + eval_args(base_model, "eval-base"), needs=list(base_needs),
                        files=dict(bench_files)))

    # training: one per method preset, from the base model
    train_model = {**model_sets, "name_or_path": base_model} if base_needs else model_sets
    preset_dir = _local(tr.presets, base)
    if preset_dir is None or not preset_dir.is_dir():
        raise CordError(f"train.presets {tr.presets}: no such folder (relative to {base})")
    available = sorted(p.stem for p in preset_dir.glob("*.yaml") if p.stem != "reproduce")
    for m in tr.methods:
        preset = preset_dir / f"{m}.yaml"
        if not preset.is_file():
            import difflib

            close = difflib.get_close_matches(m, available, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else f" (presets there: {', '.join(available)})"
            raise CordError(f"train.methods: no preset {preset}{hint}")
        stages.append(train_stage(f"train-{m}", preset,
                                  [f"data.train={out / 'synth'}", f"train.output_dir={out / f'train-{m}'}"],
                                  train_model, tr.set, "train.set", needs=["synth", *base_needs]))
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
