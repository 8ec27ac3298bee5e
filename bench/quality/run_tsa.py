"""TSA vs the LightGBM peers: the suite's REAL jobs train and score, ``peers.py`` evaluates.

Runs, in a work folder (default /tmp/tsa-quality, never the project's warehouse/):

1. a suite config derived from ``conf/local.yaml`` (warehouse, artifacts and input tables inside
   the work folder, ``generator.seed`` = ``--seed``, training windows = the peers' split);
2. ``jobs/generate_data.py --dirty-rate 0``, then a check that the Delta input equals
   ``peers.load_or_generate(seed, customers, days)`` (same order ids, labels, times, scenarios,
   engineered features);
3. ``jobs/build_sequences.py`` over [train start .. last day], ``jobs/fit_encoders.py`` on the
   peers' training days, ``jobs/build_examples.py`` on [TSA train start .. validation end];
4. per model (two_seq = preset ``small``; single_seq = the same preset with
   ``model_type: single_seq``, written into the work folder) and per ``--epochs`` value:
   ``torchrun --nproc-per-node 2 jobs/train.py`` then ``jobs/score.py`` on the test days into a
   scores table of its own (``storage.scores``);
5. ``peers.run_peers`` on the same seed and split (re-run, never reused: the generator changes);
6. every model's test scores through ``peers.evaluate_scores`` on the peers' test frame
   (identical rows, checked by order id), with the epoch count chosen per model by the
   trainer's validation AP (metrics.json), never by test metrics.

Nothing here tunes on the test window: the trainer early-stops on the validation window (the
peers' validation days), and the test days are scored once per trained model.

Run (on 2 CPU cores, tens of minutes: every model type and epoch count is one training run)::

    PYTHONPATH=. nice -n 10 .venv/bin/python -m bench.quality.run_tsa --epochs 4,8 \\
        --out bench/results/quality_tsa_vs_peers.json

Ablation (diagnosis only, not a tuned result): the same run without one of the model's
categorical columns (here ``entry_mode``), reusing the work folder's input and sequences and
the peers above::

    PYTHONPATH=. nice -n 10 .venv/bin/python -m bench.quality.run_tsa --start-at fit_encoders \\
        --drop-categorical entry_mode --tag _noentry --models two_seq --epochs 8 \\
        --peers-from bench/results/quality_tsa_vs_peers.json \\
        --out /tmp/quality_tsa_no_entry_mode.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import yaml

from bench.quality import peers
from tsa_lib.config import PROJECT_ROOT, load_config

log = logging.getLogger("bench.quality.run_tsa")

SUBMIT = str(PROJECT_ROOT / "spark-submit.sh")
HISTORY_DAYS = 7  # the TSA training window starts a week after the data: every example has some history
MODEL_TYPES = ("two_seq", "single_seq")


# ---- configs ----------------------------------------------------------------------------------------------

def split_dates(start: str, n_days: int, train_days: int, valid_days: int, test_days: int) -> dict[str, str]:
    """The peers' split (``peers.time_split``: by UTC day index from the first day) as dates."""
    d0 = dt.date.fromisoformat(start)
    day = lambda i: (d0 + dt.timedelta(days=i)).isoformat()  # noqa: E731
    if train_days + valid_days + test_days > n_days:
        raise ValueError(f"{train_days}+{valid_days}+{test_days} days exceed the data's {n_days}")
    if HISTORY_DAYS >= train_days:
        raise ValueError(f"train_days {train_days} leaves no TSA training days after {HISTORY_DAYS} history days")
    return {
        "data_start": day(0), "last": day(n_days - 1),
        "train_start": day(0), "train_end": day(train_days - 1),
        "tsa_train_start": day(HISTORY_DAYS),
        "valid_start": day(train_days), "valid_end": day(train_days + valid_days - 1),
        "test_start": day(n_days - test_days), "test_end": day(n_days - 1),
    }


def parse_overrides(items: Sequence[str], what: str) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a.b": 1, "c": ["x", "y"]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any], what: str) -> None:
    """Set dotted keys of a loaded YAML document; the key's parent must exist."""
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"{what}: {key!r}: {part!r} is not a section of the config")
            node = node[part]
        node[parts[-1]] = value


