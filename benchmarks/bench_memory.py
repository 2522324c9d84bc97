"""Memory of one training step of each method at 7B widths, on CPU, extrapolated to full depth.

Builds Qwen2-Audio-7B-Instruct's and Qwen2.5-Omni-7B thinker's architectures at their real
widths with few layers and random weights (no download), and runs one optimizer step of each
method through ``cord.train.Trainer`` with the 7B preset (``configs/<arch>/<method>.yaml``:
LoRA r=64, gradient checkpointing, N=4, 200 new tokens) at the paper's shapes: 30 s clips,
200-token completions, group of 4 — but **1 prompt per micro-batch** (the presets use 8 on one
GPU; every activation term is linear in the prompts, so the table scales it).

Widths (the checkpoints' config.json):
  Qwen2-Audio-7B: decoder hidden 4096, 32 heads, 32 KV heads, MLP 11008, vocabulary 156,032,
  32 layers; Whisper-large-v3 encoder width 1280, 20 heads, FFN 5120, 128 mel, 32 layers.
  Qwen2.5-Omni-7B thinker: hidden 3584, 28 heads, 4 KV heads, MLP 18944, vocabulary 152,064,
  28 layers; its audio encoder width 1280, 20 heads, FFN 5120, 128 mel, 32 layers, output 3584.

Rollouts are **synthetic** (random 200-token completions without EOS, every row full length:
the worst case) so that the teacher/student/backward phases run at the paper's shapes on a
CPU; the real engine's rollout memory is measured separately (prefill + a few decode steps of
one group) and extended to 200 tokens with the KV-cache formula.

Memory, two ways, per phase. **Live tensor bytes** (``LiveTensorBytes``, the table's number): a
dispatch mode adds every new tensor storage's bytes and subtracts them when it dies — what a
GPU's caching allocator would have to hold, without the CPU allocator's fragmentation (fused
kernels' internal workspaces are not seen). **RSS** (kept for comparison: it overstated the
per-layer terms ~6× in the first version of this table): a sampler thread (every 5 ms,
``/proc/self/statm``) records the peak resident memory during each phase — rollout (the engine), teacher (``Teacher.scope``), student (the
rest of the micro-step: forwards and the objective), backward (backward + optimizer step) —
minus the resident memory just before the step (weights, LoRA, optimizer state after a first
warm-up step). Peaks are cumulative: a phase's number includes what earlier phases still hold.

Depth: each configuration runs with 1 and 2 decoder layers (encoder: 2 layers); per-layer
term = E(2) − E(1), constant term = E(1) − per-layer; full depth E(L) = const + L·per-layer.

    OMP_NUM_THREADS=2 python benchmarks/bench_memory.py                 # both archs, fp32+bf16
    python benchmarks/bench_memory.py --archs qwen2-audio --dtypes float32 --methods cord

Last stdout line: JSON with every measurement and the extrapolation.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

METHODS = ["cord", "sft", "forward_kl", "opd", "opd_weighted", "grpo", "grpo_opd"]
PRESET_DIR = {"qwen2-audio": "qwen2-audio-7b", "qwen2.5-omni": "qwen2.5-omni-7b"}
FULL_DEPTH = {"qwen2-audio": 32, "qwen2.5-omni": 28}

QWEN2_AUDIO_TEXT = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                        vocab_size=156032, max_position_embeddings=8192, rope_theta=10000.0, rms_norm_eps=1e-5)
OMNI_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                 vocab_size=152064, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
WHISPER_LARGE = dict(d_model=1280, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128,
                     max_source_positions=1500)
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


class PhaseSampler:
    """Peak RSS per phase label, sampled in a thread."""

    def __init__(self, period: float = 0.005) -> None:
        self.label = "idle"
        self.peaks: dict[str, int] = {}
        self.period = period
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            time.sleep(self.period)

    def tick(self) -> None:
        v = rss()
        if v > self.peaks.get(self.label, 0):
            self.peaks[self.label] = v

    def set(self, label: str) -> None:
        self.tick()
        self.label = label
        self.tick()

    def close(self) -> None:
        self._stop.set()
        self._th.join()


class LiveTensorBytes:
    """Live tensor bytes as an accelerator's caching allocator would count them, on any device.

    A TorchDispatchMode sees every op's outputs; a returned tensor whose schema gives it no
    alias (not a view, not in-place, not ``out=``) owns a new storage: its bytes are added and a
    finalizer subtracts them when the storage dies. Tensors that existed before the mode was
    entered (weights, optimizer state) are never counted, so ``current``/``peak`` are bytes above
    them. What this does not see: buffers a fused kernel allocates inside itself (an SDPA or
    GEMM workspace) and allocator fragmentation: it counts what the step holds, not what the
    CPU allocator keeps resident (that is the RSS column). ``phase(label)`` starts a phase;
    ``peaks[label]`` is the highest ``current`` seen in it."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self.label = "idle"
        self.peaks: dict[str, int] = {}
        self._live: dict[int, int] = {}  # id(storage) -> bytes, for storages counted here

    def phase(self, label: str) -> None:
        self.label = label
        self.peaks[label] = max(self.peaks.get(label, 0), self.current)

    def _add(self, t: torch.Tensor) -> None:
        import weakref

        st = t.untyped_storage()
        key = id(st)
        if key in self._live or st.nbytes() == 0:
            return
        self._live[key] = st.nbytes()
        self.current += st.nbytes()
        if self.current > self.peaks.get(self.label, 0):
            self.peaks[self.label] = self.current
        self.peak = max(self.peak, self.current)
        weakref.finalize(st, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                returns = func._schema.returns
                flat, _ = tree_flatten(out)
                tensors = [x for x in flat if isinstance(x, torch.Tensor)]
                fresh = (len(returns) == len(tensors) and all(r.alias_info is None for r in returns)) or (
                    len(returns) == 1 and returns[0].alias_info is None)  # Tensor[] returns: one schema entry
                if fresh:
                    for x in tensors:
                        if x.device.type != "meta":
                            tracker._add(x)
                return out

        return _Mode()


def _fill_random(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if "norm" in name or "layer_norm" in name else 0.0)
            else:
                p.normal_(0.0, 0.02)


def build(arch: str, decoder_layers: int, encoder_layers: int, dtype: torch.dtype, device: str = "cpu"):
    """(model, tokenizer, feature extractor) of ``arch`` at 7B widths, given depths, random weights
    (created without transformers' slow init, then filled with N(0, 0.02))."""
    from transformers import WhisperFeatureExtractor
    from transformers.initialization import no_init_weights

    from cord.models.qwen_tiny import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    special = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "qwen2-audio":
        from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration as cls

        config = Qwen2AudioConfig(
            audio_config=dict(WHISPER_LARGE, encoder_layers=encoder_layers),
            text_config=dict(QWEN2_AUDIO_TEXT, model_type="qwen2", num_hidden_layers=decoder_layers, **special),
            audio_token_index=ids("<|AUDIO|>"),
        )
    else:
        from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration as cls

        config = Qwen2_5OmniThinkerConfig(
            audio_config=dict(WHISPER_LARGE, encoder_layers=encoder_layers, output_dim=3584, n_window=100),
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=3584,
                               fullatt_block_indexes=[0]),  # the vision tower is unused; kept tiny
            text_config=dict(OMNI_TEXT, num_hidden_layers=decoder_layers, **special),
            audio_token_index=ids("<|AUDIO|>"), image_token_index=ids("<|IMAGE|>"),
            video_token_index=ids("<|VIDEO|>"), audio_start_token_id=ids("<|audio_bos|>"),
            audio_end_token_id=ids("<|audio_eos|>"), user_token_id=ids("<|im_start|>"),
            vision_start_token_id=ids("<|vision_bos|>"),
        )
    config._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    torch.manual_seed(0)
    try:
        with no_init_weights(), torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(old)
    if device != "meta":
        _fill_random(model)  # (rotary tables are computed in __init__, not by the init functions)
    model.eval()
    g = model.generation_config
    g.eos_token_id, g.pad_token_id, g.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None
    return model, tokenizer, WhisperFeatureExtractor(feature_size=128)


