"""Typed configuration: YAML in, validated objects out.

pydantic (not dataclasses) because it gives type coercion, range checks and a precise
location for every error for free; ``extra="forbid"`` rejects unknown keys, and
:func:`load_config` turns pydantic's report into one line naming the nearest valid key.

Every knob maps to one named field; defaults are the paper's settings where it gives them.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cord import CordError


#: the TTS backends ``synth.tts`` may name (each is a class in :mod:`cord.data.tts`)
TTS_ENGINES = ("espeak", "piper", "kokoro")


def parse_tts_spec(spec: str) -> list[tuple[str, float]]:
    """``"espeak"`` → ``[("espeak", 1.0)]``; ``"espeak,piper"`` → equal weights;
    ``"espeak:0.7,piper:0.3"`` → those weights (normalised to sum 1). Raises ValueError
    for an unknown engine, a bad or non-positive weight, or an engine named twice."""
    parts = [p.strip() for p in str(spec).split(",")]
    if not any(parts):
        raise ValueError(f"no TTS engine given; use one of {', '.join(TTS_ENGINES)} or a mix such as espeak:0.7,piper:0.3")
    out: list[tuple[str, float]] = []
    for part in parts:
        name, _, weight = part.partition(":")
        name = name.strip().lower()
        if name not in TTS_ENGINES:
            raise ValueError(f"unknown TTS engine {name or part!r}; use {', '.join(TTS_ENGINES)} "
                             "or a mix such as espeak,piper or espeak:0.7,piper:0.3")
        try:
            w = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"bad weight {weight!r} for TTS engine {name} (want a number, e.g. {name}:0.5)") from None
        if not w > 0 or w == float("inf"):
            raise ValueError(f"TTS engine weight must be a positive number, got {name}:{weight}")
        if name in (n for n, _ in out):
            raise ValueError(f"TTS engine {name} is named twice in {spec!r}")
        out.append((name, w))
    total = sum(w for _, w in out)
    return [(n, w / total) for n, w in out]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class LoraConfig(_Section):
    """peft LoRA settings; ``target_modules`` are module-name suffixes of the language model."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    #: keep 0 for the on-policy methods (a warning says why otherwise); sft / forward_kl may use it
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class ModelConfig(_Section):
    """Which LALM, how to load it and how to build its prompts."""

    family: str = "qwen2-audio"
    #: hub name or local path; ``tiny`` builds the family's tiny offline model (tests, CPU).
    name_or_path: str = "Qwen/Qwen2-Audio-7B-Instruct"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"
    device: str = "auto"
    attn_implementation: str | None = None
    lora: LoraConfig | None = None
    system_prompt: str | None = None
    #: instruction appended after the audio (audio prompt) or after the question (text prompt)
    instruction: str = "Answer the question. Put the final answer after 'The answer is'."
    #: what to do with audio longer than the encoder window
    long_audio: Literal["error", "skip", "truncate"] = "error"
    max_audio_seconds: float = Field(30.0, gt=0)
    #: seed for the tiny builders (name_or_path == "tiny")
    tiny_seed: int = 0


class DataConfig(_Section):
    """Paired training data as written by ``cord synth``."""

    train: str = "data/train"
    limit: int | None = Field(None, ge=1)
    shuffle: bool = True


class VLLMSettings(_Section):
    """``rollout.engine: vllm``: a vLLM engine colocated with the trainer in each process
    (cord.rollout.vllm_engine); tensor parallel size 1 per process."""

    #: GPU: the share of the GPU's memory vLLM may take for its weights and KV cache (the
    #: trainer holds the rest: keep it low next to a 7B policy, e.g. 0.3 on 80 GB)
    gpu_memory_utilization: float = Field(0.3, gt=0, lt=1)
    #: CPU: the KV cache's size in GiB (vLLM's CPU backend sizes it explicitly)
    cpu_kv_cache_gb: float = Field(1.0, gt=0)
    #: longest prompt + completion, in tokens (None: 4096, enough for 30 s of audio, the prompt
    #: and 1000 new tokens); a longer request is refused by vLLM
    max_model_len: int | None = Field(None, ge=64)
    #: GPU only: release vLLM's weights and KV cache between rollout phases (sleep / wake_up),
    #: so training gets the memory back
    sleep: bool = True
    #: eager execution (no CUDA graphs / torch.compile: faster to start, slower per token)
    enforce_eager: bool = True


