"""Ranking metrics: exact values on hand-computed examples, agreement with sklearn, bad inputs."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from tsa_lib.evaluation.metrics import (
    average_precision,
    card_precision_at_k,
    card_precision_by_day,
    psi,
    recall_at_fpr,
    roc_auc,
    summarize,
)

# ---- hand-computed values ------------------------------------------------------------


def test_auc_ap_small_example() -> None:
    # positives .35 and .8 vs negatives .1 and .4: 3 of 4 pairs ordered right -> AUC 3/4.
    # descending: .8(+) .4(-) .35(+) .1(-): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert roc_auc(y, s) == 0.75
    assert average_precision(y, s) == pytest.approx(5 / 6, abs=1e-15)


def test_auc_ap_with_ties() -> None:
    # positives .5 .9 .2, negatives .5 .2: pairs 0.5 + 1 + 1 + 1 + 0 + 0.5 = 4 of 6.
    # groups desc: .9 {+} -> P 1, R 1/3; .5 {+,-} -> P 2/3, R 2/3; .2 {+,-} -> P 3/5, R 1.
    # AP = 1/3 (1 + 2/3 + 3/5) = 34/45.
    y, s = [0, 1, 0, 1, 1], [0.5, 0.5, 0.2, 0.9, 0.2]
    assert roc_auc(y, s) == pytest.approx(4 / 6, abs=1e-15)
    assert average_precision(y, s) == pytest.approx(34 / 45, abs=1e-15)


def test_auc_perfect_inverted_and_constant() -> None:
    assert roc_auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert roc_auc([0, 0, 1], [0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5
    assert average_precision([0, 1, 0, 1], [0.5] * 4) == 0.5  # one threshold: P 1/2 at R 1
    assert average_precision([1, 1], [0.1, 0.2]) == 1.0


def test_one_class_is_nan_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tsa_lib.evaluation.metrics"):
        assert math.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))
        assert math.isnan(average_precision([0, 0], [0.1, 0.2]))
        assert math.isnan(recall_at_fpr([1, 1], [0.1, 0.2]))
    assert "single class" in caplog.text and "without positives" in caplog.text


def test_recall_at_fpr_hand_example() -> None:
    # 3 positives, 7 negatives; descending: + + - + - - - - - -
    y = [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    assert recall_at_fpr(y, s, max_fpr=0.0) == pytest.approx(2 / 3)  # stop before the first negative
    assert recall_at_fpr(y, s, max_fpr=0.1) == pytest.approx(2 / 3)  # one negative is 1/7 > 0.1
    assert recall_at_fpr(y, s, max_fpr=1 / 7) == 1.0  # one negative allowed: the third positive comes next
    assert recall_at_fpr(y, s, max_fpr=1.0) == 1.0


def test_recall_at_fpr_ties_go_together() -> None:
    # the second positive ties with the only negative: it cannot be taken without it
    assert recall_at_fpr([1, 0, 1], [0.9, 0.5, 0.5], max_fpr=0.0) == 0.5
    assert recall_at_fpr([1, 0, 1], [0.9, 0.5, 0.5], max_fpr=0.99) == 0.5
    assert recall_at_fpr([1, 0, 1], [0.9, 0.5, 0.5], max_fpr=1.0) == 1.0
    assert recall_at_fpr([0, 1], [0.9, 0.1], max_fpr=0.5) == 0.0  # only the "flag nothing" point


# two days; card A's fraud on day 1 is on its low-score order but the card still counts as fraudulent
CARD = ["A", "A", "B", "C", "D", "A", "E", "C"]
DAY = [1, 1, 1, 1, 1, 2, 2, 2]
Y = [0, 1, 0, 1, 0, 0, 1, 1]
S = [0.9, 0.2, 0.8, 0.7, 0.1, 0.3, 0.6, 0.95]


def test_card_precision_two_days() -> None:
    # day 1 maxima: A .9 (fraud), B .8, C .7 (fraud), D .1; day 2: C .95 (fraud), E .6 (fraud), A .3
    # k=2: day 1 top {A, B} -> 1/2 (A detected), day 2 without A: top {C, E} -> 1 -> mean 3/4
    assert card_precision_at_k(CARD, DAY, Y, S, k=2) == 0.75
    assert card_precision_by_day(CARD, DAY, Y, S, k=2) == {1: 0.5, 2: 1.0}
    # k=3: day 1 {A, B, C} -> 2/3, A and C detected; day 2 only E is left -> 1/3
    assert card_precision_by_day(CARD, DAY, Y, S, k=3) == pytest.approx({1: 2 / 3, 2: 1 / 3})
    # k larger than any day: out of k all the same: day 1 2/100, day 2 (E) 1/100
    assert card_precision_at_k(CARD, DAY, Y, S, k=100) == pytest.approx((0.02 + 0.01) / 2)
    # input order does not matter
    p = np.random.default_rng(0).permutation(len(CARD))
    assert card_precision_at_k(np.array(CARD, object)[p], np.array(DAY)[p], np.array(Y)[p], np.array(S)[p],
                               k=2) == 0.75


def test_card_precision_ties_at_cutoff_share_slots() -> None:
    # Z .9 (legit) is in; X and Y tie at .5 for the one slot left, X fraudulent: expected hits 1/2 -> 1/4
    assert card_precision_at_k(["X", "Y", "Z"], ["d"] * 3, [1, 0, 0], [0.5, 0.5, 0.9], k=2) == 0.25


def test_psi_hand_example_identical_and_shifted() -> None:
    expected = np.arange(1, 11, dtype=float)  # 2 bins split at the median 5.5: shares 1/2, 1/2
    actual = [1, 1, 1, 9]  # shares 3/4, 1/4 -> 1/4 ln(3/2) - 1/4 ln(1/2) = ln(3)/4
    assert psi(expected, actual, bins=2) == pytest.approx(math.log(3) / 4, abs=1e-12)
    rng = np.random.default_rng(1)
    base = rng.normal(size=20_000)
    assert psi(base, base) == 0.0
    assert psi(base, rng.permutation(base)) == 0.0
    assert psi(base, rng.normal(size=20_000)) < 0.01
    assert psi(base, rng.normal(0.5, 1.0, size=20_000)) > 0.1
    assert psi(base, base + 10) > 1.0  # all mass in the top bin: eps-guarded, finite
    assert math.isfinite(psi(base, base + 10))


def test_summarize_keys_and_values() -> None:
    out = summarize(Y, S)
    assert set(out) == {"n", "positives", "roc_auc", "average_precision", "recall_at_1pct_fpr"}
    assert out["n"] == 8 and out["positives"] == 4
    assert out["roc_auc"] == roc_auc(Y, S)
    with_cards = summarize(Y, S, card_ids=CARD, day=DAY)
    assert with_cards["card_precision_at_100"] == pytest.approx((0.02 + 0.01) / 2)


# ---- agreement with sklearn ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_sklearn_on_tied_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 3000))
    y = (rng.random(n) < rng.uniform(0.02, 0.6)).astype(int)
    y[:2] = [0, 1]
    s = np.round(rng.normal(y * 0.7, 1.0), int(rng.integers(0, 3)))  # 0-2 decimals: many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    for max_fpr in (0.0, 0.01, 0.1, 0.5):
        assert recall_at_fpr(y, s, max_fpr) == pytest.approx(tpr[fpr <= max_fpr].max(), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60))
def test_agrees_with_sklearn_hypothesis(rows: list[tuple[int, int]]) -> None:
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=float) / 3.0
    if y.min() == y.max():
        assert math.isnan(roc_auc(y, s))
        return
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_accepts_bools_floats_and_infinite_scores() -> None:
    assert roc_auc(np.array([False, True]), [0.1, 0.2]) == 1.0
    assert roc_auc(np.array([0.0, 1.0]), [-np.inf, np.inf]) == 1.0


# ---- bad inputs -------------------------------------------------------------------------


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="y_true has 3, score has 2"):
        roc_auc([0, 1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"y_true: expected only 0/1 labels, got values \[2\]"):
        average_precision([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"y_true: expected only 0/1 labels, got values \[nan\]"):
        roc_auc([0, 1, float("nan")], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="y_true: expected numeric 0/1 labels, got dtype"):
        roc_auc(["a", "b"], [0.1, 0.2])
    with pytest.raises(ValueError, match="score: 2 NaN score"):
        recall_at_fpr([0, 1, 1], [0.1, float("nan"), float("nan")])
    with pytest.raises(ValueError, match="score: expected a 1-D array, got shape"):
        roc_auc([0, 1], [[0.1], [0.2]])
    with pytest.raises(ValueError, match="y_true: expected at least one value"):
        roc_auc([], [])
    with pytest.raises(ValueError, match="max_fpr: expected a number in \\[0, 1\\], got 1.5"):
        recall_at_fpr([0, 1], [0.1, 0.2], max_fpr=1.5)
    with pytest.raises(ValueError, match="k: expected an integer >= 1, got 0"):
        card_precision_at_k(CARD, DAY, Y, S, k=0)
    with pytest.raises(ValueError, match="card_ids has 7, day has 8"):
        card_precision_at_k(CARD[:-1], DAY, Y, S, k=2)
    with pytest.raises(ValueError, match="card_ids: 1 None value"):
        card_precision_at_k(["A", None], [1, 1], [0, 1], [0.1, 0.2], k=2)
    with pytest.raises(ValueError, match="bins: expected an integer >= 2, got 1"):
        psi([0.1, 0.2], [0.1, 0.2], bins=1)
    with pytest.raises(ValueError, match="actual_scores: 1 NaN score"):
        psi([0.1, 0.2], [0.1, float("nan")])
    with pytest.raises(ValueError, match="card_ids and day: give both or neither"):
        summarize(Y, S, card_ids=CARD)
