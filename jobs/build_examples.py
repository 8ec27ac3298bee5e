"""Encode a date's (or range's) sequences into the fixed-shape `examples` table.

    ./spark-submit.sh jobs/build_examples.py --config conf/local.yaml --start-date 2026-01-08 --end-date 2026-03-01 \
        [--encoders artifacts/encoders/<version>.json]   # default: artifacts/encoders/LATEST
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, make_context, setup_logging
from tsa_lib.config import load_config
from tsa_lib.features.encoders import load_encoders
from tsa_lib.spark.examples import JOB, run_build_examples
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.build_examples")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__ or "")
    p.add_argument("--encoders", default=None, help="encoder artifact (.json) or folder with LATEST")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(args.config)
    ctx = make_context(JOB, args)
    enc = load_encoders(args.encoders or cfg.storage.artifacts_path("encoders"))
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        s = run_build_examples(spark, cfg, ctx, enc)
    finally:
        spark.stop()
    print(f"examples {ctx.dates[0]}..{ctx.dates[-1]}: {s.examples} (+{s.quarantined} quarantined) of {s.targets} "
          f"targets; {s.labeled} labeled, {s.positives} fraud; encoders {enc.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
