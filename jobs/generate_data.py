"""Generate deterministic synthetic transactions into the configured input tables.

    ./spark-submit.sh jobs/generate_data.py --config conf/local.yaml [--size tiny|demo|bench]
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from tsa_lib.cli import base_parser, main_guard, setup_logging
from tsa_lib.config import load_config
from tsa_lib.spark.generate import SIZES, generate_and_write
from tsa_lib.spark.session import get_spark

log = logging.getLogger("jobs.generate_data")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__ or "", dated=False)
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="preset size (default: the config's)")
    p.add_argument("--seed", type=int, default=None, help="override generator.seed")
    p.add_argument("--dirty-rate", type=float, default=0.0005, help="share of rows corrupted per dirty kind")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    over: dict = {}
    if args.size:
        n_customers, n_days = SIZES[args.size]
        over["generator"] = {"n_customers": n_customers, "n_days": n_days}
    if args.seed is not None:
        over.setdefault("generator", {})["seed"] = args.seed
    cfg = load_config(args.config, overrides=over)
    spark = get_spark(cfg.spark, cfg.storage)
    try:
        s = generate_and_write(spark, cfg, dirty_rate=args.dirty_rate)
    finally:
        spark.stop()
    log.info("transactions: %s", s.transactions_path)
    print(f"orders={s.n_orders} fraud={s.n_fraud} fraud_rate={s.fraud_rate:.4f} "
          f"customers={s.n_customers} cards={s.n_cards}")
    for name, n in sorted(s.scenarios.items()):
        print(f"  {name:<26} {n:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
