"""Ranking metrics for fraud scores, numpy only (no sklearn in the library).

Every function takes aligned 1-D array-likes and validates them the same way:
labels must be 0/1 (bools and 0.0/1.0 floats are accepted), scores must be
numbers without NaN (+-inf is allowed: it still ranks), lengths must agree and
inputs must not be empty.  Errors name the argument and the value received.

Definitions (all ties are grouped: orders with the same score are cut
together, never split by their position in the input):

- ``roc_auc``: the area under the ROC curve, equal to the Mann-Whitney
  statistic with average ranks for ties; the same number as sklearn's
  ``roc_auc_score``.  Undefined with one class: returns ``nan`` and logs a
  warning.
- ``average_precision``: sum over distinct score thresholds (descending) of
  (recall_i - recall_{i-1}) * precision_i, the step-wise definition of
  sklearn's ``average_precision_score`` (no interpolation).  Undefined without
  positives: returns ``nan`` and logs a warning.
- ``recall_at_fpr``: the highest recall over the thresholds at distinct score
  values whose false-positive rate is <= ``max_fpr`` (the "flag nothing" point
  counts, so the result is at least 0).  ``nan`` with one class.
- ``card_precision_at_k``: the fraud literature's card precision top-k (per
  day, the top ``k`` cards by their maximum score that day; precision = share
  of those cards with at least one fraudulent order that day, out of ``k``; a card found
  compromised is detected and left out of the later days; averaged over the
  days).  Cards tied at the cut-off share the remaining slots: the result is
  the expected precision under a random tie-break, so it does not depend on
  input order.
- ``psi``: population stability index of ``actual`` against ``expected`` on
  ``bins`` quantile bins of ``expected``; empty-bin shares are floored at
  ``eps``.  Equal quantiles (heavy ties) merge bins; that is logged.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
from numpy.typing import ArrayLike

log = logging.getLogger(__name__)

__all__ = ["roc_auc", "average_precision", "recall_at_fpr", "card_precision_at_k", "card_precision_by_day", "psi",
           "summarize"]


# ---- validation ---------------------------------------------------------------

def _as_1d(name: str, values: ArrayLike, dtype: Optional[Any] = None) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: cannot be read as a 1-D array ({type(values).__name__}): {e}") from e
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: expected at least one value, got an empty array")
    return arr


def _validate_labels(name: str, y_true: ArrayLike) -> np.ndarray:
    y = _as_1d(name, y_true)
    if y.dtype == bool:
        return y.astype(np.int64)
    if y.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected numeric 0/1 labels, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))  # NaN is not in (0, 1) either
    if bad.any():
        shown = np.unique(y[bad])[:5].tolist()
        raise ValueError(f"{name}: expected only 0/1 labels, got values {shown}")
    return y.astype(np.int64)


def _validate_scores(name: str, score: ArrayLike) -> np.ndarray:
    s = _as_1d(name, score)
    if s.dtype == bool:
        s = s.astype(np.float64)
    if s.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected numeric scores, got dtype {s.dtype}")
    s = s.astype(np.float64)
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        raise ValueError(f"{name}: {n_nan} NaN score(s) out of {s.size}; scores must be numbers")
    return s


def _check_lengths(**arrays: np.ndarray) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise ValueError(f"inputs must have the same length: {desc}")


def _validate_binary(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _validate_labels("y_true", y_true)
    s = _validate_scores("score", score)
    _check_lengths(y_true=y, score=s)
    return y, s


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) counts at each distinct score, thresholds descending (ties cut together)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]  # last index of each tie group
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    return tps, fps


# ---- binary ranking metrics --------------------------------------------------

def roc_auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve; ties count one half (average rank).  ``nan`` (and a warning) with one class."""
    y, s = _validate_binary(y_true, score)
    tps, fps = _curve(y, s)
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    if n_pos == 0 or n_neg == 0:
        log.warning("roc_auc: undefined with a single class (%d positives, %d negatives); returning nan",
                    n_pos, n_neg)
        return float("nan")
    # per tie group (integer counts, so exact): its positives beat every negative in lower groups
    # (n_neg - fps of this group's cumulative count) and tie, for one half, with the group's own negatives.
    d_tp = np.diff(np.r_[0, tps])
    d_fp = np.diff(np.r_[0, fps])
    wins = np.sum(d_tp * (n_neg - fps)) + 0.5 * np.sum(d_tp * d_fp)
    return float(wins / (n_pos * n_neg))


def average_precision(y_true: ArrayLike, score: ArrayLike) -> float:
    """Step-wise average precision (sklearn's definition).  ``nan`` (and a warning) without positives."""
    y, s = _validate_binary(y_true, score)
    tps, fps = _curve(y, s)
    n_pos = int(tps[-1])
    if n_pos == 0:
        log.warning("average_precision: undefined without positives (%d negatives); returning nan", int(fps[-1]))
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def recall_at_fpr(y_true: ArrayLike, score: ArrayLike, max_fpr: float = 0.01) -> float:
    """Highest recall over distinct-score thresholds with false-positive rate <= ``max_fpr``."""
    if isinstance(max_fpr, bool) or not isinstance(max_fpr, (int, float)) or not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr: expected a number in [0, 1], got {max_fpr!r}")
    y, s = _validate_binary(y_true, score)
    tps, fps = _curve(y, s)
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    if n_pos == 0 or n_neg == 0:
        log.warning("recall_at_fpr: undefined with a single class (%d positives, %d negatives); returning nan",
                    n_pos, n_neg)
        return float("nan")
    ok = fps / n_neg <= max_fpr
    return float(tps[ok].max() / n_pos) if ok.any() else 0.0


