"""The answer step of ``cord eval``: each benchmark's items asked with greedy decoding, as its
protocol prompts them, a batch at a time — only those the results folder holds no answer to.

:func:`answer_suite` first refuses a results folder whose answers another run produced
(another model or its files, prompts, long-audio policy, decoding or protocol:
:func:`run_fingerprint`) and records this run in ``OUT/eval-run.json`` (:func:`record_run`);
then it yields, lazily, benchmark by benchmark (:func:`answer_benchmark`), a batch of
:class:`Answer` objects at a time for ``OUT/<benchmark>/<modality>.jsonl`` (the score step
judges and appends them). Items already answered there with the same content (their ``item``
digest, :func:`cord.eval.benchmarks.item_digest`) are not asked again, and the line a killed
run tore is cut first. Longest prompts go first (less padding per batch, memory trouble shows
early).

An item is not asked (``skipped``, with the reason) when the long-audio policy skips its
audio, or in the text modality when its question is *about* the audio
(``meta["text_with_audio"]``, e.g. MMAU: there is no text-only form). The protocol sets the
adapter's ``instruction`` and, where the official runner gives the family one, its
``system_prompt`` while its benchmark is asked (:func:`protocol_prompting`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cord import CordError
from cord.data.paired import PairedExample
from cord.eval.benchmarks import Benchmark, Suite
from cord.eval.records import check_fingerprint, model_stamp, read_records, write_run_record
from cord.types import PromptBatch

SKIP_LONG_AUDIO = "audio longer than model.max_audio_seconds (model.long_audio=skip)"
SKIP_NO_TEXT_FORM = "the question is about the audio clip: there is no text-only form"


@dataclass
class Answer:
    """One item asked in one modality: the ``response`` (None when it was not asked:
    ``skipped`` says why), whether the model ``finished`` it (an end-of-sequence token;
    None when the engine does not say) and its length in ``tokens``; ``digest`` is the
    item's fingerprint for this modality."""

    item: PairedExample
    modality: str
    digest: str
    response: str | None = None
    finished: bool | None = None
    tokens: int = 0
    skipped: str = ""


@dataclass
class AnsweredBatch:
    """The answers of one batch of ``bench``'s items, in the batch's order, for the records
    file ``path`` (``OUT/<benchmark>/<modality>.jsonl``)."""

    bench: Benchmark
    path: Path
    answers: list[Answer]


# --- the run ------------------------------------------------------------------------------


def run_fingerprint(cfg, adapter) -> dict[str, Any]:
    """What determines the answers; a resumed run must match it: the model (its path, and its
    files' sizes and times: a model retrained into the same folder is another model), dtype,
    prompts, long-audio policy, decoding and protocol. Which items are asked (benchmarks,
    ``--limit``) is not in it: each record carries its item's digest
    (:func:`cord.eval.benchmarks.item_digest`) and the report reads the records of the items
    asked. Batch size and progress may change."""
    fp = {
        "model": cfg.model.name_or_path,
        "model_files": model_stamp(cfg.model.name_or_path),
        "dtype": cfg.model.dtype,
        "family": getattr(adapter, "family", cfg.model.family),
        "system_prompt": getattr(adapter, "system_prompt", None),
        "instruction": getattr(adapter, "instruction", None),
        "long_audio": cfg.model.long_audio,
        "max_audio_seconds": cfg.model.max_audio_seconds,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "decoding": "greedy",
        "protocol": cfg.eval.protocol,
    }
    if cfg.model.name_or_path == "tiny":  # the tiny builders' random weights
        fp["tiny_seed"] = cfg.model.tiny_seed
    return fp


def record_run(out: Path, fingerprint: dict[str, Any], suite: Suite) -> None:
    """Refuse ``out`` when it holds answers from a run with another fingerprint (one line
    naming the setting); then create it and record this run (``eval-run.json``)."""
    out = Path(out)
    check_fingerprint(out, fingerprint, resumable=out.is_dir() and any(out.glob("*/*.jsonl")),
                      holds="answers from another run", command="eval")
    out.mkdir(parents=True, exist_ok=True)
    write_run_record(out, "eval", {"fingerprint": fingerprint, "benchmarks": suite.names,
                                   "modalities": suite.modalities})


