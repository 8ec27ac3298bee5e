"""Fit encoders (vocabularies, robust min-max scalers) on a training date window only.

    ./spark-submit.sh jobs/fit_encoders.py --config conf/local.yaml --start-date 2026-01-01 --end-date 2026-02-10
Writes <storage.artifacts>/encoders/<version>.json and points encoders/LATEST at it.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, make_context, setup_logging
from tsa_lib.config import load_config
from tsa_lib.spark.encoders import fit_encoders
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.fit_encoders")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__ or "").parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(args.config)
    ctx = make_context("fit_encoders", args)
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        enc = fit_encoders(spark, cfg, ctx.dates[0], ctx.dates[-1])
    finally:
        spark.stop()
    path = enc.save(cfg.storage.artifacts_path("encoders"))
    print(f"encoders {enc.version}: window {enc.window_start}..{enc.window_end}, vocab_size {enc.vocab_size} "
          f"({ {c: len(v) for c, v in enc.vocab.items()} }) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
