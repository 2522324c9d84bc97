"""One command for a GPU machine: does cord train Qwen2-Audio-7B at the paper's settings, how
fast, in how much memory, and does the sampler's distribution equal the trained one?

    PYTHONPATH=src python benchmarks/gpu_check.py              # one H100/H200, < 8 min
    PYTHONPATH=src python benchmarks/gpu_check.py --cpu-smoke  # 2 layers, tiny widths, CPU (the test suite)

Full mode builds Qwen2-Audio-7B-Instruct's architecture from its config (32 decoder layers,
hidden 4096, 32 heads, vocabulary 156,032; Whisper-large encoder, 32 layers, width 1280, 128
mel) with random bf16 weights directly on the GPU (no download: the tokenizer is cord's byte
tokenizer with Qwen's special tokens), writes a small paired set of 30 s noise clips, then
runs through ``cord.train.Trainer`` with the preset ``configs/qwen2-audio-7b/<method>.yaml``
(LoRA r=64, bf16, gradient checkpointing, N=4 at T=1.5, 200 new tokens) and a reduced batch:
3 optimizer steps of ``cord`` and 1 of each other method. After the ``cord`` steps it samples
a group with the trainer's engine and compares every sampled token's log-prob reported by the
sampler with the training forward's (``completion_hidden`` → head, same temperature).

Prints one JSON line (last line of stdout): per method the per-phase seconds (rollout, teacher,
student, backward, step), peak GPU memory (GiB), student tokens/s; rollout tokens/s of the
check; ``max_abs_logprob_diff`` (sampler vs training forward, placeholder tokens excluded from
both) and ``max_abs_logprob_diff_objective`` (vs ``cord.objectives.token_logprobs``, what the
GRPO term uses, which does not exclude placeholders).

Needs importable: torch, transformers (5.x; reads ``cache``/``past_key_values`` either way),
peft, accelerate, numpy, pydantic, PyYAML, tokenizers, safetensors, soundfile (the trainer
reads the clips it writes); scipy and psutil are not needed. A missing one is reported in one
line before anything heavy runs. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["torch", "transformers", "peft", "accelerate", "numpy", "pydantic", "yaml", "tokenizers", "safetensors",
            "soundfile"]
METHODS = ["cord", "sft", "forward_kl", "opd", "opd_weighted", "grpo", "grpo_opd"]
FAMILY = "gpu-check-qwen2-audio"

#: Qwen2-Audio-7B-Instruct (config.json): decoder and Whisper-large encoder
FULL = dict(
    text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
              num_key_value_heads=32, vocab_size=156032, max_position_embeddings=8192, rope_theta=10000.0,
              rms_norm_eps=1e-5),
    audio=dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128,
               max_source_positions=1500),
)
#: --cpu-smoke: same classes and code path, 2 layers, tiny widths
SMOKE = dict(
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=None, max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-6),
    audio=dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=128,
               max_source_positions=1500),
)


def preflight() -> None:
    missing = []
    for mod in REQUIRED:
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        sys.exit(f"gpu_check: missing Python packages: {', '.join(missing)} (needed: {', '.join(REQUIRED)})")


def register_family(widths: dict, device: str, dtype_name: str) -> None:
    """Family ``gpu-check-qwen2-audio``: a random Qwen2-Audio of ``widths`` built on ``device``
    in ``dtype`` (no CPU copy, no download)."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    from cord.models.qwen import Qwen2AudioAdapter
    from cord.models.registry import register_family as register
    from cord.models.tiny import build_byte_tokenizer

    def load(cfg):
        tokenizer = build_byte_tokenizer()
        text = dict(widths["text"])
        if text["vocab_size"] is None:
            text["vocab_size"] = (len(tokenizer) + 63) // 64 * 64
        config = Qwen2AudioConfig(
            audio_config=dict(widths["audio"]),
            text_config=dict(text, model_type="qwen2", eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id),
            audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        )
        config._attn_implementation = cfg.attn_implementation or "sdpa"
        dtype = getattr(torch, dtype_name)
        old = torch.get_default_dtype()
        torch.manual_seed(0)
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = Qwen2AudioForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(old)
        model.eval()
        gc_ = model.generation_config
        gc_.eos_token_id, gc_.pad_token_id, gc_.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None
        return Qwen2AudioAdapter(model, tokenizer, WhisperFeatureExtractor(feature_size=128),
                                 long_audio=cfg.long_audio, max_audio_seconds=cfg.max_audio_seconds)

    register(FAMILY, load)


