"""benchmarks/gpu_check.py --cpu-smoke runs in the suite, so the acceptance script cannot rot:
the same sequence as on a GPU, on CPU with gloo, every check that does not need CUDA passing."""

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
@pytest.mark.timeout(900)
def test_cpu_smoke_passes_every_check_that_does_not_need_cuda(tmp_path, capsys):
    import torch.distributed as dist

    mod = _module()
    report = mod.run(["--cpu-smoke", "--workdir", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(report))  # the last stdout line is the report
    checks = report["checks"]
    assert list(checks) == mod.CHECKS
    assert checks.pop("rng_restore").startswith("skipped: needs CUDA")
    assert checks.pop("vllm").startswith("skipped: vLLM is not installed")  # the main suite's venv
    assert set(checks.values()) == {"pass"}, checks
    assert not dist.is_initialized()  # the one-process FSDP check ended the group it started
    assert report["kernels"]["kl_max_abs_err"] < 1e-4
    assert report["fsdp_single"]["backend"] == "gloo" and report["ddp"]["backend"] == "gloo"
    assert set(report["families"]) == set(mod.FAMILIES)
    assert report["projector_bf16"]["moved"] > 0
    seven = report["sevenb"]
    assert set(seven["methods"]) == set(mod.DEFAULT_7B) and not seven["skipped_methods"]
    for name, m in seven["methods"].items():
        assert m["finite"] and math.isfinite(m["loss"]), name
        assert set(m["seconds_per_step"]) == {"rollout", "teacher", "student", "backward", "step"}
        assert (m["seconds_per_step"]["rollout"] > 0) == (name != "sft"), name  # sft samples nothing
    check = seven["logprob_check"]
    assert check["rollout_tokens"] > 0 and check["rollout_rows"] == 4
    # fp32 on CPU: the sampler's cached decode and the training forward agree to rounding
    assert check["max_abs_logprob_diff"] < 1e-4


def test_a_failing_check_is_named_in_the_report_and_the_exit_code(tmp_path, capsys, monkeypatch):
    mod = _module()

    def broken(run):
        raise mod.Failed("0 of 12 weights moved")

    monkeypatch.setattr(mod, "check_projector_bf16", broken)
    monkeypatch.setattr("sys.argv", ["gpu_check.py", "--cpu-smoke", "--only", "versions,projector_bf16",
                                     "--workdir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        mod.main()
    assert exit_.value.code == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["checks"] == {"versions": "pass", "projector_bf16": "fail: Failed: 0 of 12 weights moved"}


def test_missing_packages_are_one_line(monkeypatch):
    mod = _module()
    monkeypatch.setattr(mod, "REQUIRED", ["torch", "surely_not_installed_pkg"])
    with pytest.raises(SystemExit, match="missing Python packages: surely_not_installed_pkg"):
        mod.preflight()
