"""Several processes (gloo, CPU): two processes make the same update as one process with the
same global batch, their metrics agree even when one process's micro-batch was all skipped,
and they start from the same weights.

The processes are started with torch.multiprocessing (spawn) and meet through a file store in
the test's temporary directory (tests/gloo.py): no port to pick, so no race for a free one. Each builds the
Trainer with a real accelerate ``Accelerator``, which takes over the process group.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.gloo import run_two_processes, tiny_data

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny" / "cord.yaml"
GLOBAL_BATCH = 4
COMMON = [
    f"train.batch_size={GLOBAL_BATCH}", "rollout.max_new_tokens=5", "rollout.seq_n=2", "data.limit=8",
    "train.progress=false", "train.tensorboard=false", "train.lr=1e-2", "model.long_audio=skip",
]
CLIP = 1e-4  # far below the tiny model's gradient norm: clipping is active
#: name -> (overrides for two processes with grad_accum A; one process runs 2 A micro-batches)
CASES = {
    "accum1": (1, None),
    "accum2": (2, None),
    "accum1_clip": (1, CLIP),
    "accum2_clip": (2, CLIP),
}
NON_DETERMINISTIC = ("step_time", "tokens_per_s")


def _long_audio_examples(n: int):
    from cord.data.paired import PairedExample

    return [PairedExample(f"long{i}", "What is 3 + 4?", np.zeros(16000 * 31, np.float32), answer="7")
            for i in range(n)]


def _trainer(out: Path, *extra: str):
    from cord.config import load_config
    from cord.train.trainer import Trainer

    return Trainer(load_config(CONFIG, [*COMMON, f"data.train={tiny_data()}", f"train.output_dir={out}", *extra]))


def _one_step(trainer, accum: int, clip: float | None, skip: bool = False) -> dict:
    """Step 0 again with ``grad_accum`` and ``max_grad_norm`` set (one Trainer serves every case:
    the optimizer never applies an update here). Returns the gradients the optimizer would
    apply (after averaging and clipping), the step's metrics and this process's micro-batch
    records."""
    trainer.cfg.train.grad_accum = accum
    trainer.cfg.train.max_grad_norm = clip
    trainer.step = 0
    if skip:  # every clip of this process's micro-batches is too long: all skipped
        trainer.micro_examples = lambda step, micro: _long_audio_examples(trainer.micro_batch)
    named = {n: p for n, p in trainer.adapter.model.named_parameters() if p.requires_grad}
    grads: dict[str, torch.Tensor] = {}
    trainer.optimizer.step = lambda *a, **k: grads.update({n: p.grad.detach().clone() for n, p in named.items()})
    records: list[dict] = []
    reduce = type(trainer)._reduce_metrics
    trainer._reduce_metrics = lambda recs: records.extend(dict(r) for r in recs) or reduce(trainer, recs)
    try:
        metrics = trainer.train_step()
    finally:
        trainer.__dict__.pop("micro_examples", None)
    return {"grads": grads, "metrics": metrics, "records": records}


def _ranks_body(rank: int, out: Path) -> dict:
    trainer = _trainer(out / "run")
    results = {name: _one_step(trainer, accum, clip) for name, (accum, clip) in CASES.items()}
    results["skip"] = _one_step(trainer, 1, None, skip=rank == 1)
    # gradient averaging: one all-reduce per bucket, not one per tensor
    import torch.distributed as dist

    for p in trainer.params:
        p.grad = torch.full_like(p, float(rank + 1))
    all_reduce, calls = dist.all_reduce, []
    dist.all_reduce = lambda *a, **k: calls.append(1) or all_reduce(*a, **k)
    try:
        trainer._average_gradients()
    finally:
        dist.all_reduce = all_reduce
    results["averaged"] = {"calls": len(calls), "tensors": len(trainer.params),
                           "values": {float(v) for p in trainer.params for v in p.grad.unique()}}
    trainer.optimizer.zero_grad(set_to_none=True)
    # LoRA initialised from a different seed on each process: process 0's weights win
    lora = _trainer(out / "lora", "model.lora.r=2", f"train.seed={rank}")
    results["lora_init"] = {n: p.detach().clone() for n, p in lora.adapter.model.named_parameters()
                            if p.requires_grad}
    return results


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return run_two_processes(_ranks_body, tmp_path_factory.mktemp("two_processes"), timeout_s=120)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same global batch on one process: 2 A micro-batches of the same size."""
    trainer = _trainer(tmp_path_factory.mktemp("one_process"))
    return {name: _one_step(trainer, 2 * accum, clip) for name, (accum, clip) in CASES.items()}


def _same(a: dict, b: dict, rel: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("time_") or k in NON_DETERMINISTIC:
            continue
        x, y = a[k], b[k]
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), k
        else:
            assert y == pytest.approx(x, rel=rel, abs=1e-12), k


