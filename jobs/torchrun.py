"""Launch jobs/train.py under torchrun on this node, for platforms whose tasks run one Python file
(a Databricks job task on a GPU cluster, see databricks.yml).

    python jobs/torchrun.py --nproc-per-node 4 -- --config conf/databricks.yaml --run-date 2026-03-01

Everything after ``--`` goes to jobs/train.py.  ``--nproc-per-node auto`` starts one process per
visible GPU (one on a CPU node).  The exit code is torchrun's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, like the other jobs

from tsa_lib.cli import main_guard, setup_logging  # noqa: E402
from tsa_lib.errors import UserError  # noqa: E402

TRAIN = Path(__file__).resolve().with_name("train.py")


def torchrun_args(nproc: str, train_args: Sequence[str]) -> list[str]:
    """torchrun's command line for ``train_args`` on one node (``nproc``: a count or ``auto``)."""
    if nproc != "auto" and not (nproc.isdigit() and int(nproc) >= 1):
        raise UserError(f"--nproc-per-node: {nproc!r} is not a positive integer or 'auto'")
    if nproc == "auto":
        import torch

        nproc = str(max(1, torch.cuda.device_count()))
    return ["--standalone", "--nnodes", "1", "--nproc-per-node", nproc, str(TRAIN), *train_args]


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--nproc-per-node", default="auto")
    args = p.parse_args(own)
    setup_logging("INFO")
    from torch.distributed.run import main as torchrun

    torchrun(torchrun_args(args.nproc_per_node, train_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
