"""The benchmarks' own scoring rules: VoiceBench's MCQ letter extraction (judge kind
``voicebench``) and MMAU's ``string_match`` (judge kind ``mmau-official``).

Every expected value below was worked out by hand from the official files
(MatthewCYM/VoiceBench ``src/evaluator/mcq.py``; Sakshi113/MMAU ``evaluation.py``), quirks
included: these tables pin the official behaviour, not what a careful reader would want.
"""

import random

import pytest

from cord import CordError
from cord.judges import judge, judge_batch, official_accuracy, string_match, voicebench_extract
from cord.judges.voicebench import ANSWER_TEMPLATES

# (response, the letter VoiceBench's evaluator reads, or None = its random fallback)
VOICEBENCH_CASES = [
    # bare letters: the whole (unstripped, lower-cased) response, or letter + . , : )
    ("B", "B"),
    ("b", "B"),
    ("C.", "C"),
    ("D)", "D"),
    ("A, because it is correct", "A"),
    ("a: the mitochondria", "A"),
    ("B) because it boils", "B"),
    ("c, definitely", "C"),
    (" B", None),  # not stripped: neither equal to "b" nor starting with it
    ("B\n", None),
    ("**B**", None),  # no template has bold around a bare letter
    ("E", None),  # only A-D exist for this scorer
    ("", None),
    # a leading turn mark is dropped, then the rest stripped
    ("<1> B", "B"),
    ("<2>the answer is d", "D"),
    ("<3>   C.", "C"),
    # English answer templates
    ("The answer is B.", "B"),
    ("The Answer Is B.", "B"),
    ("Let me think... The answer is c", "C"),
    ("The answer is (C).", "C"),
    ("The answer is (a) because", "A"),
    ("The correct answer is D", "D"),
    ("I would choose B because it fits.", "B"),
    ("I would select option D", "D"),
    ("The best choice would be option C: a gas.", "C"),
    ("I'd say C.", "C"),
    ("Option D.", "D"),
    ("The correct option is B, since it floats.", "B"),
    ("It is C.", "C"),
    ("So the right option is d.", "D"),
    ("Hmm, it is a. wait", "A"),
    ("ANSWER IS B.", "B"),
    ("The answer is: B", "B"),
    ('The answer is "D".', "D"),
    ("The answer is 'C'", "C"),
    ("Option B is the best answer", "B"),
    ("The answer (B) would be my pick", "B"),
    ("Option (B) is correct", "B"),
    ("(A)", "A"),
    ("Answer:\nA.", "A"),
    ("Answer: C.", "C"),
    ("Answer: B, because it is heavier.", "B"),
    ("Final answer: C)", "C"),
    ("I'm fairly sure it's B.", "B"),
    ("I think the answer is A because the sun is a star.", "A"),
    ("Answer: C", None),  # a letter at the very end with no mark after it matches nothing
    ("Final answer: **C**", None),
    # markdown bold and LaTeX
    ("The answer is **D**.", "D"),
    ("The answer is: \n\n**B**", "B"),
    ("The answer to the multiple-choice question is **A** (oxygen).", "A"),
    ("The answer is \\( \\boxed{B} \\)", "B"),
    ("The answer is $\\boxed{C}$", None),
    # Chinese templates
    ("答案是B", "B"),
    ("答案是 C", "C"),
    ("答案应该是D", "D"),
    ("答案就是选项B", "B"),
    ("答案是‘D’", "D"),
    ("我认为答案选A", "A"),
    ("选项C是最合适的", "C"),
    ("B是正确的", "B"),
    ("是C：因为水会蒸发", "C"),
    # quirks of first-template-wins and a-before-d
    ("The answer is C. I would choose B.", "C"),  # template order, not text order
    ("I would choose B. The answer is C.", "C"),
    ("The answer is B, not A", "B"),
    ("Option B. Or option A.", "A"),  # one template, letters tried a, b, c, d
    ('Between "A" and "B" I pick "B".', "A"),
    ("It might be A, B or C.", "C"),  # " c." is tried before " a,"
    ("The answer is a cat.", "A"),  # the article read as option A
    ("The capital is Washington D.C.", "D"),
    ('would be "a.', "A"),
    # no answer: the official scorer would draw a random letter
    ("I don't know.", None),
    ("Vitamin C is essential.", None),
    ("A cat is an animal.", None),
    ("Between the options, A seems right", None),
    ("The answer is E.", None),
]