def write_data(directory: Path, n: int, seconds: float) -> None:
    import numpy as np
    import soundfile as sf

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        a, b = int(rng.integers(2, 50)), int(rng.integers(2, 50))
        name = f"q{i}.wav"
        sf.write(str(directory / name), (0.05 * rng.standard_normal(int(16000 * seconds))).astype("float32"), 16000)
        rows.append(dict(id=f"q{i}", question=f"What is {a} + {b}?", answer=str(a + b),
                         solution=f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.", source="gpu-check",
                         audio=name, duration=seconds, tts="noise", voice="none"))
    (directory / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def logprob_check(trainer, n: int, temperature: float, max_new_tokens: int, sync) -> dict:
    """Sample a group with the trainer's engine; compare the sampler's log-probs of the sampled
    tokens with the training forward's at the same temperature."""
    import torch

    from cord.objectives import token_logprobs

    ad = trainer.adapter
    prompts = ad.audio_prompts(trainer.micro_examples(0, 0))
    sync()
    t0 = time.perf_counter()
    roll = trainer.engine.generate(prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=0)
    sync()
    rollout_s = time.perf_counter() - t0
    device = ad.device
    ids, mask = roll.ids.to(device), roll.mask.to(device)
    head = ad.lm_head()
    with torch.no_grad(), trainer.ctx.autocast():
        h = ad.completion_hidden(prompts.repeat_interleave(n), roll.ids, roll.mask)
        obj_lp = token_logprobs(h, head.weight, ids, mask, bias=head.bias, temperature=temperature,
                                chunk_size=trainer.cfg.objective.chunk_size)
        # the sampled distribution excludes the placeholder tokens: exclude them here too
        rows = []
        for r in range(h.shape[0]):
            logits = head(h[r]).float()
            logits[:, ad.placeholder_token_ids] = float("-inf")
            rows.append(torch.log_softmax(logits / temperature, -1).gather(-1, ids[r, :, None]).squeeze(-1))
        fwd_lp = torch.stack(rows)
    sampler = roll.logprobs.to(device)
    diff = (fwd_lp - sampler).abs()[mask]
    diff_obj = (obj_lp.float() - sampler).abs()[mask]
    tokens = int(mask.sum())
    return dict(
        max_abs_logprob_diff=float(diff.max()) if tokens else 0.0,
        mean_abs_logprob_diff=float(diff.mean()) if tokens else 0.0,
        max_abs_logprob_diff_objective=float(diff_obj.max()) if tokens else 0.0,
        rollout_tokens=tokens, rollout_seconds=rollout_s, rollout_tokens_per_s=tokens / max(rollout_s, 1e-9),
        rollout_rows=int(ids.shape[0]), rollout_prompt_tokens=int(prompts.input_ids.shape[1]),
    )


def run(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="cord on a GPU: 7B steps, memory, speed, sampler-vs-trainer log-probs")
    ap.add_argument("--cpu-smoke", action="store_true", help="2 layers, tiny widths, tiny batch, on CPU")
    ap.add_argument("--cord-steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="prompts per optimizer step (default: 4 GPU, 1 smoke)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 200 (paper), 8 smoke")
    ap.add_argument("--seconds", type=float, default=None, help="audio per clip: default 30, smoke 2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    preflight()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from cord.config import load_config
    from cord.train.trainer import Trainer

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --cpu-smoke on a CPU machine)")
    device, dtype = ("cpu", "float32") if smoke else ("cuda", "bfloat16")
    batch = args.batch or (1 if smoke else 4)
    new_tokens = args.new_tokens or (8 if smoke else 200)
    seconds = args.seconds or (2.0 if smoke else 30.0)
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    register_family(SMOKE if smoke else FULL, device, dtype)
    tmp = tempfile.TemporaryDirectory(prefix="cord-gpu-check-") if args.workdir is None else None
    work = Path(args.workdir or tmp.name)
    methods = [m for m in args.methods.split(",") if m]
    write_data(work / "data", max(batch * max(args.cord_steps, 1), 2), seconds)
    t_start = time.perf_counter()
    report: dict = {"mode": "cpu-smoke" if smoke else "gpu", "device": torch.cuda.get_device_name() if cuda else "cpu",
                    "torch": torch.__version__, "transformers": importlib.import_module("transformers").__version__,
                    "batch": batch, "new_tokens": new_tokens, "audio_seconds": seconds, "methods": {}}
    for method in methods:
        steps = args.cord_steps if method == "cord" else 1
        cfg = load_config(ROOT / "configs" / "qwen2-audio-7b" / f"{method}.yaml", [
            f"model.family={FAMILY}", "model.name_or_path=tiny", f"model.device={device}", f"model.dtype={dtype}",
            f"data.train={work / 'data'}", f"train.output_dir={work / 'runs' / method}", "train.progress=false",
            "train.tensorboard=false", f"train.batch_size={batch}", "train.grad_accum=1",
            f"train.max_steps={steps}", f"train.save_every={10**6}", f"rollout.max_new_tokens={new_tokens}",
            f"train.bf16={str(cuda).lower()}", "judge.kind=exact" if smoke else "judge.kind=math",
        ])
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        build_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        records = []
        for _ in range(steps):
            records.append(trainer.train_step())
        sync()
        phases = {k: sum(r.get(f"time_{k}", 0.0) for r in records) / steps for k in ("rollout", "teacher", "student",
                                                                                     "backward")}
        phases["step"] = sum(r["step_time"] for r in records) / steps
        student_tokens = sum(r.get("completion_tokens", 0.0) for r in records)
        student_s = sum(r.get("time_student", 0.0) for r in records)
        entry = {
            "steps": steps, "build_s": build_s, "seconds_per_step": phases,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "student_tokens_per_s": student_tokens / max(student_s, 1e-9),
            "loss": records[-1].get("loss"), "finite": all(not r.get("skipped", False) for r in records),
        }
        if method == "cord":
            report["logprob_check"] = logprob_check(trainer, cfg.rollout.seq_n, cfg.rollout.seq_temperature,
                                                    new_tokens, sync)
        report["methods"][method] = entry
        print(f"gpu_check: {method}: {steps} step(s), {phases['step']:.1f} s/step", file=sys.stderr, flush=True)
        del trainer
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    check = report.get("logprob_check", {})
    report.update(
        total_s=time.perf_counter() - t_start,
        max_abs_logprob_diff=check.get("max_abs_logprob_diff"),
        rollout_tokens_per_s=check.get("rollout_tokens_per_s"),
        peak_gpu_gib=max((m["peak_gpu_gib"] or 0.0) for m in report["methods"].values()) if cuda else None,
        load_average=os.getloadavg(),
    )
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    run()
