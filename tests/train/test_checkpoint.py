"""Checkpoints and run folders without a model: safe loading (no pickle), RNG state as JSON,
loading onto the parameters' device, keep_last per run, and the rules that keep two runs
from mixing in one folder (plan_run)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cord import CordError
from cord.config import dump_config, load_config
from cord.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[2]


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _save(out: Path, step: int, run_id: str = "run-a", keep_last: int = 5, cfg=None, **state) -> Path:
    model, opt, sched = _parts()
    cfg = cfg or load_config(ROOT / "configs" / "tiny" / "cord.yaml")
    return ck.save_checkpoint(out, step, model=model, optimizer=opt, scheduler=sched,
                              state={"step": step, "run_id": run_id, **state}, config_yaml=dump_config(cfg),
                              keep_last=keep_last)


# ----------------------------------------------------------------------------- loading
class _Plant:
    """Unpickling this creates a file: the proof that loading ran code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt"])
def test_a_checkpoint_carrying_a_pickled_object_is_refused_without_running_it(tmp_path, name):
    path = _save(tmp_path / "run", 2)
    marker = tmp_path / "code-ran"
    torch.save({"state": {}, "param_groups": [], "payload": _Plant(marker)}, path / name)
    model, opt, sched = _parts(1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CordError) as e:
        ck.load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    msg = str(e.value)
    assert msg.startswith(f"refusing to load checkpoint file {path / name}") and "(io.open)" in msg
    assert "\n" not in msg
    assert not marker.exists()
    # nothing was half-loaded: the weights are untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_corrupt_or_missing_file_is_one_line(tmp_path):
    path = _save(tmp_path / "run", 2)
    (path / "optimizer.pt").write_bytes(b"not a torch file")
    model, opt, sched = _parts()
    with pytest.raises(CordError, match="optimizer.pt is not readable"):
        ck.load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    (path / "optimizer.pt").unlink()
    with pytest.raises(CordError, match="optimizer.pt is missing"):
        ck.load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    (path / "rng.json").rename(path / "rng.pt")
    with pytest.raises(CordError, match="no rng.json \\(written by an older cord: rng.pt\\)"):
        ck.load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    (path / "trainer_state.json").write_text("{oops")
    with pytest.raises(CordError, match="trainer_state.json is not valid JSON"):
        ck.load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)


def test_every_torch_file_loads_with_weights_only_onto_the_params_device(tmp_path, monkeypatch):
    """Each rank's optimizer state goes to that rank's device (not the saver's cuda:0), and no
    file is unpickled beyond tensors and plain values."""
    path = _save(tmp_path / "run", 2)
    calls = []
    real = torch.load

    def spy(f, *a, **kw):
        calls.append((Path(f).name, kw.get("map_location"), kw.get("weights_only")))
        return real(f, *a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    model, opt, sched = _parts(1)
    ck.load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    device = next(model.parameters()).device
    assert ("optimizer.pt", device, True) in calls
    assert {c[0] for c in calls} == {"optimizer.pt", "scheduler.pt"}
    assert all(c[2] is True and c[1] is not None for c in calls)


def test_load_restores_weights_optimizer_and_schedule(tmp_path):
    path = _save(tmp_path / "run", 2)
    saved_model, saved_opt, _ = _parts()
    model, opt, sched = _parts(7)
    state = ck.load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    assert state["step"] == 2 and state["format"] == ck.FORMAT
    for a, b in zip(saved_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(saved_model.parameters(), model.parameters()):
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(saved_opt.state[p][k], opt.state[q][k])
    assert sched.last_epoch == 1


def test_rng_state_is_plain_json_and_restores_every_generator():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in numpy's state too
    state = json.loads(json.dumps(ck.rng_state()))  # must survive JSON exactly
    first = (torch.rand(5), np.random.standard_normal(5), [random.random() for _ in range(5)], random.gauss(0, 1))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ck.set_rng_state(state)
    again = (torch.rand(5), np.random.standard_normal(5), [random.random() for _ in range(5)], random.gauss(0, 1))
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2] and first[3] == again[3]


# ---------------------------------------------------------------------------- keep_last
class _FakeCuda:
    """CUDA RNG calls as torch makes them with ``devices`` visible GPUs (no GPU needed):
    ``set_rng_state`` of a device index that does not exist raises, as torch's does."""

    def __init__(self, devices: int, current: int = 0) -> None:
        self.devices, self.current = devices, current
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(devices)}
        self.set: list[int] = []

    def install(self, monkeypatch) -> None:
        import torch.cuda.random as cuda_random

        def get_rng_state(device="cuda"):
            return self.states[self._index(device)].clone()

        def set_rng_state(new_state, device="cuda"):
            index = self._index(device)
            self.states[index] = new_state.clone()
            self.set.append(index)

        for mod in (torch.cuda, cuda_random):
            monkeypatch.setattr(mod, "get_rng_state", get_rng_state)
            monkeypatch.setattr(mod, "set_rng_state", set_rng_state)
            monkeypatch.setattr(mod, "device_count", lambda: self.devices, raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.states[i] for i in range(self.devices)])

    def _index(self, device) -> int:
        index = self.current if device in ("cuda", None) else int(getattr(device, "index", device))
        if not 0 <= index < self.devices:
            raise IndexError(f"list index out of range (CUDA device {index} of {self.devices})")
        return index