def register(arch: str, decoder_layers: int, encoder_layers: int, dtype: torch.dtype) -> str:
    from cord.models.qwen import Qwen2AudioAdapter, Qwen25OmniThinkerAdapter
    from cord.models.registry import register_family

    name = f"bench-mem-{arch}"
    adapter_cls = Qwen2AudioAdapter if arch == "qwen2-audio" else Qwen25OmniThinkerAdapter

    def load(cfg):
        model, tok, fe = build(arch, decoder_layers, encoder_layers, dtype)
        return adapter_cls(model, tok, fe, long_audio=cfg.long_audio, max_audio_seconds=cfg.max_audio_seconds)

    register_family(name, load)
    return name


def synthetic_engine_class():
    """An engine with the HF engines' interface whose completions are random tokens (letters and
    digits of the byte vocabulary), every row ``max_new_tokens`` long, no EOS."""
    from cord.rollout.base import EngineBase

    class SyntheticEngine(EngineBase):
        def _sample(self, prompts, n, temperature, top_p, max_new_tokens, greedy):
            tok = self.adapter.tokenizer
            pool = torch.tensor(tok.convert_tokens_to_ids(list("abcdefghijklmnopqrstuvwxyz0123456789")))
            rows = len(prompts) * n
            ids = pool[torch.randint(0, len(pool), (rows, max_new_tokens))]
            lp = None if greedy else [torch.full(ids.shape, -1.0)]
            return [ids], lp

    return SyntheticEngine


