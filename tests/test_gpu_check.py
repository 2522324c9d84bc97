"""benchmarks/gpu_check.py --cpu-smoke runs in the suite, so the GPU script cannot rot: every
method trains through the presets' settings on a 2-layer Qwen2-Audio, and the sampler's
log-probs equal the training forward's."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("cord_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_cpu_smoke_runs_every_method_and_reports_the_fields(tmp_path, capsys):
    mod = _module()
    report = mod.run(["--cpu-smoke", "--cord-steps", "2", "--workdir", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(report))  # the last stdout line is the report
    assert report["mode"] == "cpu-smoke" and set(report["methods"]) == set(mod.METHODS)
    for name, m in report["methods"].items():
        assert m["finite"] and math.isfinite(m["loss"]), name
        assert set(m["seconds_per_step"]) == {"rollout", "teacher", "student", "backward", "step"}
        assert m["student_tokens_per_s"] > 0
        rollouts = m["seconds_per_step"]["rollout"] > 0
        assert rollouts == (name != "sft"), name  # sft samples nothing
    assert report["methods"]["cord"]["steps"] == 2
    check = report["logprob_check"]
    assert check["rollout_tokens"] > 0 and check["rollout_rows"] == 4 and report["rollout_tokens_per_s"] > 0
    # fp32 on CPU: the sampler's cached decode and the training forward agree to rounding
    assert report["max_abs_logprob_diff"] == check["max_abs_logprob_diff"] < 1e-4
    # the objective's log-probs also count the placeholder tokens the sampler excludes
    assert check["max_abs_logprob_diff_objective"] >= check["max_abs_logprob_diff"]


def test_missing_packages_are_one_line(monkeypatch):
    mod = _module()
    monkeypatch.setattr(mod, "REQUIRED", ["torch", "surely_not_installed_pkg"])
    with pytest.raises(SystemExit, match="missing Python packages: surely_not_installed_pkg"):
        mod.preflight()