# ---- card precision top-k ----------------------------------------------------------

def card_precision_by_day(card_ids: ArrayLike, day: ArrayLike, y_true: ArrayLike, score: ArrayLike,
                          k: int = 100) -> dict[Any, float]:
    """Card precision top-k per day, as the fraud-detection literature defines it: each day, the
    ``k`` cards with the highest maximum score that day; precision = the share of them that are
    compromised (at least one fraudulent order that day), out of ``k`` (a day with fewer cards
    cannot reach 1); a card found compromised in a day's top ``k`` counts as detected (blocked)
    and is left out of every later day.  Days in ascending order; ties at the cut-off share the
    remaining slots (expected precision), and the detected cards among them are taken by card id."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected an integer >= 1, got {k!r}")
    y, s = _validate_binary(y_true, score)
    cards = _as_1d("card_ids", card_ids)
    days = _as_1d("day", day)
    _check_lengths(card_ids=cards, day=days, y_true=y, score=s)
    if cards.dtype == object:
        n_none = sum(v is None for v in cards)
        if n_none:
            raise ValueError(f"card_ids: {n_none} None value(s) out of {cards.size}")
    try:
        card_vals, card_idx = np.unique(cards, return_inverse=True)
    except TypeError as e:
        raise ValueError(f"card_ids: values are not mutually comparable (mixed types?): {e}") from e
    try:
        day_vals, day_idx = np.unique(days, return_inverse=True)
    except TypeError as e:
        raise ValueError(f"day: values are not mutually comparable (mixed types?): {e}") from e
    card_idx = card_idx.reshape(-1).astype(np.int64)
    day_idx = day_idx.reshape(-1).astype(np.int64)
    n_cards = int(card_idx.max()) + 1
    ukey, inv = np.unique(day_idx * n_cards + card_idx, return_inverse=True)
    inv = inv.reshape(-1)
    g_score = np.full(ukey.size, -np.inf)
    np.maximum.at(g_score, inv, s)
    g_fraud = np.zeros(ukey.size, np.int64)
    np.maximum.at(g_fraud, inv, y)
    g_day, g_card = ukey // n_cards, ukey % n_cards
    detected = np.zeros(n_cards, dtype=bool)
    out: dict[Any, float] = {}
    for d in range(day_vals.size):
        keep = (g_day == d) & ~detected[g_card]
        if not keep.any():
            continue
        sc, fr, cd = g_score[keep], g_fraud[keep], g_card[keep]
        order = np.lexsort((cd, -sc))               # score descending, then card id
        sc, fr, cd = sc[order], fr[order], cd[order]
        kk = min(k, sc.size)
        cut = sc[kk - 1]
        above, tie = sc > cut, sc == cut
        slots = kk - int(above.sum())
        out[day_vals[d]] = float((fr[above].sum() + slots * fr[tie].sum() / tie.sum()) / k)
        detected[cd[:kk][fr[:kk] == 1]] = True
    return out


def card_precision_at_k(card_ids: ArrayLike, day: ArrayLike, y_true: ArrayLike, score: ArrayLike,
                        k: int = 100) -> float:
    """The mean over days of ``card_precision_by_day`` (detected cards left out of later days)."""
    by_day = card_precision_by_day(card_ids, day, y_true, score, k)
    return float(np.mean(list(by_day.values()))) if by_day else float("nan")


# ---- drift --------------------------------------------------------------------------

def psi(expected_scores: ArrayLike, actual_scores: ArrayLike, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of ``actual_scores`` against quantile bins of ``expected_scores``.

    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins: expected an integer >= 2, got {bins!r}")
    if not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
        raise ValueError(f"eps: expected a number in (0, 1), got {eps!r}")
    e = _validate_scores("expected_scores", expected_scores)
    a = _validate_scores("actual_scores", actual_scores)
    inner = np.unique(np.quantile(e, np.linspace(0.0, 1.0, bins + 1))[1:-1])
    if inner.size + 1 < bins:
        log.warning("psi: %d of %d quantile bins left after merging equal quantiles (ties in expected_scores)",
                    inner.size + 1, bins)
    n_bins = inner.size + 1
    pe = np.bincount(np.searchsorted(inner, e, side="left"), minlength=n_bins) / e.size
    pa = np.bincount(np.searchsorted(inner, a, side="left"), minlength=n_bins) / a.size
    pe, pa = np.maximum(pe, eps), np.maximum(pa, eps)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


# ---- summary ------------------------------------------------------------------------

def summarize(y_true: ArrayLike, score: ArrayLike, card_ids: Optional[ArrayLike] = None,
              day: Optional[ArrayLike] = None) -> dict[str, float]:
    """n, positives, roc_auc, average_precision, recall_at_1pct_fpr (+ card_precision_at_100 with cards and days)."""
    if (card_ids is None) != (day is None):
        raise ValueError("card_ids and day: give both or neither, got "
                         f"card_ids={'None' if card_ids is None else 'values'}, "
                         f"day={'None' if day is None else 'values'}")
    y, s = _validate_binary(y_true, score)
    out: dict[str, float] = {
        "n": int(y.size),
        "positives": int(y.sum()),
        "roc_auc": roc_auc(y, s),
        "average_precision": average_precision(y, s),
        "recall_at_1pct_fpr": recall_at_fpr(y, s, 0.01),
    }
    if card_ids is not None and day is not None:
        out["card_precision_at_100"] = card_precision_at_k(card_ids, day, y, s, k=100)
    return out
