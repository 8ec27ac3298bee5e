"""Champion / challenger gate: judge the model trained for a run date against the champion.

    ./spark-submit.sh jobs/gate.py --config conf/local.yaml --run-date 2026-02-19 [--model <artifact folder>]

Scores the new model (default: the newest artifact trained for --run-date) and the current
champion on the new model's validation window, each with its own encoders, on the same
orders and the labels known at the end of the run date.  The new model becomes champion
only if promotion.metric >= the champion's - promotion.margin (and >= promotion.min_value);
otherwise it stays a candidate.  Either way the decision and its reason are recorded in
<database>.models.  A rejection is a normal outcome (exit 0).
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, make_context, setup_logging
from tsa_lib.config import load_config
from tsa_lib.registry.models_table import GATE_JOB, run_gate
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.gate")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__ or "")
    p.add_argument("--model", default=None, help="artifact folder to judge (default: the one trained for --run-date)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(args.config)
    ctx = make_context(GATE_JOB, args)
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        r = run_gate(spark, cfg, ctx, args.model)
    finally:
        spark.stop()
    champ = f"{r.champion_version} {r.champion_value:.4f}" if r.champion_value is not None else \
        (r.champion_version or "none")
    print(f"gate {ctx.dates[0]}: {r.model_version} {r.decision} ({r.metric} {r.model_value:.4f} vs champion "
          f"{champ} on {r.valid[0]}..{r.valid[1]}, {r.valid_orders} orders, {r.valid_positives} fraud): "
          f"{r.reason}; champion: {r.champion_after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
