"""Where ``cord synth`` gets its questions: local files or hub datasets, as uniform rows.

Every source yields dicts ``{id, question, answer, solution?, source}``; ``question`` is
None when the row has none (``cord synth`` counts it as ``missing_question``).

Local files: JSONL (``.jsonl``/``.ndjson``, or ``.json`` holding a list), CSV and Parquet
(Parquet needs ``pyarrow``). Columns come from ``synth.question_column``,
``answer_column`` and ``id_column`` (unset: a column named ``id`` when there is one, else
ids are ``<file stem>-<row index>``).
A local file in the shape of a known dataset is converted like the hub version: rows with
``problem`` and ``solution`` (and no question column) as NuminaMath-CoT, and rows whose
answer holds a GSM8K ``#### <answer>`` line as GSM8K.

Hub datasets (only when asked for by name; needs ``pip install -e ".[hub]"`` from the clone):

- ``AI-MO/NuminaMath-CoT`` — see :func:`numina_row` for the filter.
- ``openai/gsm8k`` (config ``main``) — see :func:`gsm8k_row`.
- any other ``owner/name`` — read with the configured columns.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from cord import CordError
from cord.data.paired import read_jsonl

__all__ = [
    "NUMINA_NAME", "NUMINA_DEFAULT_SOURCES", "GSM8K_NAMES", "RowSource", "load_rows",
    "extract_boxed", "numeric_answer", "numina_row", "gsm8k_row",
]

NUMINA_NAME = "AI-MO/NuminaMath-CoT"
#: NuminaMath sources kept by default: word problems with little LaTeX, which speak well.
NUMINA_DEFAULT_SOURCES = ("gsm8k", "orca_math", "synthetic_math")
GSM8K_NAMES = ("openai/gsm8k", "gsm8k")
_LOCAL_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq"}


# --------------------------------------------------------------------------------------
# Answers


def extract_boxed(solution: str) -> list[str]:
    """Contents of every ``\\boxed{…}`` (and ``\\fbox{…}``) in ``solution``, nested braces
    handled: ``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``. ``\\boxed 5`` gives ``5``."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\b", solution):
        i = m.end()
        while i < len(solution) and solution[i] == " ":
            i += 1
        if i < len(solution) and solution[i] == "{":
            depth, j = 0, i
            while j < len(solution):
                if solution[j] == "{":
                    depth += 1
                elif solution[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth == 0:
                out.append(solution[i + 1:j].strip())
            else:  # unbalanced: take the rest, it will fail the numeric check
                out.append(solution[i + 1:].strip())
        else:
            tok = re.match(r"\S+", solution[i:].rstrip("$."))
            out.append(tok.group().rstrip("$.") if tok else "")
    return out


#: an option letter, maybe in parentheses and followed by the option text: "C", "(B)", "(D) 12"
_LETTER = re.compile(r"\(?[A-E]\)?(?:[\s:.].*)?", re.S)
_NUM_PATTERNS = (re.compile(r"[-+]?\d+"), re.compile(r"[-+]?\d*\.\d+"), re.compile(r"[-+]?\d+/\d+"))


def _unwrap_text(s: str) -> str:
    return re.sub(r"\\(?:text|textbf|mathrm|mbox|textrm|mathbf)\s*\{([^{}]*)\}", r" \1 ", s)


def numeric_answer(raw: str) -> tuple[str | None, str]:
    """``(answer, "")`` when ``raw`` normalises to an integer, decimal or simple fraction
    (``"1,000"`` → ``1000``, ``\\frac{3}{4}`` → ``3/4``, ``"18 \\text{ dollars}"`` → ``18``,
    ``"x = 5"`` → ``5``, ``"25\\%"`` → ``25``, ``"+3"`` → ``3``), else ``(None, reason)``
    with reason ``letter_answer`` or ``non_numeric_answer``."""
    s = _unwrap_text(raw).strip().strip("$").strip()
    if _LETTER.fullmatch(s) and "=" not in s:
        return None, "letter_answer"
    s = re.sub(r"\\[,;:! ]|\\left|\\right|\\displaystyle", " ", s)
    s = s.replace("\\$", " ").replace("\\%", " ").replace("%", " ")
    s = re.sub(r"\^\s*\{?\\circ\}?", " ", s)
    s = re.sub(r"^[A-Za-z]\s*=\s*", "", s.strip())  # "x = 5"
    s = re.sub(r"\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*(\d+)\s*\}", r"\1/\2", s)
    s = re.sub(r"^([-+]?)\s*(\d+)\s*/\s*(\d+)$", r"\1\2/\3", s.strip())
    # trailing unit words ("18 dollars", "5 cm^2", "12 apples")
    s = re.sub(r"^([-+]?[\d.,/]+)\s+[A-Za-z]{2,}[A-Za-z\s]*(\^\{?\d\}?)?\.?$", r"\1", s.strip())
    s = s.strip().rstrip(".")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if s.startswith("+"):
        s = s[1:]
    if any(p.fullmatch(s) for p in _NUM_PATTERNS):
        if s.startswith(".") or s.startswith("-."):
            s = s.replace(".", "0.", 1)
        return s, ""
    return None, "non_numeric_answer"


# --------------------------------------------------------------------------------------
# Row conversion (shared by hub and local files of the same shape)


def numina_row(raw: dict[str, Any], index: int,
               sources: Iterable[str] | None = NUMINA_DEFAULT_SOURCES) -> tuple[dict | None, str]:
    """One ``AI-MO/NuminaMath-CoT`` row → ``(row, "")`` or ``(None, drop_reason)``.

    The filter, in order:

    1. ``source`` must be one of ``sources`` (default gsm8k, orca_math, synthetic_math:
       word problems with little LaTeX) — else ``source``; ``sources=None`` keeps all;
    2. the solution must contain exactly one ``\\boxed{}`` — else ``no_boxed`` or
       ``multiple_boxed``;
    3. the boxed answer must normalise to an integer, decimal or simple fraction
       (:func:`numeric_answer`) — else ``letter_answer`` or ``non_numeric_answer``.

    Kept rows: ``id = numina-<index in the dataset>``, ``question`` = problem, ``answer`` =
    the normalised boxed answer, ``solution`` = the full solution,
    ``source = numina/<source>``.
    """
    src = str(raw.get("source") or "")
    if sources is not None and src not in set(sources):
        return None, "source"
    solution = str(raw.get("solution") or "")
    boxed = extract_boxed(solution)
    if not boxed:
        return None, "no_boxed"
    if len(boxed) > 1:
        return None, "multiple_boxed"
    answer, reason = numeric_answer(boxed[0])
    if answer is None:
        return None, reason
    return {"id": f"numina-{index:06d}", "question": raw.get("problem"), "answer": answer,
            "solution": solution, "source": f"numina/{src}" if src else "numina"}, ""


def gsm8k_row(raw: dict[str, Any], index: int, split: str = "train") -> tuple[dict | None, str]:
    """One ``openai/gsm8k`` (config ``main``) row → ``(row, "")`` or ``(None, "no_final_answer")``.

    ``answer`` is the text after the last ``####`` with thousands commas removed;
    ``solution`` is the original worked answer with the ``<<48/2=24>>`` calculator
    annotations removed (its ``#### 72`` line kept); ``id = gsm8k-<split>-<index>``."""
    text = str(raw.get("answer") or "")
    if "####" not in text:
        return None, "no_final_answer"
    final = text.rsplit("####", 1)[1].strip().replace(",", "").rstrip(".")
    if not final:
        return None, "no_final_answer"
    solution = re.sub(r"<<[^<>]*>>", "", text).strip()
    return {"id": f"gsm8k-{split}-{index:05d}", "question": raw.get("question"), "answer": final,
            "solution": solution, "source": "gsm8k"}, ""


def _generic_row(raw: dict[str, Any], index: int, cfg, default_source: str) -> dict:
    q = raw.get(cfg.question_column)
    a = raw.get(cfg.answer_column)
    rid = raw.get(cfg.id_column or "id")  # unset id_column: a column named "id" when present
    row = {
        "id": str(rid) if rid not in (None, "") else f"{default_source}-{index:06d}",
        "question": None if q is None else str(q),
        "answer": "" if a is None else str(a),
        "source": str(raw.get("source") or default_source),
    }
    if raw.get("solution") not in (None, ""):
        row["solution"] = str(raw["solution"])
    return row


# --------------------------------------------------------------------------------------
# Readers


def _read_jsonl(path: Path) -> Iterator[dict]:
    for _, obj in read_jsonl(path):
        yield obj


def _read_json(path: Path) -> Iterator[dict]:
    text = path.read_text(encoding="utf-8-sig")
    if not text.lstrip().startswith("["):
        yield from _read_jsonl(path)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CordError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise CordError(f"{path}: item {i} is not a JSON object")
        yield obj


def _read_csv(path: Path) -> Iterator[dict]:
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") would otherwise stick to the first
    # header, so a column "id" read as "\ufeffid" and the given ids were replaced by generated ones
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        for row in reader:
            yield row


def _read_parquet(path: Path) -> Iterator[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CordError(f"reading {path.name} needs pyarrow: pip install pyarrow (or convert it to JSONL/CSV)") from None
    import pyarrow as pa

    try:
        pf = pq.ParquetFile(str(path))
        for batch in pf.iter_batches(batch_size=4096):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:  # ArrowInvalid: corrupt or not Parquet at all
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CordError(f"{path}: not a readable Parquet file ({msg[:200]})") from None


def _local_reader(path: Path) -> Iterator[dict]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    raise CordError(f"{path}: unsupported input format {suffix or '(no suffix)'}; use .jsonl, .json, .csv or .parquet")


def _hub_reader(name: str, config: str | None, split: str) -> Iterator[dict]:
    try:
        import datasets
    except ImportError:
        raise CordError(f"reading the hub dataset {name} needs the datasets library: pip install -e \".[hub]\" (from the cord clone) "
                        "(or pass a local JSONL/CSV/Parquet file)") from None
    try:
        ds = datasets.load_dataset(name, config, split=split) if config else datasets.load_dataset(name, split=split)
    except Exception as e:  # network, unknown name, unknown split: one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CordError(f"could not load hub dataset {name} split {split!r}: {msg} "
                        "(offline? pass a local file instead)") from None
    return iter(ds)


# --------------------------------------------------------------------------------------
# The source


@dataclass
class RowSource:
    """Rows from one input, converted lazily. ``stats`` fills in as rows are read:
    ``read`` rows scanned, ``kept`` rows yielded, ``dropped`` {reason: count} for rows a
    dataset filter removed (NuminaMath / GSM8K), ``kind`` the conversion used."""

    name: str
    kind: str
    _raw: Iterator[dict]
    _convert: Any
    limit: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.stats = {"kind": self.kind, "read": 0, "kept": 0, "dropped": Counter()}

    def __iter__(self) -> Iterator[dict]:
        for index, raw in enumerate(self._raw):
            if self.limit is not None and self.stats["kept"] >= self.limit:
                break
            self.stats["read"] += 1
            row, reason = self._convert(raw, index)
            if row is None:
                self.stats["dropped"][reason] += 1
                continue
            self.stats["kept"] += 1
            yield row

    def summary(self) -> dict[str, Any]:
        return {**self.stats, "dropped": dict(sorted(self.stats["dropped"].items()))}


def _looks_like_hub_name(text: str) -> bool:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        return False
    return Path(text).suffix.lower() not in _LOCAL_SUFFIXES and not Path(text.split("/")[0]).exists()


def load_rows(cfg, numina_sources: Iterable[str] | None = NUMINA_DEFAULT_SOURCES) -> RowSource:
    """The rows named by ``cfg.input`` (a :class:`cord.config.SynthConfig`), up to ``cfg.limit``
    kept rows. Raises :class:`CordError` for a missing file, unsupported format, a question
    column that is not there, or a hub dataset that cannot be loaded."""
    name = str(cfg.input or "").strip()
    if not name:
        raise CordError("no input given: pass --input FILE.jsonl|.csv|.parquet or a hub dataset name "
                        f"such as {NUMINA_NAME}")
    split = cfg.split
    if name.lower() == NUMINA_NAME.lower():
        return RowSource(NUMINA_NAME, "numina", _hub_reader(NUMINA_NAME, None, split),
                         lambda raw, i: numina_row(raw, i, numina_sources), cfg.limit)
    if name.lower() in GSM8K_NAMES:
        return RowSource("openai/gsm8k", "gsm8k", _hub_reader("openai/gsm8k", "main", split),
                         lambda raw, i: gsm8k_row(raw, i, split), cfg.limit)
    path = Path(name).expanduser()
    if not path.exists():
        if _looks_like_hub_name(name):
            return RowSource(name, "generic", _hub_reader(name, None, split),
                             lambda raw, i: (_generic_row(raw, i, cfg, name.split("/")[-1]), ""), cfg.limit)
        raise CordError(f"input file not found: {path} (give a .jsonl/.csv/.parquet file or a hub dataset name)")
    if path.is_dir():
        raise CordError(f"input {path} is a folder; give a .jsonl/.csv/.parquet file")
    reader = _local_reader(path)
    first = next(reader, None)
    if first is None:
        raise CordError(f"input file {path} has no rows")
    raw_rows = _chain(first, reader)
    columns = set(first)
    stem = path.stem
    if cfg.question_column not in columns and {"problem", "solution"} <= columns:
        return RowSource(str(path), "numina", raw_rows, lambda raw, i: numina_row(raw, i, numina_sources), cfg.limit)
    if cfg.question_column not in columns:
        raise CordError(f"{path}: no column {cfg.question_column!r} (columns: {', '.join(sorted(columns))}); "
                        "set synth.question_column")
    if cfg.answer_column == "answer" and "####" in str(first.get("answer") or ""):
        return RowSource(str(path), "gsm8k", raw_rows, lambda raw, i: gsm8k_row(raw, i, stem), cfg.limit)
    if cfg.id_column and cfg.id_column not in columns:
        raise CordError(f"{path}: no id column {cfg.id_column!r} (columns: {', '.join(sorted(columns))}); "
                        "set synth.id_column or leave it unset")
    return RowSource(str(path), "generic", raw_rows, lambda raw, i: (_generic_row(raw, i, cfg, stem), ""), cfg.limit)


def _chain(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest
