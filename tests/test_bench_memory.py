"""benchmarks/bench_memory.py: the depth extrapolation and the fit table (no model runs)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_memory as bm  # noqa: E402


def _results():
    runs = [dict(arch="qwen2-audio", dtype="bfloat16", method="cord", decoder_layers=L, trainable=5_000_000 * L,
                 peaks_mb={"student": 1000.0 + 100 * L, "backward": 2000.0 + 300 * L}) for L in (1, 2)]
    rollout = [dict(arch="qwen2-audio", dtype="bfloat16", decoder_layers=L, peak_extra_mb=400.0 + 20 * L,
                    prompt_tokens=818, kv_bytes_per_token_per_layer=16384) for L in (1, 2)]
    res = dict(runs=runs, rollout=rollout, full_depth_params={"qwen2-audio": 8_400_000_000})
    res["extrapolation"] = bm.extrapolate(res)
    return res


def test_extrapolation_is_constant_plus_depth_times_per_layer():
    ex = _results()["extrapolation"]["qwen2-audio/bfloat16/cord"]
    assert ex["student"] == dict(per_layer_mb=100.0, const_mb=1000.0, full_depth_mb=1000.0 + 32 * 100.0)
    assert ex["backward"]["full_depth_mb"] == 2000.0 + 32 * 300.0


def test_fit_table_adds_static_weights_lora_and_scales_with_prompts():
    res = _results()
    static = (8_400_000_000 * 2 + 5_000_000 * 32 * 16) / 1e9
    backward = (2000.0 + 32 * 300.0) * 2**20 / 1e9
    row1 = bm.fit_table(res, prompts=1).splitlines()[2]
    row8 = bm.fit_table(res, prompts=8).splitlines()[2]
    assert f"| {static:.1f} |" in row1
    assert f"| {static + backward:.1f} | yes | yes |" in row1
    assert f"| {static + 8 * backward:.1f} | **no** | yes |" in row8


def test_live_tensor_bytes_counts_new_storages_until_they_die_and_not_views_or_in_place_ops():
    import torch

    w = torch.randn(100, 100)  # existed before: never counted
    live = bm.LiveTensorBytes()
    with live.mode():
        live.phase("a")
        view = w.t()
        y = w @ w  # 40,000 bytes
        flat = y.view(-1)
        y.add_(1.0)
        assert live.current == 40_000
        del y
        assert live.current == 40_000  # the view keeps the storage alive
        del flat
        assert live.current == 0
        live.phase("b")
        a = torch.empty(25, 100)  # 10,000
        b = torch.cat([a, a])  # 20,000
        del a
        halves = torch.split(b, 25)  # views
    assert view.shape == (100, 100) and len(halves) == 2
    assert live.peaks == {"a": 40_000, "b": 30_000}
    assert live.current == 20_000 and live.peak == 40_000


def test_saved_runs_merge_into_one_extrapolation_and_tables(tmp_path):
    import json

    res = _results()
    a, b = dict(res), dict(res)
    b["runs"] = [dict(r, dtype="float32", peaks_mb={k: 2 * v for k, v in r["peaks_mb"].items()}, step_s=1.0)
                 for r in res["runs"]]
    b["rollout"] = []
    for r in a["runs"]:
        r["step_s"] = 1.0
    (tmp_path / "a.log").write_text("progress line\n" + json.dumps(a) + "\n")
    (tmp_path / "b.log").write_text(json.dumps(b) + "\n")
    merged = bm.merge([str(tmp_path / "a.log"), str(tmp_path / "b.log")])
    ex = merged["extrapolation"]
    assert ex["qwen2-audio/float32/cord"]["backward"]["full_depth_mb"] == 2 * ex["qwen2-audio/bfloat16/cord"]["backward"]["full_depth_mb"]
    rows = bm.measured_table(merged).splitlines()
    assert len(rows) == 2 + 4 + 2  # header, 4 step runs, 2 real-engine rollouts
    table = bm.fit_table(merged, prompts=1)
    # fp32 weights cost 4 B a parameter, bf16 2 B
    static32 = (8_400_000_000 * 4 + 5_000_000 * 32 * 16) / 1e9
    assert f"| qwen2-audio float32 cord | {static32:.1f} |" in table


def test_save_keeps_the_results_so_far_in_a_file_table_from_reads(tmp_path):
    res = _results()
    path = tmp_path / "partial.json"
    bm._save(str(path), {"runs": res["runs"][:1], "rollout": [], "full_depth_params": res["full_depth_params"]})
    bm._save(str(path), {"runs": res["runs"], "rollout": res["rollout"], "full_depth_params": res["full_depth_params"]})
    merged = bm.merge([str(path)])
    assert merged["runs"] == res["runs"] and merged["extrapolation"] == res["extrapolation"]
    assert not (tmp_path / "partial.json.tmp").exists()


def test_fit_table_rollout_is_held_memory_plus_groups_plus_new_token_kv_by_method_rows():
    res = _results()
    for r in res["runs"]:
        r["peaks_mb"]["rollout"] = 50.0  # held during the engine call, both depths
    res["runs"] += [dict(r, method="sft", peaks_mb={"student": 10.0, "backward": 20.0}) for r in res["runs"]]
    res["extrapolation"] = bm.extrapolate(res)
    table = bm.fit_table(res, prompts=2, tokens=200)
    group_mb = 400.0 + 32 * 20.0  # the real-engine group of 4 at full depth (const 400, 20 a layer)
    want = (2 * 50.0 * 2**20 + 2 * group_mb * 2**20 + 2 * 4 * 200 * 32 * 16384) / 1e9
    cord = next(line for line in table.splitlines() if " cord |" in line)
    sft = next(line for line in table.splitlines() if " sft |" in line)
    assert cord.split("|")[3].strip() == f"{want:.1f}"
    assert sft.split("|")[3].strip() == "0.0"  # sft samples nothing