def test_a_checkpoint_with_more_cuda_rng_states_than_devices_resumes(monkeypatch):
    """An 8-GPU run's checkpoint resumed where this process sees one GPU (fewer GPUs, or each
    rank seeing only its own device): its own device's state is restored, nothing indexes a
    device that does not exist. A new checkpoint saves only this process's device."""
    saved = _FakeCuda(devices=8, current=0)
    saved.install(monkeypatch)
    old_format = {**ck.rng_state(), "cuda": [saved.states[i].tolist() for i in range(8)]}
    here = _FakeCuda(devices=1, current=0)
    here.install(monkeypatch)
    ck.set_rng_state(old_format)
    assert here.set == [0] and torch.equal(here.states[0], saved.states[0])
    # written now: one state, of the current device
    rank3 = _FakeCuda(devices=4, current=3)
    rank3.install(monkeypatch)
    state = ck.rng_state()
    assert state["cuda"]["device"] == 3 and state["cuda"]["state"] == rank3.states[3].tolist()
    json.dumps(state)  # plain JSON
    alone = _FakeCuda(devices=1, current=0)  # that rank resumes seeing only its own GPU
    alone.install(monkeypatch)
    ck.set_rng_state(state)
    assert alone.set == [0] and torch.equal(alone.states[0], rank3.states[3])


def test_keep_last_deletes_only_this_runs_older_checkpoints(tmp_path):
    out = tmp_path / "run"
    _save(out, 12, run_id="old")
    _save(out, 2, run_id="new", keep_last=1)  # sorts before the other run's step-12
    assert [p.name for p in ck.checkpoint_dirs(out)] == ["step-00000002", "step-00000012"]
    _save(out, 4, run_id="new", keep_last=1)
    assert [p.name for p in ck.checkpoint_dirs(out)] == ["step-00000004", "step-00000012"]
    _save(out, 6, run_id="new", keep_last=2)
    _save(out, 8, run_id="new", keep_last=2)
    assert [p.name for p in ck.checkpoint_dirs(out)] == ["step-00000006", "step-00000008", "step-00000012"]


# ----------------------------------------------------------------------------- run folders
def _cfg(*overrides: str, method: str = "cord"):
    return load_config(ROOT / "configs" / "tiny" / f"{method}.yaml", list(overrides))


def test_output_path_that_is_a_file_is_one_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CordError, match=f"train.output_dir {f} is a file, not a folder"):
        ck.plan_run(f, _cfg())
    with pytest.raises(CordError, match=f"train.output_dir {f / 'run'}: {f} is a file, not a folder"):
        ck.plan_run(f / "run", _cfg())
    assert ck.plan_run(tmp_path / "new" / "run", _cfg()) == ck.RunPlan(None, False, [])


