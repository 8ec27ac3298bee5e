"""Score a run date (or a backfill range) into the `scores` Delta table (tsa.scores).

    ./spark-submit.sh jobs/score.py --config conf/local.yaml --run-date 2026-02-25 [--model artifacts/models/tsa/v...]
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, make_context, setup_logging
from tsa_lib.config import load_config
from tsa_lib.scoring.job import JOB, run_scoring
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.score")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__ or "")
    p.add_argument("--model", default=None, help="model artifact folder (default: scoring.model_path or LATEST)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(args.config)
    ctx = make_context(JOB, args)
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        s = run_scoring(spark, cfg, ctx, args.model)
    finally:
        spark.stop()
    print(f"scored {s.scored} orders of {ctx.dates[0]}..{ctx.dates[-1]} with {s.model} "
          f"(+{s.quarantined} quarantined)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
