"""Change the champion by hand: promote a model, or roll back to the previous champion.

    ./spark-submit.sh jobs/promote.py --config conf/local.yaml --model v20260219T031500 [--force] [--reason TEXT]
    ./spark-submit.sh jobs/promote.py --config conf/local.yaml --rollback [--reason TEXT]

A model the gate rejected (or never judged) is refused unless --force.  Every action is
recorded in <database>.models (under --run-date, default today); scoring follows it.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, make_context, parse_date, setup_logging
from tsa_lib.config import load_config
from tsa_lib.errors import UserError
from tsa_lib.registry.models_table import run_promote, run_rollback
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.promote")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__ or "", dated=False)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", default=None, help="a version of training.model_name, or an artifact folder")
    what.add_argument("--rollback", action="store_true", help="make the previous champion the champion again")
    p.add_argument("--force", action="store_true", help="promote even a model the gate rejected or never judged")
    p.add_argument("--reason", default=None, help="recorded with the decision")
    p.add_argument("--run-date", default=None, help="YYYY-MM-DD the decision is recorded under (default: today)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    if args.rollback and args.force:
        raise UserError("--force applies to --model, not to --rollback")
    cfg = load_config(args.config)
    ctx = make_context("promote", args, (parse_date("--run-date", args.run_date),) if args.run_date else ())
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        row = run_rollback(spark, cfg, ctx, args.reason) if args.rollback else \
            run_promote(spark, cfg, ctx, args.model, args.force, args.reason)
    finally:
        spark.stop()
    print(f"{row['action']} {row['model_version']}: {row['decision']} ({row['reason']}); champion: "
          f"{row['champion_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
