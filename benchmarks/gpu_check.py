"""The acceptance run for a new GPU machine: does cord train correctly here, how fast, in how
much memory? One process, one GPU, about 10 minutes on an H100; it fails loudly.

    PYTHONPATH=src python benchmarks/gpu_check.py              # one CUDA GPU
    PYTHONPATH=src python benchmarks/gpu_check.py --cpu-smoke  # the same sequence on CPU + gloo (the suite runs it)

Checks, in order (each ``pass``, ``fail: why`` or ``skipped: why``):

``versions``      torch / CUDA / transformers / peft / accelerate, GPU name and compute capability
``kernels``       the chunked reverse KL, its gradient and the token log-probs on bf16 inputs at
                  Qwen2-Audio-7B's head (V 156,032, H 4,096) against float64 formulas of the
                  same bf16 values; on CUDA the ``torch.mm(out_dtype=float32)`` fast path must be
                  the one taken
``rng_restore``   a checkpoint's RNG state with more CUDA states than visible devices restores
``fsdp_single``   FSDP2 forced on one process (NCCL on CUDA), AdamW on its CUDA default
                  (foreach): 2 steps, sharded save, a fresh trainer resumes for 1 step, export,
                  reload: logits equal the trained model's, weights those of an unsharded run
``families``      every family's tiny model in the machine's dtype: one ``cord`` step on the
                  ``hf`` engine, one on ``hf-generate``, a LoRA save and resume
``projector_bf16`` ``lora: null, trainable: [projector]`` in bf16 at lr 3e-5: the weights move
                  (fp32 master weights)
``ddp``           two processes (NCCL with 2+ GPUs, else gloo) apply one process's update on the
                  same global batch
``vllm``          (when vLLM is installed) the ``vllm`` rollout engine on the tiny Qwen2-Audio: greedy
                  equal to the ``hf`` engine's; on a GPU also sleep mode (memory released
                  between rollouts, the same tokens after waking) and a 7B-width group's
                  rollout tokens/s next to the ``hf`` engine's
``sevenb``        Qwen2-Audio-7B's architecture (random bf16 weights, no download) through the
                  presets ``configs/qwen2-audio-7b/<method>.yaml`` at 8 prompts per micro-batch:
                  per-phase seconds, rollout and student tokens/s, peak allocated and reserved GiB;
                  the sampler's log-probs against the objectives' (float32 head, placeholders
                  excluded) under a threshold

The last stdout line is one JSON object: ``{"checks": {name: status}, <name>: measurements,
...}``; the exit code is 1 if any check failed. ``--only a,b`` runs some checks.
Nothing is downloaded; what is missing among the Python packages is one line before anything runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["torch", "transformers", "peft", "accelerate", "numpy", "pydantic", "yaml", "tokenizers", "safetensors",
            "soundfile"]
METHODS = ["cord", "sft", "forward_kl", "opd", "opd_weighted", "grpo", "grpo_opd"]
#: the 7B rows run by default: the four memory shapes (cord ~ grpo_opd, opd ~ opd_weighted ~ forward_kl)
DEFAULT_7B = ["cord", "grpo", "opd", "sft"]
FAMILIES = ["qwen2-audio", "qwen2.5-omni", "qwen3-omni", "voxtral", "gemma3n", "step-audio2", "mini"]
CHECKS = ["versions", "kernels", "rng_restore", "fsdp_single", "families", "projector_bf16", "ddp", "sevenb", "vllm"]
FAMILY_7B = "gpu-check-qwen2-audio"
TINY = ROOT / "configs" / "tiny" / "cord.yaml"

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
#: the sampler-vs-objective log-prob threshold (nats): a misaligned position or a sampled
#: placeholder gives differences of several nats; bf16 cached decoding vs a full forward a few 1e-2
LOGPROB_MEAN_MAX, LOGPROB_P99_MAX = 0.05, 0.5
#: one-GPU memory of the CPU measurement in BENCHMARKS.md ("Memory at 7B width", live tensor bytes,
#: Qwen2-Audio bf16 LoRA, 8 prompts per micro-batch, extrapolated to 32 layers), GB
TABLE_GB = {"cord": 61.0, "grpo_opd": 61.0, "grpo": 56.0, "opd": 28.5, "opd_weighted": 28.5, "forward_kl": 28.5,
            "sft": 27.0}


class Skip(Exception):
    """A check that cannot run here; its message says why."""


class Failed(AssertionError):
    """A check whose result is wrong; its message says how."""


def expect(ok: bool, why: str) -> None:
    if not ok:
        raise Failed(why)


def preflight() -> None:
    missing = []
    for mod in REQUIRED:
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        sys.exit(f"gpu_check: missing Python packages: {', '.join(missing)} (needed: {', '.join(REQUIRED)})")


class Run:
    """What every check needs: the device, dtype, a work folder, the clock."""

    def __init__(self, smoke: bool, work: Path, budget_s: float) -> None:
        import torch

        self.smoke = smoke
        self.cuda = not smoke
        self.device = "cuda" if self.cuda else "cpu"
        self.dtype = "bfloat16" if self.cuda else "float32"
        self.work = work
        self.budget_s = budget_s
        self.t0 = time.perf_counter()
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


@contextlib.contextmanager
def cuda_optimizer_defaults(run: Run):
    """On CPU, make torch's optimizers choose their foreach path as they do on CUDA."""
    if run.cuda:
        yield
        return
    import torch.optim.optimizer as optimizer

    old = optimizer._get_foreach_kernels_supported_devices
    optimizer._get_foreach_kernels_supported_devices = lambda: ["cuda", "cpu"]
    try:
        yield
    finally:
        optimizer._get_foreach_kernels_supported_devices = old


