"""Benchmark: training samples/s end to end from the Delta `examples` table (torchrun, CPU or GPU).

Needs the demo's examples and encoders (run `make demo` first).  Runs jobs/train.py under
torchrun with a config override: the chosen model preset (default: the seed architecture,
dim 128 / 8 heads / 2+2 layers / MoE; feature counts and sequence length come from the
data's encoders), a capped number of steps, and reports the trainer's samples/s.
Run: PYTHONPATH=. .venv/bin/python bench/bench_training.py [--preset seed --nproc 2 --steps 40 --batch 64]
Results are appended to bench/results/training.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "conf" / "local.yaml"))
    p.add_argument("--preset", default="seed")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    tr = cfg.setdefault("training", {})
    tr.update(model_preset=args.preset, model_name=f"bench_{args.preset}", epochs=1,
              max_steps_per_epoch=args.steps, batch_size=args.batch, log_every_steps=10,
              checkpoint_every_steps=10**6, amp=args.amp, compile=args.compile)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg))
        pypath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": pypath, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // args.nproc))}
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc),
                            "--master-port", "29533", str(ROOT / "jobs" / "train.py"), "--config", str(path),
                            "--run-dir", str(Path(tmp) / "run")], env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(r.stderr[-4000:])
    rates = [float(m) for m in re.findall(r"([0-9.]+) samples/s", r.stderr)]
    art = [x for x in r.stdout.splitlines() if x.startswith("model artifact: ")][-1].split(": ", 1)[1]
    hist = json.loads((Path(art) / "metrics.json").read_text())["history"][0]
    res = {"preset": args.preset, "nproc": args.nproc, "batch_per_rank": args.batch, "steps": args.steps,
           "amp": args.amp, "compile": args.compile, "device": "cuda" if "cuda" in r.stderr else "cpu",
           "samples_per_s_logged": rates, "samples_per_s_epoch": round(hist["train_samples_per_s"], 1),
           "wall_s_incl_startup_and_data": round(wall, 1)}
    print(res)
    print(f"appended to {write_result('training', res)}")


if __name__ == "__main__":
    main()
