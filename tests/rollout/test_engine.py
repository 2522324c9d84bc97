"""Rollout engines: seeding, grouping, masks, stop strings; pure sampling (no top-k or other
setting inherited from a checkpoint); prefill once per prompt with the same distribution as
transformers generate; one engine seam (make_engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from cord import CordError
from cord.config import ModelConfig, RolloutConfig
from cord.models import load_adapter
from cord.types import PromptBatch
from cord.rollout import GenerateEngine, HFEngine, make_engine
from cord.rollout.sampling import sampling_logits
from tests.conftest import make_examples

ALL_FAMILIES = ["qwen2-audio", "qwen2.5-omni", "mini", "step-audio2"]
ENGINE_CLASSES = {"hf": HFEngine, "hf-generate": GenerateEngine}


def _load(family: str):
    return load_adapter(ModelConfig(family=family, name_or_path="tiny", dtype="float32", device="cpu"))


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def any_adapter(request):
    """Each family's tiny model with sharpened attention and output (query/key projections
    and head scaled up): at the default init (std 0.02) attention is near uniform, so a wrong
    position or a mixed-up cache row would hardly move a log-prob."""
    adapter = _load(request.param)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "language_model" in name and (name.endswith("q_proj.weight") or name.endswith("k_proj.weight")):
                p.mul_(12.0)
        adapter.lm_head().weight.mul_(8.0)
    return adapter


def test_same_seed_same_rollouts_and_groups_in_order(tiny_adapter):
    engine = HFEngine(tiny_adapter, batch_size=4)  # 3 prompts × 3 samples → several prefill chunks
    prompts = tiny_adapter.audio_prompts(make_examples(3))
    a = engine.generate(prompts, n=3, temperature=1.0, max_new_tokens=8, seed=11)
    b = engine.generate(prompts, n=3, temperature=1.0, max_new_tokens=8, seed=11)
    c = engine.generate(prompts, n=3, temperature=1.0, max_new_tokens=8, seed=12)
    assert torch.equal(a.ids, b.ids) and a.text == b.text
    assert not torch.equal(a.ids, c.ids)
    assert a.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2] and a.n == 3
    # each group must come from its prompt: greedy decoding makes that checkable exactly
    g = engine.generate(prompts, n=2, greedy=True, max_new_tokens=6)
    for p in range(3):
        alone = engine.generate(tiny_adapter.audio_prompts(make_examples(3)[p : p + 1]), greedy=True, max_new_tokens=6)
        for j in range(2):
            r = 2 * p + j
            valid = g.mask[r]
            assert torch.equal(g.ids[r][valid], alone.ids[0][alone.mask[0]])


def test_seeded_call_leaves_global_rng_alone(tiny_adapter):
    engine = HFEngine(tiny_adapter)
    prompts = tiny_adapter.text_prompts(make_examples(1))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    engine.generate(prompts, n=2, max_new_tokens=4, seed=99)
    assert torch.equal(torch.rand(3), expected)


def test_mask_stops_after_first_eos_and_text_has_no_specials(tiny_adapter):
    engine = HFEngine(tiny_adapter)
    eos = tiny_adapter.eos_token_ids[0]
    pad = tiny_adapter.pad_token_id
    ids = torch.tensor([[5, 6, eos, 7, 8], [9, 10, 11, 12, 13], [eos, 1, 2, 3, 4]])
    mask, finished = engine._valid_mask(ids, tiny_adapter.eos_token_ids)
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, True],
        [True, False, False, False, False],
    ]
    assert finished == [True, False, True]
    out = engine.generate(tiny_adapter.text_prompts(make_examples(2)), n=4, max_new_tokens=12, seed=0)
    for r in range(len(out)):
        assert (out.ids[r][~out.mask[r]] == pad).all()
        assert (out.logprobs[r][~out.mask[r]] == 0).all() and (out.logprobs[r][out.mask[r]] < 0).all()
        assert "<|im_end|>" not in out.text[r] and "<|endoftext|>" not in out.text[r]
        assert out.text[r] == tiny_adapter.tokenizer.decode(out.ids[r][out.mask[r]].tolist(), skip_special_tokens=True)


@pytest.mark.parametrize("engine_name", list(ENGINE_CLASSES))
def test_stop_strings_cut_right_after_the_token_that_completes_the_string(tiny_adapter, engine_name):
    # pick a stop string that occurs in a real greedy rollout, then check the exact cut: the
    # kept text contains it, the kept text without its last token does not
    tok = tiny_adapter.tokenizer
    prompts = tiny_adapter.text_prompts(make_examples(1))
    cls = ENGINE_CLASSES[engine_name]
    plain = cls(tiny_adapter).generate(prompts, greedy=True, max_new_tokens=12)
    text = plain.text[0]
    assert len(text) >= 6
    stop = text[3:5]
    cut = cls(tiny_adapter, stop_strings=[stop]).generate(prompts, greedy=True, max_new_tokens=12)
    kept = cut.ids[0][cut.mask[0]].tolist()
    assert stop in tok.decode(kept, skip_special_tokens=True)
    assert stop not in tok.decode(kept[:-1], skip_special_tokens=True)
    assert kept == plain.ids[0][: len(kept)].tolist()  # a prefix of the uncut rollout
    assert cut.mask.sum() < plain.mask.sum() and cut.finished[0]


# ---------------------------------------------------------------------------- pure sampling
def _first_token_reference(adapter, prompts, temperature: float) -> np.ndarray:
    """float64 softmax(logits / T) of the first completion token from the adapter's training
    forward (completion_hidden, not the engine), placeholder tokens excluded."""
    with torch.no_grad():
        dummy = torch.zeros((1, 1), dtype=torch.long)
        h = adapter.completion_hidden(prompts, dummy, torch.ones((1, 1), dtype=torch.bool))[0, 0]
        head = adapter.lm_head()
        logits = (head.weight.double() @ h.double()) + (0 if head.bias is None else head.bias.double())
    logits[adapter.placeholder_token_ids] = float("-inf")
    return torch.softmax(logits / temperature, dim=-1).numpy()


def _chi_square_pvalue(counts: np.ndarray, probs: np.ndarray, min_expected: float = 10.0) -> float:
    """Pearson chi-square of observed counts against probs, tokens binned (in order of
    probability) so that each bin expects >= min_expected; a count in a zero-probability token
    is an immediate failure."""
    if counts[probs == 0].sum() > 0:
        return 0.0
    n = counts.sum()
    order = np.argsort(-probs)
    obs, exp, o, e = [], [], 0.0, 0.0
    for i in order:
        if probs[i] == 0:
            continue
        o, e = o + counts[i], e + n * probs[i]
        if e >= min_expected:
            obs.append(o), exp.append(e)
            o = e = 0.0
    if e > 0:  # the remainder joins the last bin
        obs[-1] += o
        exp[-1] += e
    obs, exp = np.array(obs), np.array(exp)
    return float(stats.chi2.sf(((obs - exp) ** 2 / exp).sum(), df=len(obs) - 1))


def _pollute(adapter) -> None:
    """A checkpoint whose generation_config asks for truncated, penalised sampling."""
    gc = adapter.model.generation_config
    gc.top_k, gc.top_p, gc.repetition_penalty, gc.typical_p = 5, 0.5, 1.3, 0.9
    gc.no_repeat_ngram_size, gc.do_sample, gc.temperature = 1, True, 0.7


@pytest.mark.parametrize("polluted", [False, True], ids=["plain-config", "config-top_k5-top_p0.5-rep1.3"])
@pytest.mark.parametrize("engine_name", list(ENGINE_CLASSES))
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_first_token_is_drawn_from_softmax_of_logits_over_temperature(family, engine_name, polluted):
    """Chi-square of 4,000 first tokens at T = 1.5 against softmax(logits / T) over the whole
    vocabulary (binned to >= 10 expected). A top-k (transformers fills an unset top_k with 50),
    top-p, repetition penalty or n-gram ban taken from the checkpoint fails it."""
    adapter = _load(family)
    if polluted:
        _pollute(adapter)
    full = adapter.text_prompts(make_examples(1))  # its last 6 tokens: 4,000 rows stay cheap
    prompts = PromptBatch(full.input_ids[:, -6:], full.attention_mask[:, -6:], "text", {}, [0])
    probs = _first_token_reference(adapter, prompts, 1.5)
    n = 4000
    out = ENGINE_CLASSES[engine_name](adapter, batch_size=n).generate(
        prompts, n=n, temperature=1.5, max_new_tokens=1, seed=1234
    )
    counts = np.bincount(out.ids[:, 0].numpy(), minlength=len(probs)).astype(float)
    assert (probs > 0).sum() > 50  # a real vocabulary, not a few tokens
    assert _chi_square_pvalue(counts, probs) > 1e-3


def test_top_p_from_the_config_is_transformers_nucleus_filter():
    """The one truncation cord allows (rollout.top_p) equals transformers' TopPLogitsWarper."""
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    for p in (0.3, 0.8, 0.95):
        ours = sampling_logits(logits, temperature=1.0, top_p=p)
        ref = TopPLogitsWarper(top_p=p)(None, logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])
    assert not torch.isinf(sampling_logits(logits, temperature=0.7, top_p=1.0)).any()