def tiny_trainer(run: Run, out: Path, *extra: str):
    from cord.config import load_config
    from cord.train.trainer import Trainer

    cfg = load_config(TINY, [f"model.device={run.device}", f"model.dtype={run.dtype}", f"train.bf16={str(run.cuda).lower()}",
                             "train.progress=false", "train.tensorboard=false", "data.limit=8",
                             "rollout.max_new_tokens=6", "rollout.seq_n=2", f"train.output_dir={out}", *extra])
    return Trainer(cfg)


def whole(t):
    t = t.detach()
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).float().cpu()


# ------------------------------------------------------------------------------- checks
def check_versions(run: Run) -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    for mod in ("transformers", "peft", "accelerate"):
        out[mod] = importlib.import_module(mod).__version__
    if run.cuda:
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count(),
                   memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
        expect(out["bf16"], "this GPU has no bf16: the presets need it")
    return out


def check_kernels(run: Run) -> dict:
    import torch

    import cord.objectives.divergence as divergence
    from cord.objectives import reverse_kl_per_token, token_logprobs

    vocab, hdim, n = (156032, 4096, 48) if run.cuda else (4096, 64, 32)
    gen = torch.Generator().manual_seed(0)
    bf = torch.bfloat16

    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(bf).to(run.device)

    hs, ht = draw(1, n, hdim), draw(1, n, hdim)
    ws, wt = draw(vocab, hdim, scale=2.0 / math.sqrt(hdim)), draw(vocab, hdim, scale=2.0 / math.sqrt(hdim))
    mask = torch.ones(1, n, dtype=torch.bool, device=run.device)
    ids = torch.randint(0, vocab, (1, n), generator=gen).to(run.device)
    divergence._OUT_DTYPE_MM.pop(run.device, None)
    h = hs.clone().requires_grad_(True)
    kl = reverse_kl_per_token(h, ws, ht, wt, mask, chunk_size=16)
    kl.sum().backward()
    lp = token_logprobs(hs, ws, ids, mask, chunk_size=16)
    # float64 formulas of the same bf16 values
    h64 = hs.double().requires_grad_(True)
    zs, zt = h64[0] @ ws.double().T, ht.double()[0] @ wt.double().T
    p_log, q_log = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
    kl64 = (p_log.exp() * (p_log - q_log)).sum(-1)
    kl64.sum().backward()
    lp64 = p_log.gather(-1, ids[0, :, None]).squeeze(-1)
    kl_err = float((kl[0].double() - kl64).abs().max())
    lp_err = float((lp[0].double() - lp64).abs().max())
    grad_err = float((h.grad.double() - h64.grad).abs().max() / h64.grad.abs().max())
    out = {"vocab": vocab, "hidden": hdim, "positions": n, "kl_max_abs_err": kl_err, "logprob_max_abs_err": lp_err,
           "grad_max_rel_err": grad_err, "kl_mean": float(kl64.mean())}
    expect(kl_err < 1e-4 and lp_err < 1e-4, f"bf16 chunked KL / log-probs off float64 by {kl_err:.2e} / {lp_err:.2e}")
    # the hidden-state gradient comes back in bf16 (the input's dtype): 2^-8 relative rounding
    expect(grad_err < 1e-2, f"bf16 chunked KL gradient off float64 by {grad_err:.2e} (relative to its largest)")
    if run.cuda:
        out["out_dtype_mm"] = divergence._OUT_DTYPE_MM.get("cuda")
        expect(out["out_dtype_mm"] is True, "torch.mm(out_dtype=float32) was not taken on CUDA (the slow upcast path ran)")
    return out


