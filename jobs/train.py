"""Train the TSA model on the `examples` Delta table (DDP when launched with torchrun).

    torchrun --nproc-per-node 2 jobs/train.py --config conf/local.yaml --run-date 2026-02-19
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
        jobs/train.py --config conf/databricks.yaml
    jobs/train.py --config conf/local.yaml --run-date 2026-02-19 --resume   # continue from the last checkpoint

--run-date D: the windows of D (training.window, ending where labels are mature at D) and the
labels known at the end of D, which build_examples --run-date D --window training wrote.
Without it, the fixed training dates of the config and the examples' labels as they are.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # torchrun runs this file directly

from tsa_lib.cli import base_parser, main_guard, parse_date, setup_logging  # noqa: E402
from tsa_lib.config import load_config  # noqa: E402

log = logging.getLogger("jobs.train")


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__ or "", dated=False)
    p.add_argument("--encoders", default=None, help="encoder artifact (default: <artifacts>/encoders/LATEST)")
    p.add_argument("--run-dir", default=None, help="checkpoints folder (default: <artifacts>/runs/<model_name>)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoints/last.pt")
    p.add_argument("--run-date", default=None, help="YYYY-MM-DD: the training night (windows and labels as of it)")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(args.log_level if rank == 0 else "WARNING")
    from tsa_lib.training.trainer import distributed, plan_training, train

    cfg = load_config(args.config)
    run_date = parse_date("--run-date", args.run_date) if args.run_date else None
    plan = plan_training(cfg, args.encoders, args.run_dir, run_date)  # every check happens before training
    with distributed() as d:
        artifact = train(plan, resume=args.resume, d=d)
    if artifact is not None:
        print(f"model artifact: {artifact}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
