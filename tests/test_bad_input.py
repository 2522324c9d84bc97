"""Bad input across commands (issue #27): each case is one line ``cord <command>: error: …``
(exit code 2) naming what was wrong and what to do, and nothing already written is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cord import CordError
from cord.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.family=qwen2-audio", "--set", "model.dtype=float32", "--set", "model.device=cpu"]


def run(capsys, argv) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(rc: int, err: str, command: str) -> str:
    """The error text of a one-line refusal (asserts the shape; progress bars that
    transformers draws with carriage returns while a model loads are not lines)."""
    assert rc == 2, err
    lines = [line for line in err.split("\n") if line and "\r" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"cord {command}: error: "), err
    return lines[0][len(f"cord {command}: error: "):]


def paired(directory: Path, rows: list[tuple[str, str]], seconds: float = 0.5) -> Path:
    """A paired dataset: (id, question) rows, one short clip each."""
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (rid, q) in enumerate(rows):
        name = f"audio/{i}.wav"
        x = 0.1 * np.random.default_rng(i).standard_normal(int(16000 * seconds))
        sf.write(directory / name, x.astype(np.float32), 16000)
        lines.append(json.dumps({"id": rid, "question": q, "answer": "1", "audio": name}) + "\n")
    (directory / "manifest.jsonl").write_text("".join(lines))
    return directory


def train_argv(out: Path, data: Path, *sets: str) -> list[str]:
    argv = ["train", "--config", str(ROOT / "configs" / "tiny" / "sft.yaml"), "--set", f"train.output_dir={out}",
            "--set", f"data.train={data}", "--set", "train.batch_size=2", "--set", "train.progress=false",
            "--set", "train.tensorboard=false", "--set", "train.max_steps=1"]
    for s in sets:
        argv += ["--set", s]
    return argv


# ------------------------------------------------------------------ duplicate ids in a manifest


def test_duplicate_ids_are_refused_by_train_and_analyze(tmp_path, capsys):
    """eval refused them; train and analyze merged the two rows silently (results, references and
    resume are keyed by id)."""
    data = paired(tmp_path / "data", [("a", "What is 1 + 1?"), ("b", "What is 2 + 2?"), ("a", "What is 3 + 3?")])
    rc, _, err = run(capsys, train_argv(tmp_path / "run", data))
    msg = one_line(rc, err, "train")
    assert msg == (f"{data / 'manifest.jsonl'}: 1 duplicate id(s): 'a' (lines 1 and 3); ids must be unique: "
                   "remove or rename the repeated rows")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    rc, _, err = run(capsys, ["analyze", "--model", "tiny", "--data", str(data), "--out", str(tmp_path / "an")])
    assert one_line(rc, err, "analyze") == msg
    assert not (tmp_path / "an").exists()


# ------------------------------------------------------------------ models: device, tokenizer, weights


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The tiny Qwen2-Audio saved as a model folder (what `cord train` exports)."""
    from cord.config import ModelConfig
    from cord.models import load_adapter

    d = tmp_path_factory.mktemp("model") / "m"
    load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="float32", device="cpu")).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return paired(tmp_path_factory.mktemp("bench"), [("q1", "What is 1 + 1?"), ("q2", "What is 2 + 2?")])


def _commands(model: str, data: Path, tmp: Path, *sets: str) -> dict[str, list[str]]:
    extra = [a for s in sets for a in ("--set", s)]
    return {
        "eval": ["eval", "--model", model, "--family", "qwen2-audio", "--benchmarks", str(data), "--out",
                 str(tmp / "e"), *extra],
        "analyze": ["analyze", "--model", model, "--family", "qwen2-audio", "--data", str(data), "--out",
                    str(tmp / "a"), *extra],
        "train": train_argv(tmp / "t", data, f"model.name_or_path={model}", *sets),
    }


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_one_line(tmp_path, bench, capsys):
    for command, argv in _commands("tiny", bench, tmp_path, "model.device=cuda").items():
        rc, _, err = run(capsys, argv)
        msg = one_line(rc, err, command)
        assert msg.startswith("model.device='cuda', but ") and "model.device=auto" in msg, msg


def test_a_model_folder_without_tokenizer_is_one_line(tmp_path, tiny_folder, bench, capsys):
    """transformers builds an empty tokenizer there; the run died in an IndexError deep inside
    the model (eval, analyze and train)."""
    model = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_folder, model)
    for f in model.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens", "added_tokens", "chat_template")):
            f.unlink()
    for command, argv in _commands(str(model), bench, tmp_path, "model.dtype=float32", "model.device=cpu").items():
        rc, _, err = run(capsys, argv)
        msg = one_line(rc, err, command)
        assert msg.startswith(f"model '{model}' has no tokenizer") and "copy the tokenizer files" in msg, msg


def test_a_truncated_weights_file_is_one_line(tmp_path, tiny_folder, bench, capsys):
    model = tmp_path / "truncated"
    shutil.copytree(tiny_folder, model)
    weights = model / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    rc, _, err = run(capsys, _commands(str(model), bench, tmp_path, "model.device=cpu")["eval"])
    msg = one_line(rc, err, "eval")
    assert msg.startswith(f"cannot load model '{model}': a weights file is truncated or corrupt (")
    assert msg.endswith("copy or export the model again")


