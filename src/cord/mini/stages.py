"""The miniature's staged recipe before CORD: Stage A (text LM) and Stage B (audio alignment).

Stage A trains the language model on text prompts (teacher-forced cross-entropy on the
worked solution) until greedy dev accuracy reaches ``a_target``. Stage B freezes the
language model and trains the audio encoder and projector from audio prompts with

    L_B = CE(solution | audio prompt) + ctc_weight · CTC(question words | encoder frames)

(the CTC term stands in for the ASR pretraining a real LALM's Whisper encoder brings;
SpecAugment masks on the training features). Stage B runs *to convergence*: it is evaluated
on the held-out-voice dev set every ``b_eval_every`` steps from ``b_eval_start`` on, and

    stops once the best dev audio accuracy (with the language model frozen: the smallest dev
    gap) has not improved by more than ``b_min_delta`` for ``b_patience`` evaluations in a
    row, or at ``b_max_steps``; the checkpoint kept is the best evaluation (ties: the
    earlier one).

So the gap Stage C starts from is what the alignment objective leaves once it stops
improving on dev, not an early stop at a chosen gap. :func:`stage_b_loss` is that objective;
the demo's control arm continues it (:func:`cord.mini.control.run_control`).

Both stages are plain seeded loops. The chosen checkpoints are written with
``MiniAdapter.save_pretrained`` to ``OUT/stage_a`` and ``OUT/stage_b``; load them with
``ModelConfig(family="mini", name_or_path="OUT/stage_b", dtype="float32", device="cpu")``.
"""

from __future__ import annotations

import json
import math
import platform
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cord.data.paired import PairedExample
from cord.mini.data import DataSettings, build_datasets, load_split, text_examples
from cord.mini.model import MiniAdapter, build_mini
from cord.models.base import right_pad
from cord.mini.task import parse_answer

# ------------------------------------------------------------------------------ config


@dataclass
class RecipeConfig:
    """Every knob of data, Stage A and Stage B. :meth:`quick` is the test-sized variant."""

    seed: int = 0
    data: DataSettings = field(default_factory=DataSettings)
    #: torch CPU threads. Fixed by default because the thread count changes float reduction
    #: order and so the trajectory: the same seed reproduces only at the same count. 0 = auto:
    #: 2 on an idle machine, else 1 (on a busy shared CPU two threads spin on each other; a
    #: 5–10× slowdown was measured there) — faster there, but the result then depends on load.
    threads: int = 2
    verbose: bool = False
    eval_batch_size: int = 200
    max_new_tokens: int = 24
    # Stage A: text LM
    a_text_examples: int = 8000
    a_max_steps: int = 350
    a_batch_size: int = 64
    a_lr: float = 3e-3
    a_warmup: int = 30
    a_eval_every: int = 50
    a_min_steps: int = 300
    a_target: float = 0.99
    # Stage B: audio alignment, language model frozen, to convergence on dev
    b_max_steps: int = 1200
    b_batch_size: int = 32
    b_lr: float = 3e-3
    b_warmup: int = 30
    b_ctc_weight: float = 1.0
    b_match_scale: bool = True
    #: first evaluation step (before it the gap is large and evaluations only cost time)
    b_eval_start: int = 300
    #: SpecAugment-style masks on training features (frequency bands, time spans): the test
    #: voice is unseen, and masking keeps the encoder from leaning on one voice's spectrum
    b_freq_masks: int = 2
    b_freq_width: int = 10
    b_time_masks: int = 2
    b_time_width: int = 12
    b_eval_every: int = 50
    #: converged: no new best dev audio accuracy (by more than b_min_delta) for b_patience
    #: evaluations in a row (0.01 = 3 of 300 dev items; 4 evaluations = 200 steps)
    b_patience: int = 4
    b_min_delta: float = 0.01

    @classmethod
    def quick(cls, seed: int = 0, **overrides: Any) -> "RecipeConfig":
        """Test-sized: 400/60/60 clips, Stage A ≤ 250 steps, Stage B ≤ 300 steps (the
        pipeline end to end in about 2 minutes; its numbers say nothing about the method)."""
        base = cls(
            seed=seed,
            data=DataSettings(seed=seed, n_train=400, n_dev=60, n_test=60),
            a_text_examples=4000,
            a_max_steps=250,
            a_min_steps=200,
            a_target=0.95,
            b_max_steps=300,
            b_lr=4e-3,
            b_eval_start=100,
            b_patience=2,
        )
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        # data as its cache key (test_engine only when not the default: older stages.json stay valid)
        return {**json.loads(json.dumps(asdict(self))), "data": self.data.key()}