def write_base_config(work: Path, seed: int, n_customers: int, n_days: int, dates: dict[str, str],
                      drop_categorical: Sequence[str] = (), tag: str = "",
                      overrides: Mapping[str, Any] = MappingProxyType({})) -> Path:
    """conf/local.yaml with everything that is written moved under ``work`` and the peers' windows
    (``drop_categorical``: an ablation, columns left out of ``columns.categorical``;
    ``overrides``: dotted keys set last, e.g. ``sequences.time_unit_seconds``)."""
    data = yaml.safe_load((PROJECT_ROOT / "conf" / "local.yaml").read_text())
    for col in drop_categorical:
        if col not in data["columns"]["categorical"]:
            raise ValueError(f"--drop-categorical: {col!r} is not in columns.categorical "
                             f"{data['columns']['categorical']}")
    data["columns"]["categorical"] = [c for c in data["columns"]["categorical"] if c not in drop_categorical]
    data["storage"]["warehouse"] = str(work / "warehouse")
    data["storage"]["artifacts"] = str(work / "artifacts")
    if (data.get("tracking") or {}).get("mlflow"):
        data["tracking"]["mlflow_uri"] = str(work / "mlruns")
    data["input"] = {"transactions": {"path": str(work / "warehouse" / "raw" / "transactions"), "format": "delta"},
                     "order_features": {"path": str(work / "warehouse" / "raw" / "order_features"),
                                        "format": "delta"}}
    g = data["generator"]
    g.update(seed=seed, n_customers=n_customers, n_days=n_days)
    if g["start_date"] != dates["data_start"]:
        raise ValueError(f"generator.start_date {g['start_date']} != {dates['data_start']}")
    data["training"].pop("window", None)   # the peers' fixed split, not the nightly window
    data["training"].update(train_start=dates["tsa_train_start"], train_end=dates["train_end"],
                            valid_start=dates["valid_start"], valid_end=dates["valid_end"])
    apply_overrides(data, overrides, "--set")
    path = work / f"suite{tag}.yaml"
    path.write_text("# written by bench/quality/run_tsa.py\n" + yaml.safe_dump(data, sort_keys=False))
    load_config(path)  # validate now
    return path


def write_model_config(work: Path, base: Path, model_type: str, epochs: int, tag: str = "",
                       model_overrides: Mapping[str, Any] = MappingProxyType({})) -> tuple[Path, str]:
    """Config of one (model type, epochs) run: its preset file, model name and scores table."""
    preset = yaml.safe_load((PROJECT_ROOT / "tsa_lib" / "models" / "presets" / "small.yaml").read_text())
    preset["model_type"] = model_type
    for key in model_overrides:
        if key not in preset:
            raise SystemExit(f"--model-set: {key!r} is not a key of the small preset ({sorted(preset)})")
    preset.update(model_overrides)
    preset_path = work / f"model_small_{model_type}{tag}.yaml"
    preset_path.write_text(f"# the small preset with model_type {model_type}\n"
                           + yaml.safe_dump(preset, sort_keys=False))
    name = f"tsa_q_{model_type}_e{epochs}{tag}"
    data = yaml.safe_load(base.read_text())
    data["training"].update(model_preset=str(preset_path), model_name=name, epochs=epochs)
    data["storage"]["scores"] = f"scores_{name}"
    data.setdefault("scoring", {})["model_path"] = str(work / "artifacts" / "models" / name)
    path = work / f"suite_{name}.yaml"
    path.write_text(f"# {base.name} + model {name}\n" + yaml.safe_dump(data, sort_keys=False))
    load_config(path)
    return path, name


# ---- running the jobs ---------------------------------------------------------------------------------------