def step_memory(arch: str, method: str, family: str, data: Path, work: Path, dtype_name: str,
                sampler: PhaseSampler, new_tokens: int = 200, warmup: bool = True) -> dict:
    """Peak extra memory (MB) per phase of one optimizer step (after a warm-up step): live tensor
    bytes (``peaks_mb``, what a GPU's caching allocator would hold) and resident memory
    (``rss_peaks_mb``, what the CPU allocator kept)."""
    import cord.train.step as step_mod
    import cord.train.trainer as trainer_mod
    from cord.config import load_config
    from cord.train.trainer import Trainer

    cfg = load_config(ROOT / "configs" / PRESET_DIR[arch] / f"{method}.yaml", [
        f"model.family={family}", "model.name_or_path=tiny", "model.device=cpu", f"model.dtype={dtype_name}",
        f"data.train={data}", f"train.output_dir={work / method}", "train.progress=false",
        "train.tensorboard=false", "train.batch_size=1", "train.grad_accum=1", "train.max_steps=2",
        f"train.save_every={10**6}", f"rollout.max_new_tokens={new_tokens}", f"objective.sft_max_tokens={new_tokens}", "train.bf16=false", "judge.kind=exact",
    ])
    trainer = Trainer(cfg)
    # phase labels: the engine's generate -> rollout, Teacher.scope -> teacher, the rest of the
    # micro-step -> student, after it (backward, optimizer) -> backward
    orig_gen = type(trainer.ctx.engine).generate
    orig_scope = step_mod.Teacher.scope
    orig_micro = trainer_mod.run_micro_step

    live = LiveTensorBytes()

    def set_phase(label: str) -> None:
        sampler.set(label)
        live.phase(label)

    def generate(self, *a, **k):
        prev = sampler.label
        set_phase("rollout")
        try:
            return orig_gen(self, *a, **k)
        finally:
            set_phase(prev)

    import contextlib

    @contextlib.contextmanager
    def scope(self):
        prev = sampler.label
        set_phase("teacher")
        try:
            with orig_scope(self) as t:
                yield t
        finally:
            set_phase(prev)

    def micro(*a, **k):
        set_phase("student")
        out = orig_micro(*a, **k)
        set_phase("backward")
        return out

    type(trainer.ctx.engine).generate = generate
    step_mod.Teacher.scope = scope
    trainer_mod.run_micro_step = micro
    try:
        sampler.set("warmup")
        t0 = time.perf_counter()
        if warmup:
            trainer.train_step()  # allocates the optimizer state, caches the references
        warm_s = time.perf_counter() - t0
        trim()
        sampler.set("idle")
        base = rss()
        sampler.peaks = {}
        t0 = time.perf_counter()
        with live.mode():
            set_phase("idle")
            rec = trainer.train_step()
            set_phase("done")
        step_s = time.perf_counter() - t0
    finally:
        type(trainer.ctx.engine).generate = orig_gen
        step_mod.Teacher.scope = orig_scope
        trainer_mod.run_micro_step = orig_micro
    phases = ("rollout", "teacher", "student", "backward")
    rss_peaks = {k: (v - base) / 2**20 for k, v in sampler.peaks.items() if k in phases}
    peaks = {k: v / 2**20 for k, v in live.peaks.items() if k in phases}
    params = sum(p.numel() for p in trainer.adapter.model.parameters())
    trainable = sum(p.numel() for p in trainer.adapter.model.parameters() if p.requires_grad)
    out = dict(peaks_mb=peaks, rss_peaks_mb=rss_peaks, base_mb=base / 2**20, params=params, trainable=trainable, step_s=step_s,
               warmup_s=warm_s, completion_tokens=rec.get("completion_tokens"), loss=rec.get("loss"))
    del trainer
    trim()
    return out


