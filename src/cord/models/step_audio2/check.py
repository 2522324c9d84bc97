"""``cord check-model --family step-audio2 --model PATH_OR_NAME --trust-remote-code``: the
equivalence proof cord cannot run without the weights.

cord's ``step-audio2`` family re-implements Step-Audio2-mini natively (:mod:`cord.models.step_audio2`).
For users who have the weights and can run the checkpoint's own code, this command loads both —
cord's model, and the checkpoint's ``modeling_step_audio_2.py`` through transformers'
``trust_remote_code`` (the only place cord runs it, on explicit request) — feeds both the same
prompts and reports:

* the mel front end: max |Δ| between cord's features and the reference's
  ``log_mel_spectrogram(chunk, n_mels=128, padding=479)`` for every 25 s chunk;
* per prompt (audio clips given with ``--audio``, or a built-in 3 s and a 27 s two-chunk
  signal, and the text prompt of ``--question``): max |Δ logits| over every prompt position;
* whether the greedy continuations (``--max-new-tokens``, audio-output tokens suppressed in
  both) are identical, and where they first differ.

The reference takes one conversation at a time (``forward(input_ids, wavs, wav_lens,
attention_mask)``, no KV cache: its greedy continuation recomputes the whole sequence per token).
Exit status 0 when every greedy continuation agrees, 1 otherwise. The reference needs the
transformers version its code was written for (4.49–4.53); run this in such an environment if
the current one cannot import it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from cord import CordError
from cord.data.audio import SAMPLE_RATE

FAMILIES = ("step-audio2",)


def upstream_log_mel(audio: np.ndarray, n_mels: int = 128, padding: int = 479) -> torch.Tensor:
    """The reference's front end, written from its description (used when the remote module
    does not expose ``log_mel_spectrogram``): zeros appended, centred STFT (Hann 400, hop 160),
    last frame dropped, Slaney mel, log10 floored at 1e-10 and at max − 8, (x + 4) / 4."""
    from transformers.audio_utils import mel_filter_bank

    x = torch.nn.functional.pad(torch.as_tensor(audio, dtype=torch.float32), (0, padding))
    stft = torch.stft(x, 400, 160, window=torch.hann_window(400), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                                               max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney",
                                               mel_scale="slaney")).float()
    spec = torch.clamp(filters.T @ power, min=1e-10).log10()
    spec = torch.maximum(spec, spec.max() - 8.0)
    return (spec + 4.0) / 4.0


@dataclass
class Reference:
    """A reference model: ``model(input_ids=, wavs=, wav_lens=, attention_mask=)`` returning an
    object with ``.logits`` (the checkpoint's remote class), and its mel front end."""

    model: Any
    log_mel: Callable[[np.ndarray], torch.Tensor] = upstream_log_mel

    def mels(self, audio: np.ndarray) -> list[torch.Tensor]:
        from cord.models.step_audio2 import CHUNK_SAMPLES

        return [torch.as_tensor(self.log_mel(audio[i : i + CHUNK_SAMPLES])).float()
                for i in range(0, max(len(audio), 1), CHUNK_SAMPLES)]

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, mels: list[torch.Tensor] | None) -> torch.Tensor:
        """(1, L, V) logits of one conversation; its chunks padded together as the reference
        pads them (zeros to the longest, lengths = frames − 2)."""
        device = next(self.model.parameters()).device
        kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        if mels:
            width = max(m.shape[1] for m in mels)
            wavs = torch.zeros((len(mels), mels[0].shape[0], width))
            for i, m in enumerate(mels):
                wavs[i, :, : m.shape[1]] = m
            kwargs["wavs"] = wavs.to(device)
            kwargs["wav_lens"] = torch.tensor([m.shape[1] - 2 for m in mels], dtype=torch.int32, device=device)
        return self.model(**kwargs).logits.float()


def load_remote_reference(name_or_path: str, *, device: torch.device, dtype: torch.dtype) -> Reference:
    """The checkpoint's own model through ``trust_remote_code`` (explicitly requested)."""
    try:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype)
    except Exception as e:  # noqa: BLE001 - the remote code's failures are one line
        raise CordError(
            f"cannot load the reference model of {name_or_path} with its remote code: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} (the reference was "
            "written for transformers 4.49-4.53; run check-model in such an environment)"
        ) from None
    model.to(device).eval()
    log_mel = getattr(sys.modules.get(type(model).__module__), "log_mel_spectrogram", None)
    if log_mel is None:
        return Reference(model)
    return Reference(model, lambda a: log_mel(torch.as_tensor(a, dtype=torch.float32), n_mels=128, padding=479))


