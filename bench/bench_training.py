"""Benchmark: training samples/s end to end from the Delta `examples` table, the suite's trainer
beside a plain implementation on the same data, model sizes and GPU.

- ``--impl suite``: ``jobs/train.py`` under torchrun (one epoch capped at ``--steps`` steps); the rate
  is the trainer's own steady rate (its first logging interval, compilation included, excluded and
  reported as ``warmup_s``).
- ``--impl plain``: in this process, the plain reference model (``bench/plain_tsa.py``) in a plain
  loop: the same rows read with the suite's reader into int64/float tensors on the device, random
  batches, the loss read back every step, the default AdamW; the first ``--warmup`` steps untimed.
- ``--impl both``: both, and their ratio.

The suite's row also holds the bare model step of ``bench_model.py`` (forward, loss, backward, AdamW
on one batch already on the device) for the same model and sizes, timed in this process, and the
trainer's rate as a share of it (``ratio_to_bare_step``).

Needs examples and encoders: the demo's (``make demo``; ``--config conf/local.yaml --run-date
2026-02-19``) or synthetic ones at the seed sizes from ``bench/make_examples.py`` (no Spark needed):

    python bench/make_examples.py --root /tmp/tsa_bench
    PYTHONPATH=. python bench/bench_training.py --config /tmp/tsa_bench/bench.yaml --preset seed \\
        --moe off --model single_seq --nproc 1 --batch 4096 --steps 60 --amp bf16 --compile --impl both

One JSON line per implementation is appended to bench/results/training.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402
from bench_model import preset_for  # noqa: E402


def run_suite(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    preset = tmp / "preset.yaml"
    preset.write_text(yaml.safe_dump(preset_for(args).to_dict()))
    cfg = yaml.safe_load(Path(args.config).read_text())
    cfg.setdefault("training", {}).update(
        model_preset=str(preset), model_name="bench_training", epochs=1, max_steps_per_epoch=args.steps,
        batch_size=args.batch, eval_batch_size=max(args.batch, 4096), log_every_steps=args.warmup,
        checkpoint_every_steps=10**6, amp=args.amp, compile=args.compile)
    cfg["tracking"] = {"mlflow": False}
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    pypath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": pypath}
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // args.nproc))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc),
                        "--master-port", "29533", str(ROOT / "jobs" / "train.py"), "--config", str(path),
                        "--run-dir", str(tmp / "run"), *(["--run-date", args.run_date] if args.run_date else [])],
                       env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(r.stderr[-4000:])
    art = [x for x in r.stdout.splitlines() if x.startswith("model artifact: ")][-1].split(": ", 1)[1]
    hist = json.loads((Path(art) / "metrics.json").read_text())["history"][0]
    return {"samples_per_s": round(hist["train_samples_per_s"], 1), "warmup_s": round(hist["train_warmup_s"], 2),
            "nproc": args.nproc, "wall_s_incl_startup_and_data": round(wall, 1),
            "device": "cuda" if "on cuda" in r.stderr else "cpu"}


def _configs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The suite config, its encoders and the model config for them."""
    from tsa_lib.config import load_config
    from tsa_lib.features.encoders import load_encoders
    from tsa_lib.models.config import model_config

    cfg = load_config(args.config)
    enc = load_encoders(cfg.storage.artifacts_path("encoders"))
    return cfg, enc, model_config(preset_for(args), enc)


def run_bare_step(args: argparse.Namespace) -> float:
    """samples/s of ``bench_model.py``'s step for the model and sizes the trainer runs."""
    import bench_model

    step = argparse.Namespace(device="auto", threads=None, impl="suite", batch=args.batch, warmup=args.warmup,
                              steps=args.steps - args.warmup, amp=args.amp, compile=args.compile,
                              compile_mode=None, optim=True, flops=False, preset=args.preset, model=args.model,
                              moe=args.moe, grad_checkpointing=False)
    return float(bench_model.run(step, _configs(args)[2])["samples_per_s"])


def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from plain_tsa import PlainTSA
    from tsa_lib.config import PROJECT_ROOT
    from tsa_lib.schedule import training_windows
    from tsa_lib.training.data import read_examples, table_version

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, enc, mcfg = _configs(args)
    path = cfg.storage.table_path("examples", PROJECT_ROOT)
    run_date = dt.date.fromisoformat(args.run_date) if args.run_date else None
    windows = training_windows(cfg, run_date)
    b = read_examples(path, table_version(path), *windows.train, enc, labels_as_of=windows.labels_as_of if run_date
                      else None)
    keep = b.label >= 0
    t = {k: torch.from_numpy(np.ascontiguousarray(getattr(b, k)[keep])).to(device) for k in
         ("c_cat", "c_num", "c_dt", "c_mask", "k_cat", "k_num", "k_dt", "k_mask", "eng", "label")}
    t["c_cat"], t["k_cat"], t["label"] = t["c_cat"].long(), t["k_cat"].long(), t["label"].long()
    n = len(t["label"])
    torch.manual_seed(0)
    model = PlainTSA(mcfg).to(device).train()
    run = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.amp]
    weight = torch.tensor([1.0, 5.0], device=device)
    seqs = ("c_cat", "c_num", "c_dt", "c_mask") + (("k_cat", "k_num", "k_dt", "k_mask")
                                                    if mcfg.model_type == "two_seq" else ())
    losses = []

    def step(i: int) -> None:
        idx = torch.randint(0, n, (args.batch,), device=device)
        with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
            logits, aux = run(*(t[k][idx] for k in seqs), t["eng"][idx])
        loss = F.cross_entropy(logits.float(), t["label"][idx], weight=weight) + aux
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.steps - args.warmup):
        step(i)
    el = time.perf_counter() - t0
    return {"samples_per_s": round(args.batch * (args.steps - args.warmup) / el, 1), "warmup_s": round(warm, 2),
            "nproc": 1, "device": device.type}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "conf" / "local.yaml"))
    p.add_argument("--run-date", default=None, help="YYYY-MM-DD: the training night, for configs with "
                                                     "training.window")
    p.add_argument("--preset", default="seed")
    p.add_argument("--model", choices=["single_seq", "two_seq"], default=None, help="override model_type")
    p.add_argument("--moe", choices=["on", "off", "preset"], default="preset", help="override use_moe")
    p.add_argument("--impl", choices=["suite", "plain", "both"], default="suite")
    p.add_argument("--nproc", type=int, default=1, help="ranks of the suite's run")
    p.add_argument("--steps", type=int, default=40, help="steps in all, warm-up included")
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps (the suite's first log interval)")
    p.add_argument("--batch", type=int, default=64, help="per rank")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    if not 0 < args.warmup < args.steps:
        p.error(f"--warmup must be in [1, --steps), got {args.warmup} with --steps {args.steps}")
    common = {"preset": args.preset, "model": args.model, "moe": args.moe, "batch_per_rank": args.batch,
              "steps": args.steps, "amp": args.amp, "compile": args.compile}
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in (["suite", "plain"] if args.impl == "both" else [args.impl]):
            rows[impl] = {"impl": impl, **common, **(run_suite(args, Path(tmp)) if impl == "suite" else
                                                     run_plain(args))}
    if "suite" in rows:
        bare = run_bare_step(args)
        rows["suite"].update(bare_step_samples_per_s=round(bare, 1),
                             ratio_to_bare_step=round(rows["suite"]["samples_per_s"] / args.nproc / bare, 3))
    if len(rows) == 2:
        rows["suite"]["ratio_to_plain"] = round(rows["suite"]["samples_per_s"] / rows["plain"]["samples_per_s"], 3)
    for r in rows.values():
        print(json.dumps(r))
        write_result("training", r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
