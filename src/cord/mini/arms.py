"""The arms of the miniature's Stage C: what each trains on, with which preset, and how.

Every arm is existing machinery plus data (``docs/demo/preregistration.md`` fixes them):

| arm            | what it is                                                     | preset (configs/mini) | data        |
|----------------|----------------------------------------------------------------|-----------------------|-------------|
| ``cord``       | weighted on-policy reverse KL (α, β) + judge-rewarded GRPO      | cord                  | train       |
| ``sft_self``   | SFT on the frozen teacher's own greedy text solutions (the same | sft                   | sft_self    |
|                | teacher as CORD's, off-policy): **the primary control**         |                       |             |
| ``sft_ext``    | SFT on external solutions in a format Stage A never taught      | sft                   | sft_ext     |
| ``control``    | Stage B's objective (audio → transcript) continued              | (cord.mini.control)   | train       |
| ``forward_kl`` | forward KL on the teacher's text-prompt samples                 | forward_kl            | train       |
| ``opd``        | uniform on-policy reverse KL (α = β = 1)                        | opd                   | train       |
| ``opd_weighted``| on-policy reverse KL with top-K α and position β               | opd_weighted          | train       |
| ``opd_alpha``  | … with α only (β = 1)                                           | opd_weighted, β=1     | train       |
| ``opd_beta``   | … with β only (α = 1)                                           | opd_weighted, α=1     | train       |
| ``grpo``       | GRPO alone (reward: agreement with the text answer)            | grpo                  | train       |
| ``grpo_opd``   | GRPO + uniform reverse KL                                       | grpo_opd              | train       |

``train`` is the spoken training set; ``sft_self`` and ``sft_ext`` are the same clips (the
manifest points at ``train``'s audio) with other ``solution`` fields (:func:`build_sft_data`).
Every preset shares one model and train section except ``train.lr`` (per arm, from one sweep on
dev, :data:`ARM_LR`): :func:`check_presets` refuses anything else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cord import CordError


@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    #: the preset in configs/mini/ (``None``: the control arm, Stage B's loss; it takes the cord
    #: preset's model and train sections)
    preset: str | None
    #: which training set: "train", "sft_self" or "sft_ext"
    data: str = "train"
    #: config overrides beyond the preset (the ablations' α / β)
    overrides: tuple[str, ...] = ()


ARMS: dict[str, Arm] = {a.key: a for a in (
    Arm("cord", "CORD (weighted OPD + GRPO)", "cord"),
    Arm("sft_self", "SFT-self (teacher's greedy text solutions)", "sft", data="sft_self"),
    Arm("sft_ext", "SFT-ext (external solution format)", "sft", data="sft_ext"),
    Arm("control", "control (Stage B objective continued)", None),
    Arm("forward_kl", "forward KL (off-policy)", "forward_kl"),
    Arm("opd", "OPD (uniform reverse KL)", "opd"),
    Arm("opd_weighted", "weighted OPD (α and β)", "opd_weighted"),
    Arm("opd_alpha", "weighted OPD, α only", "opd_weighted", overrides=("objective.beta=1.0",)),
    Arm("opd_beta", "weighted OPD, β only", "opd_weighted", overrides=("objective.alpha=1.0",)),
    Arm("grpo", "GRPO", "grpo"),
    Arm("grpo_opd", "GRPO + OPD", "grpo_opd"),
)}
#: the pre-registered primary contrast: CORD against SFT-self
PRIMARY = ("cord", "sft_self")
#: what `cord demo` runs by default: the primary contrast and the two other reference points
DEFAULT_ARMS = ("cord", "sft_self", "sft_ext", "control")
#: the long-horizon ablation's arms (GRPO alone collapses in the paper; CORD and weighted OPD do not)
LONG_ARMS = ("grpo", "cord", "opd_weighted")
#: arms whose training tokens are sampled (rollouts); the others read fixed targets
SAMPLING_ARMS = frozenset({"cord", "forward_kl", "opd", "opd_weighted", "opd_alpha", "opd_beta", "grpo",
                           "grpo_opd"})

#: Stage C lr per arm: the best dev audio accuracy (tail-averaged weights, start 0, seed 0, 100
#: steps) of one sweep with the same budget for every arm, ties to the lower lr; an arm not
#: listed uses its preset's train.lr (docs/demo/recipe.md, third round; the rule is the
#: pre-registration's second amendment). The default arms on {1.25e-4, 2.5e-4, 5e-4, 1e-3}, the
#: others on {1.25e-4, 5e-4}:
ARM_LR: dict[str, float] = {
    "cord": 1.25e-4, "sft_self": 2.5e-4, "sft_ext": 1.25e-4, "control": 5e-4,
    "forward_kl": 5e-4, "opd": 5e-4, "opd_weighted": 1.25e-4, "opd_alpha": 5e-4, "opd_beta": 1.25e-4,
    "grpo": 1.25e-4, "grpo_opd": 1.25e-4,
}


def presets_dir() -> Path:
    here = Path(__file__).resolve()
    for root in (here.parents[3], Path.cwd()):
        cand = root / "configs" / "mini"
        if cand.is_dir():
            return cand
    raise CordError("configs/mini not found: run cord demo from a cord checkout (the presets live there)")


def stage_c_config(arm: str, stage_b: Path, data_dirs: dict[str, Path], run_dir: Path, seed: int, steps: int,
                   lr: float | None = None):
    """The Stage C CordConfig of ``arm`` for one run (its preset, its data, its overrides and its
    lr: ``lr``, else :data:`ARM_LR`, else the preset's)."""
    from cord.config import load_config

    spec = ARMS[arm]
    lr = lr if lr is not None else ARM_LR.get(arm)
    extra = [f"train.lr={lr}"] if lr is not None else []
    return load_config(presets_dir() / f"{spec.preset or 'cord'}.yaml", [
        f"model.name_or_path={stage_b}", f"data.train={data_dirs[spec.data]}", f"train.output_dir={run_dir}",
        f"train.seed={seed}", f"train.max_steps={steps}", "train.progress=false", *spec.overrides, *extra,
    ])


def check_presets(cfgs: dict[str, Any]) -> dict[str, Any]:
    """Every arm's config must train the same parts with the same optimiser, schedule, batch and
    steps — only the objective, the data and ``train.lr`` differ — so the comparison is of
    objectives at the same budget; returns that shared recipe with the lr per arm. A config that
    differs is a CordError naming the setting."""
    def shared(cfg) -> dict[str, Any]:
        train = cfg.train.model_dump(exclude={"output_dir", "lr"})
        lora = cfg.model.lora.model_dump() if cfg.model.lora is not None else None
        return {"train": train, "lora": lora, "max_new_tokens": cfg.rollout.max_new_tokens}

    ref_name, ref = next(iter(cfgs.items()))
    want = shared(ref)
    for name, cfg in cfgs.items():
        got = shared(cfg)
        for section in want:
            if got[section] != want[section]:
                diff = (sorted(k for k in want[section] if want[section][k] != got[section].get(k))
                        if isinstance(want[section], dict) and isinstance(got[section], dict) else [section])
                raise CordError(f"Stage C arm {name!r} differs from {ref_name!r} in {section} ({', '.join(diff)}): "
                                "every arm must share one recipe (only the objective, data and lr differ)")
    t = want["train"]
    return {"steps": t["max_steps"], "batch_size": t["batch_size"], "warmup_steps": t["warmup_steps"],
            "schedule": t["schedule"], "trainable": t["trainable"], "lora": want["lora"],
            "save_every": t["save_every"], "keep_last": t["keep_last"],
            "max_new_tokens": want["max_new_tokens"], "lr_scale": t["lr_scale"],
            "lr": {name: cfg.train.lr for name, cfg in cfgs.items()}}


# ------------------------------------------------------------------------- SFT data

SFT_SETTINGS = "mini_sft.json"


def build_sft_data(kind: str, stage_b: Path, train_dir: Path, out_dir: Path, max_new_tokens: int = 24,
                   batch_size: int = 200) -> Path:
    """The training set of ``sft_self`` or ``sft_ext`` in ``out_dir``: ``train``'s rows and clips
    (audio paths point into ``train_dir``) with ``solution`` replaced by

    - ``sft_self``: the frozen teacher's greedy solution to the *text* prompt — the Stage B
      model's language model, which is what every Stage C arm's frozen teacher is (LoRA
      disabled); kept as it is, wrong or right (self-distillation copies the teacher);
    - ``sft_ext``: the problem's solution in :data:`cord.mini.task.EXTERNAL_FORMAT`, a format
      Stage A never taught.

    Written to a temporary sibling and renamed; reused when its settings file matches."""
    from cord.data.paired import MANIFEST, read_manifest
    from cord.mini.task import EXTERNAL_FORMAT, problem_of

    if kind not in ("sft_self", "sft_ext"):
        raise ValueError(f"unknown SFT data kind {kind!r}")
    key = {"kind": kind, "stage_b": str(stage_b), "train": str(train_dir), "max_new_tokens": max_new_tokens,
           "stage_b_stamp": _stamp(stage_b), "train_stamp": _stamp(train_dir)}
    settings = out_dir / SFT_SETTINGS
    if settings.is_file() and json.loads(settings.read_text()).get("settings") == key and (out_dir / MANIFEST).is_file():
        return out_dir
    rows = read_manifest(train_dir)
    if kind == "sft_self":
        solutions = teacher_solutions(stage_b, [r["question"] for r in rows], max_new_tokens, batch_size)
    else:
        solutions = [problem_of(r["problem"]).solution(EXTERNAL_FORMAT) for r in rows]
    tmp = out_dir.with_name(out_dir.name + ".partial")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rel = os.path.relpath(train_dir, out_dir)
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        for r, sol in zip(rows, solutions):
            f.write(json.dumps({**r, "solution": sol, "audio": f"{rel}/{r['audio']}"}) + "\n")
    (tmp / SFT_SETTINGS).write_text(json.dumps({"settings": key, "items": len(rows)}, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def teacher_solutions(stage_b: Path, questions: list[str], max_new_tokens: int = 24,
                      batch_size: int = 200) -> list[str]:
    """The frozen teacher's greedy solutions to ``questions`` as text prompts (the Stage B model)."""
    from cord.config import ModelConfig
    from cord.data.paired import PairedExample
    from cord.mini.scoring import greedy_outputs
    from cord.models import load_adapter

    adapter = load_adapter(ModelConfig(family="mini", name_or_path=str(stage_b), dtype="float32", device="cpu"))
    examples = [PairedExample(f"q{i}", q, None) for i, q in enumerate(questions)]
    return greedy_outputs(adapter, examples, "text", batch_size=batch_size, max_new_tokens=max_new_tokens)


def _stamp(path: Path) -> str | None:
    """A cheap identity of a model or dataset folder: its main file's size and mtime."""
    for name in ("model.safetensors", "manifest.jsonl"):
        f = Path(path) / name
        if f.is_file():
            st = f.stat()
            return f"{st.st_size}-{st.st_mtime_ns}"
    return None


# ------------------------------------------------------------------- weight averaging


def average_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The element-wise mean of equally keyed state dicts (tail averaging of checkpoints)."""
    if not states:
        raise CordError("average_states: no checkpoint to average")
    keys = set(states[0])
    if any(set(s) != keys for s in states):
        raise CordError("average_states: the checkpoints hold different parameters")
    return {k: sum(s[k].double() for s in states).div(len(states)).to(states[0][k].dtype) for k in states[0]}


def weight_files(arm: str, run_dir: Path, last: int) -> list[Path]:
    """The trainable-weight files of a run's last ``last`` saves: the trainer's checkpoints
    (``train.save_every``, ``train.keep_last``), or the control's snapshots."""
    from cord.mini.control import snapshot_files
    from cord.train.checkpoint import checkpoint_dirs

    files = (snapshot_files(run_dir) if arm == "control"
             else [c / "trainable.safetensors" for c in checkpoint_dirs(run_dir)])[-last:]
    if len(files) < last:
        raise CordError(f"{run_dir}: {len(files)} saved weight set(s), {last} needed for the average "
                        "(train.keep_last / train.save_every)")
    return files


def average_run(cfg, files: list[Path], out_dir: Path) -> dict[str, Any]:
    """Export to ``out_dir`` the mean of the trainable weights in ``files`` (a run's last saves,
    :func:`weight_files`). The model is rebuilt exactly as the trainer built it (``cfg.model``,
    ``train.trainable``) and the averaged weights replace its trainable ones."""
    from safetensors.torch import load_file

    from cord.models import load_adapter
    from cord.models.base import module_map_of
    from cord.models.export import export_model
    from cord.train.setup import select_trainable

    states = [load_file(str(f)) for f in files]
    adapter = load_adapter(cfg.model.model_copy(update={"device": "cpu"}))
    select_trainable(adapter.model, list(cfg.train.trainable), cfg.model.lora is not None, module_map_of(adapter))
    load_trainable(adapter.model, average_states(states))
    adapter.model.eval()
    export_model(adapter, out_dir)
    return {"files": [str(f) for f in files]}


def load_trainable(model, state: dict[str, Any]) -> None:
    """Copy ``state`` (names as ``cord.train.checkpoint.trainable_state`` writes them) into the
    model's trainable parameters; every trainable parameter must be given, and nothing else."""
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise CordError(f"averaged weights do not match the model's trainable parameters "
                        f"(missing {missing[:2]}, unexpected {extra[:2]})")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n].to(p.dtype))
