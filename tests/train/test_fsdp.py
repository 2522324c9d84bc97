"""Sharded full fine-tuning (train.sharding=fsdp, FSDP2) on two CPU processes over gloo.

- one FSDP step makes the update one unsharded process makes on the same global batch
  (method cord, both terms active: a reward that differs between rollouts), for the tiny
  Qwen2-Audio (full fine-tuning of the text path: a sharded frozen teacher copy) and the
  mini family;
- a sharded checkpoint at step 2, resumed to step 4, equals the uninterrupted run;
- the consolidated export loads with load_adapter and gives the sharded model's logits.

The processes start with torch.multiprocessing (spawn) and meet through a file store
(tests/gloo.py), as in tests/train/test_distributed.py.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import torch

from tests.gloo import cuda_optimizer_defaults, run_one_process, run_two_processes, tiny_data

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny" / "cord.yaml"
GLOBAL_BATCH = 4
COMMON = [
    f"train.batch_size={GLOBAL_BATCH}", "rollout.max_new_tokens=5", "rollout.seq_n=2", "data.limit=8",
    "train.progress=false", "train.tensorboard=false", "train.lr=1e-2", "model.long_audio=truncate",
    "model.lora=null", "train.save_every=2", "train.keep_last=3",
]
FAMILIES = {
    "qwen2-audio": ["model.family=qwen2-audio", "train.trainable=[language_model,lm_head,projector,audio_encoder]"],
    "mini": ["model.family=mini", "train.trainable=[language_model,lm_head,projector,audio_encoder]"],
}


def _reward(candidates, references):
    """A deterministic reward that differs between rollouts (the tiny models' answers are
    never right), so the sequence term has non-zero advantages."""
    return [float(zlib.crc32(c.encode()) % 2) for c in candidates]


def _trainer(out: Path, family: str, *extra: str):
    from cord.config import load_config
    from cord.train.trainer import Trainer

    cfg = load_config(CONFIG, [*COMMON, *FAMILIES[family], f"data.train={tiny_data()}",
                               f"train.output_dir={out}", *extra])
    trainer = Trainer(cfg)
    trainer.ctx.reward_fn = _reward
    return trainer


def _full(trainer) -> dict[str, torch.Tensor]:
    """Every parameter whole (gathered from the shards when sharded)."""
    out = {}
    for n, p in trainer.adapter.model.named_parameters():
        t = p.detach()
        out[n] = (t.full_tensor() if hasattr(t, "full_tensor") else t).clone()
    return out


def _step(trainer) -> dict:
    """One optimizer step; the gradients the optimizer applies (whole), the metrics and the
    parameters after the update."""
    grads: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def capture(*a, **k):
        for n, p in trainer.adapter.model.named_parameters():
            if p.grad is not None:
                g = p.grad.detach()
                grads[n] = (g.full_tensor() if hasattr(g, "full_tensor") else g).clone()
        return step(*a, **k)

    trainer.optimizer.step = capture
    try:
        metrics = trainer.train_step()
    finally:
        del trainer.optimizer.step
    return {"grads": grads, "metrics": metrics, "params": _full(trainer)}


def _logits(adapter) -> torch.Tensor:
    """The model's logits on the completion of one audio prompt (hidden states @ lm_head)."""
    from cord.data.paired import load_paired

    examples = load_paired(tiny_data(), limit=2)
    audio = adapter.audio_prompts(examples)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        h = adapter.completion_hidden(audio, ids, mask)
        w = adapter.lm_head().weight
        w = w.full_tensor() if hasattr(w, "full_tensor") else w
        return (h.float() @ w.float().T).detach().clone()


