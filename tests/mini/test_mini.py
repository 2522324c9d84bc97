"""The CPU miniature: task splits, what only the mini model family has (its word tokenizer,
its audio token rate, its saved folders and LoRA exports), and the datasets' held-out voice.
(The adapter contract runs on it in tests/models/test_family_contract.py; Stage A/B learning:
tests/mini/test_stages.py.)"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from cord.config import ModelConfig
from cord.data.paired import load_paired
from cord.mini.task import (
    FORMATS,
    TEMPLATES,
    Problem,
    TaskSpec,
    all_problems,
    error_kind,
    make_task,
    parse_answer,
    parse_steps,
    solution_format,
    split_problems,
    transcript,
    vocabulary,
)
from cord.models import families, load_adapter
from tests.models.family_contract import mini_completions as completions
from tests.models.family_contract import mini_examples as examples


def mini_cfg(path: str = "tiny", seed: int = 0) -> ModelConfig:
    return ModelConfig(family="mini", name_or_path=path, dtype="float32", device="cpu", tiny_seed=seed)


@pytest.fixture(scope="module")
def adapter():
    return load_adapter(mini_cfg())


# ------------------------------------------------------------------------------- task


def test_task_split_is_by_problem_and_deterministic():
    a = make_task(3, n_train=3000, n_dev=150, n_test=400)
    b = make_task(3, n_train=3000, n_dev=150, n_test=400)
    assert a == b
    keys = {s: {r["problem"] for r in rows} for s, rows in a.items()}
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["dev"]
    assert not keys["dev"] & keys["test"]
    assert len(keys["test"]) == 400 and len(keys["dev"]) == 150  # one row per held-out problem
    # held-out sets cover every template (each gives at most half of its problems)
    assert {k.split(":")[0] for k in keys["test"]} == set(TEMPLATES)
    assert make_task(4, n_train=50, n_dev=10, n_test=10)["test"] != a["test"][:10]


def test_solutions_are_correct_worked_arithmetic():
    for p in all_problems():
        sol = p.solution()
        # recompute every line from the text itself
        for line in sol.split(". ")[:-1]:
            left, right = line.split(" = ")
            x, op, y = left.split()
            assert int(right.rstrip(".")) == (int(x) + int(y) if op == "+" else int(x) - int(y)) >= 1
        assert parse_answer(sol) == str(p.answer)
        assert sol.count("=") == len(p.numbers) - 1
        # every format states the same steps and answer, and is read back as itself
        for fmt in FORMATS:
            text = p.solution(fmt)
            assert solution_format(text) == fmt
            assert parse_steps(text) == p.steps() and parse_answer(text) == str(p.answer)
            assert error_kind(text, p) is None
    assert parse_answer("no final answer") is None
    assert parse_answer("The answer is 3. The answer is 12.") == "12"
    p = Problem("add_sub", (17, 8, 5))
    assert p.solution("words") == "17 plus 8 is 25. 25 minus 5 is 20. The answer is 20."
    assert p.solution("ext") == "Start with 17, add 8 to get 25, take away 5 to get 20. The answer is 20."


def test_error_kind_names_where_an_answer_first_goes_wrong():
    p = Problem("add_sub", (17, 8, 5))
    cases = {
        "17 + 9 = 26. 26 - 5 = 21. The answer is 21.": "operand",      # 8 misheard as 9
        "17 plus 8 is 25. 25 minus 6 is 19. The answer is 19.": "operand",
        "17 - 8 = 9. 9 - 5 = 4. The answer is 4.": "operation",
        "17 + 8 = 24. 24 - 5 = 19. The answer is 19.": "arithmetic",
        "17 + 8 = 25. 26 - 5 = 21. The answer is 21.": "carry",
        "17 + 8 = 25. 25 - 5 = 20. The answer is 21.": "answer_line",
        "17 + 8 = 25. 25 - 5 = 20.": "no_answer",
        "The answer is 7.": "other",
        "Start with 17, add 8 to get 25, take away 5 to get 20. The answer is 20.": None,
    }
    for text, kind in cases.items():
        assert error_kind(text, p) == kind, text


def test_large_held_out_sets_leave_every_template_half_its_problems_for_training():
    # the demo's 1200 test + 300 dev problems: the small one-step templates must not be emptied
    pools = split_problems(0, n_test=1200, n_dev=300)
    assert len(pools["test"]) == 1200 and len(pools["dev"]) == 300
    total = {t: sum(p.template == t for p in all_problems()) for t in TEMPLATES}
    for t in TEMPLATES:
        kept = sum(p.template == t for p in pools["train"])
        assert kept >= total[t] / 2, (t, kept, total[t])
        assert any(p.template == t for p in pools["test"])


def test_split_refuses_more_held_out_than_exists():
    with pytest.raises(ValueError):
        split_problems(0, n_test=5000, n_dev=0, spec=TaskSpec(first=(2, 4), other=(2, 3)))


def test_word_tokenizer_round_trips_every_question_and_solution(adapter):
    tok = adapter.tokenizer
    rows = [r for rows in make_task(0, n_train=300, n_dev=20, n_test=50).values() for r in rows]
    for r in rows:
        p = Problem(r["problem"].split(":")[0], tuple(int(n) for n in r["problem"].split(":")[1].split("-")))
        for text in (r["question"], transcript(r["question"]), *(p.solution(f) for f in FORMATS)):
            ids = adapter.encode(text)
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
    # numbers are single tokens
    assert len(adapter.encode("37")) == 1 and str(TaskSpec().max_number) in vocabulary()


# ------------------------------------------------------------------------ the adapter


def test_mini_is_a_registered_family(adapter):
    assert "mini" in families()
    assert adapter.family == "mini"
    names = {n for n, _ in adapter.model.named_children()}
    assert {"audio_encoder", "projector", "language_model"} <= names
    assert adapter.lm_head() is adapter.model.language_model.lm_head


def test_audio_token_rate_and_layout():
    """Frame-rate audio tokens (audio_tokens soft / projected / both): 6.25 per second, no 30 s
    padding, <sep> last (the contract checks the count against the encoder itself; the default
    ``words`` tokens: one per word heard, test_words_audio_tokens_...)."""
    from cord.mini.adapter import MiniAdapter
    from cord.mini.model import MiniConfig, build_mini

    adapter = MiniAdapter(*build_mini(MiniConfig(audio_tokens="soft"), seed=0))
    exs = examples()
    prompts = adapter.audio_prompts(exs)
    audio_id = adapter.tokenizer.convert_tokens_to_ids("<audio>")
    counts = (prompts.input_ids == audio_id).sum(-1)
    model = adapter.model
    with torch.no_grad():
        _, valid = model.audio_encoder(prompts.extra["input_features"], prompts.extra["feature_attention_mask"])
    # 100 mel frames per second, three stride-2 convolutions (12.5 encoder frames per second),
    # then pairs of frames stacked: 6.25 decoder audio tokens per second
    frames = [len(ex.audio) // 160 for ex in exs]
    encoder = [((((f - 1) // 2 + 1) - 1) // 2 + 1 - 1) // 2 + 1 for f in frames]
    assert valid.sum(-1).tolist() == encoder
    assert counts.tolist() == [(n + 1) // 2 for n in encoder]
    assert all(abs(c - len(ex.audio) / 16000 * 6.25) <= 1 for c, ex in zip(counts.tolist(), exs))
    # no 30 s padding: features are as long as the longest clip in the batch
    assert prompts.extra["input_features"].shape[-1] == max(frames)
    # each prompt: placeholders, then <sep>
    sep = adapter.tokenizer.convert_tokens_to_ids("<sep>")
    assert (prompts.input_ids[:, -1] == sep).all()
    with pytest.raises(Exception, match="placeholders"):
        model.embed(prompts.input_ids[:, 1:], prompts.extra)


def test_ctc_segments_are_the_words_of_the_greedy_path():
    from cord.mini.model import ctc_segments

    path = torch.tensor([[0, 7, 7, 0, 7, 9, 9, 0, 5, 5], [3, 3, 0, 0, 4, 0, 0, 0, 0, 8]])
    valid = torch.tensor([[1] * 10, [1] * 6 + [0] * 4], dtype=torch.bool)
    # a blank splits two equal ids; a change of id starts a word; padding is blank
    assert ctc_segments(path, valid, 0) == [[(1, 3), (4, 5), (5, 7), (8, 10)], [(0, 2), (4, 5)]]
    assert ctc_segments(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool), 0) == [[]]


def test_words_audio_tokens_are_one_soft_embedding_per_word_heard(monkeypatch):
    """audio_tokens="words": one decoder audio token per word on the CTC readout's greedy path,
    whose value is the heard word's own embedding (through the projector, the identity at init)
    and whose gradient is the soft posterior mix's; the placeholders follow the count, and
    batching changes no token."""
    from cord.mini.adapter import MiniAdapter
    from cord.mini.model import MiniConfig, build_mini

    model, tok = build_mini(MiniConfig(audio_tokens="words"), seed=0)
    ad = MiniAdapter(model, tok)
    words = ["3", "plus", "4"]
    ids = tok.convert_tokens_to_ids(words)

    def ctc_logits(hidden):  # frames 1-2 hear "3", 4 "plus", 5-6 "4" (row 0); row 1 hears only "plus"
        b, n, _ = hidden.shape
        logits = torch.full((b, n, model.config.vocab_size), -30.0)
        logits[..., 0] = 30.0
        plan = {0: {1: ids[0], 2: ids[0], 4: ids[1], 5: ids[2], 6: ids[2]}, 1: {2: ids[1]}}
        for row, frames in plan.items():
            for t, i in frames.items():
                if row < b and t < n:
                    logits[row, t, 0], logits[row, t, i] = -30.0, 30.0
        if b > 1 and n > 2:  # row 1's word is heard with doubt: "plus" 3.0, "4" 2.5 (rest -30)
            logits[1, 2, ids[1]], logits[1, 2, ids[2]] = 3.0, 2.5
        return logits

    monkeypatch.setattr(model.audio_encoder, "ctc_logits", ctc_logits)
    exs = examples()[:2]
    prompts = ad.audio_prompts(exs)
    audio_id = tok.convert_tokens_to_ids("<audio>")
    assert (prompts.input_ids == audio_id).sum(-1).tolist() == [3, 1]
    with torch.no_grad():
        embeds = model.embed(prompts.input_ids, prompts.extra)
    table = model.get_input_embeddings().weight
    row0 = embeds[0][prompts.input_ids[0] == audio_id]
    assert torch.allclose(row0, table[ids], atol=1e-5)  # the words' own embeddings, in order
    row1 = embeds[1][prompts.input_ids[1] == audio_id]
    assert torch.allclose(row1, table[ids[1]][None], atol=1e-5)  # the most likely word, not a mix
    # with the model's own (random) readout: the count is what the encoder hears, a clip's tokens
    # do not depend on its batch, and the soft mix is differentiable in the posteriors
    monkeypatch.undo()
    both = ad.audio_prompts(exs)
    alone = ad.audio_prompts(exs[:1])
    with torch.no_grad():
        e_both, e_alone = model.embed(both.input_ids, both.extra), model.embed(alone.input_ids, alone.extra)
    n0 = int((alone.input_ids[0] == audio_id).sum())
    assert n0 == int((both.input_ids[0] == audio_id).sum()) >= 1
    assert torch.allclose(e_both[0][both.input_ids[0] == audio_id], e_alone[0][alone.input_ids[0] == audio_id], atol=1e-5)
    model.zero_grad()
    tokens, valid, _ = model.encode_audio(both.extra["input_features"], both.extra["feature_attention_mask"])
    assert valid.sum(-1).tolist() == (both.input_ids == audio_id).sum(-1).tolist()
    tokens[valid].sum().backward()
    assert model.audio_encoder.ctc_head.weight.grad.abs().sum() > 0
    assert model.audio_encoder.convs[0].weight.grad.abs().sum() > 0


def test_a_saved_mini_keeps_its_word_vocabulary(adapter, tmp_path):
    """(The contract checks that it reloads to the same model.)"""
    adapter.save_pretrained(tmp_path / "ckpt")
    loaded = load_adapter(mini_cfg(str(tmp_path / "ckpt"), seed=123))
    assert loaded.tokenizer.get_vocab() == adapter.tokenizer.get_vocab()


def test_lora_trained_mini_exports_and_reloads_to_the_same_outputs(tmp_path):
    # Stage C trains the decoder through LoRA: cord train's export (base + unmerged adapter)
    # must reload through load_adapter (as cord eval loads it) to the trained outputs
    from cord.config import LoraConfig
    from cord.models.export import export_model, is_lora_export

    lora = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    adapter = load_adapter(ModelConfig(family="mini", name_or_path="tiny", dtype="float32", device="cpu", lora=lora))
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "lora_" in name or name.startswith("base_model.model.audio_encoder"):
                p.add_(0.05 * torch.randn_like(p))  # a trained adapter and a trained encoder
    export_model(adapter, tmp_path / "model")
    assert is_lora_export(tmp_path / "model")
    loaded = load_adapter(mini_cfg(str(tmp_path / "model")))
    exs = examples()
    ids, mask = completions(adapter, len(exs))
    with torch.no_grad():
        for build in ("text_prompts", "audio_prompts"):
            a, b = getattr(adapter, build)(exs), getattr(loaded, build)(exs)
            assert torch.equal(adapter.completion_hidden(a, ids, mask), loaded.completion_hidden(b, ids, mask))
        # and the adapter matters: the base alone gives other outputs
        plain = load_adapter(mini_cfg())
        p = adapter.text_prompts(exs)
        assert not torch.allclose(adapter.completion_hidden(p, ids, mask), plain.completion_hidden(p, ids, mask))


def test_loading_a_missing_directory_is_one_clear_error(tmp_path):
    from cord import CordError

    with pytest.raises(CordError, match="no mini model"):
        load_adapter(mini_cfg(str(tmp_path / "nope")))


# ----------------------------------------------------------------------- spoken data


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_spoken_datasets_test_fresh_problems_in_training_voices_and_hold_out_one_voice(tmp_path):
    from cord.mini.data import (
        HELD_OUT_VOICE,
        TRAIN_VOICES,
        DataSettings,
        build_datasets,
    )

    settings = DataSettings(seed=1, n_train=24, n_dev=8, n_test=12, n_unseen=6)
    dirs = build_datasets(tmp_path / "data", settings)
    assert set(dirs) == {"train", "dev", "test", "test_unseen"}
    manifests = {s: load_paired(d) for s, d in dirs.items()}
    train_voices = {ex.meta["voice_name"] for ex in manifests["train"]}
    assert len(train_voices) > 5
    accent, variant = HELD_OUT_VOICE.split("+")
    assert all(v.split("+")[0] != accent and v.split("+")[1] != variant for v in train_voices)
    # dev and test: fresh problems read by the training voices (the primary test)
    for split in ("dev", "test"):
        assert {ex.meta["voice_name"] for ex in manifests[split]} <= set(TRAIN_VOICES)
        assert len({ex.meta["voice_name"] for ex in manifests[split]}) > 3
    # test_unseen: the first test rows, same wording, read by the held-out voice
    assert {ex.meta["voice_name"] for ex in manifests["test_unseen"]} == {HELD_OUT_VOICE}
    assert [(ex.id, ex.question_text) for ex in manifests["test_unseen"]] == [
        (ex.id, ex.question_text) for ex in manifests["test"][:6]]
    train_problems = {ex.meta["problem"] for ex in manifests["train"]}
    for split in ("dev", "test"):
        assert not train_problems & {ex.meta["problem"] for ex in manifests[split]}
    for ex in manifests["test"]:
        assert ex.audio.dtype == np.float32 and 1.0 < len(ex.audio) / 16000 < 6.0
        assert ex.solution and ex.answer == parse_answer(ex.solution)
        assert {"duration", "tts", "voice"} <= set(ex.meta)
    # complete directories are reused as they are; a settings change rebuilds
    stamp = (dirs["test"] / "manifest.jsonl").stat().st_mtime_ns
    assert build_datasets(tmp_path / "data", settings)["test"] == dirs["test"]
    assert (dirs["test"] / "manifest.jsonl").stat().st_mtime_ns == stamp
    rebuilt = build_datasets(tmp_path / "data", DataSettings(seed=1, n_train=24, n_dev=8, n_test=10, n_unseen=6))
    assert len(load_paired(rebuilt["test"])) == 10


def test_stage_a_text_examples_mix_the_two_tasks_and_the_two_formats():
    from collections import Counter

    from cord.mini.data import DataSettings, text_examples
    from cord.mini.task import STAGE_A_FORMATS

    exs = text_examples(4000, DataSettings(seed=0), repeat_share=0.3)
    tasks = Counter(ex.meta["task"] for ex in exs)
    assert abs(tasks["repeat"] / len(exs) - 0.3) < 0.03
    for ex in exs:
        if ex.meta["task"] == "repeat":
            assert ex.solution == transcript(ex.question_text)
        else:
            assert solution_format(ex.solution) == ex.meta["format"] and parse_answer(ex.solution) == ex.answer
    formats = Counter(ex.meta["format"] for ex in exs if ex.meta["task"] == "solve")
    solve = sum(formats.values())
    assert set(formats) == set(STAGE_A_FORMATS)  # the external format is never taught
    for fmt, share in STAGE_A_FORMATS.items():
        assert abs(formats[fmt] / solve - share) < 0.03


def test_stage_a_solves_a_share_of_questions_in_their_spoken_form():
    """a_transcript_share: that share of the solve examples asks the question as a recogniser
    hears it (words, no punctuation); the rest, and every repeat example, as text. At 0 the
    examples are exactly those drawn before the option existed."""
    from collections import Counter

    from cord.mini.data import DataSettings, text_examples

    plain = text_examples(2000, DataSettings(seed=0), repeat_share=0.3)
    mixed = text_examples(2000, DataSettings(seed=0), repeat_share=0.3, transcript_share=0.5)
    assert all("form" not in ex.meta for ex in plain)
    forms = Counter(ex.meta.get("form") for ex in mixed if ex.meta["task"] == "solve")
    assert abs(forms["transcript"] / (forms["transcript"] + forms["text"]) - 0.5) < 0.04
    for ex in mixed:
        if ex.meta.get("form") == "transcript":
            assert ex.question_text == transcript(ex.question_text) and not any(c in ex.question_text for c in ",.?")
            assert parse_answer(ex.solution) == ex.answer
        else:
            assert ex.question_text.endswith("?")
