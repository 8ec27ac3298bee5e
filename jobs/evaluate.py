"""Evaluate scored dates: per-day metrics into `metrics` (tsa.metrics) and an HTML report with plots.

    ./spark-submit.sh jobs/evaluate.py --config conf/local.yaml --as-of 2026-03-08          # the nightly form
    ./spark-submit.sh jobs/evaluate.py --config conf/local.yaml --start-date 2026-02-20 --end-date 2026-03-01

--as-of D: the labels known at the end of D, and (without dates) the day whose labels matured
at D (D - labels.mature_after_days); a day that was never scored is reported and skipped.
Dates whose labels are not mature at D are refused.  Without --as-of: the labels known now.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, make_context, parse_date, setup_logging
from tsa_lib.config import load_config
from tsa_lib.evaluation.job import JOB, NoScoresError, run_evaluation
from tsa_lib.schedule import as_of, check_mature, matured_day
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.evaluate")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__ or "")
    p.add_argument("--as-of", default=None, help="YYYY-MM-DD: labels known by the end of this date (the logical date)")
    p.add_argument("--no-report", action="store_true", help="metrics only, no HTML/PNG report")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(args.config)
    at_date = parse_date("--as-of", args.as_of) if args.as_of else None
    nightly = at_date is not None and args.run_date is None and args.start_date is None and args.end_date is None
    ctx = make_context(JOB, args, (matured_day(cfg, at_date),) if nightly and at_date else None)
    if at_date is not None:
        check_mature(cfg, ctx.dates, at_date)
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        res = run_evaluation(spark, cfg, ctx, report=not args.no_report,
                             labels_as_of=as_of(at_date) if at_date else None)
    except NoScoresError as e:
        if not nightly:
            raise
        print(f"nothing to evaluate at {args.as_of}: {e}")
        return 0
    finally:
        spark.stop()
    cols = ["ds", "n", "positives", "roc_auc", "average_precision", "recall_at_1pct_fpr", "psi_vs_prev_day"]
    print(res.per_day[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for note in res.notes:
        print(f"note: {note}")
    print("overall: " + (", ".join(f"{k}={v:.4f}" for k, v in res.overall.items()) if res.overall else
                         "no known labels of both classes in these days"))
    if res.report:
        print(f"report: {res.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
