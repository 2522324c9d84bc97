"""Shared fixtures: tiny offline adapters (no network) and synthetic paired examples."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: threading overhead exceeds the gain (30x slower on a loaded CPU)

from cord.config import ModelConfig  # noqa: E402
from cord.data.paired import PairedExample  # noqa: E402
from cord.models import load_adapter  # noqa: E402

FAMILIES = ["qwen2-audio", "qwen2.5-omni"]


def make_examples(n: int = 3, seed: int = 0) -> list[PairedExample]:
    """Examples with different question lengths and audio durations (so prompts differ)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        seconds = 0.4 + 0.55 * i
        audio = (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
        out.append(PairedExample(f"ex{i}", "How much is 3 + 4? " * (i + 1), audio, answer="7"))
    return out


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """cord's on-disk cache (cord.paths.cache_dir) goes to a fresh temporary directory for
    the session (subprocesses inherit it): no test reads or writes ~/.cache/cord, and runs
    never share a cache. Within a session the built-in datasets are made once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORD_CACHE_DIR", str(tmp_path_factory.mktemp("cord-cache")))
        mp.delenv("CORD_CACHE", raising=False)
        yield


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Every test module starts on one torch thread, whatever the one before it set."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_adapter(request):
    return load_adapter(ModelConfig(family=request.param, name_or_path="tiny", dtype="float32", device="cpu"))