def builtin_audio() -> list[tuple[str, np.ndarray]]:
    """A 3 s and a 27 s (two-chunk) deterministic test signal: tones with a slow vibrato plus
    noise (speech is not needed for a numerical comparison)."""
    rng = np.random.default_rng(0)
    out = []
    for seconds in (3.0, 27.0):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        sig = 0.3 * np.sin(2 * np.pi * (220 + 30 * np.sin(2 * np.pi * 0.5 * t)) * t)
        sig += 0.1 * np.sin(2 * np.pi * 1250 * t) + 0.02 * rng.standard_normal(t.shape)
        out.append((f"built-in {seconds:g} s signal", sig.astype(np.float32)))
    return out


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.no_grad()
def _our_logits(adapter, prompts) -> torch.Tensor:
    core = adapter.core()
    prompts = prompts.to(adapter.device)
    embeds = core.embed(prompts.input_ids, prompts.extra.get("input_features"), prompts.extra.get("feature_lens"))
    pos = (prompts.attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = core.language_model.model(inputs_embeds=embeds, attention_mask=prompts.attention_mask,
                                       position_ids=pos, use_cache=False).last_hidden_state
    return adapter.lm_head()(hidden).float()


@torch.no_grad()
def _reference_greedy(ref: Reference, ids: torch.Tensor, mels, n: int, suppress: list[int],
                      eos: list[int]) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        logits = ref.logits(ids, mels)[0, -1]
        logits[suppress] = float("-inf")
        tok = int(logits.argmax())
        out.append(tok)
        if tok in eos:
            break
        ids = torch.cat([ids, torch.tensor([[tok]], dtype=ids.dtype)], dim=1)
    return out


def compare(adapter, reference: Reference, *, audio: list[tuple[str, np.ndarray]], question: str,
            max_new_tokens: int = 32, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Compare ``adapter`` (cord's step-audio2) with ``reference`` on each audio clip and the text
    prompt of ``question``; print one line each and return the numbers."""
    from cord.data.paired import PairedExample
    from cord.rollout.engine import HFEngine

    engine = HFEngine(adapter)
    suppress, eos = adapter.placeholder_token_ids, adapter.eos_token_ids
    rows: list[dict[str, Any]] = []
    mel_delta = 0.0
    n_chunks = 0
    cases = [(name, PairedExample(f"check-{i}", question, clip)) for i, (name, clip) in enumerate(audio)]
    cases.append(("text prompt", PairedExample("check-text", question, None)))
    for name, ex in cases:
        if ex.audio is None:
            prompts, mels = adapter.text_prompts([ex]), None
        else:
            prompts = adapter.audio_prompts([ex])
            if len(prompts) == 0:
                raise CordError(f"{name} is longer than model.max_audio_seconds")
            ours = adapter.chunk_features(np.asarray(ex.audio, dtype=np.float32))
            mels = reference.mels(np.asarray(ex.audio, dtype=np.float32))
            if [m.shape for m in mels] != [o.shape for o in ours]:
                raise CordError(f"{name}: the reference's mel shapes {[tuple(m.shape) for m in mels]} differ from "
                                f"cord's {[tuple(o.shape) for o in ours]}")
            mel_delta = max(mel_delta, max(float((m - o.float()).abs().max()) for m, o in zip(mels, ours)))
            n_chunks += len(mels)
        ids = prompts.input_ids[:, prompts.attention_mask[0].bool()]
        ref_logits = reference.logits(ids, mels)
        mine = _our_logits(adapter, prompts).to(ref_logits.device)
        delta = float((mine - ref_logits).abs().max())
        greedy = engine.generate(prompts, greedy=True, max_new_tokens=max_new_tokens)
        ours_tokens = greedy.ids[0, : int(greedy.mask[0].sum())].tolist()
        ref_tokens = _reference_greedy(reference, ids.cpu(), mels, max_new_tokens, suppress, eos)
        diff = _first_difference(ours_tokens, ref_tokens)
        rows.append({"name": name, "positions": ids.shape[1], "max_abs_logit_diff": delta,
                     "agree": diff is None, "first_difference": diff, "tokens": len(ours_tokens)})
        verdict = "agree" if diff is None else f"DIFFER from token {diff}"
        out(f"  {name:<28} max |Δ logits| {delta:.3g} over {ids.shape[1]} positions; "
            f"greedy {len(ours_tokens)} tokens: {verdict}")
    if n_chunks:
        out(f"  {'mel front end':<28} max |Δ| {mel_delta:.3g} over {n_chunks} chunk(s)")
    agree = all(r["agree"] for r in rows)
    return {"rows": rows, "mel_max_abs_diff": mel_delta, "agree": agree}
