"""Family ``step-audio2``: Step-Audio 2 mini (``stepfun-ai/Step-Audio-2-mini``, Apache-2.0) as a
native cord model — transformers' own blocks, no ``trust_remote_code``.

The released checkpoint ships its model as remote code (``modeling_step_audio_2.py``, written for
transformers 4.49) whose forward returns logits only, without hidden states or a KV cache. Here
the same network is composed of transformers' building blocks, and only the small parts are
written in cord:

==========================  ==============================================================
part                        built from
==========================  ==============================================================
mel front end               ``WhisperFeatureExtractor(feature_size=128)`` (n_fft 400, hop 160)
                            on each 25 s chunk, cut to the reference's frame count
audio encoder               :class:`StepAudio2Encoder`: ``nn.Conv1d`` ×2 (k 3; stride 1, 2),
                            learned positions, 32 × transformers' ``Qwen2AudioEncoderLayer``
                            (= Whisper's pre-norm block), ``AvgPool1d(2)``, ``LayerNorm``
adapter (projector)         :class:`StepAudio2Projector`: Conv1d(k 3, s 2, p 1) → GELU →
                            Linear 1280→2048 → ReLU → Linear 2048→3584
language model              transformers' ``Qwen2ForCausalLM`` (28 layers, width 3584,
                            vocabulary 158,720) with its KV cache
==========================  ==============================================================

Reading of the reference (read, not copied): ``modeling_step_audio_2.py`` of the checkpoint
(classes ``AudioEncoder``, ``Adaptor``, ``StepAudio2ForCausalLM``, functions
``log_mel_spectrogram``, ``compute_token_num``), ``configuration_step_audio_2.py``, and
``stepaudio2.py`` of github.com/stepfun-ai/Step-Audio2 (chat format, 25 s chunking, token ids
151688/151689/151690, text ids < 151688, audio-output ids >= 151696).

**Exactness.** The reference encodes all chunks of one conversation as one padded batch, and
three of its details depend on that padded length ``T`` (the longest chunk's mel frames of the
example): which encoder positions are attended (its key mask is sampled at offset
``(T + 1) % 2``), where the adapter conv's zero padding starts (after ``conv2_len(T) // 2``
pooled rows) and the conv2 input's zero padding (after ``T`` frames). cord computes each chunk
with that example's ``T`` whatever else is in the batch, so results equal the reference's and do
not depend on batch composition (the tests check batched = one by one).

Not verified here (no weights on this machine): the released tokenizer loading with plain
``AutoTokenizer`` (a Qwen2 BPE with added tokens is expected), ``<|BOT|>``/``<|EOT|>`` ids, and
that the checkpoint's tensor names are exactly :data:`CHECKPOINT_RULES`' (taken from the
reference modules' attribute names and the vLLM port's loader). ``cord check-model --family
step-audio2`` compares against the reference for users who have the weights.

Checkpoint names → cord modules (:data:`CHECKPOINT_RULES`, applied by :func:`native_name`)::

    model.<rest>                              language_model.model.<rest>
    lm_head.weight                            language_model.lm_head.weight
    encoder.conv1|conv2.<p>                   audio_tower.conv1|conv2.<p>
    encoder.positional_embedding.weight       audio_tower.embed_positions.weight
    encoder.blocks.<i>.attn.query|key|value|out.<p>
                                              audio_tower.layers.<i>.self_attn.q_proj|k_proj|v_proj|out_proj.<p>
    encoder.blocks.<i>.attn_ln.<p>            audio_tower.layers.<i>.self_attn_layer_norm.<p>
    encoder.blocks.<i>.mlp.0|mlp.2.<p>        audio_tower.layers.<i>.fc1|fc2.<p>
    encoder.blocks.<i>.mlp_ln.<p>             audio_tower.layers.<i>.final_layer_norm.<p>
    encoder.after_norm.<p>                    audio_tower.layer_norm.<p>
    adapter.conv|linear1|linear2.<p>          projector.conv|linear1|linear2.<p>
"""

from cord.models.step_audio2.adapter import (  # importing it registers the family
    StepAudio2Adapter,
    build_tiny_step_audio2,
    build_tiny_tokenizer,
    load,
    load_model,
)
from cord.models.step_audio2.modeling import (
    AUDIO_END,
    AUDIO_PATCH,
    AUDIO_START,
    BOT,
    CHUNK_SAMPLES,
    CHUNK_SECONDS,
    EOT,
    FAMILY,
    StepAudio2Config,
    StepAudio2Encoder,
    StepAudio2ForCausalLM,
    StepAudio2Projector,
    audio_token_count,
    conv2_len,
)
from cord.models.step_audio2.release import (
    CHECKPOINT_RULES,
    checkpoint_name,
    config_from_release,
    load_release_state_dict,
    native_name,
    release_config_dict,
    save_release,
)

__all__ = [
    "AUDIO_END", "AUDIO_PATCH", "AUDIO_START", "BOT", "CHECKPOINT_RULES", "CHUNK_SAMPLES", "CHUNK_SECONDS", "EOT",
    "FAMILY", "StepAudio2Adapter", "StepAudio2Config", "StepAudio2Encoder", "StepAudio2ForCausalLM",
    "StepAudio2Projector", "audio_token_count", "build_tiny_step_audio2", "build_tiny_tokenizer", "checkpoint_name",
    "config_from_release", "conv2_len", "load", "load_model", "load_release_state_dict", "native_name",
    "release_config_dict", "save_release",
]
