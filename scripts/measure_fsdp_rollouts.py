# usage: OMP_NUM_THREADS=1 python scripts/measure_fsdp_rollouts.py
"""Rollouts under FSDP: per-layer gathering vs gathered() for the phase, on the tiny Qwen2-Audio
(2 CPU processes, gloo): all-gathers, bytes gathered, peak bytes of unsharded layer weights."""
import os, sys, time
from datetime import timedelta
from pathlib import Path
import torch

def worker(rank, world, store, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests is a package
    from tests.train.test_fsdp import _trainer
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as G
    t = _trainer(Path(out) / "run", "qwen2-audio", "train.sharding=fsdp")
    stats = {"calls": 0, "bytes": 0, "live": 0, "peak": 0}
    orig_unshard, orig_to_sharded = G.FSDPParamGroup.unshard, G.FSDPParamGroup._to_sharded
    def size(g): return sum(p._orig_size.numel() * p.param_dtype.itemsize if p.param_dtype else p._orig_size.numel() * 4 for p in g.fsdp_params)
    def unshard(self, async_op=False):
        if not self.is_unsharded and self._all_gather_result is None:
            stats["calls"] += 1; stats["bytes"] += size(self); stats["live"] += size(self)
            stats["peak"] = max(stats["peak"], stats["live"])
        return orig_unshard(self, async_op)
    def to_sharded(self):
        if self.is_unsharded: stats["live"] -= size(self)
        return orig_to_sharded(self)
    G.FSDPParamGroup.unshard, G.FSDPParamGroup._to_sharded = unshard, to_sharded
    examples = t.micro_examples(0, rank)
    audio = t.adapter.audio_prompts(examples)
    res = {}
    for name, engine in (("per-layer", t.engine._engine), ("gathered", t.engine)):
        for k in ("calls", "bytes", "peak"): stats[k] = 0
        t0 = time.perf_counter()
        roll = engine.generate(audio, n=4, temperature=1.5, max_new_tokens=32, seed=1)
        res[name] = dict(all_gathers=stats["calls"], gathered_MB=stats["bytes"] / 2**20, peak_unsharded_MB=stats["peak"] / 2**20,
                         tokens=int(roll.mask.sum()), seconds=time.perf_counter() - t0, ids=roll.ids)
    assert torch.equal(res["per-layer"]["ids"], res["gathered"]["ids"])
    total = sum(p.numel() * 4 for u in t.units for p in u.parameters()) / 2**20  # DTensor numel: global
    if rank == 0:
        for k, v in res.items():
            v.pop("ids"); print(k, {a: (round(b, 3) if isinstance(b, float) else b) for a, b in v.items()})
        print("layer weights (all units, fp32) MB:", round(total, 3), "units:", len(t.units))
    dist.barrier(); dist.destroy_process_group()

if __name__ == "__main__":
    import torch.multiprocessing as mp
    import tempfile; out = tempfile.mkdtemp()

    mp.spawn(worker, args=(2, out + "/store", out), nprocs=2, join=True)