def rollout_memory(arch: str, dtype: torch.dtype, decoder_layers: int, tokens: int, seconds: float) -> dict:
    """The real engine (prefill once, KV cache repeated to the group) on one prompt, n=4,
    ``tokens`` new tokens: peak extra RSS, plus the KV cache size of 200 tokens by formula."""
    import numpy as np

    from cord.data.paired import PairedExample
    from cord.models.qwen import Qwen2AudioAdapter, Qwen25OmniThinkerAdapter
    from cord.rollout import HFEngine

    model, tok, fe = build(arch, decoder_layers, 2, dtype)
    cls = Qwen2AudioAdapter if arch == "qwen2-audio" else Qwen25OmniThinkerAdapter
    adapter = cls(model, tok, fe, max_audio_seconds=30.0)
    rng = np.random.default_rng(0)
    ex = [PairedExample("r", "What is 3 + 4?", (0.05 * rng.standard_normal(int(16000 * seconds))).astype(np.float32))]
    prompts = adapter.audio_prompts(ex)
    engine = HFEngine(adapter, batch_size=64)
    sampler = PhaseSampler()
    trim()
    base = rss()
    sampler.peaks = {}
    sampler.set("rollout")
    live = LiveTensorBytes()
    t0 = time.perf_counter()
    with live.mode():
        live.phase("rollout")
        engine.generate(prompts, n=4, temperature=1.5, max_new_tokens=tokens, seed=0)
    secs = time.perf_counter() - t0
    sampler.set("done")
    sampler.close()
    text = model.config.get_text_config()
    head_dim = text.hidden_size // text.num_attention_heads
    bytes_ = torch.finfo(dtype).bits // 8
    kv_per_token_layer = 2 * text.num_key_value_heads * head_dim * bytes_
    out = dict(peak_extra_mb=live.peaks["rollout"] / 2**20, rss_peak_extra_mb=(sampler.peaks["rollout"] - base) / 2**20,
               seconds=secs, prompt_tokens=int(prompts.input_ids.shape[1]),
               kv_bytes_per_token_per_layer=kv_per_token_layer)
    del engine, adapter, model
    trim()
    return out