@pytest.mark.slow
@pytest.mark.timeout(900)  # the shared two-process run happens in the first test's setup
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_apply_the_gradient_of_one_process_with_the_same_global_batch(case, two_processes, one_process):
    """The update two processes apply (gradients averaged across them, then clipped) equals
    one process's on the same global batch, to float32 rounding: summed instead of averaged
    gradients are off by 2x (unclipped) or show in grad_norm (clipped)."""
    ref = one_process[case]
    a, b = two_processes[0][case], two_processes[1][case]
    assert ref["grads"] and ref["grads"].keys() == a["grads"].keys() == b["grads"].keys()
    for name in ref["grads"]:
        assert torch.equal(a["grads"][name], b["grads"][name]), name  # one update on every process
        torch.testing.assert_close(a["grads"][name], ref["grads"][name], rtol=1e-5, atol=1e-9)
    assert a["metrics"]["grad_norm"] == pytest.approx(ref["metrics"]["grad_norm"], rel=1e-5)
    total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in a["grads"].values()))
    if CASES[case][1] is None:
        assert total == pytest.approx(a["metrics"]["grad_norm"], rel=1e-5) and total > 10 * CLIP
    else:  # clipped to max_grad_norm from a larger norm
        assert a["metrics"]["grad_norm"] > 10 * CLIP and total == pytest.approx(CLIP, rel=1e-4)
    # the step's metrics: the same on both processes, and the one-process run's
    _same(a["metrics"], b["metrics"])
    _same(ref["metrics"], a["metrics"], rel=1e-5)
    assert len(a["records"]) == CASES[case][0] and len(ref["records"]) == 2 * CASES[case][0]


@pytest.mark.slow
@pytest.mark.timeout(900)  # the shared two-process run happens in the first test's setup
def test_metrics_agree_when_one_process_skipped_its_whole_micro_batch(two_processes):
    """Process 1's clips are all too long (long_audio=skip): it reports the same metric keys,
    the all-reduce completes, both processes end with the same metrics, and those are the
    reduction of both processes' records (means over the micro-batches that have a value,
    totals for counts, per-process means for times)."""
    from cord.train.trainer import REDUCED_KEYS, TOTAL_KEYS

    a, b = two_processes[0]["skip"], two_processes[1]["skip"]
    ra, rb = a["records"][0], b["records"][0]
    assert ra.keys() == rb.keys() == set(REDUCED_KEYS)
    assert rb["skipped_long_audio"] == GLOBAL_BATCH // 2 and math.isnan(rb["loss"]) and math.isfinite(ra["loss"])
    _same(a["metrics"], b["metrics"])
    for k in REDUCED_KEYS:
        if k in ("loss_finite", "time_backward"):  # the trainer adds the optimizer step to time_backward
            continue
        vals = [r[k] for r in (ra, rb) if not math.isnan(r[k])]
        if k in TOTAL_KEYS:
            want = sum(vals)
        elif k.startswith("time_"):
            want = sum(vals) / 2
        else:
            want = sum(vals) / len(vals) if vals else math.nan
        got = a["metrics"][k]
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12), k
    assert a["metrics"]["loss"] == ra["loss"] and a["metrics"]["skipped_long_audio"] == GLOBAL_BATCH // 2
    assert not a["metrics"]["skipped"]  # the process that trained still steps; so does the other
    # the skipped process contributed zero gradient; the average halves process 0's
    assert any(float(g.abs().sum()) > 0 for g in a["grads"].values())
    for name in a["grads"]:
        assert torch.equal(a["grads"][name], b["grads"][name])


@pytest.mark.slow
@pytest.mark.timeout(900)  # the shared two-process run happens in the first test's setup
def test_processes_start_from_the_same_trainable_weights(two_processes):
    a, b = two_processes[0]["lora_init"], two_processes[1]["lora_init"]
    assert a and a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # (they would differ: train.seed differs between the processes, and LoRA's A is random)
    assert any("lora_A" in n for n in a)


def test_the_trainer_starts_its_process_group_with_the_configured_timeout(tmp_path, monkeypatch):
    """NCCL's default 10-minute timeout would abort ranks waiting in a barrier while process 0
    writes a 7B export to slow storage: the trainer's Accelerator gets train.dist_timeout_s."""
    import accelerate

    from cord.config import load_config
    from cord.train.trainer import Trainer

    seen = {}

    class Stop(Exception):
        pass

    def fake_accelerator(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(accelerate, "Accelerator", fake_accelerator)
    cfg = load_config(ROOT / "configs" / "tiny" / "cord.yaml",
                      [f"train.output_dir={tmp_path}", "train.dist_timeout_s=5400"])
    with pytest.raises(Stop):
        Trainer(cfg)
    (handler,) = seen["kwargs_handlers"]
    assert handler.timeout.total_seconds() == 5400


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gradients_are_averaged_in_a_few_bucketed_collectives(two_processes):
    """Every trainable tensor's gradient averaged (ranks hold 1 and 2: the mean 1.5 everywhere)
    in one all-reduce per 64 MiB bucket instead of one per tensor."""
    a = two_processes[0]["averaged"]
    assert a["tensors"] > 10 and a["calls"] == 1
    assert a["values"] == {1.5}
    assert two_processes[1]["averaged"]["values"] == {1.5}


def test_buckets_keep_order_device_dtype_and_size():
    from cord.train.collectives import buckets

    f = [torch.zeros(10) for _ in range(5)]  # 40 bytes each
    h = torch.zeros(4, dtype=torch.bfloat16)
    big = torch.zeros(100)
    out = buckets([f[0], h, f[1], big, f[2], f[3], f[4]], bucket_bytes=100)
    assert [[id(t) for t in b] for b in out] == [[id(f[0]), id(f[1])], [id(big)], [id(f[2]), id(f[3])], [id(f[4])],
                                                 [id(h)]]


def test_train_tf32_sets_the_cuda_fp32_matmul_precision(tmp_path):
    from cord.config import load_config
    from cord.train.trainer import Trainer

    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for flag in (True, False):
            Trainer(load_config(CONFIG, [f"train.output_dir={tmp_path}", f"train.tf32={str(flag).lower()}",
                                         f"data.train={tiny_data()}", "data.limit=4"]))
            assert torch.backends.cuda.matmul.allow_tf32 is flag
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
