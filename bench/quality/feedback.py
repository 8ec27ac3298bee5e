"""Label feedback on the compromised-merchant data: the TSA with and without ``labels.feedback``
against LightGBM peers with and without delayed known-fraud counts.

Per variant (feedback off, on, on with label reports), the suite's REAL pipeline runs on ``conf/merchant.yaml``
(merchant as the second entity, compromised merchants planted) in a work folder:
``python -m tsa_lib.demo --config <variant config> --fresh``: generate, build sequences, the
training night D (fit encoders, examples with the labels known at the end of D, train,
gate), score the ten days after D, evaluate.  The peers train on the same training and
validation windows with the labels known at the end of D (the same rule), and are scored on
the same ten days:

- ``lgbm_b``: raw columns + hand-made per-customer and per-card/merchant aggregates
  (``peers.point_in_time_features``);
- ``lgbm_b_labels``: the same + per-customer and per-merchant counts of fraud known before
  the order's time (label time, else order time + labels.delay_days), over 7, 14 and 28 days.

Every model's test scores go through ``peers.evaluate_scores`` (+ the compromised-merchant
scenario).  Nothing is tuned on the test days.

    PYTHONPATH=. nice -n 10 .venv/bin/python -m bench.quality.feedback --out bench/results/quality_feedback.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import yaml

from bench.quality import peers
from tsa_lib.config import PROJECT_ROOT, SuiteConfig, load_config
from tsa_lib.data.synthetic import generate
from tsa_lib.demo import SCORED_DAYS
from tsa_lib.evaluation.metrics import average_precision, recall_at_fpr, roc_auc
from tsa_lib.schedule import as_of, label_known, training_windows

log = logging.getLogger("bench.quality.feedback")

WINDOWS_DAYS = (7, 14, 28)


VARIANTS = ("off", "on", "reports")


def write_config(work: Path, variant: str, customers: int, reports: int) -> Path:
    """``off``: no feedback; ``on``: the orders' own labels as known; ``reports``: that and the
    last ``reports`` label reports of each entity (``labels.feedback_reports``)."""
    if variant not in VARIANTS:
        raise SystemExit(f"--variants: {variant!r} is not one of {list(VARIANTS)}")
    data = yaml.safe_load((PROJECT_ROOT / "conf" / "merchant.yaml").read_text())
    wh = work / variant / "warehouse"
    data["storage"] = {"warehouse": str(wh), "database": "tsa"}
    data["input"] = {"transactions": {"path": str(wh / "raw" / "transactions"), "format": "delta"},
                     "order_features": {"path": str(wh / "raw" / "order_features"), "format": "delta"}}
    data["labels"]["feedback"] = variant != "off"
    data["labels"]["feedback_reports"] = reports if variant == "reports" else 0
    data["generator"]["n_customers"] = customers
    path = work / f"merchant_{variant}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_config(path)
    return path


def run_demo(cfg_path: Path, log_path: Path) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with log_path.open("w") as f:
        r = subprocess.run([sys.executable, "-m", "tsa_lib.demo", "--config", str(cfg_path), "--fresh"],
                           cwd=PROJECT_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"the pipeline failed for {cfg_path}: see {log_path}")
    return time.perf_counter() - t0


def known_fraud_counts(tx: pd.DataFrame, key: str, delay_days: float) -> pd.DataFrame:
    """Per order: the entity's fraud orders whose label was known before the order's time, counted
    over the last 7/14/28 days of knowing (point in time; the order's own label never counts)."""
    t = tx["order_ts"].to_numpy(dtype="datetime64[us]").astype(np.int64)
    lt = tx["label_ts"].to_numpy(dtype="datetime64[us]")
    lt = np.where(np.isnat(lt), -1, lt.astype(np.int64))
    known_at = np.where(lt >= 0, lt, t + int(delay_days * 86400e6))
    fraud = tx["is_fraud"].to_numpy() == 1
    ent = tx[key].fillna("__none__").to_numpy()
    out = {f"{key}_known_fraud_{w}d": np.zeros(len(tx)) for w in WINDOWS_DAYS}
    ev = pd.DataFrame({"ent": ent[fraud], "k": known_at[fraud]}).sort_values(["ent", "k"])
    groups = {e: g["k"].to_numpy() for e, g in ev.groupby("ent", sort=False)}
    order = pd.DataFrame({"ent": ent, "t": t, "i": np.arange(len(tx))})
    for e, rows in order.groupby("ent", sort=False):
        ks = groups.get(e)
        if ks is None:
            continue
        tt = rows["t"].to_numpy()
        hi = np.searchsorted(ks, tt, side="left")                    # known strictly before the order
        for w in WINDOWS_DAYS:
            lo = np.searchsorted(ks, tt - int(w * 86400e6), side="left")
            out[f"{key}_known_fraud_{w}d"][rows["i"].to_numpy()] = hi - lo
    return pd.DataFrame({"order_id": tx["order_id"].to_numpy(), **out})


def scenario_metrics(test_frame: pd.DataFrame, score: pd.Series, name: str) -> dict[str, Any]:
    res = peers.evaluate_scores(test_frame, score, name)
    y = test_frame["is_fraud"].to_numpy().astype(int)
    s = score.reindex(test_frame["order_id"].to_numpy()).to_numpy(np.float64)
    m = (test_frame["scenario"] == "compromised_merchant").to_numpy() & (y == 1)
    keep = m | (y == 0)
    if m.any():
        res["per_fraud_scenario"]["compromised_merchant"] = {
            "n_fraud": int(m.sum()), "roc_auc": roc_auc(y[keep], s[keep]),
            "average_precision": average_precision(y[keep], s[keep]),
            "recall_at_1pct_fpr": recall_at_fpr(y[keep], s[keep], 0.01)}
    return res


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/tsa-feedback"))
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--reports", type=int, default=16, help="labels.feedback_reports of the reports variant")
    p.add_argument("--seed", type=int, default=2026, help="LightGBM seed")
    p.add_argument("--out", type=Path, default=Path("bench/results/quality_feedback.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results: dict[str, Any] = {"bench": "quality_feedback", "customers": args.customers, "reports": args.reports,
                               "models": {}, "timings": {}}
    cfgs = {v: write_config(args.work, v, args.customers, args.reports) for v in args.variants.split(",")}
    for v, path in cfgs.items():
        log.info("pipeline, feedback variant %s", v)
        results["timings"][f"pipeline_{v}_s"] = run_demo(path, args.work / f"pipeline_{v}.log")

    cfg: SuiteConfig = load_config(next(iter(cfgs.values())))
    g = cfg.generator
    last = dt.date.fromisoformat(g.start_date) + dt.timedelta(days=g.n_days - 1)
    night = last - dt.timedelta(days=SCORED_DAYS)
    w = training_windows(cfg, night)
    gen = generate(g)        # the same rows the pipeline wrote (jobs/generate_data.py's dirty rate)
    tx = peers.add_day(gen.transactions.dropna(subset=["order_ts", "customer_id"])
                       .drop_duplicates("order_id", keep="first").reset_index(drop=True))
    tx["card_id"] = tx["merchant_id"]          # the second entity of conf/merchant.yaml
    day = tx["day"].dt.date
    test = tx[(day > night) & (day <= last)]

    # TSA scores of the test days, per variant
    import deltalake

    for v, path in cfgs.items():
        c = load_config(path)
        sc = deltalake.DeltaTable(c.storage.table_path("scores")).to_pandas(columns=["order_id", "score"])
        sc["order_id"] = sc["order_id"].astype(np.int64)
        frame = test[test["order_id"].isin(sc["order_id"])]
        results["models"][f"tsa_feedback_{v}"] = scenario_metrics(
            frame[list(peers.TEST_FRAME_COLUMNS)].reset_index(drop=True), sc.set_index("order_id")["score"],
            f"tsa_feedback_{v}")
    test_frame = frame[list(peers.TEST_FRAME_COLUMNS)].reset_index(drop=True)

    # the peers: labels known at the end of the training night, the same windows
    us = tx["order_ts"].to_numpy(dtype="datetime64[us]").astype(np.int64)
    lt = tx["label_ts"].to_numpy(dtype="datetime64[us]")
    known = label_known(us, np.where(np.isnat(lt), -1, lt.astype(np.int64)), cfg.labels.delay_days, as_of(night))
    train = tx[(day >= w.train[0]) & (day <= w.train[1]) & known]
    valid = tx[(day >= w.valid[0]) & (day <= w.valid[1]) & known]
    agg = peers.point_in_time_features(tx)
    labels = known_fraud_counts(tx, "customer_id", cfg.labels.delay_days).merge(
        known_fraud_counts(tx, "merchant_id", cfg.labels.delay_days), on="order_id")
    frames = {"lgbm_b": peers.build_frame(tx, gen.order_features, agg),
              "lgbm_b_labels": peers.build_frame(tx, gen.order_features, agg.merge(labels, on="order_id"))}
    for name, fr in frames.items():
        t0 = time.perf_counter()
        booster = peers.train_lgbm(fr.loc[train["order_id"]], train["is_fraud"].to_numpy(),
                                   fr.loc[valid["order_id"]], valid["is_fraud"].to_numpy(), args.seed)
        s = pd.Series(booster.predict(fr.loc[test_frame["order_id"]], num_iteration=booster.best_iteration),
                      index=test_frame["order_id"].to_numpy())
        results["models"][name] = scenario_metrics(test_frame, s, name)
        results["models"][name]["best_iteration"] = int(booster.best_iteration)
        results["timings"][f"{name}_s"] = time.perf_counter() - t0
    results["windows"] = {"night": night.isoformat(), "train": [str(d) for d in w.train],
                          "valid": [str(d) for d in w.valid], "test": [str(night + dt.timedelta(days=1)), str(last)],
                          "test_orders": int(len(test_frame)), "test_fraud": int(test_frame["is_fraud"].sum()),
                          "train_known": int(len(train)), "valid_known": int(len(valid))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float))
    for name, r in results["models"].items():
        o = r["overall"]
        cm = r["per_fraud_scenario"].get("compromised_merchant", {})
        print(f"{name:<20} AUC {o['roc_auc']:.4f} AP {o['average_precision']:.4f} recall@1%FPR "
              f"{o['recall_at_1pct_fpr']:.4f} card P@100 {o.get('card_precision_at_100', float('nan')):.4f} | "
              f"compromised merchant AP {cm.get('average_precision', float('nan')):.4f} | " +
              " ".join(f"{k} {v['average_precision']:.3f}" for k, v in r["per_fraud_scenario"].items()
                       if k != "compromised_merchant"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
