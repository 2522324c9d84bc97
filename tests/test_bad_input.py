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
    """The error text of a one-line refusal (asserts the shape)."""
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"cord {command}: error: "), err
    return err[len(f"cord {command}: error: "):].rstrip("\n")


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
