"""Fit encoders (vocabularies, robust min-max scalers) on a training window only.

    ./spark-submit.sh jobs/fit_encoders.py --config conf/local.yaml --run-date 2026-02-19
    ./spark-submit.sh jobs/fit_encoders.py --config conf/local.yaml --start-date 2026-01-08 --end-date 2026-02-05

--run-date D: the training window of D (training.window, or the fixed training dates), the
rule of every training night; the version is named after D and the config, so a retry
rewrites it.  --start-date/--end-date: that range.
Writes <storage.artifacts>/encoders/<version>.json and points encoders/LATEST at it.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, make_context, setup_logging
from tsa_lib.config import load_config
from tsa_lib.schedule import training_windows
from tsa_lib.spark.encoders import fit_encoders
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.fit_encoders")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__ or "").parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(args.config)
    ctx = make_context("fit_encoders", args)
    start, end, version = ctx.dates[0], ctx.dates[-1], None
    if args.run_date is not None:
        w = training_windows(cfg, ctx.dates[0])
        (start, end), version = w.train, f"enc-{ctx.dates[0]:%Y%m%d}-{cfg.hash[:8]}"
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        enc = fit_encoders(spark, cfg, start, end, version)
    finally:
        spark.stop()
    path = enc.save(cfg.storage.artifacts_path("encoders"))
    print(f"encoders {enc.version}: window {enc.window_start}..{enc.window_end}, vocab_size {enc.vocab_size} "
          f"({ {c: len(v) for c, v in enc.vocab.items()} }) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
