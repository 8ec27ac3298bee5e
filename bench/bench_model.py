#!/usr/bin/env python
"""Model throughput: forward + backward samples/s of a TSA classifier on synthetic inputs.

Run on demand (not a test)::

    .venv/bin/python bench/bench_model.py                       # seed preset, auto device
    .venv/bin/python bench/bench_model.py --preset small --batch 256
    .venv/bin/python bench/bench_model.py --batch 1024 --amp bf16 --compile --model two_seq --moe off
    .venv/bin/python bench/bench_model.py --impl plain ...        # the plain reference (bench/plain_tsa.py)

One batch of contract-shaped inputs (left-padded sequences with random history
lengths, see ``tsa_lib.models``) is built once on the device, so data loading is
excluded.  A step is forward + cross-entropy (+ MoE aux loss) + backward
(+ an AdamW step with ``--optim``: fused on CUDA for the suite, the default
foreach one for the plain reference).  The first ``--warmup`` steps (which include
``torch.compile``'s compilation) are not timed.  One JSON line per run is
appended to ``--out`` (default ``bench/results/model.jsonl``, or ``$TSA_BENCH_RESULTS/model.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import RESULTS  # noqa: E402

from tsa_lib.models import (  # noqa: E402
    DataSizes,
    ModelConfig,
    ModelPreset,
    build_model,
    count_parameters,
    load_model_preset,
    model_config,
)

log = logging.getLogger("bench_model")

# The data each preset is meant for: the seed design's (20 categorical columns of 50 values, 15 numerical,
# 100 engineered, 50 past orders), the demo's, the tests'.
SIZES = {"seed": DataSizes(20, 15, 100, 2 + 20 * 50, 51), "small": DataSizes(4, 3, 6, 4096, 21),
         "tiny": DataSizes(4, 3, 5, 50, 8)}


def make_sequence(cfg: ModelConfig, b: int, device: torch.device, gen: torch.Generator,
                  empty_frac: float = 0.0) -> tuple[torch.Tensor, ...]:
    L = cfg.seq_len
    lengths = torch.randint(1, L + 1, (b,), generator=gen)
    if empty_frac > 0:
        lengths[torch.rand(b, generator=gen) < empty_frac] = 0
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]
    x_cat = torch.randint(2, cfg.vocab_size, (b, L, cfg.n_cat_features), generator=gen)
    x_num = torch.rand(b, L, cfg.n_num_features, generator=gen)
    t = (torch.rand(b, L, generator=gen) * 90).sort(dim=1, descending=True).values
    t[:, -1] = 0.0
    x_cat = x_cat.masked_fill(~mask[..., None], 0)
    x_num = x_num.masked_fill(~mask[..., None], 0.0)
    t = t.masked_fill(~mask, 0.0)
    return tuple(x.to(device) for x in (x_cat, x_num, t, mask))


def make_inputs(cfg: ModelConfig, b: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    inputs = make_sequence(cfg, b, device, gen)
    if cfg.model_type == "two_seq":
        inputs = inputs + make_sequence(cfg, b, device, gen, empty_frac=0.2)  # some orders without card history
    return inputs + (torch.randn(b, cfg.n_engineered, generator=gen).to(device),)


def mflop_per_sample(cfg: ModelConfig, b: int = 8) -> float | None:
    """Forward + backward MFLOP per sample, counted by ``torch.utils.flop_counter`` on CPU."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        model = build_model(cfg).train()
        inputs = make_inputs(cfg, b, torch.device("cpu"))
        with FlopCounterMode(display=False) as fc:
            scores, _ = model(*inputs)
            (scores.sum() + model.aux_loss).backward()
        return fc.get_total_flops() / b / 1e6
    except Exception as e:  # noqa: BLE001 - informative only
        log.warning("flop count failed: %s", e)
        return None


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def preset_for(args: argparse.Namespace) -> ModelPreset:
    """``--preset`` with the ``--model``, ``--moe`` (and ``--grad-checkpointing``) overrides."""
    changes: dict[str, Any] = {}
    if args.model:
        changes["model_type"] = args.model
    if args.moe != "preset":
        changes["use_moe"] = args.moe == "on"
    if getattr(args, "grad_checkpointing", False):
        changes["grad_checkpointing"] = True
    return load_model_preset(args.preset).replace(**changes)


