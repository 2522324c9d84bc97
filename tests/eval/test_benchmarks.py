"""Benchmark loading: the local folder format, hub row conversion on fake rows shaped like
the real ones, and the hub loaders against a fake `datasets` module (no network)."""

import json
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from cord import CordError
from cord.eval.benchmarks import (
    MMSU_DOMAINS,
    gsm8k_audio_items,
    gsm8k_final_answer,
    hub_audio_to_16k,
    load_benchmark,
    mmau_item,
    voicebench_item,
    with_protocol,
)

SR_IN = 22_050


def tone(seconds, freq=440.0, sr=SR_IN):
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(audio, sr=16_000):
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.fft.rfftfreq(len(audio), 1 / sr)[int(np.argmax(spec))]


def write_bench(tmp_path, rows, durations=None):
    (tmp_path / "audio").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        if "audio" not in row:
            row["audio"] = f"audio/{row['id']}.wav"
        sec = (durations or {}).get(row["id"], 0.5 + 0.25 * i)
        if not row.get("_no_file"):
            sf.write(tmp_path / row["audio"], tone(sec, 300 + 100 * i), SR_IN)
        row.pop("_no_file", None)
    with open(tmp_path / "manifest.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return tmp_path


ROWS = [
    {"id": "m1", "question": "What is 6 times 7?", "answer": "42"},
    {"id": "q2", "question": "Which is a mammal? A. shark B. whale C. trout D. eel", "answer": "B",
     "choices": ["shark", "whale", "trout", "eel"], "category": "biology"},
    {"id": "s3", "question": "Who is speaking?", "answer": "Woman", "choices": ["Man", "Woman", "Child"],
     "category": "speech", "text_with_audio": True},
    {"id": "e4", "question": "Capital of France?", "answer": "Paris", "judge": "exact", "category": "geo"},
]  # fmt: skip


def test_local_folder_loads_resampled_audio_and_judges(tmp_path):
    d = write_bench(tmp_path, [dict(r) for r in ROWS], durations={"m1": 0.5, "q2": 1.0, "s3": 0.75, "e4": 0.6})
    b = load_benchmark(d)
    assert [it.id for it in b] == ["m1", "q2", "s3", "e4"]
    for it, sec, hz in zip(b, (0.5, 1.0, 0.75, 0.6), (300, 400, 500, 600)):
        assert it.audio.dtype == np.float32 and it.audio.ndim == 1
        assert abs(len(it.audio) - sec * 16_000) <= 2  # 22,050 Hz in, 16 kHz out
        assert abs(peak_hz(it.audio) - hz) < 5  # the tone survives resampling
    assert [b.judge_kind(it) for it in b] == ["math", "mcq", "mmau", "exact"]
    assert b.judge == "math"  # ties resolve to the first seen
    q2 = b.items[1]
    assert q2.meta["choices"] == ["shark", "whale", "trout", "eel"] and q2.meta["category"] == "biology"
    assert b.items[2].meta["text_with_audio"] is True
    assert b.categories() == {"": 1, "biology": 1, "speech": 1, "geo": 1}
    assert b.score(b.items[0], "6*7 = 42, so \\boxed{42}").score == 1
    assert b.score(b.items[0], "The answer is 41.").score == 0
    assert b.score(q2, "The answer is (B).").score == 1
    assert b.score(q2, "It is a whale.").score == 1  # option text, via the item's choices
    assert b.score(q2, "shark").score == 0
    assert b.score(b.items[2], "The speaker is a woman.").score == 1
    assert b.score(b.items[3], "The answer is Paris.").score == 1


def test_local_folder_limit_and_text_only(tmp_path):
    d = write_bench(tmp_path, [dict(r) for r in ROWS])
    b = load_benchmark(d, limit=2, with_audio=False)
    assert len(b) == 2 and all(it.audio is None for it in b)


def test_synth_output_is_a_benchmark(tmp_path):
    row = {"id": "n1", "question": "Tom has 3 apples and buys 4. How many?", "answer": "7", "source": "gsm8k",
           "duration": 0.5, "tts": "kokoro", "voice": "af_heart", "solution": "3 + 4 = 7"}  # fmt: skip
    b = load_benchmark(write_bench(tmp_path, [row]))
    assert b.judge == "math" and b.items[0].solution == "3 + 4 = 7" and b.items[0].meta["source"] == "gsm8k"


@pytest.mark.parametrize(
    "rows,match",
    [
        ([{"id": "a", "question": "q"}], "empty or missing 'answer'"),
        ([{"id": "a", "question": "q", "answer": "1", "judge": "fuzzy"}], "judge 'fuzzy' is not one of"),
        ([{"id": "a", "question": "q", "answer": "1", "choices": "abc"}], "'choices' must be a list"),
        ([{"id": "a", "question": "q", "answer": "Z", "choices": ["x", "y"], "judge": "mmau"}], "not one of its choices"),
        ([{"id": "a", "question": "q", "answer": "1"}, {"id": "a", "question": "q", "answer": "2"}], "duplicate id"),
        ([{"id": "a", "question": "q", "answer": "1", "_no_file": True}], "audio file not found"),
    ],
)
def test_bad_local_rows_are_one_clear_error(tmp_path, rows, match):
    d = write_bench(tmp_path, rows)
    with pytest.raises(CordError) as ei:
        load_benchmark(d)
    msg = str(ei.value)
    assert "\n" not in msg
    assert __import__("re").search(match, msg), msg


def test_bad_folders_are_one_clear_error(tmp_path):
    with pytest.raises(CordError, match="manifest.jsonl not found"):
        load_benchmark(tmp_path)  # a folder with no manifest
    with pytest.raises(CordError, match="unknown benchmark 'voicebench-mmlu'.*did you mean 'voicebench-mmsu'"):
        load_benchmark("voicebench-mmlu")
    with pytest.raises(CordError, match="not a folder"):
        load_benchmark(str(tmp_path / "does-not-exist"))
    (tmp_path / "manifest.jsonl").write_text('{"id": "a", "question": "q", "answer": "1", "audio": "x.wav"}\n{oops\n')
    with pytest.raises(CordError, match=":2: malformed JSON"):
        load_benchmark(tmp_path)


# --- hub rows ---------------------------------------------------------------------------------


def test_voicebench_row_conversion():
    row = {
        "audio": {"array": tone(1.0, 440, 24_000).astype(np.float64), "sampling_rate": 24_000, "path": None},
        "prompt": "Which organelle makes ATP? A. nucleus B. mitochondria C. ribosome D. golgi",
        "reference": "B",
        "question_id": 118,
        "cot_content": "",
        "category": "biology",
        "src": "ori_mmlu-high_school_biology",
    }
    it = voicebench_item(row, "mmsu", "biology", 3)
    assert it.id == "mmsu-biology-118" and it.answer == "B" and it.question_text.startswith("Which organelle")
    assert it.audio.dtype == np.float32 and abs(len(it.audio) - 16_000) <= 2
    assert abs(peak_hz(it.audio) - 440) < 5
    assert it.meta["judge"] == "mcq" and it.meta["category"] == "biology" and it.meta["benchmark"] == "voicebench-mmsu"
    obqa = voicebench_item({"audio": row["audio"], "prompt": "q", "reference": "(c)"}, "openbookqa", "test", 7)
    assert obqa.id == "openbookqa-test-7" and obqa.answer == "C" and obqa.meta["category"] == "openbookqa"
    with pytest.raises(CordError, match="not an option letter"):
        voicebench_item(dict(row, reference="mitochondria"), "mmsu", "biology", 0)


def test_hub_audio_forms():
    stereo = np.stack([tone(0.5, 440, 44_100), tone(0.5, 440, 44_100)], axis=1)
    out = hub_audio_to_16k({"array": stereo, "sampling_rate": 44_100})
    assert out.ndim == 1 and abs(len(out) - 8_000) <= 2
    import io

    buf = io.BytesIO()
    sf.write(buf, tone(0.25, 440, 8_000), 8_000, format="WAV")
    assert abs(len(hub_audio_to_16k({"bytes": buf.getvalue(), "path": None})) - 4_000) <= 2

    class Samples:  # datasets>=4 AudioDecoder.get_all_samples() shape: (channels, samples)
        data = np.stack([tone(0.5, 440, 22_050)])
        sample_rate = 22_050

    class Decoder:
        def get_all_samples(self):
            return Samples()

    assert abs(len(hub_audio_to_16k(Decoder())) - 8_000) <= 2
    with pytest.raises(CordError, match="no audio"):
        hub_audio_to_16k(None, "row 5")


GSM = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many in all?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nSo 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "A company earns $1,234 a day. How much in one day?", "answer": "It earns 1,234.\n#### 1,234"},
    {"question": "Betty needs $100 and has half. How much more does she need?", "answer": "100/2 = 50\n#### 50"},
]  # fmt: skip