def _ranks_body(rank: int, out: Path) -> dict:
    results: dict = {}
    for family in FAMILIES:
        trainer = _trainer(out / f"step-{family}", family, "train.sharding=fsdp")
        assert trainer.sharded and trainer.units
        results[family] = _step(trainer)
        results[f"{family}-teacher"] = trainer.teacher.kind
    # activation checkpointing (non-reentrant) inside the FSDP units
    gc = _trainer(out / "gc", "qwen2-audio", "train.sharding=fsdp", "train.gradient_checkpointing=true")
    results["gc_on"] = any(getattr(m, "gradient_checkpointing", False) for m in gc.adapter.model.modules())
    results["qwen2-audio-gc"] = _step(gc)
    # save at step 2, resume, step 4 = 4 uninterrupted steps
    fam = "qwen2-audio"
    run = out / "run"
    a = _trainer(run, fam, "train.sharding=fsdp", "train.max_steps=2")
    a.fit(export=False)
    b = _trainer(run, fam, "train.sharding=fsdp", "train.max_steps=4")
    fitted = b.fit(resume="auto")
    results["resumed_from"] = fitted["resumed_from"]
    results["resumed"] = {"params": _full(b), "last": fitted["last"]}
    results["sharded_logits"] = _logits(b.adapter)
    c = _trainer(out / "straight", fam, "train.sharding=fsdp", "train.max_steps=4")
    fitted = c.fit(export=False)
    results["straight"] = {"params": _full(c), "last": fitted["last"]}
    # the same save at 2 / resume to 4 with AdamW on its CUDA default (foreach): DCP's state
    # dict calls run optimizer.step() too
    with cuda_optimizer_defaults() as spy:
        run = out / "foreach"
        _trainer(run, fam, "train.sharding=fsdp", "train.max_steps=2").fit(export=False)
        d = _trainer(run, fam, "train.sharding=fsdp", "train.max_steps=4")
        fitted = d.fit(resume="auto", export=False)
    results["foreach"] = {"params": _full(d), "last": fitted["last"], "resumed_from": fitted["resumed_from"],
                          "foreach_steps": spy.calls}
    # grad_accum=2: gradients reduce-scattered after each micro-batch, or only after the last
    import torch.distributed.fsdp._fully_shard._fsdp_param_group as param_group

    import cord.train.trainer as trainer_module

    reduce, micro_step = param_group.foreach_reduce, trainer_module.run_micro_step
    for sync in ("every_micro_batch", "last_micro_batch"):
        t = _trainer(out / f"sync-{sync}", fam, "train.sharding=fsdp", "train.grad_accum=2",
                     f"train.fsdp_grad_sync={sync}")
        current, calls = [None], []  # the micro-batch whose backward reduce-scatters

        def tracked(ctx, examples, step, micro):
            current[0] = micro
            return micro_step(ctx, examples, step, micro)

        param_group.foreach_reduce = lambda *a, **k: calls.append(current[0]) or reduce(*a, **k)
        trainer_module.run_micro_step = tracked
        try:
            results[f"sync-{sync}"] = {**_step(t), "reduced_in": calls}
        finally:
            param_group.foreach_reduce, trainer_module.run_micro_step = reduce, micro_step
    # model.dtype=bfloat16: trained on fp32 masters, exported in bf16 without reloading the model
    import cord.train.trainer as trainer_module

    e = _trainer(out / "bf16", fam, "train.sharding=fsdp", "train.max_steps=1", "model.dtype=bfloat16")
    loads, real = [], trainer_module.load_adapter
    trainer_module.load_adapter = lambda cfg: loads.append(cfg.device) or real(cfg)
    try:
        e.fit()
    finally:
        trainer_module.load_adapter = real
    results["bf16"] = {"params": _full(e), "loads": loads,
                       "dtypes": {str(p.dtype) for p in e.adapter.model.parameters()}}
    return results


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    return out, run_two_processes(_ranks_body, out, timeout_s=300)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the shared two-process run happens in the first test's setup
@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_fsdp_step_equals_the_unsharded_step_on_the_same_global_batch(family, two_processes, tmp_path):
    _, (r0, r1) = two_processes
    # one process, no sharding, the same global batch in two micro-batches of the same size
    ref_trainer = _trainer(tmp_path, family, "train.sharding=none", "train.grad_accum=2")
    ref = _step(ref_trainer)
    a, b = r0[family], r1[family]
    # both terms active: non-zero advantages (the sequence term's value is 0 on-policy, its
    # gradient is not) and a non-zero KL
    assert a["metrics"]["adv_std"] > 0 and a["metrics"]["kl_mean"] > 0
    assert a["metrics"]["loss"] == pytest.approx(ref["metrics"]["loss"], rel=1e-5)
    assert a["metrics"]["grad_norm"] == pytest.approx(ref["metrics"]["grad_norm"], rel=1e-5)
    # a parameter no forward uses (the mini family's CTC head) has no gradient unsharded and a
    # zero one sharded (every process all-reduces the same tensors, as unsharded with 2 processes)
    assert ref["grads"] and set(ref["grads"]) <= set(a["grads"])
    assert all(not a["grads"][n].any() for n in set(a["grads"]) - set(ref["grads"]))
    for n in ref["grads"]:
        torch.testing.assert_close(a["grads"][n], ref["grads"][n], rtol=1e-5, atol=1e-9, msg=n)
    before = {n: p.detach() for n, p in _trainer(tmp_path / "init", family).adapter.model.named_parameters()}
    moved = 0
    for n, p in ref["params"].items():
        assert torch.equal(a["params"][n], b["params"][n]), n  # the processes agree
        torch.testing.assert_close(a["params"][n], p, rtol=0, atol=1e-5, msg=n)
        moved += int(not torch.equal(p, before[n]))
    assert moved > 0
    if family == "qwen2-audio":  # the text path trains: a frozen teacher copy, sharded too
        assert r0[f"{family}-teacher"] == "frozen-copy"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sharded_checkpoint_resumes_exactly(two_processes):
    out, (r0, r1) = two_processes
    assert r0["resumed_from"] and r0["resumed_from"].endswith("step-00000002")
    assert (Path(r0["resumed_from"]) / "sharded").is_dir()
    a, s = r0["resumed"], r0["straight"]
    assert a["last"]["step"] == s["last"]["step"] == 4
    assert a["last"]["loss"] == pytest.approx(s["last"]["loss"], rel=1e-6)
    for n in s["params"]:
        torch.testing.assert_close(a["params"][n], s["params"][n], rtol=0, atol=1e-6, msg=n)
        assert torch.equal(r0["resumed"]["params"][n], r1["resumed"]["params"][n]), n


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fsdp_with_adamw_on_its_cuda_default_foreach_trains_saves_and_resumes(two_processes):
    """On CUDA AdamW takes its foreach path, whose ops refuse a list mixing DTensors (the
    sharded layers) and plain tensors (embeddings, norms, lm_head): sharded and plain
    parameters are separate groups, so training, the sharded save and the resume (DCP runs an
    optimizer step) work, and give the per-tensor path's update."""
    _, (r0, r1) = two_processes
    f, s = r0["foreach"], r0["straight"]
    assert f["foreach_steps"] > 0  # the foreach path was really taken
    assert f["resumed_from"] and f["resumed_from"].endswith("step-00000002")
    assert f["last"]["step"] == 4 and f["last"]["loss"] == pytest.approx(s["last"]["loss"], rel=1e-5)
    for n in s["params"]:
        torch.testing.assert_close(f["params"][n], s["params"][n], rtol=0, atol=1e-5, msg=n)
        assert torch.equal(f["params"][n], r1["foreach"]["params"][n]), n


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_consolidated_export_loads_and_gives_the_sharded_logits(two_processes):
    from cord.config import ModelConfig
    from cord.models import load_adapter

    out, (r0, _) = two_processes
    model_dir = out / "run" / "model"
    assert model_dir.is_dir()
    adapter = load_adapter(ModelConfig(family="qwen2-audio", name_or_path=str(model_dir), dtype="float32",
                                       device="cpu"))
    torch.testing.assert_close(_logits(adapter), r0["sharded_logits"], rtol=1e-5, atol=1e-5)
    # and its weights are the trained ones, not the initial ones
    params = dict(adapter.model.named_parameters())
    for n, p in r0["resumed"]["params"].items():
        torch.testing.assert_close(params[n].detach(), p, rtol=0, atol=0, msg=n)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_bf16_sharded_run_trains_fp32_masters_and_exports_bf16_without_reloading(two_processes):
    """model.dtype=bfloat16 under FSDP: the parameters the optimizer steps are fp32 (the
    masters); the export is gathered tensor by tensor into a model built on the meta device
    (process 0 loads nothing else) and written in bf16 — the masters rounded."""
    from safetensors.torch import load_file

    from cord.config import ModelConfig
    from cord.models import load_adapter

    out, (r0, r1) = two_processes
    assert r0["bf16"]["dtypes"] == {"torch.float32"}
    assert r0["bf16"]["loads"] == ["meta"] and r1["bf16"]["loads"] == []
    files = list((out / "bf16" / "model").glob("*.safetensors"))
    assert files and {t.dtype for f in files for t in load_file(str(f)).values()} == {torch.bfloat16}
    exported = load_adapter(ModelConfig(family="qwen2-audio", name_or_path=str(out / "bf16" / "model"),
                                        dtype="bfloat16", device="cpu"))
    params = dict(exported.model.named_parameters())
    masters = r0["bf16"]["params"]
    assert set(masters) == set(params)
    for n, m in masters.items():
        assert torch.equal(params[n].detach(), m.to(torch.bfloat16)), n


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fsdp_can_reduce_scatter_once_per_step_instead_of_once_per_micro_batch(two_processes):
    """train.fsdp_grad_sync=last_micro_batch: with grad_accum=2 no layer's gradient is
    reduce-scattered during the first micro-batch's backward (the unsharded gradients accumulate
    locally: half the traffic), and the update is the one of a reduce-scatter after every
    micro-batch."""
    _, (r0, _) = two_processes
    every, last = r0["sync-every_micro_batch"], r0["sync-last_micro_batch"]
    # process 0 runs micro-batches 0 and 2 of the global batch (world 2 x grad_accum 2)
    assert set(every["reduced_in"]) == {0, 2}
    assert set(last["reduced_in"]) == {2}
    assert last["metrics"]["loss"] == pytest.approx(every["metrics"]["loss"], rel=1e-6)
    assert every["grads"].keys() == last["grads"].keys()
    for n in every["grads"]:
        torch.testing.assert_close(last["grads"][n], every["grads"][n], rtol=1e-5, atol=1e-9, msg=n)


