"""Loading a model (cord.models.registry.load_adapter), with Qwen2-Audio's tiny model as the
example: unknown family and LoRA targets in one line, a checkpoint straight onto the device in
the target dtype, the tiny model loads as a checkpoint does, bad paths and hub names in one line.
(Every family from a saved folder on the meta device: tests/models/test_family_contract.py.)"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_examples


def _completions(b: int, t: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    for i in range(b):  # ragged, right-padded completions
        mask[i, t - i :] = False if i else True
    return ids, mask


def test_unknown_family_names_the_nearest():
    from cord import CordError
    from cord.config import ModelConfig
    from cord.models import load_adapter

    with pytest.raises(CordError, match="did you mean 'qwen2-audio'"):
        load_adapter(ModelConfig(family="qwen2_audio", name_or_path="tiny"))


def test_lora_with_unknown_targets_is_one_clear_error():
    from cord import CordError
    from cord.config import LoraConfig, ModelConfig
    from cord.models import load_adapter

    with pytest.raises(CordError, match="match no module"):
        load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", lora=LoraConfig(target_modules=["qkv"])))


# ------------------------------------------------------------------ loading (issue 11 item 10)


def test_checkpoint_loads_straight_onto_the_device_in_the_target_dtype(tmp_path, monkeypatch):
    """from_pretrained gets device_map={"": device} and dtype; no full host copy is moved
    afterwards (no .to on the loaded model)."""
    import transformers

    from cord.config import ModelConfig
    from cord.models import load_adapter

    load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="float32", device="cpu")).save_pretrained(
        str(tmp_path)
    )
    cls = transformers.Qwen2AudioForConditionalGeneration
    real = cls.from_pretrained
    calls, moves = [], []

    def spy(klass, *args, **kwargs):
        calls.append(kwargs)
        model = real(*args, **kwargs)
        plain_to = model.to
        model.to = lambda *a, **k: moves.append((a, k)) or plain_to(*a, **k)
        return model

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    adapter = load_adapter(ModelConfig(family="qwen2-audio", name_or_path=str(tmp_path), dtype="bfloat16", device="cpu"))
    assert len(calls) == 1
    assert calls[0]["device_map"] == {"": torch.device("cpu")} and calls[0]["dtype"] == torch.bfloat16
    assert moves == []
    assert {p.dtype for p in adapter.model.parameters()} == {torch.bfloat16}


def test_tiny_model_in_bf16_is_the_model_a_bf16_checkpoint_loads(tmp_path):
    """The tiny path loads like a checkpoint: weights in bf16, the buffers transformers keeps
    in fp32 (rotary inv_freq) stay fp32, so a saved-and-reloaded tiny model computes the same."""
    from cord.config import ModelConfig
    from cord.models import load_adapter

    tiny = load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="bfloat16", device="cpu"))
    assert {p.dtype for p in tiny.model.parameters()} == {torch.bfloat16}
    inv_freq = [b for n, b in tiny.model.named_buffers() if n.endswith("inv_freq")]
    assert inv_freq and all(b.dtype == torch.float32 for b in inv_freq)
    tiny.save_pretrained(str(tmp_path))
    again = load_adapter(ModelConfig(family="qwen2-audio", name_or_path=str(tmp_path), dtype="bfloat16", device="cpu"))
    ex = make_examples(2)
    ids, mask = _completions(2, 4, 250)
    with torch.no_grad():
        a = tiny.completion_hidden(tiny.audio_prompts(ex), ids, mask)
        b = again.completion_hidden(again.audio_prompts(ex), ids, mask)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


# ----------------------------------------------------- bad model paths (issue 12 item 5)


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "~/no-such-model-dir", "runs/x/model"])
def test_missing_local_model_path_is_one_clear_line(name):
    from cord import CordError
    from cord.config import ModelConfig
    from cord.models import load_adapter

    with pytest.raises(CordError) as err:
        load_adapter(ModelConfig(family="qwen2-audio", name_or_path=name, device="cpu"))
    msg = str(err.value)
    assert msg.startswith(f"model path {name} does not exist") and "hub name" in msg and "\n" not in msg
    assert "Repo id" not in msg


def test_folder_without_a_model_and_an_invalid_hub_name_are_one_line(tmp_path):
    from cord import CordError
    from cord.config import ModelConfig
    from cord.models import load_adapter

    with pytest.raises(CordError, match="has no config.json: not a saved model"):
        load_adapter(ModelConfig(family="qwen2-audio", name_or_path=str(tmp_path), device="cpu"))
    for name in ("not a name!", "org/no-such-model-cord-test"):  # offline in tests (conftest)
        with pytest.raises(CordError, match=r"cannot load model .* \(and no local folder has that name\)") as err:
            load_adapter(ModelConfig(family="qwen2-audio", name_or_path=name, device="cpu"))
        assert "\n" not in str(err.value)