class RolloutConfig(_Section):
    """On-policy sampling from the audio prompt."""

    max_new_tokens: int = Field(200, ge=1)
    #: token level: rollouts per prompt and temperature
    token_n: int = Field(1, ge=1)
    token_temperature: float = Field(1.0, gt=0)
    #: sequence level (GRPO): group size and temperature
    seq_n: int = Field(4, ge=1)
    seq_temperature: float = Field(1.5, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    #: when true the token level reuses the GRPO group's rollouts (and the student's forward
    #: on them) instead of sampling its own: one generate and one forward fewer per step, but
    #: the KL is then taken on samples at seq_temperature
    share_rollouts: bool = False
    stop_strings: list[str] = Field(default_factory=list)
    #: max decoding rows per engine call, whole groups (memory knob; greedy results do not
    #: depend on it, sampled ones are the same distribution)
    batch_size: int = Field(64, ge=1)
    #: rollout engine (cord.rollout.make_engine): "hf" encodes and prefills each prompt once
    #: and samples n rows from its repeated KV cache; "hf-generate" runs transformers generate
    #: on the prompt repeated n times (reference / fallback); "vllm" samples with a vLLM engine
    #: in the same process, its weights synced after every optimizer step (rollout.vllm). All
    #: sample purely: no top-k or other setting from the checkpoint's generation_config, only
    #: top_p above.
    engine: Literal["hf", "hf-generate", "vllm"] = "hf"
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)


def method_names() -> list[str]:
    """The training methods: the keys of :data:`cord.types.METHODS`, the one table
    that defines them (a light module: no torch)."""
    from cord.types import METHODS

    return list(METHODS)


def judge_kinds() -> list[str]:
    """The judge kinds: :func:`cord.judges.api.judge_kinds`, the registry that implements them."""
    from cord.judges import api

    return list(api.judge_kinds())


def _one_of(what: str, value: str, options: list[str]) -> str:
    if value in options:
        return value
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {what} {value!r}{hint} (one of {', '.join(options)})")


class ObjectiveConfig(_Section):
    """Which loss terms and their settings (docs/architecture.md, "The method as implemented")."""

    #: one of :func:`method_names` (sft, forward_kl, opd, opd_weighted, grpo, grpo_opd, cord)
    method: str = "cord"
    alpha: float = Field(2.0, ge=1.0)
    top_k: int = Field(20, ge=0)
    beta: float = Field(2.0, ge=1.0)
    #: λ in L = L_tok + λ·L_seq
    lam: float = Field(1.0, ge=0.0)
    temperature: float = Field(1.0, gt=0)
    normalization: Literal["tokens", "weights", "sequences"] = "tokens"
    aggregation: Literal["token_mean", "seq_mean", "sum_norm"] = "token_mean"
    adv_std_norm: bool = False
    clip_eps: float = Field(0.2, gt=0)
    #: GRPO reward reference: the text-conditioned greedy answer, or the dataset answer
    reward_reference: Literal["text", "ground_truth"] = "text"
    #: frozen initial weights (LoRA: adapter disabled) or live weights under no_grad
    teacher: Literal["frozen", "live"] = "frozen"
    chunk_size: int = Field(512, ge=1)
    #: method sft: the most tokens of a reference solution trained on, its end-of-turn token
    #: included; a longer solution is cut (no end-of-turn) and counted in targets_truncated
    sft_max_tokens: int = Field(1024, ge=1)
    #: method sft: which prompt the solution is trained from — ``audio`` (the paper's SFT
    #: baseline) or ``text`` (text-side instruction tuning, e.g. a warm-up that gives a model
    #: the text skill whose transfer to speech the other methods are then measured on)
    sft_prompt: Literal["audio", "text"] = "audio"

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return _one_of("method", v, method_names())