@pytest.mark.parametrize("extra, match", [
    (["model.lora.r=2", "model.long_audio=truncate"], "train.sharding=fsdp is for full fine-tuning"),
    (["model.lora=null", "model.long_audio=skip"], "model.long_audio=skip is not supported with train.sharding=fsdp"),
])
def test_sharding_refuses_lora_and_skipped_audio_in_one_line(extra, match, tmp_path):
    """LoRA is not sharded, and a process whose micro-batch was all skipped would run no
    layer (no collectives): both refused up front, in one line."""
    from cord import CordError
    from cord.config import load_config
    from cord.train.trainer import Trainer

    cfg = load_config(CONFIG, ["data.limit=4", f"data.train={tiny_data()}", f"train.output_dir={tmp_path}",
                               "train.sharding=fsdp", *extra])
    with pytest.raises(CordError, match=match) as err:
        Trainer(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fsdp_step_with_gradient_checkpointing_is_the_same_step(two_processes):
    """Recomputing the layers in backward (their weights gathered again) changes nothing."""
    _, (r0, _) = two_processes
    assert r0["gc_on"]
    a, b = r0["qwen2-audio"], r0["qwen2-audio-gc"]
    assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-6)
    for n in a["grads"]:
        torch.testing.assert_close(b["grads"][n], a["grads"][n], rtol=1e-5, atol=1e-9, msg=n)


