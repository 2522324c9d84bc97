"""Two CPU processes over gloo, for the multi-process tests (tests/train/test_distributed.py,
tests/train/test_fsdp.py): started with torch.multiprocessing (spawn), they meet through a file store
in the test's temporary directory (no port to pick, so no race for a free one). Each runs
``body(rank, out)`` and its result is saved as ``out/rank<r>.pt``."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch


def tiny_data() -> str:
    """The tiny preset's built-in dataset, made once by the test process (not by two processes at once)."""
    from cord.train.setup import resolve_data

    return resolve_data("builtin:tiny-arith")


def _worker(rank: int, world: int, store: str, out: str, body: Callable[[int, Path], dict], timeout_s: float) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(1)
    import torch.distributed as dist

    # a hung collective (ranks disagreeing on what to reduce) fails within the timeout
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    try:
        results = body(rank, Path(out))
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_two_processes(body: Callable[[int, Path], dict], out: Path, timeout_s: float) -> list[dict]:
    """Run ``body`` (a module-level function, so that spawn can pickle it) on ranks 0 and 1;
    return what each returned, loaded back in rank order."""
    import torch.multiprocessing as mp

    tiny_data()
    mp.spawn(_worker, args=(2, str(out / "store"), str(out), body, timeout_s), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


class cuda_optimizer_defaults:  # noqa: N801 - used as a context manager
    """Inside: torch's optimizers choose as they do when every parameter is on CUDA — AdamW's
    ``foreach`` implementation (``torch._foreach_*`` over each group's tensor list) instead of
    the per-tensor loop they take on the CPU. ``calls`` counts the foreach AdamW steps taken."""

    def __enter__(self):
        import torch.optim.optimizer as optimizer

        self._optimizer = optimizer
        self._devices = optimizer._get_foreach_kernels_supported_devices
        optimizer._get_foreach_kernels_supported_devices = lambda: ["cuda", "cpu"]
        self._lerp = torch._foreach_lerp_
        self.calls = 0

        def counted(*a, **k):
            self.calls += 1
            return self._lerp(*a, **k)

        torch._foreach_lerp_ = counted
        return self

    def __exit__(self, *exc):
        self._optimizer._get_foreach_kernels_supported_devices = self._devices
        torch._foreach_lerp_ = self._lerp
        return False


def _alone(index: int, store: str, out: str, body: Callable[[int, Path], dict]) -> None:
    os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(k, None)
    torch.set_num_threads(1)
    torch.save(body(0, Path(out)), Path(out) / "rank0.pt")


def run_one_process(body: Callable[[int, Path], dict], out: Path) -> dict:
    """Run ``body(0, out)`` in one fresh process with no process group (whatever it starts
    stays out of the test process); return what it returned."""
    import torch.multiprocessing as mp

    tiny_data()
    mp.spawn(_alone, args=(str(out / "store"), str(out), body), nprocs=1, join=True)
    return torch.load(out / "rank0.pt")