@pytest.mark.parametrize("response,expected", VOICEBENCH_CASES)
def test_voicebench_extraction_follows_the_official_rules(response, expected):
    assert voicebench_extract(response) == expected


def test_voicebench_table_checks_distinct_responses():
    responses = [r for r, _ in VOICEBENCH_CASES]
    assert len(set(responses)) == len(responses)
    # the table reaches every rule: templates, bare letters, turn marks and no match
    assert {e for _, e in VOICEBENCH_CASES} == {"A", "B", "C", "D", None}


def test_voicebench_templates_are_tried_in_order():
    # the first template of the official list is a Chinese one, the last a quoted letter
    assert ANSWER_TEMPLATES[0] == ("答案是", "") and ANSWER_TEMPLATES[-1] == ('"', '"')
    # every template, filled with each letter, is read back as that letter on its own
    for before, after in ANSWER_TEMPLATES:
        for letter in "abcd":
            got = voicebench_extract(f"{before}{letter}{after}")
            assert got is not None, (before, after, letter)


def test_voicebench_judge_strict_no_random_fallback():
    results = judge_batch(["The answer is B.", "I don't know.", "Answer: C", "The answer is a cat."],
                          ["B", "A", "C", "A"], "voicebench")
    assert [r.score for r in results] == [1, 0, 0, 1]
    assert [r.candidate_answer for r in results] == ["B", None, None, "A"]
    assert all(r.kind == "voicebench" for r in results)
    assert results[1].failed_extraction and "candidate" in results[1].note
    # deterministic where the official scorer draws
    assert {judge("no idea", "A", "voicebench").score for _ in range(20)} == {0}
    # the reference may be a response; choices are accepted and ignored (A-D only)
    assert judge("(C)", "I'd say C.", "voicebench", choices=["x", "y", "z", "w"]).score == 1
    assert judge("The answer is B.", " b ", "voicebench").score == 1


def test_official_accuracy_is_the_expectation_of_the_random_fallback():
    assert official_accuracy(2, 4, 10) == pytest.approx(0.3)
    assert official_accuracy(0, 0, 0) is None
    # independent check: simulate the official evaluator's draws and average
    refs = ["A", "B", "C", "D", "B", "C", "A", "D", "A", "B"]
    preds = ["A", "B", None, None, "C", None, "A", None, "D", None]
    correct = sum(p == r for p, r in zip(preds, refs))
    failed = preds.count(None)
    rng = random.Random(0)
    trials = 20_000
    total = 0.0
    for _ in range(trials):
        drawn = [p if p is not None else rng.choice("ABCD") for p in preds]
        total += sum(d == r for d, r in zip(drawn, refs)) / len(refs)
    # sd of one trial <= sqrt(5 * 3/16) / 10 ~ 0.097; of the mean ~ 0.0007
    assert total / trials == pytest.approx(official_accuracy(correct, failed, len(refs)), abs=0.004)


# --- MMAU string_match ------------------------------------------------------------------------

SPK = ["Man", "Woman", "Child", "Robot"]
SRC = ["A child", "A woman", "An adult man", "A teenager"]
GRP = ["Woman and child", "Two men", "Two women", "A man and a child"]
DUP = ["Dog barking", "barking dog", "Cat"]
MUS = ["Rock-and-roll", "Jazz", "Classical music"]
CNT = ["2", "3", "4", "5"]