def _audio_rows(texts, sr=24_000):
    return [{"audio": {"array": tone(0.4 + 0.1 * i, 440, sr), "sampling_rate": sr}, "question": t} for i, t in enumerate(texts)]


def test_gsm8k_join_by_index():
    items = gsm8k_audio_items(_audio_rows([g["question"] for g in GSM]), GSM)
    assert [it.answer for it in items] == ["72", "1234", "50"]
    assert items[0].question_text == GSM[0]["question"] and items[0].solution.endswith("72>>72.")
    assert items[1].id == "gsm8k-test-1" and items[1].meta["judge"] == "math"
    assert abs(len(items[2].audio) - 0.6 * 16_000) <= 2
    assert gsm8k_final_answer("x\n#### 1,000") == "1000"
    # limit
    assert len(gsm8k_audio_items(_audio_rows([g["question"] for g in GSM]), GSM, limit=2)) == 2


def test_gsm8k_join_mismatch_is_an_error_and_speaker_blocks():
    shuffled = _audio_rows([GSM[1]["question"], GSM[0]["question"], GSM[2]["question"]])
    with pytest.raises(CordError, match="row-index join is wrong"):
        gsm8k_audio_items(shuffled, GSM)
    with pytest.raises(CordError, match="do not line up"):
        gsm8k_audio_items(_audio_rows(["a", "b"]), GSM)
    # two speakers, stored as consecutive blocks: speaker 1 is rows 3..5
    two = _audio_rows([g["question"] for g in GSM]) + _audio_rows([g["question"] for g in GSM], sr=16_000)
    items = gsm8k_audio_items(two, GSM, speaker=1)
    assert [it.id for it in items] == ["gsm8k-test-0-s1", "gsm8k-test-1-s1", "gsm8k-test-2-s1"]
    with pytest.raises(CordError, match="speaker 2 out of range"):
        gsm8k_audio_items(two, GSM, speaker=2)
    # a verbalised transcript still matches its row
    spoken = _audio_rows([GSM[0]["question"].replace("48", "forty-eight"), GSM[1]["question"], GSM[2]["question"]])
    assert len(gsm8k_audio_items(spoken, GSM)) == 3