# ---------------------------------------------------------------------------- helpers


def greedy_accuracy(
    adapter: MiniAdapter,
    examples: list[PairedExample],
    modality: str,
    *,
    batch_size: int = 200,
    max_new_tokens: int = 24,
) -> tuple[float, list[dict[str, Any]]]:
    """Greedy exact-final-answer accuracy through :class:`cord.rollout.HFEngine`.

    Returns (accuracy, per-item [{id, modality, question, output, predicted, answer, correct}]);
    ``predicted`` is the number after the last "The answer is", or None."""
    from cord.rollout import HFEngine

    engine = HFEngine(adapter, batch_size=batch_size)
    items: list[dict[str, Any]] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = adapter.text_prompts(chunk) if modality == "text" else adapter.audio_prompts(chunk)
        rollouts = engine.generate(prompts, greedy=True, max_new_tokens=max_new_tokens)
        for row, text in zip(prompts.keep, rollouts.text):
            ex = chunk[row]
            pred = parse_answer(text)
            items.append(
                {
                    "id": ex.id,
                    "modality": modality,
                    "question": ex.question_text,
                    "output": text,
                    "predicted": pred,
                    "answer": ex.answer,
                    "correct": pred is not None and pred == str(ex.answer).strip(),
                }
            )
    acc = sum(i["correct"] for i in items) / max(1, len(examples))
    return acc, items


def solution_targets(adapter: MiniAdapter, examples: list[PairedExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids of ``solution + <eos>`` and their mask."""
    seqs = [adapter.encode(ex.solution) + adapter.eos_token_ids[:1] for ex in examples]
    return right_pad(seqs, adapter.pad_token_id)


def transcript_targets(adapter: MiniAdapter, examples: list[PairedExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated CTC targets (the question's words, punctuation dropped) and lengths."""
    words = [[t for t in adapter.encode(" ".join(_spoken_words(ex.question_text)))] for ex in examples]
    flat = torch.tensor([t for w in words for t in w], dtype=torch.long)
    return flat, torch.tensor([len(w) for w in words], dtype=torch.long)


def _spoken_words(text: str) -> list[str]:
    import re

    return re.findall(r"\w+", text)


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch CPU threads, restoring the caller's count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def auto_threads() -> int:
    """2 when at least two cores are idle (1-minute load average < 0.5), else 1."""
    import os

    cores = os.cpu_count() or 1
    load = load_average() or 0.0
    return 2 if cores >= 2 and load < cores - 1.5 else 1


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (loss * mask.flatten()).sum() / mask.sum().clamp(min=1)


def _lr_lambda(warmup: int, total: int, floor: float = 0.1):
    """Linear warmup, then cosine decay to ``floor`` × lr at ``total`` steps (an early stop
    simply ends on the way down)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _batches(n: int, batch_size: int, rng: random.Random):
    """Endless shuffled epochs of index batches (drop the ragged tail of each epoch)."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for s in range(0, n - batch_size + 1, batch_size):
            yield order[s : s + batch_size]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- Stage A


def stage_a(
    adapter: MiniAdapter,
    train: list[PairedExample],
    dev: list[PairedExample],
    cfg: RecipeConfig,
    log: list[dict] | None = None,
) -> dict[str, Any]:
    """Train the language model on text prompts until greedy dev text accuracy ≥ a_target
    (checked every a_eval_every steps after a_min_steps) or a_max_steps. In place."""
    _seed_all(cfg.seed)
    rng = random.Random(cfg.seed)
    model = adapter.model
    lm = model.language_model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in lm.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.a_lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.a_warmup, cfg.a_max_steps))
    t0, c0 = time.perf_counter(), time.process_time()
    history: list[dict] = []
    batches = _batches(len(train), cfg.a_batch_size, rng)
    dev_acc, step = 0.0, 0
    first_loss = None
    model.train()
    for step in range(1, cfg.a_max_steps + 1):
        batch = [train[i] for i in next(batches)]
        prompts = adapter.text_prompts(batch)
        y, ym = solution_targets(adapter, batch)
        hidden = adapter.completion_hidden(prompts, y, ym)
        loss = _masked_ce(adapter.lm_head()(hidden), y, ym)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        first_loss = loss.item() if first_loss is None else first_loss
        if step % cfg.a_eval_every == 0 or step == cfg.a_max_steps:
            dev_acc, _ = greedy_accuracy(
                adapter, dev, "text", batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens
            )
            model.train()
            rec = {"stage": "A", "step": step, "loss": loss.item(), "dev_text_acc": dev_acc,
                   "seconds": round(time.perf_counter() - t0, 2),
                   "cpu_seconds": round(time.process_time() - c0, 2)}
            history.append(rec)
            if cfg.verbose:
                print(f"[mini] A {rec}", flush=True)
            if log is not None:
                log.append(rec)
            if step >= cfg.a_min_steps and dev_acc >= cfg.a_target:
                break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {
        "steps": step,
        "first_loss": first_loss,
        "final_loss": loss.item(),
        "dev_text_acc": dev_acc,
        "reached_target": dev_acc >= cfg.a_target,
        "seconds": round(time.perf_counter() - t0, 2),
        "history": history,
    }