def test_fresh_start_in_a_used_folder_is_refused_unless_moved_aside(tmp_path):
    out = tmp_path / "run"
    _save(out, 12)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CordError, match=r"already holds a run with checkpoints up to step-00000012; a fresh start "
                                        r"there would mix the two runs\. Pass --overwrite"):
        ck.plan_run(out, _cfg(), resume="no")
    plan = ck.plan_run(out, _cfg("train.max_steps=2"), resume="no", overwrite=True)
    assert plan == ck.RunPlan(None, True, [])
    aside = ck.move_run_aside(out)
    assert aside.parent == out.resolve().parent and aside.name.startswith("run.old-")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "metrics.jsonl"]
    assert [p.name for p in ck.checkpoint_dirs(aside)] == ["step-00000012"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # not a run file: stays
    assert ck.plan_run(out, _cfg(), resume="no") == ck.RunPlan(None, False, [])
    # a second move the same second does not collide
    _save(out, 1)
    second = ck.move_run_aside(out)
    assert second != aside and second.exists() and aside.exists()


def test_resume_refuses_a_config_that_changes_the_math(tmp_path):
    out = tmp_path / "run"
    _save(out, 4, cfg=_cfg(f"train.output_dir={out}"))
    with pytest.raises(CordError) as e:
        ck.plan_run(out, _cfg(f"train.output_dir={out}", method="sft"))
    msg = str(e.value)
    assert "objective.method: 'cord' → 'sft'" in msg and "--allow-config-change" in msg and "\n" not in msg
    for change in ("train.lr=5e-4", "train.seed=1", "train.batch_size=4", "data.train=other", "rollout.seq_n=8",
                   "model.lora.r=4", "judge.kind=math", "objective.top_k=2", "train.trainable=[projector]",
                   "model.name_or_path=other", "train.bf16=true", "objective.alpha=3"):
        key = change.split("=")[0]
        with pytest.raises(CordError, match=key.replace(".", r"\.")):
            ck.plan_run(out, _cfg(f"train.output_dir={out}", change))
    plan = ck.plan_run(out, _cfg(f"train.output_dir={out}", "train.lr=5e-4"), allow_config_change=True)
    assert plan.resume_from.name == "step-00000004" and plan.config_changes == ["train.lr: 0.001 → 0.0005"]
    harmless = ["train.max_steps=99", "train.save_every=1", "train.keep_last=9", "train.log_every=3",
                "train.progress=false", "train.tensorboard=false", "train.max_bad_steps=2",
                f"train.output_dir={tmp_path}/elsewhere", "rollout.batch_size=3", "rollout.engine=hf-generate", "objective.chunk_size=7",
                "model.device=auto", "judge.timeout=5", "eval.limit=3", "synth.workers=5", "train.grad_accum=2",
                "train.gradient_checkpointing=true"]
    plan = ck.plan_run(out, _cfg(*harmless))
    assert plan == ck.RunPlan(out / "checkpoints" / "step-00000004", False, [])


def test_a_run_stopped_before_its_first_checkpoint_restarts_only_if_it_is_the_same_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "config.yaml").write_text(dump_config(_cfg()))
    assert ck.plan_run(out, _cfg("train.max_steps=3")) == ck.RunPlan(None, False, [])
    with pytest.raises(CordError, match="objective.method: 'cord' → 'opd'"):
        ck.plan_run(out, _cfg(method="opd"))


def test_explicit_resume_rules(tmp_path):
    out = tmp_path / "run"
    _save(out, 2)
    _save(out, 4)
    early = out / "checkpoints" / "step-00000002"
    with pytest.raises(CordError, match=r"holds later checkpoints than step-00000002 \(step-00000004\)"):
        ck.plan_run(out, _cfg(), resume=str(early))
    with pytest.raises(CordError, match="--overwrite would move"):
        ck.plan_run(out, _cfg(), resume=str(out / "checkpoints" / "step-00000004"), overwrite=True)
    assert ck.plan_run(out, _cfg(), resume=str(out / "checkpoints" / "step-00000004")).resume_from.name.endswith("4")
    other = tmp_path / "other"
    _save(other, 1)
    with pytest.raises(CordError, match="already holds a run with checkpoints up to step-00000004; resuming"):
        ck.plan_run(out, _cfg(), resume=str(other / "checkpoints" / "step-00000001"))
    plan = ck.plan_run(out, _cfg(), resume=str(other / "checkpoints" / "step-00000001"), overwrite=True)
    assert plan.move_aside and plan.resume_from.parent.parent == other
    with pytest.raises(CordError, match="not a cord checkpoint"):
        ck.plan_run(out, _cfg(), resume=str(tmp_path / "nothing"))
