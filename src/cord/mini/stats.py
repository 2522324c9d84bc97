"""Paired comparisons for the miniature: bootstrap intervals on per-item outcomes.

Every comparison is *paired*: two arms (a method and the control, or a method and the
Stage B checkpoint) answered the same test items, so the difference is taken item by item
and the item-to-item variation they share cancels. The data of one comparison is, per
independent start ``s`` (its own data, Stage A/B and test set), a matrix ``D_s`` of shape
(Stage C seeds, items): ``D_s[k, i] = y_arm(k, i) − y_ref(k, i)``, where ``y`` is 1 for a
correct answer and seed ``k`` of the two arms shares its data order (the Stage B checkpoint,
one model, is the same row for every seed).

The estimate is the mean of ``D`` over items and seeds, averaged over starts with equal
weight. Its 95 % interval is a percentile bootstrap that resamples every level the result
could vary over (Davison & Hinkley 1997, ch. 3.8, nested data):

    starts with replacement; within each start, seeds with replacement and items with
    replacement (the same item draw for every seed, as the seeds answered the same items).

A start drawn twice in one replicate gets two independent inner draws. With one start the interval covers items and
seeds only; it says nothing about another Stage A/B start (that is what ``--study`` adds).
With two seeds the seed level is resampled crudely (bootstrap variance (K−1)/K of the
truth), so few-seed intervals lean narrow. Values are in accuracy points (× 100).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cord import CordError

#: the three possible conclusions, from CORD's interval against the control
CONCLUSIONS = ("cord_beats_control", "no_clear_difference", "cord_worse_than_control")
#: the four pre-registered outcomes of the primary contrast (docs/demo/preregistration.md)
OUTCOMES = ("cord_beats_control", "cord_worse_than_control", "equivalent", "inconclusive")
#: z quantiles of a two-sided 5 % test at 80 % power: mde = (1.959964 + 0.841621) · SE
Z_ALPHA, Z_POWER = 1.959964, 0.841621


def paired_matrix(arm: Sequence[dict[str, bool]], ref: Sequence[dict[str, bool]], ids: Sequence[str]) -> np.ndarray:
    """(seeds, items) differences ``arm − ref`` in {−1, 0, 1}. ``arm`` / ``ref``: one
    {item id: correct} per seed (a ``ref`` of one entry is broadcast: the Stage B checkpoint);
    ``ids``: the items, in a fixed order. A missing item is an error, not a silent drop."""
    if len(ref) not in (1, len(arm)):
        raise CordError(f"paired comparison: {len(arm)} arm seed(s) against {len(ref)} reference seed(s)")
    for name, rows in (("arm", arm), ("reference", ref)):
        for row in rows:
            missing = [i for i in ids if i not in row]
            if missing:
                raise CordError(f"paired comparison: the {name} has no outcome for {len(missing)} item(s), "
                                f"e.g. {missing[0]!r}")
    a = np.array([[float(row[i]) for i in ids] for row in arm])
    r = np.array([[float(row[i]) for i in ids] for row in ref])
    return a - (r if len(ref) == len(arm) else np.broadcast_to(r, a.shape))


def bootstrap_mean(starts: Sequence[np.ndarray], replicates: int = 10_000, seed: int = 0) -> dict:
    """Mean of the per-start (seeds, items) difference matrices and its nested percentile
    bootstrap 95 % interval, in accuracy points: ``{mean, ci95: [lo, hi], se}`` (``se``:
    the bootstrap standard deviation). Deterministic for a given ``seed``."""
    mats = [np.asarray(m, dtype=np.float64) for m in starts]
    if not mats or any(m.ndim != 2 or m.size == 0 for m in mats):
        raise CordError("bootstrap_mean: need at least one non-empty (seeds, items) matrix per start")
    rng = np.random.default_rng(seed)
    n_starts = len(mats)
    if n_starts == 1:
        values = _resample_start(mats[0], replicates, rng)
    else:
        # each replicate draws n_starts starts with replacement; every drawn start gets its
        # own inner (seeds, items) resample, even when the same start is drawn twice
        picked = rng.integers(0, n_starts, size=(replicates, n_starts))
        inner = np.empty(picked.shape)
        for s, m in enumerate(mats):
            where = picked == s
            inner[where] = _resample_start(m, int(where.sum()), rng)
        values = inner.mean(1)
    mean = float(np.mean([m.mean() for m in mats]))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return {"mean": 100 * mean, "ci95": [100 * float(lo), 100 * float(hi)], "se": 100 * float(values.std(ddof=1))}


def _resample_start(m: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """``replicates`` bootstrap means of one start's (seeds, items) matrix: seeds drawn with
    replacement, then items drawn with replacement (one item draw for all seeds).

    Exact and fast: for a given multiset of drawn seeds, each item's value is its mean over
    them and takes few distinct values (differences of 0/1 outcomes), so the mean of n items
    drawn with replacement is Σ value · Multinomial(n, value frequencies) / n — one
    multinomial draw per replicate instead of n item indices."""
    k, n = m.shape
    w_seed = rng.multinomial(k, np.full(k, 1.0 / k), size=replicates)  # (B, K) seed draw counts
    patterns, which = np.unique(w_seed, axis=0, return_inverse=True)
    which = np.asarray(which).reshape(-1)
    out = np.empty(replicates)
    for p, counts in enumerate(patterns):
        rows = np.nonzero(which == p)[0]
        per_item = counts @ m / k  # each item's mean over this draw of seeds
        values, freq = np.unique(per_item, return_counts=True)
        draws = rng.multinomial(n, freq / n, size=len(rows))  # (rows, distinct values)
        out[rows] = draws @ values / n
    return out


def conclusion(cord_vs_control: dict) -> str:
    """``cord_beats_control`` when CORD's 95 % interval against the control lies wholly
    above 0, ``cord_worse_than_control`` when wholly below, else ``no_clear_difference``."""
    lo, hi = cord_vs_control["ci95"]
    if lo > 0:
        return "cord_beats_control"
    if hi < 0:
        return "cord_worse_than_control"
    return "no_clear_difference"


def mde(se: float) -> float:
    """The minimum detectable effect: the true difference a two-sided 5 % test (the 95 %
    interval excluding 0) would detect with 80 % power, given the standard error ``se`` of the
    estimate — (z_0.975 + z_0.80) · se = 2.80 · se (normal approximation; ``se`` is the
    bootstrap standard deviation). Same units as ``se``."""
    return (Z_ALPHA + Z_POWER) * se


def primary_outcome(mean: float, ci95: Sequence[float], margin: float) -> str:
    """The pre-registered outcome of the primary contrast (CORD − SFT-self, points), read off the
    95 % interval [lo, hi] in this order:

    1. ``cord_beats_control``: lo > 0 (the whole interval above zero);
    2. ``cord_worse_than_control``: hi < 0 (the whole interval below zero);
    3. ``equivalent``: −margin < lo and hi < margin (the interval holds 0 and lies inside ±margin);
    4. ``inconclusive``: anything else (the interval holds 0 and reaches past a margin).

    A detected difference (1, 2) is reported as such even when it is smaller than the margin."""
    lo, hi = ci95
    if not lo <= mean <= hi:
        raise CordError(f"primary_outcome: the mean {mean} lies outside its interval [{lo}, {hi}]")
    if lo > 0:
        return "cord_beats_control"
    if hi < 0:
        return "cord_worse_than_control"
    if -margin < lo and hi < margin:
        return "equivalent"
    return "inconclusive"