# ------------------------------------------------------------- prefill once, same distribution
@pytest.mark.parametrize("modality", ["audio", "text"])
def test_greedy_rollouts_equal_transformers_generate(any_adapter, modality):
    """The prefill-once engine and transformers generate on repeated prompts give the same
    tokens (left padding, several prompt chunks, groups of 3)."""
    exs = make_examples(3)
    prompts = any_adapter.audio_prompts(exs) if modality == "audio" else any_adapter.text_prompts(exs)
    new = HFEngine(any_adapter, batch_size=4).generate(prompts, n=3, greedy=True, max_new_tokens=10)
    old = GenerateEngine(any_adapter, batch_size=64).generate(prompts, n=3, greedy=True, max_new_tokens=10)
    assert torch.equal(new.ids, old.ids) and torch.equal(new.mask, old.mask) and new.text == old.text
    assert new.logprobs is None


def test_sampling_logprobs_equal_the_training_forward_on_every_token(any_adapter):
    """Every sampled token's log-prob reported by the engine (from the repeated KV cache, one
    token at a time) equals the training forward's (completion_hidden on prompt ⊕ rollout, no
    cache) at the sampling temperature: positions, cache expansion and masks are right for
    each of the n rows, not just for the first token."""
    prompts = any_adapter.audio_prompts(make_examples(3))
    T = 1.5
    out = HFEngine(any_adapter, batch_size=64).generate(prompts, n=3, temperature=T, max_new_tokens=9, seed=3)
    with torch.no_grad():
        h = any_adapter.completion_hidden(prompts.repeat_interleave(3), out.ids, out.mask)
        head = any_adapter.lm_head()
        logits = (h.double() @ head.weight.double().T) + (0 if head.bias is None else head.bias.double())
    logits[..., any_adapter.placeholder_token_ids] = float("-inf")
    ref = torch.log_softmax(logits / T, dim=-1).gather(-1, out.ids[..., None]).squeeze(-1)
    diff = (ref - out.logprobs.double()).abs()[out.mask]
    assert out.mask.sum() > 20 and float(diff.max()) < 1e-4


