"""Recall at 1% FPR by position inside each fraud episode.

Which orders of an episode does a model catch: the first order of an account takeover
(a long silence, then a new device), or only the later ones, once the pattern has
repeated?  Reads a ``run_tsa.py`` work folder: the raw transactions, the TSA scores
tables named on the command line (``tsa_q_<model>_e<epochs><tag>``), and the peers' test
scores (``peers_scores.parquet``).  An episode's orders are one customer's orders of that
scenario, in time order.

    PYTHONPATH=. .venv/bin/python -m bench.quality.positions --work-dir /tmp/tsa-quality tsa_q_two_seq_e8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

SCENARIOS = ("velocity_ramp", "account_takeover", "card_testing", "stolen_card_new_account")
PEER = "score_lgbm_raw_plus_aggregates"


def recall_by_position(frame: pd.DataFrame, score: str, max_fpr: float = 0.01) -> dict[str, dict[int, float]]:
    """``frame``: test orders with customer_id, order_ts, scenario, is_fraud and ``score``."""
    for col in ("customer_id", "order_ts", "scenario", "is_fraud", score):
        if col not in frame.columns:
            raise ValueError(f"frame: column {col!r} is missing (has {list(frame.columns)})")
    legit = frame.loc[frame["is_fraud"] == 0, score].to_numpy()
    if len(legit) == 0:
        raise ValueError("frame: no legitimate orders, so no threshold at a false-positive rate")
    thr = float(np.quantile(legit, 1.0 - max_fpr))
    out: dict[str, dict[int, float]] = {}
    ordered = frame.sort_values(["customer_id", "order_ts"], kind="stable")
    for scen in SCENARIOS:
        part = ordered[ordered["scenario"] == scen]
        pos = part.groupby("customer_id").cumcount()
        hit = (part[score] > thr).groupby(pos).mean()
        out[scen] = {int(k): round(float(v), 3) for k, v in hit.items()}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import deltalake

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/tsa-quality"))
    p.add_argument("models", nargs="*", help="TSA model names (scores_<name> tables in the work folder)")
    a = p.parse_args(argv)
    wh = a.work_dir / "warehouse"
    tx = deltalake.DeltaTable(str(wh / "raw" / "transactions")).to_pandas(
        columns=["order_id", "customer_id", "order_ts", "scenario", "is_fraud"])
    tx["order_id"] = tx["order_id"].astype(np.int64)
    peers = pd.read_parquet(a.work_dir / "peers_scores.parquet", columns=["order_id", PEER])
    peers["order_id"] = peers["order_id"].astype(np.int64)
    test = tx.merge(peers, on="order_id", how="inner")          # the test window's rows
    res = {"peer_b": recall_by_position(test, PEER)}
    for name in a.models:
        sc = deltalake.DeltaTable(str(wh / "tsa" / f"scores_{name}")).to_pandas(columns=["order_id", "score"])
        sc["order_id"] = sc["order_id"].astype(np.int64)
        res[name] = recall_by_position(test.merge(sc, on="order_id", how="inner"), "score")
    json.dump(res, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
