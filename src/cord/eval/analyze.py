"""``cord analyze``: where, token by token, the audio-conditioned model departs from the
text-conditioned one (the paper's Figure 3 diagnostics).

For each paired example: sample one rollout y from the audio prompt (temperature 1, seeded),
then score every completion position t under both prompts with the *same* network and the
same prefix y_<t, no gradient::

    D_t = KL(p(·|x_audio, y_<t) ‖ p(·|x_text, y_<t))      (full vocabulary, temperature 1)

through :func:`cord.objectives.reverse_kl_per_token` — exactly the divergence CORD's
token-level loss weights. Outputs in ``OUT``:

* ``analysis.json``: number of rollouts/tokens, KL mean/std/percentiles (50/80/90/99),
  skewness, the share of all KL carried by the top 10 % of tokens, Pearson correlation of
  KL with the completion position (absolute and relative), mean KL per position and per
  tenth of the completion, a histogram, 101 quantiles (for before/after plots), and the
  top-divergent tokens: tokens ranked by how often they fall in the top 10 % of KL, with
  their total count and mean KL.
* ``rollouts.jsonl``: per rollout its id, token ids, text and per-token KL (every number in
  analysis.json can be recomputed from it); an example the long-audio policy skipped is a
  line ``{"id", "status": "skipped", "reason"}``.
* ``analyze-run.json``: what produced the rollouts (model, data, seed, temperature, lengths);
  ``cord eval`` keeps its own record (``eval-run.json``), so the two may share a folder.
* ``kl_hist.png`` (log counts) and ``kl_by_position.png``.

Rollouts are reproducible for the same seed and batch size (batch ``b`` samples with seed
``seed + b``). Each batch's lines are flushed to ``rollouts.jsonl`` as it finishes; a rerun
with the same ``OUT`` skips the batches already there (a line torn by a killed run is
dropped first) and recomputes ``analysis.json`` from all lines, so an interrupted analysis
resumes to exactly what an uninterrupted one writes. A rerun with other settings is refused.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cord import CordError
from cord.data.paired import PairedExample
from cord.eval.plots import plot_kl_by_position, plot_kl_histogram
from cord.eval.records import check_fingerprint, dump_json, model_stamp, read_records, write_atomic, write_run_record

PERCENTILES = (50, 80, 90, 99)
ANALYSIS_JSON = "analysis.json"
ROLLOUTS_JSONL = "rollouts.jsonl"
HIST_PNG = "kl_hist.png"
POSITION_PNG = "kl_by_position.png"
RUN_JSON = "analyze-run.json"
SKIP_LONG_AUDIO = "audio longer than model.max_audio_seconds (model.long_audio=skip)"


def _finite(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    from scipy.stats import pearsonr

    return _finite(pearsonr(x, y).statistic)


def kl_diagnostics(
    kl_per_rollout: Sequence[Sequence[float]],
    token_ids: Sequence[Sequence[int]],
    decode=None,
    top_tokens: int = 30,
    piece=None,
    top_fraction: float = 0.10,
) -> dict[str, Any]:
    """The Figure-3 statistics from per-rollout KL values and their token ids.

    ``kl_per_rollout[r]`` and ``token_ids[r]`` have the rollout's length; ``decode(id)``
    gives a token's text, ``piece(id)`` (optional) its vocabulary entry (readable where a
    token is a fragment of a UTF-8 character). ``top_fraction``: the share of highest-KL tokens that counts as
    "top-divergent" (and whose share of the total KL is reported).
    """
    from scipy.stats import skew

    if len(kl_per_rollout) != len(token_ids):
        raise ValueError("kl_per_rollout and token_ids must have one entry per rollout")
    kls = [np.asarray(k, dtype=np.float64) for k in kl_per_rollout]
    ids = [np.asarray(t, dtype=np.int64) for t in token_ids]
    lengths = np.array([len(k) for k in kls], dtype=np.int64)
    if any(len(k) != len(t) for k, t in zip(kls, ids)):
        raise ValueError("each rollout needs one KL value per token")
    kl = np.concatenate(kls) if kls else np.zeros(0)
    tok = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    pos = np.concatenate([np.arange(n) for n in lengths]) if kls else np.zeros(0)
    rel = np.concatenate([np.arange(n) / (n - 1) if n > 1 else np.zeros(n) for n in lengths]) if kls else np.zeros(0)
    out: dict[str, Any] = {
        "n_rollouts": len(kls),
        "n_tokens": int(kl.size),
        "mean_length": float(lengths.mean()) if kls else None,
    }
    if kl.size == 0:
        out["kl"] = {"mean": None}
        return out

    pct = np.percentile(kl, PERCENTILES)
    threshold = float(np.quantile(kl, 1.0 - top_fraction))
    top = kl >= threshold
    total = float(kl.sum())
    k = max(1, int(round(top_fraction * kl.size)))
    out["kl"] = {
        "mean": float(kl.mean()),
        "std": float(kl.std()),
        "min": float(kl.min()),
        "max": float(kl.max()),
        **{f"p{p}": float(v) for p, v in zip(PERCENTILES, pct)},
        "skewness": _finite(skew(kl, bias=True)) if kl.size > 2 and np.ptp(kl) > 0 else None,
        f"top{round(100 * top_fraction)}pct_share": float(np.sort(kl)[-k:].sum() / total) if total > 0 else None,
    }
    out["pearson_position"] = _pearson(pos, kl)
    out["pearson_relative_position"] = _pearson(rel, kl)

    width = int(lengths.max())
    sums = np.bincount(pos.astype(np.int64), weights=kl, minlength=width)
    counts = np.bincount(pos.astype(np.int64), minlength=width)
    out["kl_by_position"] = {
        "position": list(range(width)),
        "mean_kl": (sums / np.maximum(counts, 1)).tolist(),
        "count": counts.tolist(),
    }
    bins = np.minimum((rel * 10).astype(np.int64), 9)
    rs, rc = np.bincount(bins, weights=kl, minlength=10), np.bincount(bins, minlength=10)
    out["kl_by_relative_position"] = {
        "bin_start": [i / 10 for i in range(10)],
        "mean_kl": [float(s / c) if c else None for s, c in zip(rs, rc)],
        "count": rc.tolist(),
    }
    hist, edges = np.histogram(kl, bins=50)
    out["histogram"] = {"counts": hist.tolist(), "edges": edges.tolist()}
    levels = np.linspace(0, 1, 101)
    out["quantiles"] = {"levels": levels.tolist(), "values": np.quantile(kl, levels).tolist()}

    stats: dict[int, list[float]] = defaultdict(lambda: [0, 0.0, 0, 0.0])  # count, sum, top count, top sum
    for t, v, is_top in zip(tok.tolist(), kl.tolist(), top.tolist()):
        s = stats[t]
        s[0] += 1
        s[1] += v
        if is_top:
            s[2] += 1
            s[3] += v
    ranked = sorted((t for t in stats if stats[t][2] > 0), key=lambda t: (-stats[t][2], -stats[t][3] / stats[t][2], t))
    out["top_tokens_threshold"] = threshold
    out["top_tokens"] = [
        {
            "id": int(t),
            "token": decode(int(t)) if decode is not None else str(t),
            **({"piece": piece(int(t))} if piece is not None else {}),
            "count_top": int(stats[t][2]),
            "count": int(stats[t][0]),
            "mean_kl": stats[t][1] / stats[t][0],
            "mean_kl_top": stats[t][3] / stats[t][2],
        }
        for t in ranked[:top_tokens]
    ]
    return out


def _examples(data, limit: int | None) -> tuple[list[PairedExample], str]:
    if isinstance(data, (str, Path)):
        from cord.data.paired import load_paired

        path = Path(data)
        if not path.is_dir():
            raise CordError(f"paired dataset not found: {path} (a folder with manifest.jsonl + audio, as `cord synth` writes)")
        return load_paired(path, limit), str(path)
    examples = list(data)
    return (examples[:limit] if limit is not None else examples), "<examples>"


def rollout_kl(adapter, engine, examples: list[PairedExample], *, max_new_tokens: int, temperature: float = 1.0,
               seed: int = 0, batch_size: int = 16, chunk_size: int = 512, progress: bool = False,
               done: Container[str] = frozenset(), write: Callable[[list[dict]], None] | None = None):
    """Audio rollouts and their per-token reverse KL against the text-conditioned model.

    Returns (records, skipped): one record per rollout ``{"id", "ids", "text", "kl"}``
    (lists of the rollout's length) and how many examples the long-audio policy skipped.
    Batch ``b`` samples with seed ``seed + b``. A batch whose ids are all in ``done`` is not
    computed again (resume); ``write`` receives each computed batch's lines (rollouts and
    ``{"id", "status": "skipped", "reason"}`` for skipped examples) as soon as it finishes.
    """
    from cord.objectives import reverse_kl_per_token
    from cord.progress import progress_bar

    head = adapter.lm_head()
    weight, bias = head.weight, getattr(head, "bias", None)
    records, skipped = [], 0
    model = adapter.model
    was_training = model.training
    starts = range(0, len(examples), batch_size)
    finished = {s for s in starts if all(ex.id in done for ex in examples[s : s + batch_size])}
    initial = sum(len(examples[s : s + batch_size]) for s in finished)
    model.eval()
    try:
        with progress_bar(len(examples), "cord analyze", "example", enabled=progress, initial=initial) as bar:
            for b, start in enumerate(starts):
                if start in finished:
                    continue
                batch = examples[start : start + batch_size]
                audio = adapter.audio_prompts(batch)
                keep = list(audio.keep) if audio.keep or not len(audio) else list(range(len(audio)))
                lines = {i: {"id": ex.id, "status": "skipped", "reason": SKIP_LONG_AUDIO}
                         for i, ex in enumerate(batch) if i not in set(keep)}
                skipped += len(lines)
                if keep:
                    kept = [batch[i] for i in keep]
                    text = adapter.text_prompts(kept)
                    ro = engine.generate(audio, n=1, temperature=temperature, greedy=False,
                                         max_new_tokens=max_new_tokens, seed=seed + b)
                    with torch.no_grad():
                        student = adapter.completion_hidden(audio, ro.ids, ro.mask)
                        teacher = adapter.completion_hidden(text, ro.ids, ro.mask)
                        kl = reverse_kl_per_token(student, weight, teacher, weight, ro.mask.to(student.device),
                                                  student_bias=bias, teacher_bias=bias, temperature=1.0,
                                                  chunk_size=chunk_size,
                                                  softcap=getattr(adapter, "logit_softcap", None))
                    kl = kl.float().cpu()
                    for r, (i, ex) in enumerate(zip(keep, kept)):
                        n = int(ro.mask[r].sum())
                        lines[i] = {"id": ex.id, "ids": ro.ids[r, :n].tolist(), "text": ro.text[r],
                                    "kl": kl[r, :n].tolist()}
                        records.append(lines[i])
                if write is not None:
                    write([lines[i] for i in sorted(lines)])
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return records, skipped


def _fingerprint(cfg, adapter, source: str, seed: int, temperature: float, max_new_tokens: int,
                 batch_size: int) -> dict[str, Any]:
    """What determines the rollouts; a resumed analysis must match it."""
    return {
        "model": cfg.model.name_or_path,
        "model_files": model_stamp(cfg.model.name_or_path),
        "family": getattr(adapter, "family", cfg.model.family),
        "data": source,
        "system_prompt": getattr(adapter, "system_prompt", None),
        "instruction": getattr(adapter, "instruction", None),
        "long_audio": getattr(adapter, "long_audio", cfg.model.long_audio),
        "max_audio_seconds": getattr(adapter, "max_audio_seconds", cfg.model.max_audio_seconds),
        "seed": seed,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "engine": cfg.rollout.engine,
        "stop_strings": list(cfg.rollout.stop_strings),
    }


#: kept for callers of the old private name
_model_stamp = model_stamp


def analyze(
    cfg=None,
    adapter=None,
    *,
    out: str | Path,
    data=None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    temperature: float = 1.0,
    top_tokens: int = 30,
    plots: bool = True,
    progress: bool = True,
    engine=None,
) -> dict[str, Any]:
    """Run the KL diagnostics and write ``analysis.json``, ``rollouts.jsonl`` and the PNGs
    to ``out``; returns the analysis dict.

    ``cfg``: a :class:`cord.config.CordConfig` (default: all defaults); it supplies the model
    (when ``adapter`` is None), ``data`` (default ``cfg.data.train``), ``limit``
    (``cfg.data.limit``), ``max_new_tokens`` (``cfg.rollout.max_new_tokens``), ``batch_size``
    (``cfg.eval.batch_size``), ``seed`` (``cfg.train.seed``) and the KL chunk size.
    ``data``: a paired-dataset folder or a list of PairedExamples.
    """
    from cord.config import CordConfig
    from cord.data.check import check_examples, check_out_dir, check_writable_dir

    cfg = cfg if cfg is not None else CordConfig()
    out = check_out_dir(out)
    examples, source = _examples(data if data is not None else cfg.data.train, limit if limit is not None else cfg.data.limit)
    if not examples:
        raise CordError(f"no examples to analyze in {source}")
    check_examples(examples, max_seconds=getattr(adapter, "max_audio_seconds", cfg.model.max_audio_seconds),
                   policy=getattr(adapter, "long_audio", cfg.model.long_audio), source=source)
    check_writable_dir(out)  # a read-only --out fails here, not after the model has loaded
    if adapter is None:
        from cord.models import load_adapter

        adapter = load_adapter(cfg.model)
    batch_size = batch_size or cfg.eval.batch_size
    if engine is None:
        from cord.rollout import make_engine

        engine = make_engine(adapter, cfg, batch_size=batch_size)
    max_new_tokens = max_new_tokens or cfg.rollout.max_new_tokens
    seed = cfg.train.seed if seed is None else seed
    fingerprint = _fingerprint(cfg, adapter, source, seed, temperature, max_new_tokens, batch_size)
    check_fingerprint(out, fingerprint, resumable=(out / ROLLOUTS_JSONL).is_file(),
                      holds="rollouts from another analysis", command="analyze")
    out.mkdir(parents=True, exist_ok=True)
    write_run_record(out, "analyze", {"fingerprint": fingerprint})
    path = out / ROLLOUTS_JSONL
    done = read_records(path, repair=True)

    with open(path, "a", encoding="utf-8") as f:
        def write(lines: list[dict]) -> None:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
            f.flush()
            os.fsync(f.fileno())

        rollout_kl(adapter, engine, examples, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                   batch_size=batch_size, chunk_size=cfg.objective.chunk_size, progress=progress,
                   done=done, write=write)

    # the analysis is recomputed from every line on disk (this run's and earlier runs')
    on_disk = read_records(path)
    lines = [on_disk[ex.id] for ex in examples]
    wanted = {ex.id for ex in examples}
    others = [r for i, r in on_disk.items() if i not in wanted]  # kept: another --limit's work
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines + others))
    records = [r for r in lines if r.get("status") != "skipped"]
    skipped = len(lines) - len(records)
    if not records:
        raise CordError(f"all {len(examples)} examples were skipped by the long-audio policy; nothing to analyze")

    tok = adapter.tokenizer

    def decode(i: int) -> str:
        return tok.decode([i], skip_special_tokens=False)

    def piece(i: int) -> str:
        p = tok.convert_ids_to_tokens(i)
        return p if isinstance(p, str) else str(p)

    result: dict[str, Any] = {
        "model": cfg.model.name_or_path,
        "family": getattr(adapter, "family", cfg.model.family),
        "data": source,
        "n_examples": len(examples),
        "n_skipped": skipped,
        "temperature": temperature,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "divergence": "reverse KL(p(.|audio, y<t) || p(.|text, y<t)), full vocabulary, nats",
    }
    result.update(kl_diagnostics([r["kl"] for r in records], [r["ids"] for r in records], decode, top_tokens, piece))

    files = {"rollouts": ROLLOUTS_JSONL}
    if plots:
        kl = np.concatenate([np.asarray(r["kl"], dtype=np.float64) for r in records])
        pct = {f"p{p}": result["kl"][f"p{p}"] for p in PERCENTILES}
        plot_kl_histogram(kl, out / HIST_PNG, pct)
        pos = result["kl_by_position"]
        plot_kl_by_position(pos["position"], pos["mean_kl"], pos["count"], out / POSITION_PNG)
        files.update(histogram=HIST_PNG, by_position=POSITION_PNG)
    result["files"] = files
    write_atomic(out / ANALYSIS_JSON, dump_json(result))
    return result
