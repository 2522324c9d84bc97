"""Rollouts of a GRPO group at real width: the prefill-once engine (``rollout.engine: hf``) vs
transformers ``generate`` on the prompt repeated n times (``hf-generate``, the engine before
it), in the same process, on the same prompts and seed.

The model is Qwen2-Audio-7B-Instruct's architecture at its real widths — decoder hidden 4096,
MLP 11008, 32 heads, 32 KV heads, vocabulary 156,032; Whisper-large encoder width 1280, 20
heads, FFN 5120, 128 mel bins — with 2 decoder and 2 encoder layers and random weights, on
CPU. Each prompt is a 30 s clip (750 audio tokens) plus the chat template.

Memory: each engine call's peak extra resident memory, ``VmHWM − VmRSS(before)`` with the
high-water mark reset just before the call (``/proc/self/clear_refs``), after ``malloc_trim``;
when that is not available, RSS sampled every 2 ms in a thread. The prefill-once engine runs
first, so memory the other one frees cannot lower its number.

    OMP_NUM_THREADS=2 python benchmarks/bench_rollout.py            # n=4, 64 new tokens, 1 prompt
    python benchmarks/bench_rollout.py --prompts 2 --new-tokens 200  # more of the paper's shape

Last stdout line: JSON with group_rollout_time_ratio and rollout_peak_extra_mem_ratio (new ÷
old; targets ≤ 0.6 and ≤ 0.3) and the raw numbers.

``--engine vllm`` (run it in the vLLM lane's environment, ``.venv-vllm``) compares cord's ``hf``
engine with its ``vllm`` engine instead, in the same process, as a training step uses them:
the model carries the 7B presets' LoRA (r 64 on q/k/v/o/gate/up/down), the LoRA weights are
changed before every timed call as an optimizer step would, and the vllm row includes the
weight sync that follows (merged LoRA modules pushed into the engine). Prompts of unequal
length (``--prompts 8``: clips of 2–30 s) and ``--new-tokens`` new tokens per row keep the
work the same for both (random weights over a 156k vocabulary almost never draw the
end-of-sequence token; the tokens each engine produced are reported). Median of
``--repeats`` timed calls after a warm-up; model build and engine start excluded (reported).

    .venv-vllm/bin/python benchmarks/bench_rollout.py --engine vllm --dtype bfloat16 --prompts 8
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cord.data.paired import PairedExample  # noqa: E402
from cord.models.qwen import Qwen2AudioAdapter  # noqa: E402
from cord.models.qwen_tiny import build_byte_tokenizer  # noqa: E402
from cord.rollout import GenerateEngine, HFEngine  # noqa: E402

#: Qwen2-Audio-7B-Instruct widths (its config.json); depth reduced by the caller
QWEN2_AUDIO_7B_TEXT = dict(
    hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
    vocab_size=156032, max_position_embeddings=8192, rope_theta=10000.0, rms_norm_eps=1e-5,
)
WHISPER_LARGE_ENCODER = dict(
    d_model=1280, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128, max_source_positions=1500,
)


def build_full_width_qwen2_audio(decoder_layers: int = 2, encoder_layers: int = 2, dtype=torch.float32, seed: int = 0):
    """(adapter) for a Qwen2-Audio-7B-wide model of the given depth with random weights."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    tokenizer = build_byte_tokenizer()
    config = Qwen2AudioConfig(
        audio_config=dict(WHISPER_LARGE_ENCODER, encoder_layers=encoder_layers),
        text_config=dict(
            QWEN2_AUDIO_7B_TEXT, model_type="qwen2", num_hidden_layers=decoder_layers,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).to(dtype).eval()
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None
    return Qwen2AudioAdapter(model, tokenizer, WhisperFeatureExtractor(feature_size=128), max_audio_seconds=30.0)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


def measure(fn):
    """(result, seconds, peak extra resident MB) of ``fn()``."""
    import gc

    gc.collect()
    _trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        rss0 = _status_kb("VmRSS")
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        return out, seconds, (_status_kb("VmHWM") - rss0) / 1024
    except OSError:  # no /proc/self/clear_refs: sample RSS in a thread
        import psutil

        proc = psutil.Process()
        rss0 = proc.memory_info().rss
        peak = [rss0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.002)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        stop.set()
        th.join()
        return out, seconds, (peak[0] - rss0) / 2**20


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4, help="rollouts per prompt (GRPO group)")
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=30.0, help="audio length per prompt")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--decoder-layers", type=int, default=2)
    ap.add_argument("--encoder-layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--temperature", type=float, default=1.5)
    ap.add_argument("--engine", choices=["hf-generate", "vllm"], default="hf-generate",
                    help="what the hf engine is compared with (vllm: see the module docstring)")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per engine (--engine vllm)")
    args = ap.parse_args(argv)
    if args.engine == "vllm":
        return compare_vllm(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    adapter = build_full_width_qwen2_audio(args.decoder_layers, args.encoder_layers, dtype)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    examples = [
        PairedExample(f"p{i}", "What is 3 + 4?", (0.1 * rng.standard_normal(int(16000 * args.seconds))).astype(np.float32))
        for i in range(args.prompts)
    ]
    prompts = adapter.audio_prompts(examples)
    rows = args.prompts * args.n
    kw = dict(n=args.n, temperature=args.temperature, max_new_tokens=args.new_tokens, seed=0)
    engines = {"new": HFEngine(adapter, batch_size=rows), "old": GenerateEngine(adapter, batch_size=rows)}
    short = adapter.text_prompts([PairedExample("w", "hi", None)])
    for e in engines.values():  # warm-up: thread pools, allocator, lazy imports
        e.generate(short, n=2, temperature=1.0, max_new_tokens=2, seed=0)
    res = {}
    for name in ("new", "old"):  # new first: memory freed by the old engine cannot help it
        out, seconds, peak_mb = measure(lambda e=engines[name]: e.generate(prompts, **kw))
        res[name] = dict(seconds=seconds, peak_extra_mb=peak_mb, tokens=int(out.mask.sum()), width=int(out.ids.shape[1]))
    params = sum(p.numel() for p in adapter.model.parameters())
    report = {
        "group_rollout_time_ratio": res["new"]["seconds"] / res["old"]["seconds"],
        "rollout_peak_extra_mem_ratio": res["new"]["peak_extra_mb"] / max(res["old"]["peak_extra_mb"], 1e-9),
        "new": res["new"],
        "old": res["old"],
        "prompt_tokens": int(prompts.input_ids.shape[1]),
        "n": args.n, "prompts": args.prompts, "new_tokens": args.new_tokens, "dtype": args.dtype,
        "decoder_layers": args.decoder_layers, "encoder_layers": args.encoder_layers,
        "params": params, "model_mb": params * torch.finfo(dtype).bits / 8 / 2**20, "build_s": build_s,
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(), "torch": torch.__version__,
    }
    for name in ("new", "old"):
        r = res[name]
        print(f"{name:>3}: {r['seconds']:7.1f} s  peak extra {r['peak_extra_mb']:8.0f} MB  tokens {r['tokens']}", flush=True)
    print(json.dumps(report))
    return report


def _examples(prompts: int, seconds: float, spread: bool) -> list[PairedExample]:
    """``prompts`` clips of ``seconds`` (``spread``: from 2 s up to ``seconds``, unequal prompts)."""
    rng = np.random.default_rng(0)
    lengths = np.linspace(2.0, seconds, prompts) if spread and prompts > 1 else [seconds] * prompts
    return [PairedExample(f"p{i}", "What is 3 + 4?", (0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32))
            for i, s in enumerate(lengths)]


def compare_vllm(args) -> dict:
    """The hf engine vs the vllm engine (weight sync included), side by side in one process."""
    import statistics

    from peft import LoraConfig, get_peft_model

    from cord.config import VLLMSettings
    from cord.rollout.vllm_engine import VLLMEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    adapter = build_full_width_qwen2_audio(args.decoder_layers, args.encoder_layers, dtype)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapter.model = get_peft_model(adapter.model, LoraConfig(
        r=64, lora_alpha=128, lora_dropout=0.0,
        target_modules=rf"model\.language_model\.layers\.\d+\..*\.(?:{'|'.join(targets)})"))
    lora = [p for n, p in adapter.model.named_parameters() if "lora_B" in n]
    build_s = time.perf_counter() - t0
    prompts = adapter.audio_prompts(_examples(args.prompts, args.seconds, spread=True))
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    engines = {"hf": HFEngine(adapter, batch_size=args.prompts * args.n),
               "vllm": VLLMEngine(adapter, batch_size=args.prompts * args.n,
                                  settings=VLLMSettings(max_model_len=4096, cpu_kv_cache_gb=4.0))}
    short = adapter.text_prompts([PairedExample("w", "hi", None)])
    for e in engines.values():  # warm-up (and the vllm engine's start: its whole-model push)
        e.generate(short, n=2, temperature=1.0, max_new_tokens=2, seed=0)
    start_s = time.perf_counter() - t0
    torch.set_num_threads(threads)  # vLLM may have changed it
    kw = dict(n=args.n, temperature=args.temperature, max_new_tokens=args.new_tokens)
    res: dict = {name: {"seconds": [], "sync_seconds": []} for name in engines}
    step = 0
    for rep in range(args.repeats):
        for name, engine in engines.items():
            step += 1
            with torch.no_grad():  # an optimizer step's change of every LoRA matrix
                for p in lora:
                    p.add_(torch.randn_like(p) * 1e-3)
            t0 = time.perf_counter()
            engine.sync_weights(step)
            sync_s = time.perf_counter() - t0
            out = engine.generate(prompts, seed=rep, **kw)
            res[name]["seconds"].append(time.perf_counter() - t0)
            res[name]["sync_seconds"].append(sync_s)
            res[name]["tokens"] = int(out.mask.sum())
    for r in res.values():
        r["median_s"] = statistics.median(r["seconds"])
        r["tokens_per_s"] = r["tokens"] / r["median_s"]
        r["median_sync_s"] = statistics.median(r["sync_seconds"])
    report = {
        "vllm_speedup": res["hf"]["median_s"] / res["vllm"]["median_s"],
        "hf": res["hf"], "vllm": res["vllm"],
        "prompt_tokens": [int(m.sum()) for m in prompts.attention_mask], "n": args.n, "prompts": args.prompts,
        "new_tokens": args.new_tokens, "dtype": args.dtype, "decoder_layers": args.decoder_layers,
        "encoder_layers": args.encoder_layers, "build_s": build_s, "engines_start_s": start_s,
        "torch_threads": threads, "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(), "torch": torch.__version__,
    }
    for name, r in res.items():
        print(f"{name:>4}: {r['median_s']:7.1f} s (sync {r['median_sync_s']:.2f} s)  {r['tokens_per_s']:6.1f} tok/s",
              flush=True)
    engines["vllm"].close()
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
