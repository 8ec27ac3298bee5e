"""LightGBM peers for the TSA model, on the generator's data, pure pandas/numpy.

Two peers, trained on the earliest days, early-stopped on a validation window
after them, scored once on the latest days (the test window is never used for
tuning):

(a) ``lgbm_raw``: the current order's raw columns (categoricals as LightGBM
    categorical features, device_id left out: too many levels) plus the
    engineered per-order features;
(b) ``lgbm_raw_plus_aggregates``: (a) plus hand-made point-in-time aggregates
    per customer and per card, computed only from strictly earlier orders
    (same-timestamp orders are not history) and never from labels.

``evaluate_scores(test_frame, score, name)`` is the one evaluation path: the
TSA scores go through it later, on the same rows (``rows_fingerprint``).

Run (2-3 minutes on 2 busy cores at the demo size, mostly LightGBM)::

    PYTHONPATH=. nice -n 10 .venv/bin/python -m bench.quality.peers \\
        --seed 2026 --customers 20000 --days 60 --train-days 35 --valid-days 7 --test-days 18 \\
        --out bench/results/quality_peers.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd

from tsa_lib.config import GeneratorConfig
from tsa_lib.data.synthetic import FRAUD_SCENARIOS, generate
from tsa_lib.evaluation.metrics import average_precision, card_precision_at_k, roc_auc, summarize

log = logging.getLogger(__name__)

CATEGORICAL = ("merchant_category", "channel", "country", "entry_mode")
NUMERICAL = ("amount", "hour_of_day", "items")
ENGINEERED = ("account_age_days", "card_age_days", "email_risk", "ip_risk", "billing_shipping_match",
              "customer_tenure_orders")
TEST_FRAME_COLUMNS = ("order_id", "is_fraud", "scenario", "card_id", "day")
HOUR, DAY = 3600, 86400
TINY_AMOUNT = 3.0
MAX_FPR = 0.01

LGB_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "metric": ["average_precision", "auc"],
    "first_metric_only": True,
    "num_threads": 2,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}
NUM_BOOST_ROUND = 3000
EARLY_STOPPING_ROUNDS = 100


# ---- data ---------------------------------------------------------------------------------

def load_or_generate(seed: int, n_customers: int, n_days: int,
                     cache_dir: Optional[Union[str, Path]] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(transactions, order_features) of the synthetic generator (no dirty rows), cached as parquet if asked."""
    cfg = GeneratorConfig(seed=seed, n_customers=n_customers, n_days=n_days)
    paths: Optional[tuple[Path, Path]] = None
    if cache_dir is not None:
        stem = f"synthetic_s{seed}_c{n_customers}_d{n_days}_{cfg.start_date}"
        paths = (Path(cache_dir) / f"{stem}_transactions.parquet", Path(cache_dir) / f"{stem}_features.parquet")
        if paths[0].exists() and paths[1].exists():
            log.info("loading cached synthetic data %s", paths[0])
            return pd.read_parquet(paths[0]), pd.read_parquet(paths[1])
    g = generate(cfg, dirty_rate=0.0)
    if paths is not None:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        g.transactions.to_parquet(paths[0], index=False)
        g.order_features.to_parquet(paths[1], index=False)
    return g.transactions, g.order_features


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    return ts.to_numpy(dtype="datetime64[s]").astype(np.int64)