# (answer, prediction, choices, official verdict)
STRING_MATCH_CASES = [
    ("Man", "Man", SPK, True),
    ("Man", "The speaker is a man.", SPK, True),
    ("Man", "woman", SPK, False),  # word tokens: "woman" is not "man"
    ("Woman", "It is a woman, not a man.", SPK, False),  # a wrong option's word
    ("Man", "", SPK, False),
    ("Man", "   ...  ", SPK, False),  # no word token at all
    ("Man", None, SPK, False),
    ("Man", "MAN!", SPK, True),  # case and punctuation
    ("Man", "(A) Man", SPK, True),
    ("Woman", "(B) Woman", SPK, True),
    ("Man", "A", SPK, False),  # a letter alone names nothing
    ("Man", "Robotic man", SPK, True),  # "robotic" is not "robot"
    ("Man", "man-made robot", SPK, False),
    ("Man", "_", SPK, False),  # "_" is a word character
    # words shared between choices
    ("A woman", "a woman", SRC, True),
    ("A woman", "The voice belongs to a woman", SRC, True),
    ("A woman", "woman", SRC, False),  # every answer word is needed, "a" included
    ("An adult man", "It is an adult man speaking", SRC, True),
    ("An adult man", "It is a man", SRC, False),
    ("An adult man", "an adult man, not a child", SRC, False),
    ("A man and a child", "a man and a child", GRP, True),
    ("Woman and child", "a woman and a child", GRP, False),  # "a" belongs to a wrong choice only
    ("Two men", "two men", GRP, True),
    ("Two men", "two women", GRP, False),
    # a choice with the answer's very words is ignored
    ("Dog barking", "a barking dog", DUP, True),
    ("Dog barking", "a cat and a dog barking", DUP, False),
    ("Happy", "happy", ["Happy", "Sad", "Happy"], True),
    # punctuation inside options
    ("Rock-and-roll", "It's rock and roll.", MUS, True),
    ("Classical music", "Classical.", MUS, False),
    ("Classical music", "classical music (not jazz)", MUS, False),
    # numbers
    ("3", "There are 3 speakers.", CNT, True),
    ("3", "There are three speakers.", CNT, False),
    ("3", "3 or 4", CNT, False),
    ("3", "2023 recording with 3 people", CNT, True),
    # Unicode words
    ("Café", "café", ["Café", "Bar"], True),
    ("Bar", "Café bar", ["Café", "Bar"], False),
    # yes / no
    ("Yes", "Yes, it is.", ["Yes", "No"], True),
    ("No", "No, it isn't yes", ["Yes", "No"], False),
    ("Yes", "I cannot say yes or no", ["Yes", "No"], False),
]


@pytest.mark.parametrize("answer,prediction,choices,expected", STRING_MATCH_CASES)
def test_string_match_follows_the_official_rule(answer, prediction, choices, expected):
    assert string_match(answer, prediction, choices) is expected


def test_mmau_official_judge():
    r = judge("The speaker is a man.", "Man", "mmau-official", choices=SPK)
    assert (r.score, r.candidate_answer, r.reference_answer, r.kind) == (1, "Man", "Man", "mmau-official")
    r = judge("It is a woman, not a man.", "Woman", "mmau-official", choices=SPK)
    assert r.score == 0 and r.candidate_answer is None and r.failed_extraction  # names two options
    r = judge("I hear a robot.", "Man", "mmau-official", choices=SPK)
    assert r.score == 0 and r.candidate_answer == "Robot" and not r.failed_extraction
    # the reference may be a response: read as the option it names
    assert judge("a man", "The voice is a man's.", "mmau-official", choices=SPK).score == 1
    r = judge("a man", "no idea", "mmau-official", choices=SPK)
    assert r.score == 0 and r.reference_answer is None and "reference" in r.note
    with pytest.raises(CordError, match="needs the options"):
        judge("Man", "Man", "mmau-official")


def test_register_judge_adds_a_kind_and_protects_the_core():
    from cord.judges import JudgeResult, judge_kinds, register_judge
    from cord.judges import api

    def shout(candidate, reference, ctx):
        ok = candidate.upper() == reference.upper()
        return JudgeResult(int(ok), candidate or None, reference or None, "shout-test")

    try:
        register_judge("shout-test", shout)
        assert "shout-test" in judge_kinds()
        assert judge("yes", "YES", "shout-test").score == 1
        assert [r.score for r in judge_batch(["a", "b"], ["A", "A"], "shout-test")] == [1, 0]
    finally:
        api._REGISTERED.pop("shout-test", None)
    with pytest.raises(CordError, match="unknown judge kind 'shout-test'"):
        judge("yes", "YES", "shout-test")
    with pytest.raises(CordError, match="built in"):
        register_judge("math", shout)


