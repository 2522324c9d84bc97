"""Chunked vs naive full-vocabulary reverse KL: peak extra memory and wall time (CPU).

Workload (one CORD token-level step's loss on N completion positions, Qwen2-like head):
student hidden (N, H) -> reverse KL against a teacher through the lm_head (V, H), weights
from ``token_weights`` (alpha=2, K=20, beta=2), L = sum w D / N, then backward.

Variants:
  naive          logits (N, V) for both sides, log_softmax, sum p (log p - log q), autograd
                 (teacher side under no_grad, as a trainer would do it).
  chunked        cord.objectives.reverse_kl_per_token(chunk_size=512).
  chunked_hint   the same with grad_hint=position_decay_weights(mask, beta) (trainable head
                 only; the hint changes only how much the backward recomputes).
Cases: "frozen" lm_head (LoRA; gradients to hidden states only, teacher head = the same
tensor) and "trainable" lm_head (gradients to hidden states and the weight; the teacher head
is a separate frozen copy).

Memory: each (variant, case, N) runs in a fresh subprocess. After the inputs are built the
child resets the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``), runs one
forward+backward, and reports VmHWM - VmRSS(before): the peak resident memory the step added
on top of its inputs (gradients included).
Time: per case, one more subprocess runs the variants interleaved (naive, chunked, ...) for
``--rounds`` rounds and reports the median wall time (and process CPU time) per variant;
interleaving keeps a load change on a shared machine from favouring one variant. The growth
series reports memory and the wall time of the single memory run.

``--dtype bf16``: hidden states and heads in bf16 (the naive variant then runs its matmuls
in bf16 and upcasts the logits, as an HF model computing logits in bf16 would; the chunked
one accumulates the head products in fp32 without copying the head). An accuracy child then
reports each variant's largest per-token KL error against float64 on the same bf16 values
(first 64 positions).

    .venv/bin/python benchmarks/bench_objectives.py            # table + final JSON line
    .venv/bin/python benchmarks/bench_objectives.py --dtype bf16 --growth
    .venv/bin/python benchmarks/bench_objectives.py --quick    # small shapes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEADLINE_N = 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _inputs(case: str, n: int, hdim: int, vocab: int, dtype: str):
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    seq_len = min(n, 256)
    b = n // seq_len
    hs = torch.randn(b, seq_len, hdim).to(dt).requires_grad_(True)
    ht = torch.randn(b, seq_len, hdim).mul_(0.5).add_(hs.detach()).to(dt)
    ws = torch.randn(vocab, hdim).mul_(0.05).to(dt)
    return b, seq_len, hs, ht, ws


def _setup(case: str, n: int, hdim: int, vocab: int, chunk: int, dtype: str = "fp32"):
    """Inputs for one case and a dict variant -> step() (forward + backward, returns the loss)."""
    import torch

    from cord.objectives import position_decay_weights, reverse_kl_per_token, token_weights

    b, seq_len, hs, ht, ws = _inputs(case, n, hdim, vocab, dtype)
    if case == "trainable":
        ws.requires_grad_(True)
        wt = ws.detach().clone()  # teacher = frozen initial head
    else:
        wt = ws  # LoRA: teacher = the same head with the adapter off
    mask = torch.ones(b, seq_len, dtype=torch.bool)
    hint = position_decay_weights(mask, 2.0)

    def make(variant):
        def step():
            if variant == "naive":
                lp = torch.log_softmax((hs @ ws.t()).float(), -1)
                with torch.no_grad():
                    lq = torch.log_softmax((ht @ wt.t()).float(), -1)
                kl = (lp.exp() * (lp - lq)).sum(-1)
            else:
                kl = reverse_kl_per_token(hs, ws, ht, wt, mask, chunk_size=chunk,
                                          grad_hint=hint if variant == "chunked_hint" else None)
            w = token_weights(kl.detach(), mask, alpha=2.0, top_k=20, beta=2.0)
            loss = (w * kl).sum() / mask.sum()
            loss.backward()
            hs.grad = None
            ws.grad = None
            return float(loss)
        return step

    return {v: make(v) for v in ("naive", "chunked", "chunked_hint")}


def child_accuracy(case: str, n: int, hdim: int, vocab: int, chunk: int, dtype: str, rows: int = 64) -> dict:
    """Largest per-token KL error of each variant against float64 on the same input values."""
    import torch

    from cord.objectives import reverse_kl_per_token

    _, _, hs, ht, ws = _inputs(case, n, hdim, vocab, dtype)
    h, t = hs.detach().reshape(-1, hdim)[:rows], ht.reshape(-1, hdim)[:rows]
    with torch.no_grad():
        lp = torch.log_softmax(h.double() @ ws.double().t(), -1)
        lq = torch.log_softmax(t.double() @ ws.double().t(), -1)
        ref = (lp.exp() * (lp - lq)).sum(-1)
        lp = torch.log_softmax((h @ ws.t()).float(), -1)
        lq = torch.log_softmax((t @ ws.t()).float(), -1)
        naive = (lp.exp() * (lp - lq)).sum(-1)
        chunked = reverse_kl_per_token(h, ws, t, ws, chunk_size=chunk)
    return dict(mean_kl=float(ref.mean()), naive=float((naive.double() - ref).abs().max()),
                chunked=float((chunked.double() - ref).abs().max()))


def child_memory(variant: str, case: str, n: int, hdim: int, vocab: int, chunk: int, dtype: str) -> dict:
    """One forward+backward in this fresh process; peak RSS it added over the inputs."""
    step = _setup(case, n, hdim, vocab, chunk, dtype)[variant]
    rss0 = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM so input construction does not count
    t0 = time.perf_counter()
    loss = step()
    wall = time.perf_counter() - t0
    return dict(peak_extra_mb=(_status_kb("VmHWM") - rss0) / 1024, first_s=wall, loss=loss)


def child_time(variants: list[str], case: str, n: int, hdim: int, vocab: int, chunk: int, dtype: str,
               rounds: int) -> dict:
    """Variants run interleaved (A B A B ...) so a load change on a shared CPU hits all alike."""
    steps = _setup(case, n, hdim, vocab, chunk, dtype)
    wall = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[v]()
            wall[v].append(time.perf_counter() - t0)
            cpu[v].append(time.process_time() - c0)
    return dict(wall=wall, cpu=cpu)


def run_child(*args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds at the headline N")
    p.add_argument("--growth", type=int, nargs="*", default=[256, 512, 2048],
                   help="further N for the frozen-head growth series (memory; time of one run)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="hidden states and heads")
    p.add_argument("--quick", action="store_true", help="small shapes for a smoke run")
    a = p.parse_args()
    if a.child:
        args = json.loads(a.child)
        fn = {"memory": child_memory, "time": child_time, "accuracy": child_accuracy}[args[0]]
        print(json.dumps(fn(*args[1:])))
        return
    if a.quick:
        a.hidden, a.vocab, a.rounds, a.growth = 64, 8192, 1, [256]
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, H={a.hidden}, V={a.vocab}, "
          f"{a.dtype}, chunk_size={a.chunk_size}", flush=True)
    shape = (a.hidden, a.vocab, a.chunk_size, a.dtype)
    cases = {"frozen": ["naive", "chunked"], "trainable": ["naive", "chunked", "chunked_hint"]}
    mem, tim = {}, {}
    for case, variants in cases.items():
        for v in variants:
            mem[case, HEADLINE_N, v] = run_child("memory", v, case, HEADLINE_N, *shape)
            print(f"  memory {case} N={HEADLINE_N} {v}: {mem[case, HEADLINE_N, v]['peak_extra_mb']:.0f} MB", flush=True)
        tim[case] = run_child("time", variants, case, HEADLINE_N, *shape, a.rounds)
        print(f"  timing {case} N={HEADLINE_N}: {json.dumps(tim[case]['wall'])}", flush=True)
    acc = run_child("accuracy", "frozen", HEADLINE_N, *shape)
    print(f"  accuracy (max |KL error| vs float64, first 64 positions, mean KL {acc['mean_kl']:.4f}): "
          f"naive {acc['naive']:.2e}, chunked {acc['chunked']:.2e}", flush=True)
    for n in a.growth:
        for v in cases["frozen"]:
            mem["frozen", n, v] = run_child("memory", v, "frozen", n, *shape)
            print(f"  memory frozen N={n} {v}: {mem['frozen', n, v]['peak_extra_mb']:.0f} MB", flush=True)

    med = statistics.median
    print(f"\n{'case':<10} {'N':>5} {'variant':<13} {'peak extra MB':>13} {'wall s (median)':>16} "
          f"{'cpu s (median)':>15} {'loss':>10}")
    for (case, n, v), r in mem.items():
        if n == HEADLINE_N:
            w, c = med(tim[case]["wall"][v]), med(tim[case]["cpu"][v])
            wt, ct = f"{w:.2f}", f"{c:.2f}"
        else:
            wt, ct = f"{r['first_s']:.2f} (1 run)", "-"
        print(f"{case:<10} {n:>5} {v:<13} {r['peak_extra_mb']:>13.0f} {wt:>16} {ct:>15} {r['loss']:>10.6f}")

    def mem_ratio(v, case, n=HEADLINE_N):
        return mem[case, n, v]["peak_extra_mb"] / mem[case, n, "naive"]["peak_extra_mb"]

    def time_ratio(v, case, kind="wall"):
        return med(tim[case][kind][v]) / med(tim[case][kind]["naive"])

    print("\nratios chunked / naive:")
    for n in sorted({k[1] for k in mem} - {HEADLINE_N}):
        print(f"  frozen    N={n:<5} chunked       peak mem {mem_ratio('chunked', 'frozen', n):.3f}")
    for case, variants in cases.items():
        for v in variants[1:]:
            print(f"  {case:<9} N={HEADLINE_N:<5} {v:<13} peak mem {mem_ratio(v, case):.3f}  "
                  f"wall {time_ratio(v, case):.3f}  cpu {time_ratio(v, case, 'cpu'):.3f}")
    print("raw timings:", json.dumps(tim))
    print(json.dumps(dict(
        n=HEADLINE_N, hidden=a.hidden, vocab=a.vocab, chunk_size=a.chunk_size, dtype=a.dtype,
        max_kl_error_naive=acc["naive"], max_kl_error_chunked=acc["chunked"],
        peak_mem_ratio=round(mem_ratio("chunked", "frozen"), 4),
        time_ratio=round(time_ratio("chunked", "frozen"), 4),
        cpu_time_ratio=round(time_ratio("chunked", "frozen", "cpu"), 4),
        trainable_peak_mem_ratio=round(mem_ratio("chunked", "trainable"), 4),
        trainable_time_ratio=round(time_ratio("chunked", "trainable"), 4),
        trainable_hint_peak_mem_ratio=round(mem_ratio("chunked_hint", "trainable"), 4),
        trainable_hint_time_ratio=round(time_ratio("chunked_hint", "trainable"), 4),
        growth_peak_mem_ratio={n: round(mem_ratio("chunked", "frozen", n), 4) for n in sorted({k[1] for k in mem})},
    )))


if __name__ == "__main__":
    main()