# ---------------------------------------------------------------------------- Stage B


def spec_augment(features: torch.Tensor, mask: torch.Tensor, cfg: RecipeConfig, gen: torch.Generator) -> torch.Tensor:
    """Zero random mel bands and time spans (within each clip's valid frames); a new tensor."""
    out = features.clone()
    b, n_mels, _ = out.shape
    lengths = mask.sum(-1)
    fill = 0.0  # Whisper-normalised log-mel: 0 is mid-range
    for i in range(b):
        for _ in range(cfg.b_freq_masks):
            w = int(torch.randint(0, cfg.b_freq_width + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, n_mels - w), (1,), generator=gen))
            out[i, f0 : f0 + w, :] = fill
        for _ in range(cfg.b_time_masks):
            w = int(torch.randint(0, cfg.b_time_width + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, int(lengths[i]) - w), (1,), generator=gen))
            out[i, :, t0 : t0 + w] = fill
    return out * mask[:, None, :].to(out.dtype)


@torch.no_grad()
def match_projector_scale(adapter: MiniAdapter, examples: list[PairedExample]) -> float:
    """Rescale the projector's last layer so projected audio frames have the RMS of the
    language model's token embeddings (a fresh projector's output is several times larger,
    which swamps the frozen decoder's residual stream). Returns the factor applied."""
    model = adapter.model
    prompts = adapter.audio_prompts(examples)
    tokens, valid, _ = model.encode_audio(prompts.extra["input_features"], prompts.extra["feature_attention_mask"])
    out_rms = tokens[valid].pow(2).mean(-1).sqrt().mean()
    emb_rms = model.get_input_embeddings().weight.pow(2).mean(-1).sqrt().mean()
    factor = float(emb_rms / out_rms)
    last = model.projector[-1]
    last.weight.mul_(factor)
    last.bias.mul_(factor)
    return factor


def _audio_parts(adapter: MiniAdapter) -> list[torch.nn.Module]:
    core = adapter.model
    return [core.audio_encoder, core.projector]


def choose_checkpoint(evals: list[dict]) -> tuple[int, str]:
    """Index into ``evals`` (dicts with audio_acc) of the best dev audio accuracy, the
    earlier on ties (the language model is frozen in Stage B, so this is the smallest gap)."""
    best = max(range(len(evals)), key=lambda i: (evals[i]["audio_acc"], -i))
    return best, "best dev audio accuracy (smallest dev gap), the earlier on ties"


def converged(evals: list[dict], patience: int, min_delta: float) -> bool:
    """True once the last ``patience`` evaluations brought no audio accuracy above the best
    before them by more than ``min_delta``."""
    if len(evals) <= patience:
        return False
    before = max(e["audio_acc"] for e in evals[:-patience])
    return all(e["audio_acc"] <= before + min_delta for e in evals[-patience:])