def test_gsm8k_without_text_column_warns():
    rows = [{"audio": r["audio"]} for r in _audio_rows([g["question"] for g in GSM])]
    with pytest.warns(UserWarning, match="could not be checked"):
        assert len(gsm8k_audio_items(rows, GSM)) == 3


def _write_mmau(tmp_path, n=3, missing=()):
    (tmp_path / "test-mini-audios").mkdir()
    rows = []
    for i in range(n):
        aid = f"./test-mini-audios/clip{i}.wav"
        if i not in missing:
            sf.write(tmp_path / aid, tone(0.5, 500, 44_100), 44_100)
        rows.append({"id": f"mmau-{i}", "audio_id": aid, "question": "Identify the source of the sound.",
                     "choices": ["Man", "Woman", "Child", "Robot"], "answer": ["Man", "Woman", "Child"][i % 3],
                     "dataset": "AudioSet", "task": ["sound", "music", "speech"][i % 3], "split": "test-mini",
                     "category": "Reasoning", "sub-category": "Acoustic Source Inference", "difficulty": "medium"})  # fmt: skip
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(rows))
    return rows


def test_mmau_local_copy(tmp_path):
    rows = _write_mmau(tmp_path)
    b = load_benchmark("mmau-test-mini", data_dir=tmp_path)
    assert b.judge == "mmau" and len(b) == 3
    it = b.items[1]
    assert it.answer == "Woman" and it.meta["category"] == "music" and it.meta["text_with_audio"] is True
    assert "(B) Woman" in it.question_text and it.question_text.startswith(rows[1]["question"])
    assert abs(len(it.audio) - 8_000) <= 2
    assert b.score(it, "(B)").score == 1 and b.score(it, "It is a man.").score == 0
    assert b.score(it, "The speaker is a woman.").score == 1
    assert load_benchmark("mmau-test-mini", 2, data_dir=tmp_path / "mmau-test-mini.json").items[-1].id == "mmau-1"
    with pytest.raises(CordError, match="not one of its choices"):
        mmau_item(dict(rows[0], answer="Dog"), tmp_path)