def check_rng_restore(run: Run) -> dict:
    import torch

    from cord.train.checkpoint import rng_state, set_rng_state

    if not run.cuda:
        raise Skip("needs CUDA (tests/train/test_checkpoint.py checks it with a fake CUDA RNG)")
    count = torch.cuda.device_count()
    state = rng_state()
    mine = torch.cuda.get_rng_state()
    saved = [torch.randint(0, 255, mine.shape, dtype=torch.uint8).tolist() for _ in range(count + 3)]
    saved[torch.cuda.current_device()] = mine.tolist()
    set_rng_state({**state, "cuda": saved})  # an older checkpoint of a run that saw more GPUs
    expect(torch.equal(torch.cuda.get_rng_state(), mine), "this device's CUDA RNG state was not restored")
    set_rng_state(rng_state())  # the current format: this device only
    return {"devices": count, "saved_states": count + 3}


def _logits(adapter, examples) -> "object":
    import torch

    audio = adapter.audio_prompts(examples)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        h = adapter.completion_hidden(audio, ids, mask)
        w = adapter.lm_head().weight
        return (h.float() @ whole(w).to(h.device).T).cpu()


def check_fsdp_single(run: Run) -> dict:
    import torch
    import torch.distributed as dist

    from cord.config import ModelConfig
    from cord.data.paired import load_paired
    from cord.models import load_adapter
    from cord.train.setup import resolve_data

    out = run.work / "fsdp"
    owned = not dist.is_initialized()  # the trainer starts a process group of one: ours to end
    try:
        return _fsdp_single(run, out)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def _fsdp_single(run: Run, out: Path) -> dict:
    import torch.distributed as dist

    from cord.config import ModelConfig
    from cord.data.paired import load_paired
    from cord.models import load_adapter
    from cord.train.setup import resolve_data

    fsdp = ["train.sharding=fsdp", "model.lora=null", "model.dtype=float32", "model.long_audio=truncate",
            "train.trainable=[language_model,lm_head,projector,audio_encoder]", "train.save_every=2"]
    with cuda_optimizer_defaults(run):
        a = tiny_trainer(run, out / "run", *fsdp, "train.max_steps=2")
        expect(a.sharded and dist.get_world_size() == 1, "train.sharding=fsdp on one process did not shard")
        backend = dist.get_backend()
        a.fit(export=False)
        b = tiny_trainer(run, out / "run", *fsdp, "train.max_steps=3")
        fitted = b.fit(resume="auto")
        straight = tiny_trainer(run, out / "straight", *[f for f in fsdp if f != "train.sharding=fsdp"],
                                "train.sharding=none", "train.max_steps=3")
        straight.fit(export=False)
    expect(str(fitted["resumed_from"]).endswith("step-00000002"), f"did not resume from step 2: {fitted['resumed_from']}")
    params = {n: whole(p) for n, p in b.adapter.model.named_parameters()}
    ref = {n: whole(p) for n, p in straight.adapter.model.named_parameters()}
    weight_diff = max(float((params[n] - ref[n]).abs().max()) for n in ref)
    examples = load_paired(resolve_data("builtin:tiny-arith"), limit=2)
    trained = _logits(b.adapter, examples)
    exported = load_adapter(ModelConfig(family="qwen2-audio", name_or_path=str(out / "run" / "model"), dtype="float32",
                                        device=run.device))
    logit_diff = float((_logits(exported, examples) - trained).abs().max())
    tol = 5e-2 if run.cuda else 1e-4  # bf16 compute on GPUs (FSDP mixed precision); fp32 on CPU
    expect(logit_diff < tol, f"exported model's logits differ from the trained model's by {logit_diff:.2e}")
    expect(weight_diff < tol, f"sharded 3 steps (resumed at 2) differ from unsharded 3 steps by {weight_diff:.2e}")
    del a, b, straight, exported
    run.free()
    return {"backend": backend, "logit_max_abs_diff": logit_diff, "weights_vs_unsharded_max_abs_diff": weight_diff}


