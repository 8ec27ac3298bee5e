"""Benchmark: the MoE feed-forward alone, the suite's (``tsa_lib.models.layers.MixtureOfExperts``, both
expert kernels) beside the plain loop over the experts (``bench/plain_tsa.PlainMoE``).

Tokens are ``batch x seq_len`` order tokens of left-padded sequences with random lengths; the suite's
MoE gets the padding mask (padded tokens are neither routed nor computed), the plain loop routes every
token.  Times forward + backward (training mode, dropout 0.1) and forward under ``inference_mode``;
medians of ``--reps`` after ``--warmup`` calls.  One JSON line per (implementation, mode) is appended
to bench/results/moe.jsonl.

    PYTHONPATH=. python bench/bench_moe.py                       # CPU: batch 4096 x 21 tokens, D 32, H 64
    PYTHONPATH=. python bench/bench_moe.py --device cuda --amp bf16 --dim 128 --hidden 512 --seq-len 51
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402
from plain_tsa import PlainMoE  # noqa: E402

from tsa_lib.models.layers import MixtureOfExperts  # noqa: E402


def timed(fn: Callable[[], None], warmup: int, reps: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=21)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--experts", type=int, default=5)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if args.amp == "bf16" else nullcontext()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.seq_len, args.dim, generator=gen).to(dev)
    lengths = torch.randint(1, args.seq_len + 1, (args.batch,), generator=gen)
    mask = (torch.arange(args.seq_len)[None] >= (args.seq_len - lengths)[:, None]).to(dev)
    torch.manual_seed(0)
    impls: dict[str, Any] = {
        "plain_loop": PlainMoE(args.dim, args.hidden, args.experts, args.top_k, 0.1).to(dev),
        "grouped_mm": MixtureOfExperts(args.dim, args.experts, args.hidden, args.top_k, 0.1, "grouped_mm").to(dev),
        "bmm": MixtureOfExperts(args.dim, args.experts, args.hidden, args.top_k, 0.1, "bmm").to(dev),
    }
    common = {"device": str(dev), "amp": args.amp, "tokens": args.batch * args.seq_len, "dim": args.dim,
              "hidden": args.hidden, "experts": args.experts, "top_k": args.top_k,
              "padded_share": round(1 - float(mask.float().mean()), 3), "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    for name, moe in impls.items():
        call = (lambda m=moe, xx=x: m(xx)) if name == "plain_loop" else (lambda m=moe, xx=x: m(xx, mask))

        def train(m: Any = moe, c: Callable[[], Any] = call) -> None:
            m.train()
            m.zero_grad(set_to_none=True)
            with amp:
                out, aux = c()
            (out.float().square().mean() + aux).backward()

        def infer(m: Any = moe, c: Callable[[], Any] = call) -> None:
            m.eval()
            with torch.inference_mode(), amp:
                c()

        for mode, fn in (("train_fwd_bwd", train), ("inference", infer)):
            row = {"impl": name, "mode": mode, "ms": round(timed(fn, args.warmup, args.reps, sync), 1), **common}
            print(json.dumps(row))
            write_result("moe", row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