# ------------------------------------------------------------------ outputs that cannot be written


def _read_only(monkeypatch, root: Path) -> None:
    """Every temp file cord makes under ``root`` fails as on a read-only filesystem (tests run
    as root, which permission bits do not stop)."""
    import errno
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and Path(dir).resolve().is_relative_to(root.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_a_read_only_out_is_one_line_before_the_model_loads(tmp_path, bench, capsys, monkeypatch):
    import cord.models

    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    loads = []
    real_load = cord.models.load_adapter
    monkeypatch.setattr(cord.models, "load_adapter", lambda cfg: loads.append(cfg) or real_load(cfg))
    commands = _commands("tiny", bench, ro, "model.dtype=float32", "model.device=cpu")
    for command in ("eval", "analyze"):
        rc, _, err = run(capsys, commands[command])
        msg = one_line(rc, err, command)
        out = ro / ("e" if command == "eval" else "a")
        assert msg == f"--out {out}: cannot write there (Read-only file system); give a folder you can write to"
    assert loads == []


def test_a_full_disk_while_checkpointing_or_exporting_is_one_line(tmp_path, bench, capsys, monkeypatch):
    """ENOSPC during a checkpoint left a temp folder (and model.tmp during the export) and a
    traceback; the checkpoints already written must stay and a rerun must resume."""
    import errno

    import cord.models.qwen
    import cord.train.checkpoint as ck

    out = tmp_path / "t"
    argv = train_argv(out, bench, "train.max_steps=3", "train.save_every=1")
    real_save = ck.save_file
    calls = []

    def save_file(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: half a file, then the disk is full
            Path(path).write_bytes(b"\0" * 16)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", save_file)
    rc, _, err = run(capsys, argv)
    msg = one_line(rc, err, "train")
    assert msg == (f"cannot write checkpoint step-00000002 in {out / 'checkpoints'}: No space left on device; "
                   "free space and rerun the same command (it resumes from step-00000001)")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"]  # no temp folder

    monkeypatch.setattr(ck, "save_file", real_save)
    real_export = cord.models.qwen.QwenAudioAdapter.save_pretrained

    def full_export(self, directory):
        (Path(directory) / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"\0" * 16)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cord.models.qwen.QwenAudioAdapter, "save_pretrained", full_export)
    rc, _, err = run(capsys, argv)
    msg = one_line(rc, err, "train")
    assert msg.startswith(f"cannot write the model to {out / 'model'}: No space left on device; free space")
    assert not (out / "model.tmp").exists() and not (out / "model").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "step-00000003"

    monkeypatch.setattr(cord.models.qwen.QwenAudioAdapter, "save_pretrained", real_export)
    rc, stdout, err = run(capsys, argv)
    assert rc == 0, err
    assert "resumed from" in stdout and (out / "model" / "config.json").is_file()


# ------------------------------------------------------------------ the cache folder


def test_a_cache_dir_that_is_a_file_or_read_only_is_one_line(tmp_path, capsys, monkeypatch):
    cache_file = tmp_path / "cache-file"
    cache_file.write_text("not a folder")
    monkeypatch.setenv("CORD_CACHE_DIR", str(cache_file))
    argv = train_argv(tmp_path / "t", Path("unused"), "data.train=builtin:tiny-arith")
    rc, _, err = run(capsys, argv)
    msg = one_line(rc, err, "train")
    assert msg == (f"cord's cache folder {cache_file} (CORD_CACHE_DIR={cache_file}) cannot be used: {cache_file} is "
                   "a file; point CORD_CACHE_DIR at a folder you can write to")
    ro = tmp_path / "ro-cache"
    ro.mkdir()
    monkeypatch.setenv("CORD_CACHE_DIR", str(ro))
    _read_only(monkeypatch, ro)
    rc, _, err = run(capsys, argv)
    msg = one_line(rc, err, "train")
    assert msg.startswith(f"cord's cache folder {ro / 'builtin' / 'tiny-arith'} (CORD_CACHE_DIR={ro}) cannot be "
                          "written (Read-only file system)")


# ------------------------------------------------------------------ misleading messages


def test_an_audio_path_that_is_a_folder_is_not_called_missing(tmp_path, capsys):
    data = paired(tmp_path / "data", [("a", "What is 1 + 1?"), ("b", "What is 2 + 2?")])
    (data / "audio" / "1.wav").unlink()
    (data / "audio" / "1.wav").mkdir()  # b's clip is a folder
    rc, _, err = run(capsys, train_argv(tmp_path / "run", data))
    msg = one_line(rc, err, "train")
    assert "missing" not in msg and "1 unreadable (b; b: 1.wav is a folder, not an audio file)" in msg


def test_sft_progress_and_summary_show_no_nan_for_metrics_it_does_not_have(tmp_path, capsys):
    """SFT has no KL and no reward: its progress bar showed kl=nan, reward=nan."""
    data = paired(tmp_path / "data", [("a", "What is 1 + 1?"), ("b", "What is 2 + 2?")])
    rc, stdout, err = run(capsys, train_argv(tmp_path / "run", data, "train.max_steps=2", "train.progress=true"))
    assert rc == 0, err
    assert "loss=" in err and "nan" not in err  # the bar's postfix
    assert "trained to step 2 (sft); loss=" in stdout and "nan" not in stdout
