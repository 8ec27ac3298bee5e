"""Encode a date's (or range's) sequences into the fixed-shape `examples` table, with labels as known.

    ./spark-submit.sh jobs/build_examples.py --config conf/local.yaml --run-date 2026-02-19 --window training
    ./spark-submit.sh jobs/build_examples.py --config conf/local.yaml --start-date 2026-01-08 --end-date 2026-02-12 \
        [--labels-as-of 2026-02-19] [--encoders <artifacts>/encoders/<version>.json]

--window training: the training and validation windows of the run date (training.window), with
the labels known at the end of the run date; the nightly training does this.  Otherwise the
given dates, with the labels known at the end of --labels-as-of (default: now).
Encoders default to <artifacts>/encoders/LATEST (what fit_encoders wrote last).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, make_context, parse_date, setup_logging
from tsa_lib.config import load_config
from tsa_lib.errors import UserError
from tsa_lib.features.encoders import load_encoders
from tsa_lib.schedule import as_of, training_windows
from tsa_lib.spark.examples import JOB, run_build_examples
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.build_examples")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__ or "")
    p.add_argument("--window", choices=["dates", "training"], default="dates",
                   help="training: the run date's training + validation windows (default: the given dates)")
    p.add_argument("--labels-as-of", default=None, help="YYYY-MM-DD: labels known by the end of this date")
    p.add_argument("--encoders", default=None, help="encoder artifact (.json) or folder with LATEST")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(args.config)
    ctx = make_context(JOB, args)
    at = as_of(parse_date("--labels-as-of", args.labels_as_of)) if args.labels_as_of else None
    if args.window == "training":
        if args.run_date is None or args.labels_as_of is not None:
            raise UserError("--window training takes --run-date D (labels as known at the end of D) and no "
                             "--labels-as-of")
        w = training_windows(cfg, ctx.dates[0])
        ctx, at = dataclasses.replace(ctx, dates=w.dates), w.labels_as_of
        log.info("training windows of %s: %s", args.run_date, w.describe())
    enc = load_encoders(args.encoders or cfg.storage.artifacts_path("encoders"))
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        s = run_build_examples(spark, cfg, ctx, enc, at)
    finally:
        spark.stop()
    print(f"examples {ctx.dates[0]}..{ctx.dates[-1]}: {s.examples} (+{s.quarantined} quarantined) of {s.targets} "
          f"targets; {s.labeled} labels known before {s.labels_as_of:%Y-%m-%d %H:%M} ({s.positives} fraud), "
          f"{s.pending} not known yet; encoders {enc.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