def check_families(run: Run) -> dict:
    import torch

    out: dict = {}
    failures = []
    for family in FAMILIES:
        try:
            row = {}
            for engine in ("hf", "hf-generate"):
                t = tiny_trainer(run, run.work / "families" / f"{family}-{engine}", f"model.family={family}",
                                 f"rollout.engine={engine}", "train.max_steps=1")
                m = t.train_step()
                expect(math.isfinite(m["loss"]) and not m["skipped"], f"{engine} step: loss {m['loss']}")
                row[f"{engine}_step_s"] = round(m["step_time"], 3)
                del t
            lora = ["model.lora.r=4", "model.lora.alpha=8", "train.save_every=1", f"model.family={family}"]
            tiny_trainer(run, run.work / "families" / f"{family}-lora", *lora, "train.max_steps=1").fit(export=False)
            b = tiny_trainer(run, run.work / "families" / f"{family}-lora", *lora, "train.max_steps=2")
            fitted = b.fit(resume="auto", export=False)
            expect(str(fitted["resumed_from"]).endswith("step-00000001"), "LoRA run did not resume")
            c = tiny_trainer(run, run.work / "families" / f"{family}-straight", *lora, "train.max_steps=2")
            c.fit(export=False)
            diff = max(float((whole(p) - whole(q)).abs().max()) for (_, p), (_, q) in
                       zip(sorted(b.adapter.model.named_parameters()), sorted(c.adapter.model.named_parameters()))
                       if p.requires_grad)
            row["lora_resume_vs_straight_max_abs_diff"] = diff
            expect(diff < (1e-3 if run.cuda else 1e-6), f"LoRA resume differs from the uninterrupted run by {diff:.2e}")
            out[family] = row
            del b, c
        except (Exception, Failed) as e:  # noqa: BLE001 - every family reports, then the check fails
            out[family] = {"error": _why(e)}
            failures.append(f"{family}: {_why(e)}")
        run.free()
    if failures:
        raise Failed("; ".join(failures))
    return out


def check_projector_bf16(run: Run) -> dict:
    import torch

    t = tiny_trainer(run, run.work / "projector", "model.lora=null", "model.dtype=bfloat16", "train.trainable=[projector]",
                     "train.lr=3e-5", "objective.method=sft", "train.max_steps=3")
    before = {n: p.detach().clone() for n, p in t.adapter.model.named_parameters() if p.requires_grad}
    expect({p.dtype for p in before.values()} == {torch.bfloat16}, "projector not in bf16")
    for _ in range(3):
        t.train_step()
    after = dict(t.adapter.model.named_parameters())
    big = moved = 0
    for n, w in before.items():
        sel = w.float().abs() > 0.016
        big += int(sel.sum())
        moved += int((after[n].detach() != w)[sel].sum())
    expect(bool(t.master), "no fp32 master weights for the bf16 projector")
    expect(moved > 0, f"0 of {big} projector weights with |w| > 0.016 moved in 3 steps at lr 3e-5")
    return {"weights_over_0.016": big, "moved": moved, "fraction": moved / max(big, 1)}