def test_audio_encoded_and_prompt_prefilled_once_per_prompt_with_last_position_logits(any_adapter, monkeypatch):
    """n = 4 rollouts of 2 audio prompts: the audio encoder sees 2 clips once, the decoder's
    first (prefill) call has 2 rows, and the output head never sees more than one position
    per row (no prompt-wide logits)."""
    import cord.objectives.divergence as divergence

    adapter = any_adapter
    # built before the hooks: the mini family's words tokens run its encoder once here to count
    # the heard words (the placeholders); the engine must then encode each clip once, not per rollout
    prompts = adapter.audio_prompts(make_examples(2))
    model = adapter.model.get_base_model() if hasattr(adapter.model, "get_base_model") else adapter.model
    encoder = getattr(getattr(model, "model", model), "audio_tower", None) or model.audio_encoder
    decoder_layer = next(m for name, m in model.named_modules() if "language_model" in name and name.endswith("layers.0"))
    seen: dict[str, list] = {"encoder": [], "decoder": [], "head": []}
    hooks = [
        encoder.register_forward_hook(lambda m, a, kw, o: seen["encoder"].append(1), with_kwargs=True),
        decoder_layer.register_forward_hook(lambda m, a, o: seen["decoder"].append(tuple(a[0].shape[:2]))),
    ]
    head_logits = divergence.head_logits

    def record_head(hidden, *a, **k):  # the engine's logits go through the objectives' head_logits
        seen["head"].append(tuple(hidden.shape))
        return head_logits(hidden, *a, **k)

    monkeypatch.setattr(divergence, "head_logits", record_head)
    try:
        HFEngine(adapter).generate(prompts, n=4, temperature=1.0, max_new_tokens=5, seed=0)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen["encoder"]) == 1
    width = prompts.input_ids.shape[1]
    assert seen["decoder"][0] == (2, width)  # one prefill over 2 prompts
    assert all(shape == (8, 1) for shape in seen["decoder"][1:])  # then 8 rows, one token each
    assert seen["head"][0] == (2, seen["head"][0][-1]) and all(len(s) == 2 and s[0] == 8 for s in seen["head"][1:])


