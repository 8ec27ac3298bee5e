"""Build point-in-time customer and card sequences for a run date (or a backfill range).

    ./spark-submit.sh jobs/build_sequences.py --config conf/local.yaml --run-date 2026-02-20
    ./spark-submit.sh jobs/build_sequences.py --config conf/local.yaml --start-date 2026-02-01 --end-date 2026-02-28
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, make_context, setup_logging
from tsa_lib.config import load_config
from tsa_lib.spark.build_sequences import JOB, run_build_sequences
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.build_sequences")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__ or "")
    p.add_argument("--allow-empty", action="store_true", help="a run date without orders is not an error")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(args.config)
    ctx = make_context(JOB, args)
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        s = run_build_sequences(spark, cfg, ctx, allow_empty=args.allow_empty)
    finally:
        spark.stop()
    print(f"run {ctx.run_id} dates {ctx.dates[0]}..{ctx.dates[-1]}: input {s.input_rows} = clean {s.clean_targets}"
          f" + quarantined {s.quarantined_input} {s.reasons}; customer rows {s.entity_rows.get('customer')}"
          f" (targets {s.entity_targets.get('customer')}), card rows {s.entity_rows.get('card')}"
          f" (targets {s.entity_targets.get('card')}, capped {s.entity_capped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