class JudgeConfig(_Section):
    """Answer agreement for the sequence-level reward and for evaluation."""

    #: one of :func:`judge_kinds` (math, mcq, mmau, exact, llm, self, ...)
    kind: str = "math"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0)
    concurrency: int = Field(8, ge=1)
    cache_dir: str | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _one_of("judge kind", v, judge_kinds())


class TrainConfig(_Section):
    """The optimisation loop."""

    output_dir: str = "runs/cord"
    seed: int = 0
    max_steps: int = Field(1000, ge=1)
    #: the GLOBAL batch: prompts per optimizer step, over all processes and accumulation steps.
    #: Each micro-batch holds batch_size / (processes × grad_accum) prompts (must divide), so
    #: the update and the data order do not depend on the number of GPUs.
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    max_grad_norm: float | None = Field(1.0, gt=0)
    bf16: bool = True
    gradient_checkpointing: bool = False
    #: "fsdp": full fine-tuning sharded with FSDP2 over the processes (each transformer layer a
    #: unit; see cord.train.sharding); "none": every process holds the whole model (DDP-like);
    #: "auto": fsdp when launched with an accelerate config whose distributed_type is FSDP
    sharding: Literal["auto", "none", "fsdp"] = "auto"
    #: how long any collective (all-reduce, barrier) waits before the run fails, in seconds, for
    #: the process group the trainer starts (NCCL's own default is 10 min: a barrier while process
    #: 0 writes a 7B checkpoint or export to slow storage can outlast it)
    dist_timeout_s: int = Field(3600, ge=60)
    #: FSDP with grad_accum > 1: reduce-scatter the layers' gradients after every micro-batch
    #: (sharded gradients, the least memory) or only in the last one's backward ("last_micro_batch":
    #: each process holds every layer's unsharded gradient in between, in fp32 — at 7B ~28 GB more
    #: per GPU). Measured on gloo at grad_accum=2: opd and grpo 3 reduce-scatters per step instead
    #: of 6; cord and grpo_opd (two student forwards per micro-batch unless
    #: rollout.share_rollouts) 6 either way: FSDP reduces once per forward use in that backward
    fsdp_grad_sync: Literal["every_micro_batch", "last_micro_batch"] = "every_micro_batch"
    #: allow TF32 tensor cores for float32 matmuls on NVIDIA GPUs (Ampere and newer): the fp32
    #: lm_head products of full fine-tuning run several times faster, with ~1e-3 relative error in
    #: the logits instead of ~1e-7 (layers compute in bf16 anyway). Off: exact fp32
    tf32: bool = False
    #: which parts train: any of language_model, audio_encoder, projector, lm_head
    #: (with model.lora set, the language model trains through its adapter only)
    trainable: list[Literal["language_model", "audio_encoder", "projector", "lm_head"]] = Field(
        default_factory=lambda: ["language_model"]
    )
    #: a multiplier of ``lr`` per trainable part, e.g. ``{audio_encoder: 0.1}`` to move a
    #: pretrained encoder ten times slower than the adapters; a part not named trains at ``lr``
    #: (with model.lora, ``language_model`` is its adapter). Warmup and schedule scale every part
    #: alike; the logged ``lr`` is the unscaled one
    lr_scale: dict[Literal["language_model", "audio_encoder", "projector", "lm_head"], float] = Field(
        default_factory=dict
    )
    save_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    max_bad_steps: int = Field(10, ge=1)
    tensorboard: bool = True
    progress: bool = True


class SynthConfig(_Section):
    """``cord synth``: text question/answer data → paired speech/text data."""

    input: str = ""
    out: str = "data/train"
    #: local file columns (JSONL / CSV / Parquet)
    question_column: str = "question"
    answer_column: str = "answer"
    #: None: a column named ``id`` when the file has one, else ``<file stem>-<row index>``
    id_column: str | None = None
    split: str = "train"
    #: espeak, piper or kokoro; or a mix drawn per item: "espeak,piper", "espeak:0.7,piper:0.3"
    tts: str = "espeak"
    #: espeak-ng voices drawn by the seed (None = the backend's default set)
    voices: list[str] | None = None
    #: Piper voices: .onnx files or installed voice packages (None = every installed *-piper-voice)
    piper_voices: list[str] | None = None
    #: Piper's noise (prosody, durations), drawn per item so reruns stay byte-identical; false = none
    piper_noise: bool = True
    speed_range: tuple[int, int] = (140, 190)
    pitch_range: tuple[int, int] = (30, 70)
    kokoro_model: str | None = None
    kokoro_config: str | None = None
    kokoro_voices_dir: str | None = None
    limit: int | None = Field(None, ge=1)
    workers: int = Field(2, ge=1)
    seed: int = 0
    max_audio_seconds: float = Field(30.0, gt=0)

    @field_validator("tts")
    @classmethod
    def _check_tts(cls, v: str) -> str:
        parse_tts_spec(v)  # ValueError: unknown engine, bad weight
        return v.strip()


