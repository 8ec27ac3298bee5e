"""Evaluate scored dates: per-day metrics into `metrics` (tsa.metrics) and an HTML report with plots.

    ./spark-submit.sh jobs/evaluate.py --config conf/local.yaml --start-date 2026-02-20 --end-date 2026-03-01
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, make_context, setup_logging
from tsa_lib.config import load_config
from tsa_lib.evaluation.job import JOB, run_evaluation
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.evaluate")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__ or "")
    p.add_argument("--no-report", action="store_true", help="metrics only, no HTML/PNG report")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(args.config)
    ctx = make_context(JOB, args)
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        res = run_evaluation(spark, cfg, ctx, report=not args.no_report)
    finally:
        spark.stop()
    cols = ["ds", "n", "positives", "roc_auc", "average_precision", "recall_at_1pct_fpr", "psi_vs_prev_day"]
    print(res.per_day[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("overall: " + ", ".join(f"{k}={v:.4f}" for k, v in res.overall.items()))
    if res.report:
        print(f"report: {res.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