def add_day(tx: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``tx`` with ``day`` (UTC calendar day, datetime64[D]) and ``day_index`` (days since the first)."""
    out = tx.copy()
    out["day"] = tx["order_ts"].to_numpy(dtype="datetime64[D]")
    out["day_index"] = (out["day"] - out["day"].min()).dt.days.astype(np.int64)
    return out


def time_split(tx: pd.DataFrame, train_days: int, valid_days: int,
               test_days: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split by event day: the first ``train_days``, the next ``valid_days``, and the last ``test_days``.

    Days between the validation and the test window (when the three do not add
    up to the data's span) are left out.  ``tx`` needs ``day_index`` (see ``add_day``).
    """
    for name, v in (("train_days", train_days), ("valid_days", valid_days), ("test_days", test_days)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    if "day_index" not in tx.columns:
        raise ValueError(f"tx: needs a day_index column (add_day), got columns {list(tx.columns)}")
    span = int(tx["day_index"].max()) + 1
    if train_days + valid_days + test_days > span:
        raise ValueError(f"train_days + valid_days + test_days: {train_days}+{valid_days}+{test_days} = "
                         f"{train_days + valid_days + test_days} exceeds the data's {span} days")
    gap = span - (train_days + valid_days + test_days)
    if gap:
        log.warning("time_split: %d day(s) between the validation and the test window are not used", gap)
    d = tx["day_index"]
    train = tx[d < train_days]
    valid = tx[(d >= train_days) & (d < train_days + valid_days)]
    test = tx[d >= span - test_days]
    return train, valid, test


# ---- point-in-time aggregates ------------------------------------------------------------------

def _codes(values: pd.Series | np.ndarray) -> np.ndarray:
    return pd.factorize(np.asarray(values), sort=False)[0].astype(np.int64)


def _pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _codes(a * (int(b.max()) + 1) + b)


def _prior_same_pair(pair: np.ndarray, tt: np.ndarray, big: int) -> np.ndarray:
    """Per row: rows with the same pair code and a strictly earlier time (0 <= tt < big)."""
    key = pair * big + tt
    sk = np.sort(key)
    return np.searchsorted(sk, key, "left") - np.searchsorted(sk, pair * big, "left")


def _entity_aggregates(prefix: str, ent: np.ndarray, tt: np.ndarray, amount: np.ndarray, country: np.ndarray,
                       device: np.ndarray, other: Optional[np.ndarray], big: int) -> dict[str, np.ndarray]:
    """Aggregates for one entity kind; all inputs already sorted by (entity, time, order id)."""
    n = ent.size
    key = ent * big + tt
    gstart = np.searchsorted(ent, ent, "left")
    right = np.searchsorted(key, key, "left")  # end (exclusive) of the strictly earlier history
    has_prev = right > gstart
    prev = np.maximum(right - 1, 0)
    left = {w: np.searchsorted(key, key - w, "left") for w in (HOUR, DAY, 7 * DAY)}  # t - w <= t' < t

    def prefix_sum(c: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Sum over the group's rows before ``pos`` (``c`` = inclusive per-group cumsum)."""
        return np.where(pos > gstart, c[np.maximum(pos - 1, 0)], 0.0)

    g = pd.Series(ent)
    c_amt = pd.Series(amount).groupby(g).cumsum().to_numpy()
    c_sq = pd.Series(amount * amount).groupby(g).cumsum().to_numpy()
    n_prev = (right - gstart).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prev = np.where(has_prev, prefix_sum(c_amt, right) / n_prev, np.nan)
        var_prev = np.maximum(prefix_sum(c_sq, right) / n_prev - mean_prev ** 2, 0.0)
        std_prev = np.where(n_prev >= 2, np.sqrt(var_prev), np.nan)
        out: dict[str, np.ndarray] = {
            f"{prefix}_n_prev": n_prev,
            f"{prefix}_hours_since_last": np.where(has_prev, (tt - tt[prev]) / HOUR, np.nan),
            f"{prefix}_cnt_1h": (right - left[HOUR]).astype(np.float64),
            f"{prefix}_cnt_24h": (right - left[DAY]).astype(np.float64),
            f"{prefix}_cnt_7d": (right - left[7 * DAY]).astype(np.float64),
            f"{prefix}_amt_sum_24h": prefix_sum(c_amt, right) - prefix_sum(c_amt, left[DAY]),
            f"{prefix}_amt_ratio_mean": amount / mean_prev,
            f"{prefix}_amt_z": np.where(std_prev > 0, (amount - mean_prev) / std_prev, np.nan),
        }

    # countries: change vs the previous order, vs the most frequent prior country, never seen before
    pc = _pair_codes(ent, country)
    own_prior = _prior_same_pair(pc, tt, big)
    cnt_incl = pd.Series(pc).groupby(pc).cumcount().to_numpy() + 1  # position order = time order
    run_max = pd.Series(cnt_incl).groupby(g).cummax().to_numpy()
    max_prior = np.where(has_prev, run_max[prev], 0)
    out[f"{prefix}_country_changed"] = np.where(has_prev, (country != country[prev]).astype(float), np.nan)
    out[f"{prefix}_country_not_mode"] = np.where(has_prev, (own_prior < max_prior).astype(float), np.nan)
    out[f"{prefix}_country_new"] = (own_prior == 0).astype(float)
    pdv = _pair_codes(ent, device)
    out[f"{prefix}_device_new"] = (_prior_same_pair(pdv, tt, big) == 0).astype(float)
    for name, pair in (("devices", pdv), ("countries", pc)):
        out[f"{prefix}_n_{name}_7d"] = _distinct_in_window(pair, left[7 * DAY], right)

    if other is not None:  # the card's customers
        po = _pair_codes(ent, other)
        first = (pd.Series(po).groupby(po).cumcount().to_numpy() == 0).astype(np.int64)
        c_first = pd.Series(first).groupby(g).cumsum().to_numpy()
        out[f"{prefix}_n_customers_before"] = np.where(has_prev, c_first[prev], 0).astype(float)
        out[f"{prefix}_customer_new"] = (_prior_same_pair(po, tt, big) == 0).astype(float)
        c_tiny = np.r_[0, np.cumsum(amount < TINY_AMOUNT)]
        out[f"{prefix}_tiny_cnt_1h"] = (c_tiny[right] - c_tiny[left[HOUR]]).astype(float)
    assert all(v.shape == (n,) for v in out.values())
    return out


def _distinct_in_window(pair: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Distinct pair codes among rows [left, right) of each row (rows sorted by entity then time).

    A row j of the window counts if it is the last of its value inside the
    window, i.e. the next row with the same pair code is at ``right`` or after.
    """
    n = pair.size
    pos = np.arange(n)
    o = np.lexsort((pos, pair))
    nxt_sorted = np.where(np.r_[pair[o][1:] == pair[o][:-1], False], np.r_[o[1:], n], n)
    nxt = np.empty(n, np.int64)
    nxt[o] = nxt_sorted
    out = np.zeros(n, np.float64)
    width = right - left
    for lag in range(1, int(width.max(initial=0)) + 1):
        j = right - lag
        ok = j >= left
        jj = np.where(ok, j, 0)
        out += ok & (nxt[jj] >= right)
    return out


def point_in_time_features(tx: pd.DataFrame) -> pd.DataFrame:
    """Per-customer and per-card aggregates from strictly earlier orders, aligned with ``tx`` rows (+ order_id)."""
    t = _epoch_seconds(tx["order_ts"])
    tt = t - t.min()
    big = int(tt.max()) + 7 * DAY + 1  # keeps a window's lower end inside its entity's key range
    amount = tx["amount"].to_numpy(np.float64)
    country, device, cust, card = (_codes(tx[c]) for c in ("country", "device_id", "customer_id", "card_id"))
    oid = tx["order_id"].to_numpy()
    cols: dict[str, np.ndarray] = {}
    for prefix, ent, other in (("cust", cust, None), ("card", card, cust)):
        o = np.lexsort((oid, tt, ent))
        agg = _entity_aggregates(prefix, ent[o], tt[o], amount[o], country[o], device[o],
                                 None if other is None else other[o], big)
        for name, v in agg.items():
            col = np.empty(len(tx), np.float64)
            col[o] = v
            cols[name] = col
    out = pd.DataFrame(cols, index=tx.index)
    out.insert(0, "order_id", oid)
    return out


def _check_point_in_time(tx: pd.DataFrame, feats: pd.DataFrame, n_sample: int = 150, seed: int = 0) -> int:
    """Recompute a few aggregates by brute force for sampled rows; raise AssertionError on any mismatch.

    Half the sample is drawn from rows that share their timestamp with another
    order of the same entity (when there are any), where "strictly earlier" matters.
    Returns the number of values compared.
    """
    rng = np.random.default_rng(seed)
    t = _epoch_seconds(tx["order_ts"])
    amount = tx["amount"].to_numpy(np.float64)
    oid = tx["order_id"].to_numpy()
    cols = {c: tx[c].to_numpy() for c in ("customer_id", "card_id", "country", "device_id")}
    checked, bad = 0, []
    for prefix, ent_col in (("cust", "customer_id"), ("card", "card_id")):
        groups = tx.groupby(ent_col, sort=False).indices
        dup = tx.duplicated([ent_col, "order_ts"], keep=False).to_numpy()
        pool_dup, n_dup = np.flatnonzero(dup), min(n_sample // 2, int(dup.sum()))
        rows = np.r_[rng.choice(pool_dup, n_dup, replace=False),
                     rng.choice(len(tx), n_sample - n_dup, replace=False)]
        for i in rows:
            idx = groups[cols[ent_col][i]]
            h = idx[t[idx] < t[i]]
            h = h[np.lexsort((oid[h], t[h]))]
            exp: dict[str, float] = {
                "n_prev": len(h),
                "hours_since_last": (t[i] - t[h[-1]]) / HOUR if len(h) else np.nan,
                "cnt_1h": int((t[h] >= t[i] - HOUR).sum()),
                "cnt_24h": int((t[h] >= t[i] - DAY).sum()),
                "cnt_7d": int((t[h] >= t[i] - 7 * DAY).sum()),
                "amt_sum_24h": float(amount[h][t[h] >= t[i] - DAY].sum()),
                "amt_ratio_mean": amount[i] / amount[h].mean() if len(h) else np.nan,
                "amt_z": ((amount[i] - amount[h].mean()) / amount[h].std()
                          if len(h) >= 2 and amount[h].std() > 0 else np.nan),
                "country_changed": float(cols["country"][h[-1]] != cols["country"][i]) if len(h) else np.nan,
                "country_new": float(cols["country"][i] not in set(cols["country"][h])),
                "device_new": float(cols["device_id"][i] not in set(cols["device_id"][h])),
                "n_devices_7d": len(set(cols["device_id"][h][t[h] >= t[i] - 7 * DAY])),
                "n_countries_7d": len(set(cols["country"][h][t[h] >= t[i] - 7 * DAY])),
            }
            if len(h):
                vc = pd.Series(cols["country"][h]).value_counts()
                exp["country_not_mode"] = float(vc.get(cols["country"][i], 0) < vc.max())
            else:
                exp["country_not_mode"] = np.nan
            if prefix == "card":
                exp["n_customers_before"] = len(set(cols["customer_id"][h]))
                exp["customer_new"] = float(cols["customer_id"][i] not in set(cols["customer_id"][h]))
                w = t[h] >= t[i] - HOUR
                exp["tiny_cnt_1h"] = int((amount[h][w] < TINY_AMOUNT).sum())
            for name, e in exp.items():
                got = float(feats[f"{prefix}_{name}"].iloc[i])
                checked += 1
                if not (np.isnan(e) and np.isnan(got)) and not np.isclose(got, e, rtol=1e-9, atol=1e-6):
                    bad.append(f"row {i} ({prefix}) {name}: expected {e}, got {got}")
    if bad:
        raise AssertionError(f"{len(bad)} point-in-time mismatches, first: {bad[:5]}")
    log.info("point-in-time self-check: %d values agree with brute force", checked)
    return checked


# ---- model frames and training --------------------------------------------------------------------

def build_frame(tx: pd.DataFrame, order_features: pd.DataFrame, aggregates: Optional[pd.DataFrame]) -> pd.DataFrame:
    """Model input per order: raw columns (categoricals as ``category``) + engineered (+ aggregates), by order_id."""
    base = tx[["order_id", *CATEGORICAL, *NUMERICAL]].copy()
    for c in CATEGORICAL:
        base[c] = pd.Categorical(base[c], categories=sorted(tx[c].unique()))
    eng = order_features[["order_id", *ENGINEERED]]
    if eng["order_id"].duplicated().any():
        raise ValueError("order_features: duplicated order_id values")
    out = base.merge(eng, on="order_id", how="left", validate="one_to_one")
    missing = int(out[list(ENGINEERED)].isna().all(axis=1).sum())
    if missing:
        log.warning("build_frame: %d orders have no engineered features", missing)
    if aggregates is not None:
        out = out.merge(aggregates, on="order_id", how="left", validate="one_to_one")
    return out.set_index("order_id")


def train_lgbm(x_train: pd.DataFrame, y_train: np.ndarray, x_valid: pd.DataFrame, y_valid: np.ndarray,
               seed: int) -> Any:
    """LightGBM binary classifier, early-stopped on the validation window's average precision."""
    import lightgbm as lgb

    params = {**LGB_PARAMS, "seed": seed}
    cats = [c for c in CATEGORICAL if c in x_train.columns]
    dtrain = lgb.Dataset(x_train, label=y_train, categorical_feature=cats, free_raw_data=False)
    dvalid = lgb.Dataset(x_valid, label=y_valid, categorical_feature=cats, reference=dtrain)
    return lgb.train(params, dtrain, num_boost_round=NUM_BOOST_ROUND, valid_sets=[dvalid], valid_names=["valid"],
                     callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False)])


def _importance_top(booster: Any, k: int = 10) -> list[dict[str, Any]]:
    gain = booster.feature_importance(importance_type="gain")
    names = booster.feature_name()
    total = float(gain.sum()) or 1.0
    top = np.argsort(-gain, kind="stable")[:k]
    return [{"feature": names[i], "gain_share": round(float(gain[i]) / total, 4)} for i in top]


# ---- evaluation -------------------------------------------------------------------------------------------

def _fingerprint(order_ids: np.ndarray) -> str:
    return hashlib.sha256(np.sort(order_ids.astype(np.int64)).tobytes()).hexdigest()[:16]


def _threshold_at_fpr(y: np.ndarray, s: np.ndarray, max_fpr: float) -> float:
    """Lowest distinct score whose threshold (score >= it) keeps the false-positive rate <= max_fpr."""
    neg = np.sort(s[y == 0])
    cand = np.unique(s)
    fp = neg.size - np.searchsorted(neg, cand, "left")
    ok = fp <= max_fpr * neg.size
    return float(cand[ok].min()) if ok.any() else float("inf")


def evaluate_scores(test_frame: pd.DataFrame, score: Union[np.ndarray, pd.Series], name: str) -> dict[str, Any]:
    """Overall and per-scenario metrics of ``score`` on ``test_frame`` (order_id, is_fraud, scenario, card_id, day).

    ``score`` is either aligned with ``test_frame``'s rows or a Series indexed by
    order_id (every test order must have a score).  Per fraud scenario: that
    scenario's fraud orders against all legit orders of the window; per legit
    look-alike: the share flagged at the overall 1%-FPR threshold.
    """
    missing_cols = [c for c in TEST_FRAME_COLUMNS if c not in test_frame.columns]
    if missing_cols:
        raise ValueError(f"test_frame: missing columns {missing_cols}, got {list(test_frame.columns)}")
    if isinstance(score, pd.Series):
        s = score.reindex(test_frame["order_id"].to_numpy()).to_numpy(np.float64)
        n_missing = int(np.isnan(s).sum())
        if n_missing:
            raise ValueError(f"score: {n_missing} of {len(test_frame)} test orders have no score (by order_id)")
    else:
        s = np.asarray(score, dtype=np.float64)
        if s.shape != (len(test_frame),):
            raise ValueError(f"score: expected shape ({len(test_frame)},) aligned with test_frame, got {s.shape}")
    y = test_frame["is_fraud"].to_numpy().astype(np.int64)
    scen = test_frame["scenario"].to_numpy()
    cards, days = test_frame["card_id"].to_numpy(), test_frame["day"].to_numpy()
    overall = summarize(y, s, card_ids=cards, day=days)
    # what a perfect ranking would get: few days have 100 fraudulent cards, so this is well below 1
    overall["card_precision_at_100_ceiling"] = card_precision_at_k(cards, days, y, y.astype(np.float64), k=100)
    thr = _threshold_at_fpr(y, s, MAX_FPR)
    legit = y == 0
    per_scenario: dict[str, dict[str, float]] = {}
    for sc in FRAUD_SCENARIOS:
        m = (scen == sc) & (y == 1)
        if not m.any():
            continue
        keep = m | legit
        per_scenario[sc] = {
            "n_fraud": int(m.sum()),
            "roc_auc": roc_auc(y[keep], s[keep]),
            "average_precision": average_precision(y[keep], s[keep]),
            "recall_at_overall_1pct_fpr_threshold": float((s[m] >= thr).mean()),
        }
    lookalikes = {str(sc): {"n": int(((scen == sc) & legit).sum()),
                            "flag_rate_at_overall_1pct_fpr_threshold": float((s[(scen == sc) & legit] >= thr).mean())}
                  for sc in sorted(set(scen[legit]))}
    return {"name": name, "rows_fingerprint": _fingerprint(test_frame["order_id"].to_numpy()), "overall": overall,
            "per_fraud_scenario": per_scenario, "legit_scenarios": lookalikes}


# ---- the run ----------------------------------------------------------------------------------------------

def run_peers(seed: int = 2026, n_customers: int = 20_000, n_days: int = 60, train_days: int = 35,
              valid_days: int = 7, test_days: int = 18, cache_dir: Optional[Union[str, Path]] = None,
              self_check_rows: int = 150, scores_out: Optional[Union[str, Path]] = None) -> dict[str, Any]:
    """Generate, build features, train (a) and (b), evaluate on the test window; returns the results dict."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    tx, feats = load_or_generate(seed, n_customers, n_days, cache_dir)
    tx = add_day(tx)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    agg = point_in_time_features(tx)
    timings["aggregates_s"] = time.perf_counter() - t0
    checked = 0
    if self_check_rows:
        checked = _check_point_in_time(tx, agg, n_sample=self_check_rows, seed=seed)
        # the generated times rarely collide: recheck on a slice with times floored to 30 minutes,
        # where many orders of an entity share a timestamp and "strictly earlier" matters
        custs = tx["customer_id"].drop_duplicates().iloc[:2000]
        tied = tx[tx["customer_id"].isin(custs)].assign(order_ts=lambda d: d["order_ts"].dt.floor("30min"))
        tied = tied.reset_index(drop=True)
        checked += _check_point_in_time(tied, point_in_time_features(tied), n_sample=self_check_rows, seed=seed)

    train, valid, test = time_split(tx, train_days, valid_days, test_days)
    test_frame = test[list(TEST_FRAME_COLUMNS)].reset_index(drop=True)
    frames = {"lgbm_raw": build_frame(tx, feats, None), "lgbm_raw_plus_aggregates": build_frame(tx, feats, agg)}
    results: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    for name, frame in frames.items():
        t0 = time.perf_counter()
        xs = [frame.loc[part["order_id"].to_numpy()] for part in (train, valid, test)]
        booster = train_lgbm(xs[0], train["is_fraud"].to_numpy(), xs[1], valid["is_fraud"].to_numpy(), seed)
        timings[f"train_{name}_s"] = time.perf_counter() - t0
        scores[name] = booster.predict(xs[2], num_iteration=booster.best_iteration)
        res = evaluate_scores(test_frame, scores[name], name)
        res["n_features"] = int(xs[0].shape[1])
        res["best_iteration"] = int(booster.best_iteration)
        res["valid_average_precision"] = float(booster.best_score["valid"]["average_precision"])
        res["importance_top10_gain"] = _importance_top(booster)
        results[name] = res
        log.info("%s: test AUC %.4f AP %.4f (best iteration %d)", name, res["overall"]["roc_auc"],
                 res["overall"]["average_precision"], res["best_iteration"])

    if scores_out is not None:
        out_frame = test_frame.assign(**{f"score_{k}": v for k, v in scores.items()})
        Path(scores_out).parent.mkdir(parents=True, exist_ok=True)
        out_frame.to_parquet(scores_out, index=False)

    def window(part: pd.DataFrame) -> dict[str, Any]:
        return {"first_day": str(part["day"].min().date()), "last_day": str(part["day"].max().date()),
                "orders": int(len(part)), "fraud": int(part["is_fraud"].sum())}

    return {
        "bench": "quality_peers",
        "config": {"seed": seed, "n_customers": n_customers, "n_days": n_days, "train_days": train_days,
                   "valid_days": valid_days, "test_days": test_days, "lightgbm_params": LGB_PARAMS,
                   "num_boost_round": NUM_BOOST_ROUND, "early_stopping_rounds": EARLY_STOPPING_ROUNDS},
        "data": {"orders": int(len(tx)), "fraud_rate": float(tx["is_fraud"].mean()),
                 "train": window(train), "valid": window(valid), "test": window(test)},
        "test_rows_fingerprint": _fingerprint(test_frame["order_id"].to_numpy()),
        "point_in_time_self_check_values": checked,
        "peers": results,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "host": {"python": platform.python_version(), "machine": platform.machine()},
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--train-days", type=int, default=35)
    p.add_argument("--valid-days", type=int, default=7)
    p.add_argument("--test-days", type=int, default=18)
    p.add_argument("--out", type=Path, default=Path("bench/results/quality_peers.json"))
    p.add_argument("--cache-dir", type=Path, default=None, help="cache the generated data as parquet here")
    p.add_argument("--scores-out", type=Path, default=None,
                   help="write the test window (order_id, is_fraud, scenario, card_id, day) + peer scores as parquet")
    p.add_argument("--self-check-rows", type=int, default=150,
                   help="rows per entity recomputed by brute force (0: skip)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = run_peers(a.seed, a.customers, a.days, a.train_days, a.valid_days, a.test_days, a.cache_dir,
                    a.self_check_rows, a.scores_out)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, default=float) + "\n")
    for name, r in res["peers"].items():
        o = r["overall"]
        log.info("%-26s AUC %.4f  AP %.4f  recall@1%%FPR %.4f  card-precision@100 %.4f", name, o["roc_auc"],
                 o["average_precision"], o["recall_at_1pct_fpr"], o["card_precision_at_100"])
    log.info("wrote %s", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