def run_step(title: str, cmd: Sequence[str], log_dir: Path, nice: int) -> tuple[float, str]:
    """One job as a subprocess with demo.py's environment; returns (seconds, its output)."""
    full = (["nice", "-n", str(nice)] if nice else []) + list(cmd)
    log.info("%s\n    $ %s", title, " ".join(full))
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t = time.perf_counter()
    proc = subprocess.run(full, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    took = time.perf_counter() - t
    slug = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")[:60]
    (log_dir / f"{slug}.log").write_text(proc.stdout)
    keep = [ln for ln in proc.stdout.splitlines()
            if ln.strip() and " WARN " not in ln and not ln.startswith(("WARNING: Using incubator", "26/"))]
    for ln in keep[-8:]:
        log.info("    %s", ln)
    if proc.returncode != 0:
        raise SystemExit(f"step '{title}' failed with exit code {proc.returncode}; log: {log_dir / slug}.log")
    log.info("    done in %.0fs", took)
    return took, proc.stdout


def read_delta(path: str | Path) -> pd.DataFrame:
    import deltalake

    return deltalake.DeltaTable(str(path)).to_pyarrow_table().to_pandas()


def _utc_naive(s: pd.Series) -> pd.Series:
    s = pd.to_datetime(s)
    return s.dt.tz_convert("UTC").dt.tz_localize(None) if s.dt.tz is not None else s


def check_same_data(work: Path, tx: pd.DataFrame, feats: pd.DataFrame) -> dict[str, Any]:
    """The Delta input written by generate_data.py equals the peers' in-process generation, row for row."""
    dtx = read_delta(work / "warehouse" / "raw" / "transactions")
    dft = read_delta(work / "warehouse" / "raw" / "order_features")
    out: dict[str, Any] = {"delta_orders": int(len(dtx)), "peers_orders": int(len(tx))}
    a = tx.sort_values("order_id").reset_index(drop=True)
    b = dtx.sort_values("order_id").reset_index(drop=True)
    if len(a) != len(b) or not np.array_equal(a["order_id"].to_numpy(np.int64), b["order_id"].to_numpy(np.int64)):
        raise AssertionError(f"order ids differ: peers {len(a)} orders, Delta {len(b)}")
    bad = []
    for c in a.columns:
        if c not in b.columns:
            bad.append(f"{c} missing in Delta")
            continue
        if c == "order_ts":
            same = np.array_equal(_utc_naive(a[c]).to_numpy("datetime64[us]"),
                                  _utc_naive(b[c]).to_numpy("datetime64[us]"))
        elif a[c].dtype.kind == "f":
            same = np.allclose(a[c].to_numpy(float), b[c].to_numpy(float), equal_nan=True, rtol=0, atol=0)
        else:
            same = bool((a[c].astype(str).to_numpy() == b[c].astype(str).to_numpy()).all())
        if not same:
            bad.append(c)
    fa = feats.sort_values("order_id").reset_index(drop=True)
    fb = dft.sort_values("order_id").reset_index(drop=True)
    if len(fa) != len(fb) or not np.array_equal(fa["order_id"].to_numpy(np.int64), fb["order_id"].to_numpy(np.int64)):
        bad.append("order_features order ids")
    else:
        for c in peers.ENGINEERED:
            if not np.allclose(fa[c].to_numpy(float), fb[c].to_numpy(float), equal_nan=True, rtol=0, atol=0):
                bad.append(f"order_features.{c}")
    if bad:
        raise AssertionError(f"generate_data.py output differs from peers.load_or_generate in: {bad}")
    out["columns_compared"] = [c for c in a.columns] + [f"order_features.{c}" for c in peers.ENGINEERED]
    out["identical"] = True
    return out


def data_digest(tx: pd.DataFrame, feats: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(tx.sort_values("order_id").reset_index(drop=True), index=False).to_numpy()
             .tobytes())
    h.update(pd.util.hash_pandas_object(feats.sort_values("order_id").reset_index(drop=True), index=False)
             .to_numpy().tobytes())
    return h.hexdigest()[:16]


def read_scores(warehouse: Path, database: str, table: str, first: str, last: str) -> pd.DataFrame:
    import deltalake

    t = deltalake.DeltaTable(str(warehouse / database / table)).to_pyarrow_table(
        filters=[("ds", ">=", dt.date.fromisoformat(first)), ("ds", "<=", dt.date.fromisoformat(last))],
        columns=["order_id", "score", "gate_customer", "gate_card", "model_name", "model_version", "ds"])
    df = t.to_pandas()
    df["order_id"] = df["order_id"].astype(np.int64)
    if df["order_id"].duplicated().any():
        raise AssertionError(f"{table}: duplicated order ids in the scores")
    return df


# ---- the run ----------------------------------------------------------------------------------------------------

def run(work: Path, seed: int, n_customers: int, n_days: int, train_days: int, valid_days: int, test_days: int,
        epochs_list: Sequence[int], model_types: Sequence[str], nproc: int, nice: int, start_at: str,
        port: int, drop_categorical: Sequence[str] = (), tag: str = "",
        peers_from: Optional[Path] = None, overrides: Mapping[str, Any] = MappingProxyType({}),
        model_overrides: Mapping[str, Any] = MappingProxyType({})) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    dates = split_dates("2026-01-01", n_days, train_days, valid_days, test_days)
    base = write_base_config(work, seed, n_customers, n_days, dates, drop_categorical, tag, overrides)
    c = ["--config", str(base)]
    log.info("work folder %s, config %s, windows %s", work, base, dates)

    steps = [
            ("generate", "generate synthetic transactions (dirty rate 0)",
             [SUBMIT, "jobs/generate_data.py", *c, "--dirty-rate", "0"]),
            ("build_sequences", f"build sequences {dates['tsa_train_start']}..{dates['last']}",
             [SUBMIT, "jobs/build_sequences.py", *c, "--start-date", dates["tsa_train_start"],
              "--end-date", dates["last"]]),
            ("fit_encoders", f"fit encoders {dates['train_start']}..{dates['train_end']}",
             [SUBMIT, "jobs/fit_encoders.py", *c, "--start-date", dates["train_start"],
              "--end-date", dates["train_end"]]),
            ("build_examples", f"build examples {dates['tsa_train_start']}..{dates['valid_end']}",
             [SUBMIT, "jobs/build_examples.py", *c, "--start-date", dates["tsa_train_start"],
              "--end-date", dates["valid_end"]]),
    ]
    first = [k for k, _, _ in steps].index(start_at) if start_at != "train" else len(steps)
    for key, title, cmd in steps[first:]:
        timings[f"{key}_s"], _ = run_step(title, cmd, logs, nice)

    # the peers' data and split; the Delta input must be the same rows
    t0 = time.perf_counter()
    tx, feats = peers.load_or_generate(seed, n_customers, n_days)
    same = check_same_data(work, tx, feats)
    txd = peers.add_day(tx)
    _, _, test = peers.time_split(txd, train_days, valid_days, test_days)
    test_frame = test[list(peers.TEST_FRAME_COLUMNS)].reset_index(drop=True)
    first_test, last_test = str(test_frame["day"].min().date()), str(test_frame["day"].max().date())
    if (first_test, last_test) != (dates["test_start"], dates["test_end"]):
        raise AssertionError(f"peers' test window {test_frame['day'].min()}..{test_frame['day'].max()} != "
                             f"{dates['test_start']}..{dates['test_end']}")
    timings["data_check_s"] = time.perf_counter() - t0
    log.info("Delta input == peers.load_or_generate(%d, %d, %d): %d orders; test window %d orders, %d fraud",
             seed, n_customers, n_days, same["delta_orders"], len(test_frame), int(test_frame["is_fraud"].sum()))

    cfg = load_config(base)
    runs: dict[str, Any] = {}
    test_ids = np.sort(test_frame["order_id"].to_numpy(np.int64))
    for mt in model_types:
        for ep in epochs_list:
            mcfg_path, name = write_model_config(work, base, mt, ep, tag, model_overrides)
            mc = ["--config", str(mcfg_path)]
            r: dict[str, Any] = {"model_type": mt, "epochs": ep, "config": str(mcfg_path)}
            took, out = run_step(f"train {name}", [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                                                   str(nproc), "--master-port", str(port), "jobs/train.py", *mc],
                                 logs, nice)
            r["train_s"] = round(took, 1)
            m = re.search(r"model artifact: (\S+)", out)
            if not m:
                raise SystemExit(f"train {name}: no 'model artifact:' line in its output")
            art = Path(m.group(1))
            metrics = json.loads((art / "metrics.json").read_text())
            manifest = json.loads((art / "manifest.json").read_text())
            r["artifact"] = str(art)
            r["data"] = manifest["data"]
            r["best_epoch"] = metrics["best_epoch"]
            r["epochs_run"] = len(metrics["history"])
            r["valid"] = {k: metrics["best"][k] for k in ("average_precision", "roc_auc", "recall_at_1pct_fpr",
                                                          "valid_loss", "valid_n", "valid_positives")}
            r["valid_history"] = [{k: round(float(h[k]), 5) for k in ("epoch", "train_loss", "valid_loss", "roc_auc",
                                                                      "average_precision", "train_samples_per_s")}
                                  for h in metrics["history"]]
            took, _ = run_step(f"score {name} {dates['test_start']}..{dates['test_end']}",
                               [SUBMIT, "jobs/score.py", *mc, "--start-date", dates["test_start"],
                                "--end-date", dates["test_end"], "--model", str(art)], logs, nice)
            r["score_s"] = round(took, 1)
            sc = read_scores(Path(cfg.storage.warehouse_path()), cfg.storage.database, f"scores_{name}",
                             dates["test_start"], dates["test_end"])
            got = np.sort(sc["order_id"].to_numpy())
            if not np.array_equal(got, test_ids):
                raise AssertionError(f"{name}: scored {len(got)} orders, the peers' test window has {len(test_ids)}; "
                                     f"{len(np.setdiff1d(test_ids, got))} test orders unscored, "
                                     f"{len(np.setdiff1d(got, test_ids))} extra")
            if set(sc["model_version"]) != {art.name}:
                raise AssertionError(f"{name}: scores from {set(sc['model_version'])}, expected {art.name}")
            s = sc.set_index("order_id")["score"]
            r["test"] = peers.evaluate_scores(test_frame, s, name)
            if mt == "two_seq":
                g = sc.set_index("order_id").reindex(test_frame["order_id"].to_numpy())["gate_card"].to_numpy()
                y = test_frame["is_fraud"].to_numpy()
                r["mean_gate_card"] = {"fraud": float(np.nanmean(g[y == 1])), "legit": float(np.nanmean(g[y == 0]))}
            sc[["order_id", "score"]].to_parquet(work / f"scores_{name}.parquet", index=False)
            o = r["test"]["overall"]
            log.info("%s: valid AP %.4f (best epoch %d) | test AUC %.4f AP %.4f recall@1%%FPR %.4f", name,
                     r["valid"]["average_precision"], r["best_epoch"], o["roc_auc"], o["average_precision"],
                     o["recall_at_1pct_fpr"])
            runs[name] = r

    # per model type: the epoch setting with the best VALIDATION AP (the test metrics play no part)
    chosen = {}
    for mt in model_types:
        cands = [(v["valid"]["average_precision"], -v["epochs"], k) for k, v in runs.items() if v["model_type"] == mt]
        chosen[mt] = max(cands)[2]

    digest = data_digest(tx, feats)
    t0 = time.perf_counter()
    if peers_from is not None:  # an earlier output of this script on the same data (checked by digest)
        prev = json.loads(peers_from.read_text())
        if prev["data_check"]["data_digest"] != digest or prev["peers"]["config"]["seed"] != seed:
            raise SystemExit(f"--peers-from {peers_from}: computed on other data (digest "
                             f"{prev['data_check']['data_digest']} != {digest})")
        pr = prev["peers"]
        pr["reused_from"] = str(peers_from)
    else:
        pr = peers.run_peers(seed, n_customers, n_days, train_days, valid_days, test_days, None, 150,
                             work / "peers_scores.parquet")
    timings["peers_s"] = time.perf_counter() - t0
    if pr["test_rows_fingerprint"] != peers._fingerprint(test_frame["order_id"].to_numpy()):
        raise AssertionError("peers' test rows differ from the frame the TSA was evaluated on")

    return {
        "bench": "quality_tsa_vs_peers",
        "config": {"seed": seed, "n_customers": n_customers, "n_days": n_days, "train_days": train_days,
                   "valid_days": valid_days, "test_days": test_days, "epochs": list(epochs_list),
                   "model_types": list(model_types), "nproc": nproc, "work_dir": str(work),
                   "drop_categorical": list(drop_categorical), "start_at": start_at,
                   "set": dict(overrides), "model_set": dict(model_overrides),
                   "suite_config": yaml.safe_load(base.read_text())},
        "windows": dates,
        "data_check": {**same, "data_digest": digest,
                       "test_orders": int(len(test_frame)), "test_fraud": int(test_frame["is_fraud"].sum())},
        "test_rows_fingerprint": pr["test_rows_fingerprint"],
        "chosen_by_valid_ap": chosen,
        "tsa": runs,
        "peers": pr,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }


def summary_table(res: dict[str, Any]) -> str:
    rows = [(f"TSA {res['tsa'][k]['model_type']} ({res['tsa'][k]['epochs']} ep)", res["tsa"][k])
            for k in res["tsa"]]
    rows += [(f"LightGBM {k}", v) for k, v in res["peers"]["peers"].items()]
    lines = ["| model | valid AP | test AUC | test AP | recall@1%FPR | " +
             " | ".join(f"AP {s}" for s in peers.FRAUD_SCENARIOS) + " |"]
    for label, r in rows:
        o = r["test"]["overall"] if "test" in r else r["overall"]
        per = r["test"]["per_fraud_scenario"] if "test" in r else r["per_fraud_scenario"]
        va = r["valid"]["average_precision"] if "valid" in r else r["valid_average_precision"]
        lines.append(f"| {label} | {va:.4f} | {o['roc_auc']:.4f} | {o['average_precision']:.4f} | "
                     f"{o['recall_at_1pct_fpr']:.4f} | " +
                     " | ".join(f"{per[s]['average_precision']:.4f}" for s in peers.FRAUD_SCENARIOS) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/tsa-quality"))
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--train-days", type=int, default=35)
    p.add_argument("--valid-days", type=int, default=7)
    p.add_argument("--test-days", type=int, default=18)
    p.add_argument("--epochs", default="4", help="comma-separated training.epochs values, e.g. 4,8")
    p.add_argument("--models", default=",".join(MODEL_TYPES), help="comma-separated: two_seq,single_seq")
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes")
    p.add_argument("--nice", type=int, default=10, help="niceness of the jobs (0: none)")
    p.add_argument("--port", type=int, default=29531, help="torchrun master port")
    p.add_argument("--start-at", choices=["generate", "build_sequences", "fit_encoders", "build_examples", "train"],
                   default="generate", help="skip the earlier steps, reusing the work folder's tables")
    p.add_argument("--drop-categorical", default="",
                   help="ablation: comma-separated columns left out of columns.categorical (needs fit_encoders)")
    p.add_argument("--tag", default="", help="suffix of the model names (ablations)")
    p.add_argument("--peers-from", type=Path, default=None,
                   help="reuse the peers of an earlier output of this script (same data digest)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the suite config (dotted, value as YAML), e.g.\n"
                        "--set sequences.time_unit_seconds=60; repeatable")
    p.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the model preset, e.g. --model-set n_layers_order=2")
    p.add_argument("--out", type=Path, default=Path("bench/results/quality_tsa_vs_peers.json"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = a.work_dir.resolve()
    if work == (PROJECT_ROOT / "warehouse").resolve() or PROJECT_ROOT.resolve() in work.parents:
        raise SystemExit(f"--work-dir {work}: use a folder outside the project")
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    for m in models:
        if m not in MODEL_TYPES:
            raise SystemExit(f"--models: {m!r} is not one of {MODEL_TYPES}")
    epochs = [int(e) for e in a.epochs.split(",") if e.strip()]
    t0 = time.perf_counter()
    drop = [c.strip() for c in a.drop_categorical.split(",") if c.strip()]
    if drop and a.start_at in ("build_examples", "train"):
        raise SystemExit("--drop-categorical changes the encoders: use --start-at fit_encoders or earlier")
    res = run(work, a.seed, a.customers, a.days, a.train_days, a.valid_days, a.test_days, epochs, models, a.nproc,
              a.nice, a.start_at, a.port, drop, a.tag, a.peers_from,
              parse_overrides(a.set, "--set"), parse_overrides(a.model_set, "--model-set"))
    res["timings_s"]["total_s"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(summary_table(res))
    log.info("wrote %s", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