class EvalConfig(_Section):
    """``cord eval``: audio vs text accuracy on benchmarks."""

    benchmarks: list[str] = Field(default_factory=lambda: ["voicebench-mmsu", "voicebench-openbookqa", "gsm8k-audio"])
    modalities: list[Literal["audio", "text"]] = Field(default_factory=lambda: ["audio", "text"])
    out: str = "runs/eval"
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(512, ge=1)
    baseline: str | None = None
    #: cord: the model's instruction and cord's strict judges; official: each benchmark's own
    #: prompting and scoring (VoiceBench, MMAU; see cord.eval.benchmarks)
    protocol: Literal["cord", "official"] = "cord"


class CordConfig(_Section):
    """The whole tree; one YAML file holds any subset of these sections."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "CordConfig":
        """Every rule that spans keys, checked here so it fails before any model loads."""
        from cord.types import METHODS

        spec = METHODS[self.objective.method]
        lora, trainable = self.model.lora, self.train.trainable
        if lora is not None and not lora.target_modules:
            raise ValueError("model.lora.target_modules must name at least one module")
        if not trainable:
            raise ValueError("train.trainable is empty: name at least one of language_model, audio_encoder, "
                             "projector, lm_head")
        if lora is not None and "lm_head" in trainable:
            raise ValueError("train.trainable: lm_head cannot train with model.lora; use full fine-tuning "
                             "(model.lora: null) or drop lm_head")
        for part, scale in self.train.lr_scale.items():
            if part not in trainable:
                raise ValueError(f"train.lr_scale names {part!r}, which train.trainable ({', '.join(trainable)}) "
                                 "does not train: drop it or add the part to train.trainable")
            if not (scale > 0 and math.isfinite(scale)):
                raise ValueError(f"train.lr_scale.{part}={scale}: a multiplier of train.lr must be a positive "
                                 "number (to freeze a part, leave it out of train.trainable)")
        if self.rollout.share_rollouts and not (spec.seq and spec.token == "reverse_kl"):
            lacks = "GRPO term" if not spec.seq else "reverse-KL token term"
            users = ", ".join(n for n, s in METHODS.items() if s.seq and s.token == "reverse_kl")
            raise ValueError(f"rollout.share_rollouts: method {self.objective.method!r} has no {lacks}, so there "
                             f"is nothing to share (only {users} use it); set it to false")
        if spec.seq and self.rollout.seq_n < 2:
            raise ValueError(f"rollout.seq_n={self.rollout.seq_n}: method {self.objective.method!r} has a GRPO "
                             "term, whose group-relative advantage is 0 for a group of one; use seq_n >= 2")
        if self.judge.kind == "llm" and not (self.judge.base_url and self.judge.model):
            raise ValueError("judge kind 'llm' needs judge.base_url and judge.model (an OpenAI-compatible server)")
        return self

    @model_validator(mode="after")
    def _lora_dropout_on_policy(self) -> "CordConfig":
        """LoRA dropout with an on-policy method (the student samples its own rollouts: reverse
        KL and/or GRPO) warns: rollouts are sampled without dropout (eval mode), the trained
        forward applies it, so the policy whose log-probs are trained is not the policy that
        sampled (the GRPO ratio and the reverse-KL estimator assume it is). A warning, not an
        error: it is a deliberate regulariser some may accept; sft and forward_kl train on
        reference / teacher tokens, where dropout is ordinary regularisation."""
        from cord.types import METHODS

        lora, spec = self.model.lora, METHODS[self.objective.method]
        if lora is not None and lora.dropout > 0 and (spec.seq or spec.token == "reverse_kl"):
            import warnings

            warnings.warn(
                f"model.lora.dropout={lora.dropout:g} with the on-policy method {self.objective.method!r}: the "
                "trained forward drops what the sampler did not, so training is no longer on-policy; "
                "set model.lora.dropout: 0",
                UserWarning,
                stacklevel=2,
            )
        return self


# ---------------------------------------------------------------------------------------
# Loading, overrides and one-line errors


def _section_model(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``path`` (for nearest-key suggestions)."""
    model: type[BaseModel] = CordConfig
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def _nearest(name: str, options: list[str]) -> str | None:
    """The valid key the user most likely meant: a close spelling, else one contained in the
    name or containing it (``lr_rate`` → ``lr``), else a looser spelling match. A key that is a
    whole word of the name wins over a close spelling (``lr_rate`` → ``lr``, not ``lr_scale``)."""
    words = set(name.lower().split("_"))
    whole = [o for o in options if o in words]
    if whole:
        return max(whole, key=len)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return close[0]
    low = name.lower()
    contained = [o for o in options if len(o) >= 2 and (o in low or low in o)]
    if contained:
        return max(contained, key=len)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.4)
    return close[0] if close else None


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line: where, what was wrong, and (for unknown keys) the nearest valid key."""
    first = err.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    dotted = ".".join(loc)
    if first["type"] == "extra_forbidden":
        owner = _section_model(loc[:-1])
        options = sorted(owner.model_fields) if owner else []
        hint = _nearest(loc[-1], options)
        where = ".".join(loc[:-1]) or "top level"
        msg = f"{source}: unknown key '{dotted}'"
        msg += f" — did you mean '{'.'.join((*loc[:-1], hint))}'?" if hint else f" (valid keys in {where}: {', '.join(options)})"
        return msg
    more = f" (and {len(err.errors()) - 1} more error(s))" if len(err.errors()) > 1 else ""
    if first["type"] == "value_error":  # our own validators: the message says it all
        reason = str(first.get("ctx", {}).get("error", first["msg"]))
        return f"{source}: {dotted + ': ' if dotted else ''}{reason}{more}"
    value = first.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    return f"{source}: {dotted or 'config'}: {first['msg']} (got {shown}){more}"


def _parse_scalar(text: str) -> Any:
    """Override values are YAML scalars/lists: ``1e-5`` → float, ``[a,b]`` → list, ``null`` → None.
    An empty value (``--set model.instruction=``) is the empty string, not None: YAML reads
    nothing as null, which a user who typed nothing after ``=`` did not write."""
    if not text.strip():
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _override_item(item: Any) -> tuple[str, str]:
    """(``key=value``, what to blame in an error: ``--set key=value`` or the command's flag)."""
    if isinstance(item, tuple):
        return item[0], item[1]
    return item, f"--set {item}"


def _override_keys(overrides: list) -> list[tuple[tuple[str, ...], str]]:
    """(key path, label) of each override, in order."""
    out = []
    for item in overrides:
        text, label = _override_item(item)
        key = text.split("=", 1)[0]
        out.append((tuple(p for p in key.strip().split(".") if p), label))
    return out


def apply_overrides(data: dict[str, Any], overrides: list) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config mapping (validation happens after)."""
    for raw in overrides:
        item, label = _override_item(raw)
        if "=" not in item:
            raise CordError(f"{label}: an override must look like section.key=value (e.g. train.lr=1e-5)")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise CordError(f"{label}: the key before '=' is empty (e.g. train.lr=1e-5)")
        node = data
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise CordError(f"{label}: '{part}' is a value, not a section")
            node = nxt
        node[parts[-1]] = _parse_scalar(value)
    return data


def _blame(err: ValidationError, source: str, overrides: list) -> str:
    """Who set the key the first error is about: the last override whose key path is a prefix
    of the error's location (or lies inside it), else ``source`` (the YAML file)."""
    loc = tuple(str(p) for p in err.errors()[0]["loc"])
    if not loc:
        return source
    for key, label in reversed(_override_keys(overrides)):
        n = min(len(key), len(loc))
        if key and key[:n] == loc[:n]:
            return label
    return source


def config_from_dict(data: dict[str, Any], source: str = "config", overrides: list | None = None) -> CordConfig:
    try:
        return CordConfig.model_validate(data)
    except ValidationError as e:
        raise CordError(format_validation_error(e, _blame(e, source, list(overrides or [])))) from None


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice (YAML keeps the last one silently)."""

    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(f"key {key!r} appears twice (lines {first_line} and {line})")
        self.key, self.first_line, self.line = key, first_line, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping: plain YAML keeps the last
    one, so a second ``train:`` block would silently drop every key of the first. Keys merged
    in with ``<<:`` may be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: SafeLoader reports it
                    continue
                if first is not None:
                    raise DuplicateKeyError(key, first, key_node.start_mark.line + 1)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> Any:
    """A YAML file's data; one line for a file that is missing, a folder, unreadable, not
    YAML, or gives a key twice."""
    if path.is_dir():
        raise CordError(f"--config {path} is a folder, not a YAML file; give a file such as "
                        f"{path / 'cord.yaml'}")
    if not path.is_file():
        raise CordError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CordError(f"{path}: not a text (UTF-8) file; give a YAML config") from None
    except OSError as e:
        raise CordError(f"cannot read the config file {path}: {e.strerror or e}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKeyError as e:
        raise CordError(f"{path}: key {e.key!r} appears twice (lines {e.first_line} and {e.line}); YAML would "
                        "keep only the second and silently drop the first: merge them into one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CordError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None


def load_config(path: str | Path | None = None, overrides: list | None = None) -> CordConfig:
    """Read a YAML file (or nothing: all defaults) with its ``base:`` parts, apply overrides,
    validate. An override is ``"key=value"`` or ``("key=value", "--flag")`` (a command flag:
    errors name it)."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        data = read_preset(path)
    apply_overrides(data, list(overrides or []))
    return config_from_dict(data, source, list(overrides or []))


def read_preset(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's sections, composed: ``base: part.yaml`` (or a list of parts, paths relative
    to the file) is read first — each part may have its own ``base:`` — and merged in order,
    then the file's own keys on top. Mappings merge key by key; any other value (a list,
    ``null``) replaces the one below it. So a preset can be a family part (model, data, the
    paper's settings) plus the few keys its method changes."""
    loaded = load_yaml(path)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise CordError(f"{path}: the top level must be a mapping of sections (model:, train:, ...)")
    bases = loaded.pop("base", None)
    if bases is None:
        return loaded
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise CordError(f"{path}: base must be a file name or a list of them (relative to {path.parent}), got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        part = (path.parent / base).resolve()
        if part in _seen or part == path.resolve():
            chain = " -> ".join(str(p) for p in (*_seen, path.resolve(), part))
            raise CordError(f"{path}: base {base!r} includes itself ({chain})")
        if not part.is_file():
            raise CordError(f"{path}: base {base!r} not found (looked for {part})")
        _merge_into(merged, read_preset(part, (*_seen, path.resolve())))
    _merge_into(merged, loaded)
    return merged


def preset_files(path: Path) -> list[Path]:
    """``path`` and every part its ``base:`` chain reads, each once, in reading order: what a
    cached result built from the preset depends on (``cord reproduce`` fingerprints them)."""
    path = Path(path)
    files: list[Path] = []

    def visit(p: Path) -> None:
        if p in files:
            return
        files.append(p)
        loaded = load_yaml(p)
        bases = loaded.get("base") if isinstance(loaded, dict) else None
        for base in [bases] if isinstance(bases, str) else (bases or []):
            visit((p.parent / base).resolve())

    read_preset(path)  # one-line errors for a bad chain first
    visit(path.resolve())
    return files


def _merge_into(below: dict[str, Any], above: dict[str, Any]) -> None:
    for key, value in above.items():
        if isinstance(value, dict) and isinstance(below.get(key), dict):
            _merge_into(below[key], value)
        else:
            below[key] = value


def dump_config(cfg: CordConfig) -> str:
    """YAML text of a config (saved next to checkpoints, so a run records what it ran)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
