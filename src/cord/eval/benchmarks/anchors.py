"""Published numbers ("anchors") to set beside cord's own in ``cord table``."""

from __future__ import annotations

from dataclasses import dataclass

# --- published numbers ("anchors") -----------------------------------------------------------


@dataclass(frozen=True)
class Anchor:
    """A published number to set beside cord's own (``cord table``).

    ``model``: the checkpoint it was measured on (hub id). ``benchmark``: a registry name
    (``voicebench-mmsu``, ``gsm8k-audio``, ``mmau-test-mini``, …) or ``"average"`` (over the
    paper's benchmarks). ``group``: a report group within it (MMAU's task: ``sound``, ``music``,
    ``speech``), None for the whole benchmark. ``metric``: ``audio_acc`` (accuracy from speech),
    ``audio_acc_task_mean`` (MMAU's mean over tasks) or ``gap_reduction`` ((gap_base − gap) /
    gap_base). ``method``: ``base`` (the checkpoint as released) or the training method the
    number belongs to (``cord``, ``forward_kl``, … as in :data:`cord.types.METHODS`).
    ``value``: in percent, as printed in ``source``. ``protocol``: the ``cord eval --protocol``
    whose numbers are comparable with it, where one is. ``note``: what to keep in mind."""

    model: str
    benchmark: str
    metric: str
    method: str
    value: float
    source: str
    group: str | None = None
    protocol: str | None = None
    note: str = ""


#: every registered anchor, in registration order (:func:`register_anchor`)
ANCHORS: list[Anchor] = []


def register_anchor(anchor: Anchor) -> None:
    """Add a published number (or replace the one with the same model, benchmark, group,
    metric, method and source)."""
    key = (anchor.model.lower(), anchor.benchmark, anchor.group, anchor.metric, anchor.method, anchor.source)
    for i, a in enumerate(ANCHORS):
        if (a.model.lower(), a.benchmark, a.group, a.metric, a.method, a.source) == key:
            ANCHORS[i] = anchor  # in place: the registry's order (and so a table's footnotes) stays
            return
    ANCHORS.append(anchor)


def anchor_model(name_or_path: str | None) -> str | None:
    """The anchors' model id that ``name_or_path`` names: the hub id itself (any case), or a
    local folder named like the checkpoint (``/models/Qwen2-Audio-7B-Instruct``). None: no
    published numbers for it."""
    if not name_or_path:
        return None
    text = str(name_or_path).strip().rstrip("/")
    models = list(dict.fromkeys(a.model for a in ANCHORS))
    for m in models:
        if text.lower() == m.lower():
            return m
    tail = text.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for m in models:
        if tail == m.rsplit("/", 1)[-1].lower():
            return m
    return None


def anchors_for(name_or_path: str | None, benchmark: str | None = None) -> list[Anchor]:
    """The published numbers for the model ``name_or_path`` (see :func:`anchor_model`),
    optionally of one benchmark."""
    model = anchor_model(name_or_path)
    if model is None:
        return []
    return [a for a in ANCHORS if a.model == model and (benchmark is None or a.benchmark == benchmark)]


_CORD_PAPER = "CORD paper (arXiv 2601.16547), main results"
_VOICEBENCH = "VoiceBench leaderboard (official runner)"
_MMAU_PAPER = "MMAU paper (original test-mini release)"
_QWEN2_AUDIO = "Qwen/Qwen2-Audio-7B-Instruct"
_STEP_AUDIO2 = "stepfun-ai/Step-Audio-2-mini"
_GSM8K_NOTE = "the paper does not name its spoken GSM8K source; cord's gsm8k-audio may differ"
_CORD_PROMPT_NOTE = "the paper's prompts are not published"


def _register_builtin_anchors() -> None:
    qa = _QWEN2_AUDIO
    for bench, base, cord_, note in (
        ("voicebench-mmsu", 36.04, 38.06, _CORD_PROMPT_NOTE),
        ("voicebench-openbookqa", 51.20, 52.77, _CORD_PROMPT_NOTE),
        ("gsm8k-audio", 20.73, 36.20, _GSM8K_NOTE),
    ):
        register_anchor(Anchor(qa, bench, "audio_acc", "base", base, _CORD_PAPER, note=note))
        register_anchor(Anchor(qa, bench, "audio_acc", "cord", cord_, _CORD_PAPER, note=note))
    register_anchor(Anchor(qa, "average", "gap_reduction", "cord", 41.6, _CORD_PAPER,
                           note="average over MMSU, OBQA and GSM8K"))
    register_anchor(Anchor(qa, "average", "gap_reduction", "forward_kl", 28.5, _CORD_PAPER,
                           note="average over MMSU, OBQA and GSM8K"))
    for task, base, cord_, fkl_delta in (("music", 58.98, 60.18, -2.99), ("sound", 64.74, 64.44, -3.04),
                                         ("speech", 58.73, 55.42, None)):
        register_anchor(Anchor(qa, "mmau-test-mini", "audio_acc", "base", base, _CORD_PAPER, group=task,
                               note="the CORD paper's own MMAU run (its MMAU version and prompt are not stated)"))
        register_anchor(Anchor(qa, "mmau-test-mini", "audio_acc", "cord", cord_, _CORD_PAPER, group=task))
        if fkl_delta is not None:
            register_anchor(Anchor(qa, "mmau-test-mini", "audio_acc", "forward_kl", round(base + fkl_delta, 2),
                                   _CORD_PAPER, group=task,
                                   note=f"the paper gives forward KL's change, {fkl_delta:+.2f} vs base"))
    for bench, value in (("voicebench-mmsu", 35.72), ("voicebench-openbookqa", 49.45)):
        register_anchor(Anchor(qa, bench, "audio_acc", "base", value, _VOICEBENCH, protocol="official",
                               note="VoiceBench scores a response with no letter as a random letter "
                                    "(cord: audio_acc_official = strict + fail/4)"))
    for task, value in (("sound", 54.95), ("music", 50.98), ("speech", 42.04)):
        register_anchor(Anchor(qa, "mmau-test-mini", "audio_acc", "base", value, _MMAU_PAPER, group=task,
                               protocol="official", note="today's mmau-test-mini.json is a later revision"))
    register_anchor(Anchor(qa, "mmau-test-mini", "audio_acc_task_mean", "base", 49.20, _MMAU_PAPER,
                           protocol="official", note="mean of sound, music and speech"))
    sa = _STEP_AUDIO2
    for bench, value, note in (("voicebench-mmsu", 57.63, _CORD_PROMPT_NOTE),
                               ("voicebench-openbookqa", 77.74, _CORD_PROMPT_NOTE),
                               ("gsm8k-audio", 47.56, _GSM8K_NOTE)):
        register_anchor(Anchor(sa, bench, "audio_acc", "cord", value, _CORD_PAPER, note=note))
    register_anchor(Anchor(sa, "average", "gap_reduction", "cord", 44.8, _CORD_PAPER,
                           note="average over MMSU, OBQA and GSM8K"))
    register_anchor(Anchor(sa, "average", "gap_reduction", "forward_kl", 10.5, _CORD_PAPER,
                           note="average over MMSU, OBQA and GSM8K"))


_register_builtin_anchors()