# --------------------------------------------------------------------------------------
# Issue #27: VoiceBench's official prompt, token for token


def _voicebench_items():
    import numpy as np

    from cord.eval.benchmarks import Benchmark, with_protocol
    from cord.eval.benchmarks import voicebench_item

    rows = [{"audio": {"array": np.zeros(8000, np.float32), "sampling_rate": 16000},
             "prompt": "Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nC. helium\nD. neon\n",
             "reference": "B"}]
    items = [voicebench_item(r, "openbookqa", "test", i) for i, r in enumerate(rows)]
    from cord.eval.benchmarks import BENCHMARKS

    bench = Benchmark("voicebench-openbookqa", "mcq", items, protocols=BENCHMARKS["voicebench-openbookqa"].protocols)
    return with_protocol(bench, "official")


def _collapse(ids: list[int], placeholder: int) -> list[int]:
    """Runs of the audio placeholder as one token (the template writes one; the processor
    expands it to the encoder's length, as cord does)."""
    out: list[int] = []
    for t in ids:
        if not (t == placeholder and out and out[-1] == placeholder):
            out.append(t)
    return out


def test_voicebench_official_prompt_is_the_official_runners_token_for_token():
    """MatthewCYM/VoiceBench src/models/qwen2.py renders [{"role": "user", "content": [{"type":
    "audio", ...}]}] with Qwen2-Audio's chat template (which writes "\\n" after every audio
    item) and the text modality as [{"type": "text", "text": prompt}]; cord's prompt dropped
    that newline: one token off."""
    import jinja2
    from transformers.models.qwen2_audio.processing_qwen2_audio import Qwen2AudioProcessor

    from cord.config import ModelConfig
    from cord.eval.answer import build_prompts, protocol_prompting
    from cord.models import load_adapter

    template = jinja2.Environment().from_string(Qwen2AudioProcessor.default_chat_template.fget(None))
    bench = _voicebench_items()
    item = bench.items[0]
    official = {
        "audio": template.render(messages=[{"role": "user", "content": [{"type": "audio", "audio_url": "xxx"}]}],
                                 add_generation_prompt=True),
        "text": template.render(messages=[{"role": "user", "content": [{"type": "text", "text": item.question_text}]}],
                                add_generation_prompt=True),
    }
    assert official["audio"].endswith("Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n<|im_end|>\n<|im_start|>assistant\n")
    adapter = load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="float32", device="cpu"))
    tok = adapter.tokenizer
    placeholder = tok.convert_tokens_to_ids("<|AUDIO|>")
    with protocol_prompting(adapter, bench):
        for modality in ("audio", "text"):
            p = build_prompts(adapter, [item], modality)
            ids = p.input_ids[0][p.attention_mask[0].bool()].tolist()
            expected = tok(official[modality], add_special_tokens=False)["input_ids"]
            assert _collapse(ids, placeholder) == expected, (modality, tok.decode(ids), official[modality])
    assert adapter.instruction != ""  # restored after the protocol


def test_voicebench_official_system_prompt_for_the_omni_thinker():
    """VoiceBench's src/models/qwen_omni.py passes the system message "You are a helpful
    assistant." (not Qwen2.5-Omni's long default) and the audio alone."""
    from cord.config import ModelConfig
    from cord.eval.answer import build_prompts, protocol_prompting
    from cord.models import load_adapter

    adapter = load_adapter(ModelConfig(family="qwen2.5-omni", name_or_path="tiny", dtype="float32", device="cpu"))
    bench = _voicebench_items()
    own = adapter.system_prompt
    with protocol_prompting(adapter, bench):
        p = build_prompts(adapter, bench.items, "audio")
        text = adapter.tokenizer.decode(p.input_ids[0][p.attention_mask[0].bool()].tolist())
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|audio_bos|>")
    assert text.endswith("<|audio_eos|><|im_end|>\n<|im_start|>assistant\n")
    assert adapter.system_prompt == own != "You are a helpful assistant."
