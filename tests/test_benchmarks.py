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
)

SR_IN = 22_050


def tone(seconds, freq=440.0, sr=SR_IN):
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(audio, sr=16_000):
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.fft.rfftfreq(len(audio), 1 / sr)[int(np.argmax(spec))]


def write_bench(tmp_path, rows, durations=None):
    (tmp_path / "audio").mkdir(exist_ok=True)
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
        with pytest.raises(CordError, match=r"pip install 'cord\[hub\]'"):
            load_benchmark(name, limit=1)