# ------------------------------------------------------------------------- one engine seam
def test_make_engine_picks_the_configured_engine_with_its_settings(tiny_adapter):
    ro = RolloutConfig(stop_strings=["</answer>"], batch_size=7)
    assert ro.engine == "hf"
    e = make_engine(tiny_adapter, ro)
    assert type(e) is HFEngine and e.stop_strings == ["</answer>"] and e.batch_size == 7
    g = make_engine(tiny_adapter, RolloutConfig(engine="hf-generate", batch_size=3), batch_size=5)
    assert type(g) is GenerateEngine and g.batch_size == 5 and g.stop_strings == []
    assert e.sync_weights(3) is None  # HF engines sample with the training weights themselves
    with pytest.raises(Exception):
        RolloutConfig(engine="vllm-typo")
    bad = RolloutConfig().model_copy(update={"engine": "nope"})
    with pytest.raises(CordError, match="rollout.engine"):
        make_engine(tiny_adapter, bad)


def test_bad_sampling_arguments_are_one_clear_error(tiny_adapter):
    prompts = tiny_adapter.text_prompts(make_examples(1))
    for kw in ({"temperature": 0.0}, {"top_p": 0.0}, {"n": 0}, {"max_new_tokens": 0}):
        with pytest.raises(CordError):
            HFEngine(tiny_adapter).generate(prompts, **kw)


@pytest.mark.slow
def test_trainer_builds_every_engine_through_make_engine_and_syncs_once_per_step(tmp_path, monkeypatch):
    """rollout.engine picks the class for the policy's rollouts, the frozen teacher's greedy
    references and the self judge alike, all with rollout.stop_strings and rollout.batch_size;
    sync_weights is called once per optimizer step (not per micro-batch) with the step count."""
    from pathlib import Path

    from cord.config import load_config
    from cord.rollout import ENGINES
    from cord.train.trainer import Trainer

    built, synced = [], []

    class Spy(GenerateEngine):
        def __init__(self, adapter, **kw):
            super().__init__(adapter, **kw)
            built.append(self)

        def sync_weights(self, step):
            synced.append(step)

    monkeypatch.setitem(ENGINES, "hf-generate", Spy)
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "tiny" / "cord.yaml", [
        f"train.output_dir={tmp_path}/run", "train.progress=false", "train.tensorboard=false",
        "train.batch_size=2", "train.grad_accum=2", "rollout.max_new_tokens=4", "rollout.seq_n=2",
        "data.limit=4", "rollout.engine=hf-generate", "rollout.batch_size=5", 'rollout.stop_strings=["@@"]',
        "judge.kind=self",
    ])
    trainer = Trainer(cfg)
    assert trainer.teacher.kind == "frozen-copy"  # so references come from a second engine
    trainer.train_step()
    trainer.train_step()
    assert synced == [0, 1]
    adapters = {id(e.adapter) for e in built}
    # the policy's engine and the teacher copy's, each built once for the run (two steps, four
    # micro-batches, several reference and judge calls)
    assert len(built) == 2 and len(adapters) == 2
    assert all(type(e) is Spy and e.stop_strings == ["@@"] and e.batch_size == 5 for e in built)


@pytest.mark.parametrize("family", ["qwen2-audio", "gemma3n"])
def test_a_bf16_model_samples_from_the_logits_the_objectives_score(family):
    """On a bf16 model the sampler's log-probs are the objectives' (``token_logprobs``: float32
    accumulation, the soft cap in float32) on the very hidden states the sampler decoded from:
    max |Δ| ≤ 1e-5 nats. A bf16 ``lm_head(hidden)`` rounds the logits to bf16 first (~1e-2
    nats here, what the engine did before). The hidden states are recorded from the decode
    loop itself, so a cached-vs-full-forward difference in bf16 attention does not enter."""
    from cord.objectives import token_logprobs

    adapter = load_adapter(ModelConfig(family=family, name_or_path="tiny", dtype="bfloat16", device="cpu"))
    with torch.no_grad():
        adapter.lm_head().weight.mul_(8.0)  # logits of a few units, where bf16 steps show
    seen: list[torch.Tensor] = []
    prefill, decode = adapter.prefill, adapter.decode

    def record_prefill(prompts):
        hidden, state = prefill(prompts)
        seen.append(hidden.repeat_interleave(2, dim=0))  # n = 2 rows per prompt
        return hidden, state

    def record_decode(state, tokens):
        hidden = decode(state, tokens)
        seen.append(hidden)
        return hidden

    adapter.prefill, adapter.decode = record_prefill, record_decode
    out = HFEngine(adapter, batch_size=64).generate(adapter.audio_prompts(make_examples(3)), n=2, temperature=1.0,
                                                   max_new_tokens=8, seed=0)
    hidden = torch.stack(seen[: out.ids.shape[1]], dim=1)  # (R, T, H): position t predicted token t
    assert hidden.dtype == torch.bfloat16
    head = adapter.lm_head()
    cap = getattr(adapter, "logit_softcap", None)
    ids = out.ids.masked_fill(~out.mask, 0)
    ref = token_logprobs(hidden, head.weight, ids, out.mask, bias=head.bias, softcap=cap)
    # the distribution sampled from excludes the placeholders: renormalise the reference
    with torch.no_grad():
        z = hidden.float() @ head.weight.float().T
        if cap is not None:
            z = torch.tanh(z / cap) * cap
        lse_all = torch.logsumexp(z, -1)
        z[..., adapter.placeholder_token_ids] = float("-inf")
        ref = ref + lse_all - torch.logsumexp(z, -1)
    diff = (ref - out.logprobs).abs()[out.mask]
    assert out.mask.sum() > 10
    assert float(diff.max()) < 1e-5, float(diff.max())