def stage_b_loss(adapter: MiniAdapter, batch: list[PairedExample], cfg: RecipeConfig,
                 gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage B's objective on one batch: CE(solution | SpecAugmented audio prompt) +
    b_ctc_weight · CTC(question words | encoder frames). Returns (loss, {ce, ctc})."""
    model = adapter.core_model()
    prompts = adapter.audio_prompts(batch)
    prompts.extra["input_features"] = spec_augment(
        prompts.extra["input_features"], prompts.extra["feature_attention_mask"], cfg, gen
    )
    y, ym = solution_targets(adapter, batch)
    ids, attn, extra = adapter.joined(prompts, y, ym)
    embeds, (enc, enc_valid) = model.embed(ids, extra, return_encoder=True, n_prompt=prompts.input_ids.shape[1])
    hidden = adapter.decoder_hidden(ids, attn, extra, inputs_embeds=embeds)
    hidden = adapter.completion_slice(hidden, prompts, y.shape[1])
    ce = _masked_ce(adapter.lm_head()(hidden), y, ym)
    targets, target_lengths = transcript_targets(adapter, batch)
    log_probs = model.audio_encoder.ctc_logits(enc).float().log_softmax(-1).transpose(0, 1)
    ctc = F.ctc_loss(log_probs, targets, enc_valid.sum(-1), target_lengths,
                     blank=adapter.pad_token_id, zero_infinity=True)
    return ce + cfg.b_ctc_weight * ctc, {"ce": ce.item(), "ctc": ctc.item()}


def stage_b(
    adapter: MiniAdapter,
    train: list[PairedExample],
    dev: list[PairedExample],
    cfg: RecipeConfig,
    dev_text_acc: float | None = None,
    log: list[dict] | None = None,
) -> dict[str, Any]:
    """Align audio encoder + projector with the language model frozen; leaves the chosen
    checkpoint's weights in ``adapter.model`` and returns metrics (see the module doc)."""
    _seed_all(cfg.seed + 1)
    rng = random.Random(cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model = adapter.model
    if dev_text_acc is None:  # the LM is frozen, so text accuracy is fixed for the stage
        dev_text_acc, _ = greedy_accuracy(adapter, dev, "text", batch_size=cfg.eval_batch_size,
                                          max_new_tokens=cfg.max_new_tokens)
    params = [p for m in _audio_parts(adapter) for p in m.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.b_lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.b_warmup, cfg.b_max_steps))
    t0 = time.perf_counter()
    # features once up front (cached by the adapter for every later epoch)
    for ex in train:
        adapter.clip_features(ex.audio)
    feature_seconds = time.perf_counter() - t0
    scale = match_projector_scale(adapter, train[:64]) if cfg.b_match_scale else 1.0
    evals: list[dict] = []
    snapshots: list[dict[str, torch.Tensor]] = []
    batches = _batches(len(train), cfg.b_batch_size, rng)
    model.train()
    model.language_model.eval()  # frozen: no dropout either
    step = 0
    stop = "b_max_steps"
    for step in range(1, cfg.b_max_steps + 1):
        batch = [train[i] for i in next(batches)]
        loss, parts = stage_b_loss(adapter, batch, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step >= cfg.b_eval_start and step % cfg.b_eval_every == 0) or step == cfg.b_max_steps:
            audio_acc, _ = greedy_accuracy(adapter, dev, "audio", batch_size=cfg.eval_batch_size,
                                           max_new_tokens=cfg.max_new_tokens)
            model.train()
            model.language_model.eval()
            rec = {"stage": "B", "step": step, **parts, "audio_acc": audio_acc,
                   "text_acc": dev_text_acc, "gap": dev_text_acc - audio_acc,
                   "seconds": round(time.perf_counter() - t0, 2)}
            evals.append(rec)
            if cfg.verbose:
                print(f"[mini] B {rec}", flush=True)
            snapshots.append({k: v.detach().clone() for m in ("audio_encoder", "projector")
                              for k, v in _prefixed_state(model, m).items()})
            if log is not None:
                log.append(rec)
            if converged(evals, cfg.b_patience, cfg.b_min_delta):
                stop = (f"converged: no dev audio accuracy gain above {cfg.b_min_delta} in "
                        f"{cfg.b_patience} evaluations")
                break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    chosen, reason = choose_checkpoint(evals)
    model.load_state_dict(snapshots[chosen], strict=False)
    return {
        "steps": step,
        "chosen_step": evals[chosen]["step"],
        "chosen": evals[chosen],
        "rule": reason,
        "stopped": stop,
        "feature_seconds": round(feature_seconds, 2),
        "projector_scale": scale,
        "seconds": round(time.perf_counter() - t0, 2),
        "history": evals,
    }


def _prefixed_state(model: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for k, v in getattr(model, name).state_dict().items()}


# ---------------------------------------------------------------------------- driver


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(load_at_start: float | None = None) -> dict[str, Any]:
    """What the timings were measured on (the load average says whether the CPU was shared)."""
    import os

    import transformers

    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min_start": load_at_start,
        "load_avg_1min_end": load_average(),
    }



def run_stages(out_dir: str | Path, cfg: RecipeConfig | None = None, progress: bool = False) -> dict[str, Any]:
    """Data → Stage A → Stage B → held-out evaluation, writing under ``out_dir``:

    ``data/{train,dev,test}`` (paired datasets; reused when complete for the same settings),
    ``stage_a/`` and ``stage_b/`` (checkpoints loadable as family ``mini``),
    ``stage_b_test_items.jsonl`` (per-item greedy outputs of the Stage B model on the test
    split, text and audio) and ``stages.json`` (the returned metrics: config, paths, stage
    metrics, test accuracies, wall and CPU timings, machine, and the evaluation log).
    Test accuracies are greedy exact final answers on the held-out voice."""
    cfg = cfg or RecipeConfig()
    with torch_threads(cfg.threads or auto_threads()):
        return _run_stages(out_dir, cfg, progress)