def test_mmau_missing_copy_or_audio_is_a_clear_error(tmp_path):
    with pytest.raises(CordError, match="tarball"):
        load_benchmark("mmau-test-mini")
    with pytest.raises(CordError, match="no mmau-test-mini.json"):
        load_benchmark("mmau-test-mini", data_dir=tmp_path)
    (tmp_path / "mmau-test-mini.json").write_text("[{]")
    with pytest.raises(CordError, match=r"mmau-test-mini.json: malformed JSON \(.* at line 1\)"):
        load_benchmark("mmau-test-mini", data_dir=tmp_path)
    (tmp_path / "mmau-test-mini.json").unlink()
    _write_mmau(tmp_path, missing=(1, 2))
    with pytest.raises(CordError, match="2 of 3 MMAU audio files are missing.*tar"):
        load_benchmark("mmau-test-mini", data_dir=tmp_path)


# --- hub loaders against a fake `datasets` --------------------------------------------------


class FakeDataset:
    def __init__(self, rows):
        self.rows = list(rows)
        self.column_names = list(self.rows[0]) if self.rows else []
        self.decoded = 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        self.decoded += 1
        return dict(self.rows[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def select(self, idx):
        return FakeDataset([self.rows[i] for i in idx])

    def remove_columns(self, cols):
        return FakeDataset([{k: v for k, v in r.items() if k not in cols} for r in self.rows])


def _install_fake_datasets(monkeypatch, loader):
    mod = types.ModuleType("datasets")
    mod.load_dataset = loader
    monkeypatch.setitem(sys.modules, "datasets", mod)
    return mod


def test_voicebench_hub_loader_round_robins_domains(monkeypatch):
    calls = []

    def load_dataset(repo, config=None, split=None, cache_dir=None):
        calls.append((repo, config, split))
        letter = "ABCD"[len(calls) % 4]
        rows = [{"audio": {"array": tone(0.2, 440, 16_000), "sampling_rate": 16_000}, "prompt": f"{split} q{i}",
                 "reference": letter, "question_id": i, "category": split} for i in range(4)]  # fmt: skip
        return FakeDataset(rows)

    _install_fake_datasets(monkeypatch, load_dataset)
    b = load_benchmark("voicebench-mmsu", limit=14)
    assert [c[2] for c in calls] == list(MMSU_DOMAINS) and {c[:2] for c in calls} == {("hlt-lab/voicebench", "mmsu")}
    assert len(b) == 14 and b.judge == "mcq"
    cats = [it.meta["category"] for it in b]
    assert cats[:12] == list(MMSU_DOMAINS) and cats[12:] == ["biology", "business"]
    calls.clear()
    ob = load_benchmark("voicebench-openbookqa", with_audio=False)
    assert calls == [("hlt-lab/voicebench", "openbookqa", "test")] and len(ob) == 4 and ob.items[0].audio is None


def test_gsm8k_hub_loader_joins_by_index(monkeypatch):
    audio = FakeDataset(_audio_rows([g["question"] for g in GSM]))

    def load_dataset(repo, config=None, split=None, cache_dir=None):
        if repo == "pphuc25/GSM8K_audio":
            return {"test": audio}
        assert (repo, config, split) == ("openai/gsm8k", "main", "test")
        return FakeDataset(GSM)

    _install_fake_datasets(monkeypatch, load_dataset)
    b = load_benchmark("gsm8k-audio", limit=2)
    assert [it.answer for it in b] == ["72", "1234"] and b.judge == "math"
    assert audio.decoded == 2  # only the rows asked for were read
    with pytest.raises(CordError, match="no split 'speaker9'"):
        load_benchmark("gsm8k-audio", split="speaker9")


def test_hub_errors_are_one_line(monkeypatch):
    def load_dataset(*a, **k):
        raise ConnectionError("Couldn't reach 'hlt-lab/voicebench' on the Hub (LocalEntryNotFoundError)\nmore detail")

    _install_fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(CordError) as ei:
        load_benchmark("voicebench-openbookqa")
    assert "\n" not in str(ei.value) and "hlt-lab/voicebench" in str(ei.value)


def test_hub_benchmark_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets → ImportError
    for name in ("voicebench-mmsu", "voicebench-openbookqa", "gsm8k-audio"):
        with pytest.raises(CordError, match=r"pip install -e \"\.\[hub\]\""):
            load_benchmark(name, limit=1)


# --- the registry and the protocols -----------------------------------------------------------

MMAU_KEYS = ["id", "audio_id", "question", "choices", "answer", "dataset", "task", "split", "category",
             "sub-category", "difficulty"]  # the keys of every row of mmau-test-mini.json, in its order
MMAU_ROWS = [
    ("3fe64f3d-282c-4bc8-a753-68f8f6c35652", "Based on the given audio, identify the source of the speaking voice.",
     ["Man", "Woman", "Child", "Robot"], "Man", "sound", "Reasoning", "Acoustic Source Inference", "medium", 0.6),
    ("c412a68d-231c-4a40-ab5f-388255381d0e", "Which sound effect can be heard in the background?",
     ["Thunder", "Birds chirping", "White noise", "Wind blowing"], "White noise", "music", "Information Extraction",
     "Musical Texture Interpretation", "easy", 0.7),
    ("0b4c3d2e-1111-4a40-ab5f-000000000003", "Is the second speaker agreeing?", ["Yes", "No"], "No", "speech",
     "Reasoning", "Conversational Fact Retrieval", "hard", 0.8),
    ("0b4c3d2e-2222-4a40-ab5f-000000000004", "How many distinct voices are heard?", ["1", "2", "3", "4", "5"], "3",
     "speech", "Reasoning", "Counting", "medium", 0.9),
]  # fmt: skip


def write_mmau_like_the_real_file(root, missing=()):
    """A copy shaped exactly like mmau-test-mini.json: its keys, uuid ids, audio under
    ./test-mini-audios/<id>.wav (stereo 44.1 kHz stand-in clips)."""
    (root / "test-mini-audios").mkdir(parents=True)
    rows = []
    for i, (rid, q, choices, ans, task, cat, sub, diff, sec) in enumerate(MMAU_ROWS):
        row = dict(zip(MMAU_KEYS, [rid, f"./test-mini-audios/{rid}.wav", q, choices, ans, "AudioSet", task,
                                   "test-mini", cat, sub, diff]))  # fmt: skip
        rows.append(row)
        if i not in missing:
            clip = tone(sec, 300 + 100 * i, 44_100)
            sf.write(root / row["audio_id"], np.stack([clip, clip], axis=1), 44_100)
    (root / "mmau-test-mini.json").write_text(json.dumps(rows, indent=1))
    return rows


def test_mmau_loader_on_the_real_file_shape(tmp_path):
    rows = write_mmau_like_the_real_file(tmp_path)
    b = load_benchmark("mmau-test-mini", data_dir=tmp_path)
    assert [it.id for it in b] == [r["id"] for r in rows] and b.protocols.keys() == {"cord", "official"}
    for it, row, spec in zip(b, rows, MMAU_ROWS):
        assert it.answer == row["answer"] and it.meta["choices"] == row["choices"]
        assert it.meta["groups"] == {"task": row["task"], "difficulty": row["difficulty"],
                                     "sub-category": row["sub-category"]}  # fmt: skip
        assert it.meta["mmau_question"] == row["question"] and it.meta["text_with_audio"] is True
        assert abs(len(it.audio) - spec[-1] * 16_000) <= 2 and it.audio.ndim == 1  # stereo 44.1 kHz -> mono 16 kHz
    # cord: lettered options, judge mmau; official: unlettered options, judge mmau-official
    assert "(C) White noise" in b.items[1].question_text and b.judge_kind(b.items[1]) == "mmau"
    off = with_protocol(b, "official")
    q = off.items[1].question_text
    assert q == ("Which sound effect can be heard in the background?\nChoose one of the following options:\n"
                 "Thunder\nBirds chirping\nWhite noise\nWind blowing")  # fmt: skip
    assert off.judge_kind(off.items[1]) == "mmau-official" and off.protocol.instruction == ""
    assert off.score(off.items[1], "I hear white noise.").score == 1
    assert off.score(off.items[1], "White noise, or maybe wind.").score == 0  # a wrong option's word
    assert b.items[1].question_text.startswith("Which") and "(C)" in b.items[1].question_text  # original untouched


def test_mmau_missing_audio_is_an_error_unless_limit_leaves_it_out(tmp_path):
    write_mmau_like_the_real_file(tmp_path, missing=(3,))
    with pytest.raises(CordError, match="1 of 4 MMAU audio files are missing.*0b4c3d2e-2222"):
        load_benchmark("mmau-test-mini", data_dir=tmp_path)
    assert len(load_benchmark("mmau-test-mini", 3, data_dir=tmp_path)) == 3  # --limit 3: only those are needed
    assert len(load_benchmark("mmau-test-mini", data_dir=tmp_path, with_audio=False)) == 4  # text-only: no audio read


def test_registry_one_place_per_benchmark(tmp_path):
    from cord.eval.benchmarks import BENCHMARKS, HUB_BENCHMARKS, Benchmark, BenchmarkSpec, EvalProtocol, register_benchmark
    from cord.data.paired import PairedExample
    import cord.eval.benchmarks as bm

    assert set(BENCHMARKS) == {"voicebench-mmsu", "voicebench-openbookqa", "gsm8k-audio", "mmau-test-mini"}
    assert HUB_BENCHMARKS == tuple(BENCHMARKS)
    assert {BENCHMARKS[n].protocols["official"].judge for n in BENCHMARKS} == {"voicebench", "mmau-official", "math"}
    calls = []

    def load(limit, *, with_audio=True, **_):
        calls.append((limit, with_audio))
        return Benchmark("toy", "exact", [PairedExample("t1", "Say hi", None, "hi")])

    try:
        register_benchmark(BenchmarkSpec("toy", load, "exact", {"official": EvalProtocol("official", judge="mcq")}))
        b = load_benchmark("toy", 5, with_audio=False)
        assert calls == [(5, False)] and b.protocols.keys() == {"cord", "official"}
        # the names are read when asked: no copy taken before the registration goes stale
        assert "toy" in bm.HUB_BENCHMARKS and "toy" not in HUB_BENCHMARKS  # (the copy taken before)
        import cord.eval as ev

        assert "toy" in ev.HUB_BENCHMARKS and "toy" in bm.benchmark_names()
        assert with_protocol(b, "official").judge_kind(b.items[0]) == "mcq"
        assert with_protocol(b, "cord").judge_kind(b.items[0]) == "exact"
        with pytest.raises(CordError, match="unknown protocol"):
            register_benchmark(BenchmarkSpec("toy2", load, "exact", {"leaderboard": EvalProtocol("leaderboard")}))
    finally:
        BENCHMARKS.pop("toy", None)
    assert "toy" not in bm.HUB_BENCHMARKS
    d = write_bench(tmp_path, [dict(ROWS[0])])
    with pytest.raises(CordError, match="has no 'official' protocol.*--protocol cord"):
        with_protocol(load_benchmark(d), "official")
    with pytest.raises(CordError, match="unknown protocol 'leaderboard'"):
        with_protocol(load_benchmark(d), "leaderboard")


def _fake_hub(monkeypatch, rows):
    import importlib.machinery

    mod = _install_fake_datasets(monkeypatch, lambda *a, **k: FakeDataset(rows))
    mod.__spec__ = importlib.machinery.ModuleSpec("datasets", None)  # `cord eval` checks it is installed


class FramesEngine:
    """Answers each prompt by its clip length (mel frames) or its text; records the prompts."""

    def __init__(self, adapter, by_seconds, by_text):
        self.adapter, self.by_seconds, self.by_text, self.prompts = adapter, by_seconds, by_text, []

    def generate(self, prompts, *, n=1, greedy=False, max_new_tokens=200, **_):
        import torch
        from cord.rollout import Rollouts

        assert n == 1 and greedy
        texts = []
        for r in range(len(prompts)):
            ids = prompts.input_ids[r][prompts.attention_mask[r].bool()].tolist()
            self.prompts.append((prompts.modality, self.adapter.tokenizer.decode(ids)))
            if prompts.modality == "audio":
                frames = int(prompts.extra["feature_attention_mask"][r].sum())
                texts.append(self.by_seconds[round(frames / 100, 1)])
            else:
                texts.append(next(v for k, v in self.by_text.items() if k in self.prompts[-1][1]))
        R = len(texts)
        return Rollouts(ids=torch.zeros((R, 1), dtype=torch.long), mask=torch.ones((R, 1), dtype=torch.bool),
                        text=texts, prompt_index=list(range(R)), n=1, finished=[True] * R)


@pytest.fixture(scope="module")
def tiny_adapter():
    from cord.config import ModelConfig
    from cord.models import load_adapter

    return load_adapter(ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="float32", device="cpu",
                                    long_audio="skip", max_audio_seconds=5.0))  # fmt: skip


def _eval_cfg(out, benchmarks, protocol):
    from cord.config import CordConfig, EvalConfig, ModelConfig

    return CordConfig(model=ModelConfig(family="qwen2-audio", name_or_path="tiny", dtype="float32", device="cpu",
                                        long_audio="skip", max_audio_seconds=5.0),
                      eval=EvalConfig(benchmarks=benchmarks, out=str(out), batch_size=2, protocol=protocol))  # fmt: skip


def test_official_protocol_end_to_end(tmp_path, monkeypatch, tiny_adapter):
    from cord.eval import evaluate, report_from_items

    # VoiceBench openbookqa through a fake `datasets`: 4 rows, clips of distinct lengths
    vb_rows = [{"audio": {"array": tone(sec, 440, 16_000), "sampling_rate": 16_000}, "prompt": f"Question {i}? A. x B. y C. z D. w",
                "reference": ref, "question_id": i} for i, (sec, ref) in enumerate([(1.0, "A"), (1.1, "B"), (1.2, "C"), (1.3, "D")])]  # fmt: skip
    _fake_hub(monkeypatch, vb_rows)
    mmau = tmp_path / "mmau"
    write_mmau_like_the_real_file(mmau)
    audio = {1.0: "The answer is A.", 1.1: "**B**", 1.2: "I don't know.", 1.3: "The answer is (A).",  # voicebench
             0.6: "The speaker is a man.", 0.7: "White noise and wind blowing", 0.8: "No.", 0.9: "3"}  # MMAU
    text = {f"Question {i}?": t for i, t in enumerate(["A", "The answer is B.", "c) z", "Answer: D"])}
    engine = FramesEngine(tiny_adapter, audio, text)
    out = tmp_path / "run"
    rep = evaluate(_eval_cfg(out, ["voicebench-openbookqa", str(mmau)], "official"), tiny_adapter,
                   progress=False, engine=engine)  # fmt: skip

    vb = rep["voicebench-openbookqa"]
    assert vb["protocol"] == "official" and rep["average"]["protocol"] == "official"
    # audio: A right; "**B**" and "I don't know." match no official template; (A) wrong
    assert vb["audio_acc"] == 0.25 and vb["audio_fail_rate"] == 0.5
    assert vb["audio_acc_official"] == pytest.approx((1 + 2 / 4) / 4)
    # text: "Answer: D" has no letter for the official rules
    assert vb["text_acc"] == 0.75 and vb["text_acc_official"] == pytest.approx((3 + 1 / 4) / 4)
    assert vb["gap_official"] == pytest.approx(vb["text_acc_official"] - vb["audio_acc_official"])
    # the prompts: the audio alone, the prompt text alone — no instruction anywhere
    assert tiny_adapter.instruction.startswith("Answer the question")  # restored afterwards
    asked = [p for m, p in engine.prompts]
    assert not any("The answer is" in p or "Answer the question" in p for p in asked)
    assert ("text", tiny_adapter.render("Question 0? A. x B. y C. z D. w")) in engine.prompts

    m = rep["mmau-test-mini"]
    # man: right; white noise + wind: a wrong option's words; "No.": right; "3": right
    assert m["audio_acc"] == 0.75 and m["text_skipped"] == 4 and m["protocol"] == "official"
    assert m["by_task"] == {"music": {"audio_acc": 0.0, "n": 1}, "sound": {"audio_acc": 1.0, "n": 1},
                            "speech": {"audio_acc": 1.0, "n": 2}}  # fmt: skip
    assert m["by_difficulty"] == {"easy": {"audio_acc": 0.0, "n": 1}, "hard": {"audio_acc": 1.0, "n": 1},
                                  "medium": {"audio_acc": 1.0, "n": 2}}  # fmt: skip
    assert m["by_sub_category"]["Counting"] == {"audio_acc": 1.0, "n": 1} and len(m["by_sub_category"]) == 4
    assert m["audio_acc_task_mean"] == pytest.approx(2 / 3)
    mmau_prompt = next(p for _, p in engine.prompts if "How many distinct voices" in p)
    assert "Choose one of the following options:\n1\n2\n3\n4\n5" in mmau_prompt and "(A)" not in mmau_prompt

    # records say what produced them; the report is recomputed from them alone
    recs = [json.loads(x) for x in (out / "mmau-test-mini" / "audio.jsonl").read_text().splitlines()]
    assert {r["protocol"] for r in recs} == {"official"} and {r["judge"] for r in recs} == {"mmau-official"}
    assert json.loads(json.dumps(report_from_items(out))) == json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert "Protocol: official" in md and "| voicebench-openbookqa | 25.0% | 37.5% | 50.0% |" in md
    assert "mmau-test-mini by task:" in md and "| speech | 100.0% | 2 |" in md

    # the same folder under the other protocol is refused, not mixed
    with pytest.raises(CordError, match="protocol: 'official', now 'cord'"):
        evaluate(_eval_cfg(out, ["voicebench-openbookqa"], "cord"), tiny_adapter, progress=False, engine=engine)


def test_cord_protocol_keeps_the_instruction_and_strict_judges(tmp_path, monkeypatch, tiny_adapter):
    from cord.eval import evaluate
    from cord.eval.benchmarks import check_benchmark

    vb_rows = [{"audio": {"array": tone(1.0, 440, 16_000), "sampling_rate": 16_000}, "prompt": "Question 0? A. x B. y",
                "reference": "B", "question_id": 0}]  # fmt: skip
    _fake_hub(monkeypatch, vb_rows)
    engine = FramesEngine(tiny_adapter, {1.0: "**B**"}, {"Question 0?": "The answer is (B)."})
    rep = evaluate(_eval_cfg(tmp_path, ["voicebench-openbookqa"], "cord"), tiny_adapter, progress=False, engine=engine)
    vb = rep["voicebench-openbookqa"]
    assert vb["protocol"] == "cord" and vb["audio_acc"] == 1.0 and "audio_acc_official" not in vb  # mcq reads **B**
    assert all("Answer the question" in p for _, p in engine.prompts)
    d = write_bench(tmp_path / "local", [dict(ROWS[0])])
    with pytest.raises(CordError, match="local folder.*no 'official' protocol"):
        check_benchmark(str(d), "official")