# --- prompts --------------------------------------------------------------------------------


@contextlib.contextmanager
def protocol_prompting(adapter, bench: Benchmark):
    """The adapter's ``instruction`` (``""``: the question or the audio alone) and, where the
    official runner gives the family one, its ``system_prompt``, as ``bench``'s protocol sets
    them, restored afterwards; None leaves the model's own."""
    changes = {}
    if bench.protocol.instruction is not None and hasattr(adapter, "instruction"):
        changes["instruction"] = bench.protocol.instruction
    system = (bench.protocol.system_prompts or {}).get(getattr(adapter, "family", None))
    if system is not None and hasattr(adapter, "system_prompt"):
        changes["system_prompt"] = system
    saved = {k: getattr(adapter, k) for k in changes}
    for k, v in changes.items():
        setattr(adapter, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(adapter, k, v)


def _merge_prompts(batches: list[tuple[PromptBatch, list[int]]], pad_id: int, modality: str) -> PromptBatch:
    """Concatenate left-padded prompt batches (``keep`` mapped through each batch's item
    indices); modality tensors are zero-padded on their trailing dimensions."""
    batches = [(b, idx) for b, idx in batches if len(b)]
    if not batches:
        empty = torch.zeros((0, 1), dtype=torch.long)
        return PromptBatch(empty, empty.clone(), modality, {}, [])
    if len(batches) == 1:
        b, idx = batches[0]
        return PromptBatch(b.input_ids, b.attention_mask, modality, dict(b.extra), [idx[k] for k in (b.keep or range(len(b)))])
    width = max(b.input_ids.shape[1] for b, _ in batches)
    ids, masks, keep = [], [], []
    for b, idx in batches:
        pad = width - b.input_ids.shape[1]
        ids.append(torch.nn.functional.pad(b.input_ids, (pad, 0), value=pad_id))
        masks.append(torch.nn.functional.pad(b.attention_mask, (pad, 0), value=0))
        keep.extend(idx[k] for k in (b.keep or range(len(b))))
    extra = {}
    for key in batches[0][0].extra:
        ts = [b.extra[key] for b, _ in batches]
        shape = [max(t.shape[d] for t in ts) for d in range(ts[0].dim())]
        padded = []
        for t in ts:
            spec = []
            for d in reversed(range(1, t.dim())):
                spec += [0, shape[d] - t.shape[d]]
            padded.append(torch.nn.functional.pad(t, spec) if any(spec) else t)
        extra[key] = torch.cat(padded)
    return PromptBatch(torch.cat(ids), torch.cat(masks), modality, extra, keep)


def build_prompts(adapter, items: list[PairedExample], modality: str) -> PromptBatch:
    """Prompts for ``items``; ``keep`` = indices into ``items`` of the rows. Audio items whose
    question is about the clip (``meta["text_with_audio"]``) get the question text after the
    audio, before the instruction."""
    if modality == "text":
        p = adapter.text_prompts(items)
        return PromptBatch(p.input_ids, p.attention_mask, "text", dict(p.extra), list(range(len(items))))
    plain = [i for i, it in enumerate(items) if not it.meta.get("text_with_audio")]
    parts = [(adapter.audio_prompts([items[i] for i in plain]), plain)] if plain else []
    for i, it in enumerate(items):
        if it.meta.get("text_with_audio"):
            if not hasattr(adapter, "instruction"):
                raise CordError(
                    f"item {it.id!r} asks a question about its audio, but the {getattr(adapter, 'family', '?')} "
                    "adapter takes no text with an audio prompt"
                )
            saved = adapter.instruction
            adapter.instruction = f"{it.question_text}\n{saved}".strip()
            try:
                parts.append((adapter.audio_prompts([it]), [i]))
            finally:
                adapter.instruction = saved
    return _merge_prompts(parts, adapter.pad_token_id, "audio")


# --- asking ---------------------------------------------------------------------------------


def _item_length(it: PairedExample, modality: str) -> int:
    if modality == "audio" and it.has_audio:
        return it.audio_samples  # from the header for a lazily loaded clip: nothing decoded
    return len(it.question_text)


def answer_batch(items: list[PairedExample], modality: str, digests: dict[str, str], adapter, engine,
                 max_new_tokens: int) -> list[Answer]:
    """Ask ``items`` in one batch (greedy); one :class:`Answer` per item, in their order."""
    answers: dict[int, Answer] = {}
    askable = list(range(len(items)))
    if modality == "text":
        askable = [i for i, it in enumerate(items) if not it.meta.get("text_with_audio")]
        for i in set(range(len(items))) - set(askable):
            answers[i] = Answer(items[i], modality, digests[items[i].id], skipped=SKIP_NO_TEXT_FORM)
    sub = [items[i] for i in askable]
    prompts = build_prompts(adapter, sub, modality) if sub else None
    kept = list(prompts.keep) if prompts is not None else []
    for j in set(range(len(sub))) - set(kept):
        answers[askable[j]] = Answer(sub[j], modality, digests[sub[j].id], skipped=SKIP_LONG_AUDIO)
    if kept:
        ro = engine.generate(prompts, n=1, greedy=True, max_new_tokens=max_new_tokens)
        for row, j in enumerate(kept):
            answers[askable[j]] = Answer(sub[j], modality, digests[sub[j].id], response=ro.text[row],
                                         finished=bool(ro.finished[row]) if ro.finished else None,
                                         tokens=int(ro.mask[row].sum()))
    return [answers[i] for i in sorted(answers)]


def answer_benchmark(
    bench: Benchmark,
    digests: dict[str, dict[str, str]],
    modalities: Sequence[str],
    adapter,
    engine,
    out: str | Path,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 512,
    progress: bool = True,
) -> Iterator[AnsweredBatch]:
    """``bench``'s unanswered items, modality by modality, as :class:`AnsweredBatch` objects for
    ``out/<modality>.jsonl`` (lazily: a batch is asked when the previous one has been taken;
    close the iterator to restore the adapter's prompting early). ``digests``:
    ``{modality: {item id: item digest}}``, from :meth:`cord.eval.benchmarks.Suite.benchmarks`."""
    from cord.progress import progress_bar

    out = Path(out)
    with protocol_prompting(adapter, bench):
        for modality in modalities:
            path = out / f"{modality}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            done = read_records(path, repair=True)
            digest = digests[modality]
            # an item whose content changed since its record was written (an edited local benchmark,
            # another folder of the same name) is asked again; its new record wins (a later line wins)
            pending = [it for it in bench.items
                       if it.id not in done or done[it.id].get("item", digest[it.id]) != digest[it.id]]
            if not pending:
                continue
            pending.sort(key=lambda it: -_item_length(it, modality))
            already = len(bench.items) - len(pending)
            with progress_bar(  # a bar on a terminal, lines in a log
                len(bench.items), f"cord eval {bench.name} [{modality}]", "item", enabled=progress, initial=already,
            ) as bar:
                for start in range(0, len(pending), batch_size):
                    batch = pending[start : start + batch_size]
                    answers = answer_batch(batch, modality, digest, adapter, engine, max_new_tokens)
                    yield AnsweredBatch(bench, path, answers)
                    bar.update(len(batch))


def answer_suite(suite: Suite, fingerprint: dict[str, Any], adapter, engine, *, batch_size: int = 16,
                 max_new_tokens: int = 512, progress: bool = True) -> Iterator[AnsweredBatch]:
    """The answer step: :func:`record_run` into ``suite.out`` now, then, lazily, the
    :class:`AnsweredBatch` objects of every benchmark of ``suite`` in turn
    (:func:`answer_benchmark` into ``suite.out/<benchmark>``), each benchmark opened when the
    one before has been answered. Close the iterator to stop early."""
    record_run(suite.out, fingerprint, suite)
    return _answer_each(suite, adapter, engine, batch_size=batch_size, max_new_tokens=max_new_tokens,
                        progress=progress)


def _answer_each(suite: Suite, adapter, engine, **kw: Any) -> Iterator[AnsweredBatch]:
    for bench, digests in suite.benchmarks():
        yield from answer_benchmark(bench, digests, suite.modalities, adapter, engine, suite.out / bench.name, **kw)
        del bench, digests  # the next benchmark loads with nothing of this one held