def _run_stages(out_dir: str | Path, cfg: RecipeConfig, progress: bool) -> dict[str, Any]:
    load_at_start = load_average()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}  # wall seconds per stage
    cpu_timings: dict[str, float] = {}  # this process's CPU seconds (all threads; espeak-ng not counted)
    log: list[dict] = []

    def say(msg: str) -> None:
        if progress:
            print(f"[mini] {msg}", flush=True)

    t, c = time.perf_counter(), time.process_time()
    data_cfg = replace(cfg.data, seed=cfg.seed) if cfg.data.seed != cfg.seed else cfg.data
    dirs = build_datasets(out / "data", data_cfg)
    train, dev, test = (load_split(dirs[s]) for s in ("train", "dev", "test"))
    text_train = text_examples(cfg.a_text_examples, data_cfg)
    timings["data"] = round(time.perf_counter() - t, 2)
    cpu_timings["data"] = round(time.process_time() - c, 2)
    say(f"data: {len(train)} train / {len(dev)} dev / {len(test)} test clips in {timings['data']} s")

    model, tokenizer = build_mini(seed=cfg.seed)
    adapter = MiniAdapter(model, tokenizer)

    t, c = time.perf_counter(), time.process_time()
    a = stage_a(adapter, text_train, dev, cfg, log)
    a_test_text, _ = greedy_accuracy(adapter, test, "text", batch_size=cfg.eval_batch_size,
                                     max_new_tokens=cfg.max_new_tokens)
    adapter.save_pretrained(out / "stage_a")
    timings["stage_a"] = round(time.perf_counter() - t, 2)
    cpu_timings["stage_a"] = round(time.process_time() - c, 2)
    say(f"stage A: {a['steps']} steps, dev text acc {a['dev_text_acc']:.3f}, test text acc {a_test_text:.3f} "
        f"({timings['stage_a']} s)")

    t, c = time.perf_counter(), time.process_time()
    b = stage_b(adapter, train, dev, cfg, dev_text_acc=a["dev_text_acc"], log=log)
    timings["stage_b"] = round(time.perf_counter() - t, 2)
    cpu_timings["stage_b"] = round(time.process_time() - c, 2)
    adapter.save_pretrained(out / "stage_b")
    t, c = time.perf_counter(), time.process_time()
    test_text, text_items = greedy_accuracy(adapter, test, "text", batch_size=cfg.eval_batch_size,
                                            max_new_tokens=cfg.max_new_tokens)
    test_audio, audio_items = greedy_accuracy(adapter, test, "audio", batch_size=cfg.eval_batch_size,
                                              max_new_tokens=cfg.max_new_tokens)
    timings["test_eval"] = round(time.perf_counter() - t, 2)
    cpu_timings["test_eval"] = round(time.process_time() - c, 2)
    say(f"stage B: chose step {b['chosen_step']} of {b['steps']} (dev gap {b['chosen']['gap']:.3f}); "
        f"test text {test_text:.3f} audio {test_audio:.3f} gap {test_text - test_audio:.3f} "
        f"({timings['stage_b']} s)")

    result = {
        "config": cfg.to_dict(),
        "paths": {"data": {k: str(v) for k, v in dirs.items()}, "stage_a": str(out / "stage_a"),
                  "stage_b": str(out / "stage_b")},
        "stage_a": {**{k: v for k, v in a.items() if k != "history"}, "test_text_acc": a_test_text},
        "stage_b": {k: v for k, v in b.items() if k != "history"},
        "test": {"text_acc": test_text, "audio_acc": test_audio, "gap": test_text - test_audio,
                 "n": len(test)},
        "timings": timings,
        "cpu_timings": cpu_timings,
        "machine": machine_info(load_at_start),
        "model_parameters": {name: sum(p.numel() for p in getattr(model, name).parameters())
                             for name in ("language_model", "audio_encoder", "projector")},
        "log": log,
    }
    # per-item outputs first, then stages.json (its presence marks a finished run), each
    # written to a temporary name and renamed
    _write_atomic(out / "stage_b_test_items.jsonl", "".join(json.dumps(i) + "\n" for i in text_items + audio_items))
    _write_atomic(out / "stages.json", json.dumps(result, indent=2) + "\n")
    return result
