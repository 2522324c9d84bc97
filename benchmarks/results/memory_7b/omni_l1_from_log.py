"""Rebuild the Omni L=1 records from bench_memory's progress lines (the process was stopped
after L=1 to leave the CPU to the L=2 run): trainable(L=1) = trainable(L=2) - one decoder
layer's LoRA (r=64 on q,k,v,o,gate,up,down at Omni's widths), prompt tokens and KV bytes from
the L=2 run's real-engine record (same prompt)."""
import json, re, sys
log, l2 = sys.argv[1], json.loads(open(sys.argv[2]).read())
per_layer_lora = 64 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 3)
train2 = {r["method"]: r["trainable"] for r in l2["runs"]}
out = {"runs": [], "rollout": [], "full_depth_params": l2["full_depth_params"]}
pat = re.compile(r"^(\S+) (\S+) L=1 (\w+): live (.*?) MB; rss (.*?) MB  \((\d+) s\)")
for line in open(log):
    m = pat.match(line)
    if m:
        arch, dtype, method, live, rss, secs = m.groups()
        pk = lambda s: {k: float(v) for k, v in zip(s.split()[::2], s.split()[1::2])}
        base = "cord" if method == "grpo_opd" else "opd" if method in ("opd_weighted", "forward_kl") else method
        out["runs"].append(dict(arch=arch, dtype=dtype, decoder_layers=1, method=method, peaks_mb=pk(live), rss_peaks_mb=pk(rss),
                                step_s=float(secs), trainable=train2[base] - per_layer_lora, from_log=True))
    m = re.match(r"^(\S+) (\S+) L=1 real rollout: live (\d+) MB, rss (\d+) MB", line)
    if m:
        r2 = l2["rollout"][0]
        out["rollout"].append(dict(arch=m[1], dtype=m[2], decoder_layers=1, peak_extra_mb=float(m[3]), rss_peak_extra_mb=float(m[4]),
                                   prompt_tokens=r2["prompt_tokens"], kv_bytes_per_token_per_layer=r2["kv_bytes_per_token_per_layer"]))
if len(sys.argv) > 3:  # the L=1 real-engine record, measured on its own (rollout_memory)
    r1 = json.loads(open(sys.argv[3]).read())
    out["rollout"] = [dict(r1, arch="qwen2.5-omni", dtype="bfloat16", decoder_layers=1)]
print(json.dumps(out))
