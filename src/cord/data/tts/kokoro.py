"""Kokoro (the ``kokoro`` package) with local weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cord import CordError

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