# --------------------------------------------------------------------- the vllm engine's edges
@pytest.mark.parametrize("family", ["mini", "step-audio2"])
def test_the_vllm_engine_refuses_a_family_vllm_does_not_run_in_one_line(family):
    adapter = _load(family)
    with pytest.raises(CordError, match="use rollout.engine=hf") as err:
        make_engine(adapter, RolloutConfig(engine="vllm"))
    assert "\n" not in str(err.value) and family in str(err.value)


def test_the_vllm_engine_without_vllm_installed_is_one_line(tiny_adapter, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    engine = make_engine(tiny_adapter, RolloutConfig(engine="vllm"))  # started on first use
    with pytest.raises(CordError, match="needs vLLM.*setup.sh --vllm") as err:
        engine.generate(tiny_adapter.text_prompts(make_examples(1)), greedy=True, max_new_tokens=2)
    assert "\n" not in str(err.value)


def test_teacher_generations_bypass_an_engine_that_holds_its_own_weights(tmp_path):
    """With a frozen LoRA teacher the teacher is the policy's model with its adapter disabled:
    an engine that samples from its own copy of the policy's weights (vLLM) would answer as
    the policy, so text references go through an hf engine; a live teacher may use it."""
    from cord.config import load_config
    from cord.train.step import StepContext, Teacher

    cfg = load_config(None, ["model.family=qwen2-audio", "model.name_or_path=tiny", "model.device=cpu",
                             "model.dtype=float32", "model.lora.r=2", f"train.output_dir={tmp_path}"])
    adapter = load_adapter(cfg.model)

    class OwnWeights:
        reads_model_weights = False

    own = OwnWeights()
    frozen = StepContext(cfg, adapter, own, Teacher(adapter, "frozen", text_path_trains=True))
    assert frozen.teacher.kind == "adapter-disabled"
    teacher_engine = frozen.engine_for(adapter)
    assert isinstance(teacher_engine, HFEngine) and frozen.engine_for(adapter) is teacher_engine
    live = StepContext(cfg, adapter, own, Teacher(adapter, "live", text_path_trains=True))
    assert live.engine_for(adapter) is own
    hf = HFEngine(adapter)
    assert StepContext(cfg, adapter, hf, Teacher(adapter, "frozen", text_path_trains=True)).engine_for(adapter) is hf


def test_a_frozen_teacher_copy_gets_one_engine_for_the_run(tmp_path):
    """A full fine-tuning run keeps a frozen copy of the model as its teacher: its engine is
    built on the first reference call and reused (not one engine per call), wrapped once."""
    from cord.config import load_config
    from cord.train.step import StepContext, Teacher

    cfg = load_config(None, ["model.family=qwen2-audio", "model.name_or_path=tiny", "model.device=cpu",
                             "model.dtype=float32", "model.lora=null", f"train.output_dir={tmp_path}"])
    adapter = load_adapter(cfg.model)
    teacher = Teacher(adapter, "frozen", text_path_trains=True)
    assert teacher.kind == "frozen-copy"
    ctx = StepContext(cfg, adapter, HFEngine(adapter), teacher)
    wrapped = []
    ctx.wrap_engine = lambda engine: wrapped.append(engine) or engine
    with teacher.scope() as t_adapter:
        first = ctx.engine_for(t_adapter)
        assert t_adapter is not adapter and first.adapter is t_adapter
        assert ctx.engine_for(t_adapter) is first and ctx.engine_for(t_adapter) is first
    assert wrapped == [first]