def run(args: argparse.Namespace, cfg: ModelConfig | None = None) -> dict[str, Any]:
    """Time the step ``args`` describe; ``cfg`` (default: the preset on ``SIZES``) sets the model."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    cfg = cfg or model_config(preset_for(args), SIZES.get(args.preset, SIZES["seed"]))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    plain = args.impl == "plain"
    if plain:
        from plain_tsa import PlainTSA

        model: Any = PlainTSA(cfg).to(device).train()
    else:
        model = build_model(cfg).to(device).train()
    mode = args.compile_mode
    step_model = torch.compile(model, mode=mode) if args.compile or mode else model
    opt = None
    if args.optim:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if plain else \
            torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    inputs = make_inputs(cfg, args.batch, device)
    y = (torch.arange(args.batch, device=device) % 2)
    class_weight = torch.ones(cfg.n_classes, device=device)

    def step() -> None:
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with ctx:
            scores, aux = step_model(*inputs)
            loss = model.training_loss(scores, y, class_weight, aux) if plain else \
                model.training_loss(scores, y, class_weight)  # per member when members > 1
        scaler.scale(loss).backward()
        if opt is not None:
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()
    sync()
    first_step_s = time.perf_counter() - t0
    for _ in range(max(args.warmup - 1, 0)):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - t0

    result: dict[str, Any] = {
        "bench": "model",
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "git_commit": git_commit(),
        "preset": args.preset,
        "impl": args.impl,
        "model_type": cfg.model_type,
        "use_moe": cfg.use_moe,
        "config_hash": cfg.hash,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "amp": args.amp,
        "compile": args.compile or bool(mode),
        "compile_mode": mode,
        "optim": args.optim,
        "grad_checkpointing": cfg.grad_checkpointing,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "params": count_parameters(model),
        "first_step_s": round(first_step_s, 3),
        "ms_per_step": round(1000 * elapsed / args.steps, 2),
        "samples_per_s": round(args.batch * args.steps / elapsed, 1),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None,
    }
    if args.flops and not plain:
        mf = mflop_per_sample(cfg)
        result["mflop_per_sample_fwd_bwd"] = round(mf, 1) if mf is not None else None
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="seed", help="preset name (tiny, small, seed) or a YAML path (seed sizes)")
    p.add_argument("--impl", choices=["suite", "plain"], default="suite",
                   help="the suite's model or the plain reference (bench/plain_tsa.py)")
    p.add_argument("--model", choices=["single_seq", "two_seq"], default=None, help="override model_type")
    p.add_argument("--moe", choices=["on", "off", "preset"], default="preset", help="override use_moe")
    p.add_argument("--batch", type=int, default=None, help="default: 1024 on CUDA, 64 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 50 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None,
                   help="autocast dtype (default: bf16 on CUDA, none on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile-mode", default=None, choices=["reduce-overhead", "max-autotune"],
                   help="torch.compile mode (implies --compile); reduce-overhead replays CUDA graphs")
    p.add_argument("--optim", action="store_true", help="include an AdamW step in each timed step")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP count")
    p.add_argument("--out", default=str(RESULTS / "model.jsonl"))
    args = p.parse_args(argv)
    cuda = (args.device == "auto" and torch.cuda.is_available()) or args.device.startswith("cuda")
    args.batch = args.batch or (1024 if cuda else 64)
    args.steps = args.steps or (50 if cuda else 5)
    args.amp = args.amp or ("bf16" if cuda else "none")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(result) + "\n")
    log.info("appended to %s", out)
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