@pytest.mark.parametrize("family, expected", [
    ("qwen2-audio", {"Qwen2AudioEncoderLayer": 1, "Qwen2DecoderLayer": 2}),
    ("qwen2.5-omni", {"Qwen2_5OmniAudioEncoderLayer": 1, "Qwen2_5OmniDecoderLayer": 2}),  # not the vision blocks
    ("mini", {"_EncoderBlock": 2, "Qwen2DecoderLayer": 2}),  # not its list of Conv1d
    ("step-audio2", {"Qwen2AudioEncoderLayer": 1, "Qwen2DecoderLayer": 2}),
    ("qwen3-omni", {"Qwen3OmniMoeAudioEncoderLayer": 1, "Qwen3OmniMoeThinkerTextDecoderLayer": 2}),
])
def test_the_fsdp_units_are_each_familys_encoder_and_decoder_layers(family, expected):
    from collections import Counter

    from cord.config import load_config
    from cord.models import load_adapter
    from cord.train.sharding import fsdp_units

    adapter = load_adapter(load_config(CONFIG, [f"model.family={family}"]).model)
    units = fsdp_units(adapter.model, adapter.module_map)
    assert dict(Counter(type(m).__name__ for m in units)) == expected


def test_frozen_copy_casts_each_parameter_once_and_keeps_ties():
    """The sharded run's frozen teacher is made in bf16 directly from the fp32 student (no
    second fp32 model): values are the student's cast, ties stay ties, the student is untouched."""
    from cord.train.step import frozen_copy

    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = torch.nn.Sequential(emb, torch.nn.LayerNorm(4), head)
    model.register_buffer("scale", torch.tensor([2.0]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    copy_ = frozen_copy(model, torch.bfloat16)
    for (n, p), (_, q) in zip(model.named_parameters(), copy_.named_parameters(), strict=True):
        assert q.dtype == torch.bfloat16 and not q.requires_grad and p.requires_grad
        assert torch.equal(q, p.detach().to(torch.bfloat16)) and q.data_ptr() != p.data_ptr(), n
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
    assert copy_[2].weight is copy_[0].weight and torch.equal(copy_.scale, model.scale)
    plain = frozen_copy(model)
    assert all(q.dtype == torch.float32 and not q.requires_grad for q in plain.parameters())


#: the one-process run trains the encoder and the projector at other multiples of train.lr
ALONE_LR_SCALE = "train.lr_scale={audio_encoder: 0.1, projector: 3.0}"


def _alone_body(rank: int, out: Path) -> dict:
    """train.sharding=fsdp on one process, with AdamW on its CUDA default (foreach) and
    train.lr_scale (groups by multiplier and by sharded/plain): 2 steps and a sharded save, a
    fresh trainer resumes for 1 step and exports; the export reloads with the trained model's
    logits."""
    import torch.distributed as dist

    fam, run = "qwen2-audio", out / "run"
    with cuda_optimizer_defaults() as foreach:
        a = _trainer(run, fam, "train.sharding=fsdp", "train.max_steps=2", ALONE_LR_SCALE)
        started = {"sharded": a.sharded, "world": dist.get_world_size(), "units": len(a.units),
                   "dtensors": sum(hasattr(p, "full_tensor") for p in a.adapter.model.parameters()),
                   "groups": [(g["lr_scale"], all(hasattr(p, "full_tensor") for p in g["params"]))
                              for g in a.optimizer.param_groups]}
        a.fit(export=False)
        b = _trainer(run, fam, "train.sharding=fsdp", "train.max_steps=3", ALONE_LR_SCALE)
        fitted = b.fit(resume="auto")
    straight = _trainer(out / "straight", fam, "train.sharding=none", "train.max_steps=3", ALONE_LR_SCALE)
    straight.fit(export=False)
    return {**started, "resumed_from": fitted["resumed_from"], "logits": _logits(b.adapter),
            "params": _full(b), "straight": _full(straight), "foreach_steps": foreach.calls}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp_asked_for_on_one_process_shards_saves_resumes_and_exports(tmp_path):
    """One GPU with train.sharding=fsdp runs FSDP2 over a process group of one (not silently an
    unsharded run): sharded checkpoint, exact resume in a fresh trainer (the same weights as an
    unsharded run of 3 steps), and an export that reloads to the trained model's logits."""
    from cord.config import ModelConfig
    from cord.models import load_adapter

    r = run_one_process(_alone_body, tmp_path)
    assert r["sharded"] and r["world"] == 1 and r["units"] == 3 and r["dtensors"] > 0
    assert r["foreach_steps"] > 0
    # a group per multiplier, sharded and plain apart within it (foreach refuses them mixed)
    assert sorted(set(scale for scale, _ in r["groups"])) == [0.1, 1.0, 3.0]
    assert {True, False} <= {sharded for _, sharded in r["groups"]}
    assert r["resumed_from"].endswith("step-00000002")
    assert (Path(r["resumed_from"]) / "sharded").is_dir()
    for n, p in r["straight"].items():
        torch.testing.assert_close(r["params"][n], p, rtol=0, atol=1e-5, msg=n)
    adapter = load_adapter(ModelConfig(family="qwen2-audio", name_or_path=str(tmp_path / "run" / "model"),
                                       dtype="float32", device="cpu"))
    torch.testing.assert_close(_logits(adapter), r["logits"], rtol=1e-5, atol=1e-5)