def full_depth_params(arch: str) -> int:
    model, _, _ = build(arch, FULL_DEPTH[arch], 32, torch.bfloat16, device="meta")
    skip = "visual" if arch == "qwen2.5-omni" else None
    return sum(p.numel() for n, p in model.named_parameters() if skip is None or not n.startswith("model.visual"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="qwen2-audio,qwen2.5-omni")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--layers", default="1,2", help="decoder depths to measure (two for the extrapolation)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rollout-tokens", type=int, default=4, help="real-engine decode steps for the rollout phase")
    ap.add_argument("--new-tokens", type=int, default=200, help="completion length (synthetic rollouts, SFT targets)")
    ap.add_argument("--save", help="write the results so far (one JSON line) to this file after every measurement, "
                                   "so an interrupted run keeps what it measured (--table-from reads it)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="measure the first step (the optimizer state, LoRA-sized, is then allocated inside 'backward')")
    args = ap.parse_args(argv)
    from gpu_check import write_data

    import cord.rollout.engine as engine_mod

    engine_mod.ENGINES["hf"] = synthetic_engine_class()  # the step's rollouts (all engines made by make_engine)
    work = Path(tempfile.mkdtemp(prefix="cord-bench-mem-"))
    write_data(work / "data", 2, args.seconds)
    sampler = PhaseSampler()
    results: dict = {"runs": [], "rollout": [], "machine": dict(
        cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
        load_average=os.getloadavg(), torch=torch.__version__)}
    t_start = time.perf_counter()
    for arch in args.archs.split(","):
        results.setdefault("full_depth_params", {})[arch] = full_depth_params(arch)
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            for layers in [int(x) for x in args.layers.split(",")]:
                family = register(arch, layers, 2, dtype)
                for method in args.methods.split(","):
                    r = step_memory(arch, method, family, work / "data", work / "runs", dtype_name, sampler,
                                    args.new_tokens, not args.no_warmup)
                    r.update(arch=arch, dtype=dtype_name, decoder_layers=layers, method=method)
                    results["runs"].append(r)
                    _save(args.save, results)
                    print(f"{arch} {dtype_name} L={layers} {method}: live " + " ".join(
                        f"{k} {v:.0f}" for k, v in r["peaks_mb"].items()) + " MB; rss " + " ".join(
                        f"{k} {v:.0f}" for k, v in r["rss_peaks_mb"].items()) + f" MB  ({r['step_s']:.0f} s)", flush=True)
                if args.rollout_tokens > 0:
                    ro = rollout_memory(arch, dtype, layers, args.rollout_tokens, args.seconds)
                    ro.update(arch=arch, dtype=dtype_name, decoder_layers=layers)
                    results["rollout"].append(ro)
                    _save(args.save, results)
                    print(f"{arch} {dtype_name} L={layers} real rollout: live {ro['peak_extra_mb']:.0f} MB, "
                          f"rss {ro['rss_peak_extra_mb']:.0f} MB", flush=True)
    sampler.close()
    results["args"] = vars(args)
    results["extrapolation"] = extrapolate(results)
    results["total_s"] = time.perf_counter() - t_start
    print(json.dumps(results))
    return results


def _save(path: str | None, results: dict) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(results) + "\n")
        os.replace(tmp, path)


def extrapolate(results: dict) -> dict:
    """Per (arch, dtype, method, phase): const + L·per_layer from the 1- and 2-layer runs, of the
    live tensor bytes (``peaks_mb``)."""
    by = {}
    for r in results["runs"]:
        by.setdefault((r["arch"], r["dtype"], r["method"]), {})[r["decoder_layers"]] = r["peaks_mb"]
    out = {}
    for (arch, dtype, method), runs in by.items():
        if not {1, 2} <= set(runs):
            continue
        L = FULL_DEPTH[arch]
        phases = {}
        for ph in runs[2]:
            per = runs[2][ph] - runs[1].get(ph, 0.0)
            const = runs[1].get(ph, 0.0) - per
            phases[ph] = dict(per_layer_mb=per, const_mb=const, full_depth_mb=const + L * per)
        out[f"{arch}/{dtype}/{method}"] = phases
    return out


#: frozen vision tower of the Omni thinker (not built here: audio-only prompts never run it)
OMNI_VISION_PARAMS = 675e6
GPUS_GB = (80, 141)


#: rows one prompt decodes at once in each method's largest engine call (the presets: a GRPO
#: group of seq_n = 4; the token term's token_n = 1; forward KL's one teacher sample; sft none)
ROLLOUT_ROWS = {"cord": 4, "grpo_opd": 4, "grpo": 4, "opd": 1, "opd_weighted": 1, "forward_kl": 1, "sft": 0}


def fit_table(results: dict, prompts: int = 8, tokens: int = 200) -> str:
    """Markdown: full-depth memory of one GPU, LoRA, ``prompts`` prompts per micro-batch.

    static = the weights in the run's dtype (2 B a parameter in bf16, 4 in fp32; full depth; + the
    Omni vision tower) + LoRA (fp32 weight, grad, 2 AdamW moments: 16 B a parameter); phase
    peak = prompts × (const + L·per_layer) from the 1-prompt runs (every activation term taken
    linear in the prompts). Rollout = what the step holds during an engine call (the measured
    rollout phase, synthetic engine) + prompts × rows/4 × the measured real-engine call of one
    group of 4 (prefill, the prompt's KV cache repeated to the rows and 4 decode steps,
    extrapolated in depth the same way) + the KV cache of the new tokens: prompts × rows ×
    tokens × L × kv_bytes, rows = ROLLOUT_ROWS[method] (forward KL's teacher samples are read
    with the audio prompt's length: conservative)."""
    lines = ["| model, weights, method | static GB | rollout GB | teacher GB | student GB | backward GB "
             "| peak GB | 80 GB | 141 GB |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    runs = {(r["arch"], r["dtype"], r["method"], r["decoder_layers"]): r for r in results["runs"]}
    ro = {(r["arch"], r["dtype"], r["decoder_layers"]): r for r in results.get("rollout", [])}
    for key, phases in results["extrapolation"].items():
        arch, dtype, method = key.split("/")
        L = FULL_DEPTH[arch]
        r1, r2 = runs[(arch, dtype, method, 1)], runs[(arch, dtype, method, 2)]
        lora = r1["trainable"] + (L - 1) * (r2["trainable"] - r1["trainable"])
        params = results["full_depth_params"][arch] + (OMNI_VISION_PARAMS if arch != "qwen2-audio" else 0)
        static = (params * (2 if dtype == "bfloat16" else 4) + lora * 16) / 1e9
        gb = {ph: max(0.0, prompts * v["full_depth_mb"] * 2**20 / 1e9) for ph, v in phases.items()}
        rows = ROLLOUT_ROWS.get(method, 4)
        if rows and (arch, dtype, 1) in ro and (arch, dtype, 2) in ro:
            a, b = ro[(arch, dtype, 1)], ro[(arch, dtype, 2)]
            per_layer = b["peak_extra_mb"] - a["peak_extra_mb"]
            group = (a["peak_extra_mb"] - per_layer + L * per_layer) * 2**20  # one group of 4, full depth
            kv_new = prompts * rows * tokens * L * a["kv_bytes_per_token_per_layer"]
            gb["rollout"] = gb.get("rollout", 0.0) + (prompts * rows / 4 * group + kv_new) / 1e9
        peak = static + max(gb.values())
        fits = ["yes" if peak <= g * 0.95 else "**no**" for g in GPUS_GB]
        cells = [f"{gb.get(ph, 0.0):.1f}" for ph in ("rollout", "teacher", "student", "backward")]
        lines.append(f"| {arch} {dtype} {method} | {static:.1f} | " + " | ".join(cells) + f" | {peak:.1f} | {fits[0]} | {fits[1]} |")
    return "\n".join(lines)


def measured_table(results: dict) -> str:
    """Markdown: what was measured, MB above the weights for one prompt, per phase: live tensor
    bytes (RSS in brackets), and the step's seconds."""
    lines = ["| model, weights | method | L | rollout* | teacher | student | backward | step s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        live, rss_ = r["peaks_mb"], r.get("rss_peaks_mb", {})
        cells = [f"{live[ph]:,.0f} ({rss_.get(ph, float('nan')):,.0f})" if ph in live else "–"
                 for ph in ("rollout", "teacher", "student", "backward")]
        lines.append(f"| {r['arch']} {r['dtype']} | {r['method']} | {r['decoder_layers']} | " + " | ".join(cells)
                     + f" | {r['step_s']:.0f} |")
    for r in results.get("rollout", []):
        lines.append(f"| {r['arch']} {r['dtype']} | real engine, one group (prefill + decode) | {r['decoder_layers']} | "
                     f"{r['peak_extra_mb']:,.0f} ({r.get('rss_peak_extra_mb', float('nan')):,.0f}) | | | | {r.get('seconds', float('nan')):.0f} |")
    return "\n".join(lines)


def merge(paths: list[str]) -> dict:
    """One results dict from several runs' saved stdout (their last line)."""
    out: dict = {"runs": [], "rollout": [], "full_depth_params": {}}
    for path in paths:
        data = json.loads(Path(path).read_text().strip().splitlines()[-1])
        out["runs"] += data["runs"]
        out["rollout"] += data.get("rollout", [])
        out["full_depth_params"].update(data["full_depth_params"])
    out["extrapolation"] = extrapolate(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--table-from":  # the tables from saved outputs
        # python bench_memory.py --table-from out1.log[,out2.log...] [8,2,1]
        data = merge(sys.argv[2].split(","))
        print(measured_table(data))
        for p in [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "8").split(",")]:
            print(f"\nprompts per micro-batch: {p}")
            print(fit_table(data, prompts=p))
    else:
        main()
