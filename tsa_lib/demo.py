"""`make demo`: the whole nightly pipeline on the embedded default, through the real entry points.

generate -> build sequences -> a training night D (fit encoders on D's training window, build
examples with the labels known at D, train with torchrun on 2 CPU ranks, the champion gate)
-> score the days after D with the champion -> evaluate, then Spark SQL over tsa.scores,
tsa.metrics, tsa.models and tsa.quarantine.  Each step is the same command a user or the
nightly DAG runs (./spark-submit.sh ..., torchrun ...).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from tsa_lib.config import PROJECT_ROOT, SuiteConfig, load_config

SUBMIT = str(PROJECT_ROOT / "spark-submit.sh")
SPARK_LOG = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d ")   # Spark's own log4j lines (yy/MM/dd HH:mm:ss)


def _step(n: int, total: int, title: str, cmd: Sequence[str]) -> float:
    print(f"\n[{n}/{total}] {title}\n    $ {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(list(cmd), cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # progress stays visible: the jobs' own log lines, minus Spark's noise
        if " WARN " in line or line.startswith(("WARNING: Using incubator", "Using Spark's default", "Setting default log",
                                                "To adjust logging")) or SPARK_LOG.match(line) or not line.strip():
            continue
        print("    " + line.rstrip(), flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"step '{title}' failed with exit code {proc.returncode}")
    took = time.perf_counter() - t
    print(f"    done in {took:.0f}s", flush=True)
    return took


SCORED_DAYS = 10   # the demo's training night is this many days before the last generated day


def _dates(cfg: SuiteConfig) -> dict[str, str]:
    from tsa_lib.schedule import training_windows

    g = cfg.generator
    last = dt.date.fromisoformat(g.start_date) + dt.timedelta(days=g.n_days - 1)
    night = last - dt.timedelta(days=SCORED_DAYS)
    w = training_windows(cfg, night)
    return {"seq_start": w.train[0].isoformat(), "last": last.isoformat(), "night": night.isoformat(),
            "windows": w.describe(), "score_start": (night + dt.timedelta(days=1)).isoformat()}


def clear_suite_tables(cfg: SuiteConfig) -> list[str]:
    """Remove the suite's own tables (``<warehouse>/<database>``), only when they live inside the
    project: the demo regenerates its data, and tables from an older schema would fail the run."""
    folder = os.path.join(cfg.storage.warehouse_path(), cfg.storage.database)
    if "://" in folder or not os.path.isdir(folder):
        return []
    if PROJECT_ROOT.resolve() not in Path(folder).resolve().parents:
        raise SystemExit(f"--fresh: {folder!r} is outside the project {str(PROJECT_ROOT)!r}; not removing it")
    removed = sorted(os.listdir(folder))
    shutil.rmtree(folder)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default=str(PROJECT_ROOT / "conf" / "local.yaml"))
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes for training")
    p.add_argument("--show-only", action="store_true", help="only print the SQL views of the last run")
    p.add_argument("--fresh", action="store_true",
                   help="start from empty suite tables (only when they live inside the project)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    d = _dates(cfg)
    if args.show_only:
        show(cfg, d["last"], d["score_start"])
        return 0
    if args.fresh:
        removed = clear_suite_tables(cfg)
        if removed:
            print(f"--fresh: removed the previous run's tables {removed}")
    c = ["--config", args.config]
    py = sys.executable
    t0 = time.perf_counter()
    night = ["--run-date", d["night"]]
    steps = [
        ("generate synthetic transactions (Delta)", [SUBMIT, "jobs/generate_data.py", *c]),
        (f"build customer and card sequences {d['seq_start']}..{d['last']}",
         [SUBMIT, "jobs/build_sequences.py", *c, "--start-date", d["seq_start"], "--end-date", d["last"]]),
        (f"training night {d['night']} ({d['windows']}): fit encoders on the training window",
         [SUBMIT, "jobs/fit_encoders.py", *c, *night]),
        ("encode the training and validation windows with the labels known on the training night",
         [SUBMIT, "jobs/build_examples.py", *c, *night, "--window", "training"]),
        (f"train with torchrun ({args.nproc} CPU processes, gloo)",
         [py, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc), "--master-port",
          os.environ.get("TSA_DEMO_PORT", "29517"), "jobs/train.py", *c, *night]),
        ("champion gate: the new model against the champion on its validation window",
         [SUBMIT, "jobs/gate.py", *c, *night]),
        (f"score {d['score_start']}..{d['last']} with the champion (Arrow UDF, model cached per worker)",
         [SUBMIT, "jobs/score.py", *c, "--start-date", d["score_start"], "--end-date", d["last"]]),
        (f"evaluate {d['score_start']}..{d['last']}",
         [SUBMIT, "jobs/evaluate.py", *c, "--start-date", d["score_start"], "--end-date", d["last"]]),
    ]
    steps.append(("what an analyst sees: Spark SQL over tsa.scores, tsa.metrics, tsa.quarantine",
                  [py, "-m", "tsa_lib.demo", *c, "--show-only"]))
    for i, (title, cmd) in enumerate(steps, 1):
        _step(i, len(steps), title, cmd)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; tables under {cfg.storage.warehouse_path()}/"
          f"{cfg.storage.database}, artifacts under {cfg.storage.artifacts_path()}")
    return 0


def show(cfg: SuiteConfig, day: str, first: str) -> None:
    from tsa_lib.spark.delta_io import register_suite_tables
    from tsa_lib.spark.session import get_spark

    spark = get_spark(cfg.spark, cfg.storage)
    spark.sparkContext.setLogLevel("ERROR")
    try:
        register_suite_tables(spark, cfg.storage)
        db = cfg.storage.database
        q = (f"SELECT order_id, customer_id, card_id, round(score, 4) AS score,\n"
             f"       round(gate_customer, 2) AS gate_cust, round(gate_card, 2) AS gate_card,\n"
             f"       top_customer_orders, top_card_orders\n"
             f"FROM {db}.scores WHERE ds = DATE'{day}' ORDER BY score DESC LIMIT 10")
        print(q)
        spark.sql(q).show(truncate=40)
        q2 = (f"SELECT ds, n, positives, round(roc_auc, 4) AS auc, round(average_precision, 4) AS ap,\n"
              f"       round(recall_at_1pct_fpr, 4) AS recall_1pct_fpr, round(psi_vs_prev_day, 4) AS psi\n"
              f"FROM {db}.metrics WHERE ds >= DATE'{first}' ORDER BY ds")
        print(q2)
        spark.sql(q2).show(40)
        spark.sql(f"SELECT job, reason, count(*) AS n FROM {db}.quarantine GROUP BY job, reason "
                  f"ORDER BY job, n DESC").show(20, truncate=False)
        q3 = (f"SELECT ds, action, model_version, decision, round(model_value, 4) AS value, reason\n"
              f"FROM {db}.models ORDER BY ds, decided_at")
        print(q3)
        spark.sql(q3).show(10, truncate=60)
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