def check_ddp(run: Run) -> dict:
    """Two worker processes (this script with --ddp-worker) vs one process on the same global batch."""
    import torch

    work = run.work / "ddp"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp-worker", "--workdir", str(work)]
    if run.smoke:
        cmd.append("--cpu-smoke")
    procs = [subprocess.Popen([*cmd, "--rank", str(r)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for r, (p, log) in enumerate(zip(procs, logs)):
        expect(p.returncode == 0, f"worker {r} exited {p.returncode}: {log.strip().splitlines()[-1] if log.strip() else ''}")
    results = [torch.load(work / f"rank{r}.pt") for r in range(2)]
    ref_trainer = tiny_trainer(run, work / "one", "train.batch_size=4", "train.grad_accum=2")
    ref = _one_step(ref_trainer)
    a, b = results
    diff = max(float((a["grads"][n] - ref["grads"][n]).abs().max() / (ref["grads"][n].abs().max() + 1e-12))
               for n in ref["grads"])
    expect(all(torch.equal(a["grads"][n], b["grads"][n]) for n in a["grads"]), "the two processes apply different updates")
    expect(diff < (2e-2 if run.cuda else 1e-4), f"two processes' update differs from one process's by {diff:.2e} (relative)")
    return {"backend": a["backend"], "grad_max_rel_diff": diff, "loss": a["metrics"]["loss"]}


def _one_step(trainer) -> dict:
    named = {n: p for n, p in trainer.adapter.model.named_parameters() if p.requires_grad}
    grads: dict = {}
    trainer.optimizer.step = lambda *a, **k: grads.update({n: p.grad.detach().float().cpu().clone()
                                                          for n, p in named.items()})
    metrics = trainer.train_step()
    return {"grads": grads, "metrics": metrics}


def ddp_worker(args) -> None:
    import torch
    import torch.distributed as dist

    work = Path(args.workdir)
    rank, world = args.rank, 2
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    smoke = args.cpu_smoke
    gpus = 0 if smoke else torch.cuda.device_count()
    backend = "nccl" if gpus >= 2 else "gloo"
    device = "cpu" if smoke else f"cuda:{rank % gpus}"
    if not smoke:
        torch.cuda.set_device(rank % gpus)
    dist.init_process_group(backend, init_method=f"file://{work / 'store'}", rank=rank, world_size=world)
    run = Run(smoke, work, budget_s=0)
    run.device = device
    try:
        t = tiny_trainer(run, work / f"run{rank}", "train.batch_size=4", "train.grad_accum=1")
        result = _one_step(t)
        result["backend"] = backend
        torch.save(result, work / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def register_7b(widths: dict, device: str, dtype_name: str) -> None:
    """Family ``gpu-check-qwen2-audio``: a random Qwen2-Audio of ``widths`` built on ``device``
    in ``dtype`` (no CPU copy, no download)."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    from cord.models.qwen import Qwen2AudioAdapter
    from cord.models.registry import register_family
    from cord.models.qwen_tiny import build_byte_tokenizer

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

    register_family(FAMILY_7B, load)


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
    tokens with the objectives' (float32 head products, ``head_logits``) on the training
    forward's hidden states at the same temperature, placeholders excluded from both."""
    import torch

    from cord.objectives import head_logits

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
    cap = getattr(ad, "logit_softcap", None)
    with torch.no_grad(), trainer.ctx.autocast():
        h = ad.completion_hidden(prompts.repeat_interleave(n), roll.ids, roll.mask)
        rows = []
        for r in range(h.shape[0]):
            logits = head_logits(h[r], head.weight, head.bias, softcap=cap)
            logits[:, ad.placeholder_token_ids] = float("-inf")
            rows.append(torch.log_softmax(logits / temperature, -1).gather(-1, ids[r, :, None]).squeeze(-1))
        ref = torch.stack(rows)
    diff = (ref - roll.logprobs.to(device)).abs()[mask].float()
    tokens = int(mask.sum())
    return dict(
        max_abs_logprob_diff=float(diff.max()) if tokens else 0.0,
        mean_abs_logprob_diff=float(diff.mean()) if tokens else 0.0,
        p99_abs_logprob_diff=float(diff.quantile(0.99)) if tokens else 0.0,
        rollout_tokens=tokens, rollout_seconds=rollout_s, rollout_tokens_per_s=tokens / max(rollout_s, 1e-9),
        rollout_rows=int(ids.shape[0]), rollout_prompt_tokens=int(prompts.input_ids.shape[1]),
    )


def check_sevenb(run: Run, methods: list[str], cord_steps: int, prompts: int, new_tokens: int | None,
                 seconds: float | None) -> dict:
    import torch

    from cord.config import load_config
    from cord.train.trainer import Trainer

    new_tokens = new_tokens or (8 if run.smoke else 200)
    seconds = seconds or (2.0 if run.smoke else 30.0)
    register_7b(SMOKE if run.smoke else FULL, run.device, run.dtype)
    write_data(run.work / "data7b", max(prompts * max(cord_steps, 1), 2), seconds)
    report: dict = {"prompts_per_micro_batch": prompts, "new_tokens": new_tokens, "audio_seconds": seconds,
                    "methods": {}, "skipped_methods": []}
    for method in methods:
        if run.elapsed() > run.budget_s:
            report["skipped_methods"].append(method)
            continue
        steps = cord_steps if method == "cord" else 1
        cfg = load_config(ROOT / "configs" / "qwen2-audio-7b" / f"{method}.yaml", [
            f"model.family={FAMILY_7B}", "model.name_or_path=tiny", f"model.device={run.device}",
            f"model.dtype={run.dtype}", f"data.train={run.work / 'data7b'}",
            f"train.output_dir={run.work / 'runs7b' / method}", "train.progress=false", "train.tensorboard=false",
            f"train.batch_size={prompts}", "train.grad_accum=1", f"train.max_steps={steps}",
            f"train.save_every={10**6}", f"rollout.max_new_tokens={new_tokens}", f"train.bf16={str(run.cuda).lower()}",
            "judge.kind=exact" if run.smoke else "judge.kind=math",
        ])
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        build_s = time.perf_counter() - t0
        if run.cuda:
            torch.cuda.reset_peak_memory_stats()
        records = [trainer.train_step() for _ in range(steps)]
        run.sync()
        phases = {k: sum(r.get(f"time_{k}", 0.0) for r in records) / steps
                  for k in ("rollout", "teacher", "student", "backward")}
        phases["step"] = sum(r["step_time"] for r in records) / steps
        student_tokens = sum(r.get("completion_tokens", 0.0) for r in records)
        student_s = sum(r.get("time_student", 0.0) for r in records)
        entry = {
            "steps": steps, "build_s": build_s, "seconds_per_step": phases,
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if run.cuda else None,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if run.cuda else None,
            "table_gb": TABLE_GB.get(method),
            "student_tokens_per_s": student_tokens / max(student_s, 1e-9),
            "loss": records[-1].get("loss"), "finite": all(not r.get("skipped", False) for r in records),
        }
        if method == "cord":
            check = logprob_check(trainer, cfg.rollout.seq_n, cfg.rollout.seq_temperature, new_tokens, run.sync)
            report["logprob_check"] = check
        report["methods"][method] = entry
        print(f"gpu_check: 7B {method}: {steps} step(s), {phases['step']:.1f} s/step", file=sys.stderr, flush=True)
        del trainer
        run.free()
    bad = [m for m, e in report["methods"].items() if not (e["finite"] and math.isfinite(e["loss"]))]
    expect(not bad, f"non-finite loss or skipped step: {', '.join(bad)}")
    check = report.get("logprob_check")
    if check:
        expect(check["mean_abs_logprob_diff"] <= LOGPROB_MEAN_MAX and check["p99_abs_logprob_diff"] <= LOGPROB_P99_MAX,
               f"sampler vs objective log-probs: mean {check['mean_abs_logprob_diff']:.3g}, p99 "
               f"{check['p99_abs_logprob_diff']:.3g} nats (thresholds {LOGPROB_MEAN_MAX}, {LOGPROB_P99_MAX})")
    return report


def check_vllm(run: Run) -> dict:
    import torch

    try:
        import vllm  # noqa: F401
    except ImportError:
        raise Skip("vLLM is not installed (GPU: pip install vllm; CPU: bash scripts/setup.sh --vllm)") from None
    from cord.config import ModelConfig, RolloutConfig, VLLMSettings
    from cord.models import load_adapter
    from cord.rollout.engine import HFEngine
    from cord.rollout.vllm_engine import VLLMEngine
    from cord.train.setup import resolve_data
    from cord.data.paired import load_paired

    adapter = load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype=run.dtype, device=run.device))
    with torch.no_grad():
        adapter.lm_head().weight.mul_(8.0)
    free0 = torch.cuda.mem_get_info()[0] if run.cuda else 0
    engine = VLLMEngine(adapter, settings=VLLMSettings(gpu_memory_utilization=0.1, sleep=True))
    prompts = adapter.audio_prompts(load_paired(resolve_data("builtin:tiny-arith"), limit=3))
    got = engine.generate(prompts, n=2, greedy=True, max_new_tokens=12)
    ref = HFEngine(adapter).generate(prompts, n=2, greedy=True, max_new_tokens=12)
    out: dict = {"greedy_equal": bool(torch.equal(got.ids, ref.ids))}
    if run.cuda:  # bf16: a near-tie may flip one token; report the agreement instead of failing on it
        out["greedy_token_agreement"] = float((got.ids == ref.ids).float().mean())
        held = (free0 - torch.cuda.mem_get_info()[0]) / 2**30  # what the sleeping engine still holds
        expect(engine._asleep, "the engine did not go to sleep after its rollout call")
        expect(held < 1.0, f"the sleeping engine still holds {held:.1f} GiB of GPU memory")
        again = engine.generate(prompts, n=2, greedy=True, max_new_tokens=12)
        expect(torch.equal(again.ids, got.ids), "after sleep / wake_up the engine generated other tokens")
        out["asleep_held_gib"] = round(held, 2)
    else:
        expect(out["greedy_equal"], "vllm engine's greedy tokens differ from the hf engine's (fp32)")
    engine.close()
    del engine, adapter
    run.free()
    return out


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def run(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="cord's acceptance run on a GPU machine (see the module docstring)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same sequence on CPU (gloo, tiny widths)")
    ap.add_argument("--only", default=",".join(CHECKS), help=f"checks to run (of {', '.join(CHECKS)})")
    ap.add_argument("--methods", default=None, help=f"7B rows (default {','.join(DEFAULT_7B)}; all: {','.join(METHODS)})")
    ap.add_argument("--cord-steps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=None, help="prompts per micro-batch at 7B (default 8 GPU, 1 smoke)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 200 (paper), 8 smoke")
    ap.add_argument("--seconds", type=float, default=None, help="audio per clip: default 30, smoke 2")
    ap.add_argument("--budget-s", type=float, default=540.0, help="7B rows not started after this many seconds are skipped")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    preflight()
    sys.path.insert(0, str(ROOT / "src"))
    if args.ddp_worker:
        ddp_worker(args)
        return {}
    import torch

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --cpu-smoke on a CPU machine)")
    only = [c for c in args.only.split(",") if c]
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        sys.exit(f"gpu_check: unknown checks {', '.join(unknown)} (known: {', '.join(CHECKS)})")
    tmp = tempfile.TemporaryDirectory(prefix="cord-gpu-check-") if args.workdir is None else None
    work = Path(args.workdir or tmp.name)
    run_ = Run(smoke, work, args.budget_s)
    methods = (args.methods or ",".join(DEFAULT_7B)).split(",")
    prompts = args.prompts or (1 if smoke else 8)
    funcs = {
        "versions": lambda: check_versions(run_),
        "kernels": lambda: check_kernels(run_),
        "rng_restore": lambda: check_rng_restore(run_),
        "fsdp_single": lambda: check_fsdp_single(run_),
        "families": lambda: check_families(run_),
        "projector_bf16": lambda: check_projector_bf16(run_),
        "ddp": lambda: check_ddp(run_),
        "sevenb": lambda: check_sevenb(run_, methods, args.cord_steps, prompts, args.new_tokens, args.seconds),
        "vllm": lambda: check_vllm(run_),
    }
    report: dict = {"mode": "cpu-smoke" if smoke else "gpu", "checks": {}, "seconds": {}}
    for name in CHECKS:
        if name not in only:
            continue
        t0 = time.perf_counter()
        try:
            result = funcs[name]()
            report["checks"][name] = "pass"
            if result:
                report[name] = result
        except Skip as e:
            report["checks"][name] = f"skipped: {e}"
        except Exception as e:  # noqa: BLE001 - every check reports; the exit code says it failed
            report["checks"][name] = f"fail: {_why(e)}"
            traceback.print_exc(file=sys.stderr)
        report["seconds"][name] = round(time.perf_counter() - t0, 2)
        print(f"gpu_check: {name}: {report['checks'][name]} ({report['seconds'][name]} s)", file=sys.stderr, flush=True)
        run_.free()
    report["total_s"] = round(run_.elapsed(), 1)
    report["load_average"] = os.getloadavg()
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(report))
    return report


def main() -> None:
    report = run()
    if any(str(v).startswith("fail") for v in report.get("checks", {}).values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
