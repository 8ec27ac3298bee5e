"""The replay: the Airflow DAG's own task commands, night after night, on a real standalone cluster.

    python -m tsa_lib.orchestration.replay --config conf/local.yaml --start 2026-02-22 --nights 21 \\
        [--kill-task score@3] [--sabotage-night 2026-03-01] [--customers 5000] [--workdir artifacts/replay]

What it does, in ``--workdir`` (default ``artifacts/replay``, made fresh each time):

1. ``replay.yaml``: the given config with its warehouse, input tables and artifacts under the
   workdir, ``spark.target: cluster`` and a generator covering the history the first training
   needs plus every night;
2. generates the synthetic orders in-process (the ground truth) and writes the history
   (orders before ``--start``) to the input Delta tables; each night appends that day's orders
   before its tasks run, as a nightly feed would;
3. starts a standalone Spark cluster (``tsa_lib.orchestration.cluster``), builds the wheel, and
   checks with a probe job that the executors import ``tsa_lib`` from the shipped wheel;
4. night 0 (the bootstrap): the sequences of every history day in one backfill, then the
   training branch for ``--start`` - 1, so the first night has a champion;
5. every night D: the tasks of ``airflow_dag.plan()`` in order, each rendered for D and run as the
   DAG runs it (``./spark-submit.sh --target standalone``, torchrun for training); the training
   branch only on training nights.  ``--kill-task`` SIGKILLs one task right after its first Delta
   partition write, then retries it; ``--sabotage-night`` shuffles the labels of that night's
   training window before training, so the gate must reject the challenger;
6. checks (``summary.json``'s ``checks``): every night scored exactly once, training saw only the
   labels known at its run date, a retrain was promoted, the sabotaged one rejected, metrics only
   for matured days, executors ran the wheel.  Exit 0 only when all pass.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from tsa_lib.config import PROJECT_ROOT, SuiteConfig, load_config
from tsa_lib.errors import InternalError, UserError
from tsa_lib.orchestration.airflow_dag import LOGICAL_DATE, TaskSpec, plan
from tsa_lib.schedule import DEFAULT_TRAIN_WEEKDAYS, is_training_night, label_known, training_windows

log = logging.getLogger(__name__)

SUBMIT = PROJECT_ROOT / "spark-submit.sh"
MARKER = ".tsa-replay"
KILL_AFTER = "replaced "      # the log line of a Delta partition write (tsa_lib.spark.delta_io)
SABOTAGE_SEED = 20260301
TS_US = "datetime64[us, UTC]"


def _python() -> str:
    venv = PROJECT_ROOT / ".venv" / "bin" / "python"
    return os.environ.get("TSA_PYTHON") or (str(venv) if venv.exists() else sys.executable)


PY = _python()


# ---- arguments -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    config: Path
    start: dt.date
    nights: int
    workdir: Path
    customers: int
    weekdays: tuple[int, ...]
    kill: Optional[tuple[str, int]]        # (task id, night number 1-based)
    sabotage: Optional[dt.date]
    nproc: int
    task_timeout_s: float

    @property
    def dates(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range(self.nights)]

    def training(self, d: dt.date) -> bool:
        return is_training_night(d, self.weekdays)


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as e:  # argparse names the argument
        raise argparse.ArgumentTypeError(f"{value!r} is not a YYYY-MM-DD date") from e


def _kill_spec(value: str, specs: Sequence[TaskSpec], nights: int) -> tuple[str, int]:
    task, _, k = value.partition("@")
    spark_tasks = [t.task_id for t in specs if not t.torchrun]
    if task not in spark_tasks or not k.isdigit() or not 1 <= int(k) <= nights:
        raise UserError(f"--kill-task: {value!r} is not TASK@K with TASK one of {spark_tasks} and K a night "
                         f"number 1..{nights}")
    return task, int(k)


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m tsa_lib.orchestration.replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="suite config YAML (e.g. conf/local.yaml)")
    p.add_argument("--start", required=True, type=_date, help="first night YYYY-MM-DD")
    p.add_argument("--nights", type=int, default=21)
    p.add_argument("--workdir", default="artifacts/replay", help="made fresh; relative to the project root")
    p.add_argument("--customers", type=int, default=5000, help="generator.n_customers")
    p.add_argument("--training-weekdays", type=int, nargs="+", default=list(DEFAULT_TRAIN_WEEKDAYS),
                   help="training nights, Monday = 0 (default: 6, Sunday)")
    p.add_argument("--kill-task", default=None, help="TASK@K: SIGKILL task TASK of night K mid-write, then retry")
    p.add_argument("--sabotage-night", default=None, type=_date,
                   help="a training night whose challenger trains on shuffled labels")
    p.add_argument("--nproc", type=int, default=1, help="torchrun processes for training")
    p.add_argument("--task-timeout", type=float, default=3600.0, help="seconds before a task counts as hung")
    a = p.parse_args(argv)
    for key, v in (("--nights", a.nights), ("--customers", a.customers), ("--nproc", a.nproc)):
        if v < 1:
            p.error(f"{key}: must be >= 1, got {v}")
    try:
        opts = _options(a)
    except ValueError as e:
        p.error(str(e))
    return opts


def _options(a: argparse.Namespace) -> Options:
    config = Path(a.config).resolve()
    if not config.is_file():
        raise UserError(f"--config: {a.config!r} is not a file")
    bad = [w for w in a.training_weekdays if not 0 <= w <= 6]
    if bad:
        raise UserError(f"--training-weekdays: {bad} are not weekday numbers 0 (Monday) .. 6 (Sunday)")
    workdir = Path(a.workdir) if os.path.isabs(a.workdir) else PROJECT_ROOT / a.workdir
    opts = Options(config=config, start=a.start, nights=a.nights, workdir=workdir.resolve(),
                   customers=a.customers, weekdays=tuple(a.training_weekdays),
                   kill=_kill_spec(a.kill_task, plan(), a.nights) if a.kill_task else None,
                   sabotage=a.sabotage_night, nproc=a.nproc, task_timeout_s=a.task_timeout)
    if opts.sabotage is not None and (opts.sabotage not in opts.dates or not opts.training(opts.sabotage)):
        raise UserError(f"--sabotage-night: {opts.sabotage} is not a training night of the replay "
                         f"({opts.start}..{opts.dates[-1]}, training weekdays {list(opts.weekdays)})")
    if opts.kill is not None:
        spec = next(t for t in plan() if t.task_id == opts.kill[0])
        if spec.training and not opts.training(opts.dates[opts.kill[1] - 1]):
            raise UserError(f"--kill-task: {a.kill_task!r}: night {opts.kill[1]} "
                             f"({opts.dates[opts.kill[1] - 1]}) is not a training night")
    return opts


# ---- the workdir and its config --------------------------------------------------------------

def prepare_workdir(path: Path) -> Path:
    """Empty ``path`` (only a previous replay's folder, inside the project or the temp folder) and mark it."""
    p = path.resolve()
    roots = [PROJECT_ROOT.resolve(), Path(tempfile.gettempdir()).resolve(), Path("/tmp").resolve()]
    if not any(r in p.parents for r in roots):
        raise UserError(f"--workdir: {str(path)!r} is outside the project {str(PROJECT_ROOT)!r} and the temp "
                         f"folder; not using it")
    if p.exists():
        if any(p.iterdir()) and not (p / MARKER).is_file():
            raise UserError(f"--workdir: {str(path)!r} is not empty and was not made by a replay (no {MARKER}); "
                             f"not removing it")
        shutil.rmtree(p)
    p.mkdir(parents=True)
    (p / MARKER).write_text("made by tsa_lib.orchestration.replay; removed by the next replay\n")
    return p


def history_start(cfg: SuiteConfig, start: dt.date) -> dt.date:
    """First day of generated data: the bootstrap training's windows and a week of sequence history."""
    w = cfg.training.window
    if w is None:
        raise UserError("--config: the replay needs training.window (training windows relative to the run date), "
                         "not fixed training dates")
    days = 1 + cfg.labels.mature_after_days + w.valid_days + w.train_days + 7
    return start - dt.timedelta(days=days)


def write_replay_config(opts: Options) -> tuple[Path, SuiteConfig]:
    """``<workdir>/replay.yaml``: the config with everything under the workdir, cluster target, generator span."""
    import yaml

    from tsa_lib.config_base import load_yaml

    raw = load_yaml(opts.config)
    first = history_start(load_config(opts.config), opts.start)
    wh = opts.workdir / "warehouse"
    raw["storage"] = {"warehouse": str(wh), "database": "tsa"}
    raw["input"] = {name: {"path": str(wh / "raw" / name), "format": "delta"}
                    for name in ("transactions", "order_features")}
    raw["spark"] = {**(raw.get("spark") or {}), "target": "cluster"}
    if (raw.get("tracking") or {}).get("mlflow"):
        raw["tracking"] = {**raw["tracking"], "mlflow_uri": str(opts.workdir / "mlruns")}
    raw["generator"] = {**(raw.get("generator") or {}), "n_customers": opts.customers,
                        "start_date": first.isoformat(), "n_days": (opts.start - first).days + opts.nights}
    path = opts.workdir / "replay.yaml"
    path.write_text(f"# written by tsa_lib.orchestration.replay from {opts.config}\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return path, load_config(path)


# ---- the input feed --------------------------------------------------------------------------

class InputFeed:
    """The generated orders (the ground truth), written to the input tables day by day."""

    def __init__(self, cfg: SuiteConfig) -> None:
        import pyarrow as pa

        from tsa_lib.data.synthetic import generate

        data = generate(cfg.generator)
        tx = data.transactions.copy()
        tx["order_ts"] = tx["order_ts"].astype(TS_US)
        tx["label_ts"] = tx["label_ts"].astype(TS_US)
        self.tx = tx
        self.features = data.order_features
        self.day = tx["order_ts"].dt.date             # NaT -> NaT: written with the history
        first_ts = tx.groupby("order_id")["order_ts"].min()
        self.feature_day = self.features["order_id"].map(first_ts).dt.date
        self.schemas = {"transactions": pa.Table.from_pandas(tx, preserve_index=False).schema,
                        "order_features": pa.Table.from_pandas(self.features, preserve_index=False).schema}
        self.paths = {k: str(getattr(cfg.input, k).resolved_path(PROJECT_ROOT))
                      for k in ("transactions", "order_features")}

    def write_history(self, start: dt.date) -> int:
        """Orders before ``start`` (and those without a time) -> the input tables (created here)."""
        rows = self.tx[self.day.isna() | (self.day < start)]
        feats = self.features[self.feature_day.isna() | (self.feature_day < start)]
        self._write("transactions", rows, "overwrite")
        self._write("order_features", feats, "overwrite")
        return len(rows)

    def append_day(self, d: dt.date) -> int:
        """Day ``d``'s orders (and their features) appended, as the nightly feed delivers them."""
        rows = self.tx[self.day == d]
        self._write("transactions", rows, "append")
        self._write("order_features", self.features[self.feature_day == d], "append")
        return len(rows)

    def _write(self, name: str, frame: pd.DataFrame, mode: str) -> None:
        import pyarrow as pa
        from deltalake import write_deltalake

        table = pa.Table.from_pandas(frame, schema=self.schemas[name], preserve_index=False)
        write_deltalake(self.paths[name], table, mode=mode)

    def truth(self) -> pd.DataFrame:
        """One row per order id: order_id (str), day, event_us, label_us (-1: none), is_fraud."""
        t = self.tx[self.tx["order_ts"].notna()].drop_duplicates("order_id")
        return pd.DataFrame({
            "order_id": t["order_id"].astype(str).to_numpy(),
            "day": t["order_ts"].dt.date.to_numpy(),
            "event_us": t["order_ts"].astype("int64").to_numpy(),
            "label_us": t["label_ts"].astype("int64").where(t["label_ts"].notna(), -1).to_numpy(),
            "is_fraud": t["is_fraud"].to_numpy()})


# ---- running tasks ---------------------------------------------------------------------------

class TaskFailed(InternalError):
    """A task exited non-zero (or hung)."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(f"task {record['task']} of {record['ds']} failed with exit code {record['rc']}; "
                         f"see {record['log']}")
        self.record = record


@dataclass
class Attempt:
    rc: int
    seconds: float
    stdout: list[str]
    killed: bool = False
    kill_line: Optional[str] = None


def _pump(stream: IO[str], sink: IO[str], lock: threading.Lock, keep: Optional[list[str]],
          on_line: Callable[[str], None]) -> None:
    for line in stream:
        with lock:
            sink.write(line)
            sink.flush()
        if keep is not None and line.strip():
            keep.append(line.rstrip())
        on_line(line)


def run_process(cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path, timeout_s: float,
                kill_on: Optional[str] = None) -> Attempt:
    """Run ``cmd`` in its own process group, output to ``log_path``; SIGKILL the group when a
    line contains ``kill_on`` (or after ``timeout_s``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    state: dict[str, Optional[str]] = {"kill_line": None}
    with open(log_path, "a") as sink:
        sink.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

        def watch(line: str) -> None:
            if kill_on and kill_on in line and state["kill_line"] is None:
                state["kill_line"] = line.strip()
                _kill_group(proc)

        lock, out = threading.Lock(), []
        pumps = [threading.Thread(target=_pump, args=(s, sink, lock, k, watch), daemon=True)
                 for s, k in ((proc.stdout, out), (proc.stderr, None))]
        for t in pumps:
            t.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = proc.wait()
            sink.write(f"replay: killed after the task timeout of {timeout_s:.0f}s\n")
        except BaseException:
            _kill_group(proc)
            raise
        for t in pumps:
            t.join(timeout=30)
    return Attempt(rc=rc, seconds=round(time.perf_counter() - t0, 1), stdout=out,
                   killed=state["kill_line"] is not None, kill_line=state["kill_line"])


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def range_args(args: Sequence[str], first: dt.date, last: dt.date) -> tuple[str, ...]:
    """A task's arguments with ``--run-date {{ ds }}`` turned into a backfill ``first..last``."""
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--run-date" and i + 1 < len(args) and args[i + 1] == LOGICAL_DATE:
            out += ["--start-date", first.isoformat(), "--end-date", last.isoformat()]
            i += 2
        else:
            out.append(args[i])
            i += 1
    return tuple(out)


@dataclass
class Runner:
    """Runs the plan's tasks as the DAG does: Spark jobs through spark-submit.sh, training with torchrun."""

    workdir: Path
    spark_env: dict[str, str]
    nproc: int
    timeout_s: float

    def command(self, spec: TaskSpec, args: Sequence[str]) -> tuple[list[str], dict[str, str], Path]:
        if spec.torchrun:
            from tsa_lib.orchestration.cluster import free_port

            env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
            cmd = [PY, "-m", "torch.distributed.run", "--nproc-per-node", str(self.nproc), "--master-port",
                   str(free_port()), str(PROJECT_ROOT / spec.job), *args]
            return cmd, env, PROJECT_ROOT
        return [str(SUBMIT), "--target", "standalone", spec.job, *args], self.spark_env, self.workdir

    def run(self, spec: TaskSpec, args: Sequence[str], label: str, kill: bool = False) -> dict[str, Any]:
        """Run one task (killing it after its first partition write and retrying when ``kill``)."""
        cmd, env, cwd = self.command(spec, args)
        log_path = self.workdir / "logs" / label / f"{spec.task_id}.log"
        log.info("[%s] %s: %s", label, spec.task_id, " ".join([Path(cmd[0]).name, *cmd[1:]]))
        first = run_process(cmd, env, cwd, log_path, self.timeout_s, KILL_AFTER if kill else None)
        rec: dict[str, Any] = {"task": spec.task_id, "ds": label, "seconds": first.seconds, "rc": first.rc,
                               "log": str(log_path)}
        if kill:
            rec.update(killed=first.killed, kill_after=first.kill_line, killed_rc=first.rc)
            if first.killed:
                log.info("[%s] %s killed after %r; retrying", label, spec.task_id, first.kill_line)
                again = run_process(cmd, env, cwd, log_path, self.timeout_s)
                rec.update(retried=True, retry_seconds=again.seconds, rc=again.rc,
                           seconds=round(first.seconds + again.seconds, 1))
                first = again
        rec["output"] = first.stdout[-1] if first.stdout else ""
        if rec["rc"] != 0:
            raise TaskFailed(rec)
        log.info("[%s] %s done in %.0fs: %s", label, spec.task_id, rec["seconds"], rec["output"])
        return rec


# ---- Delta tables (read off-Spark) -----------------------------------------------------------

def read_delta(path: str, columns: Optional[list[str]] = None, days: Optional[tuple[dt.date, dt.date]] = None,
               version: Optional[int] = None) -> pd.DataFrame:
    """Rows of a Delta table (``ds`` in ``days`` when given) as pandas; empty when there is no table."""
    import pyarrow.dataset as pds
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(path):
        return pd.DataFrame(columns=columns or [])
    flt = (pds.field("ds") >= days[0]) & (pds.field("ds") <= days[1]) if days else None
    return DeltaTable(path, version=version).to_pyarrow_dataset().to_table(columns=columns, filter=flt).to_pandas()


def shuffle_training_labels(cfg: SuiteConfig, run_date: dt.date, seed: int = SABOTAGE_SEED) -> dict[str, Any]:
    """Permute the known labels of the examples in ``run_date``'s training window (not validation)."""
    import pyarrow as pa
    import pyarrow.dataset as pds
    from deltalake import DeltaTable, write_deltalake

    path = cfg.storage.table_path("examples", PROJECT_ROOT)
    a, b = training_windows(cfg, run_date).train
    table = DeltaTable(path).to_pyarrow_dataset().to_table(filter=(pds.field("ds") >= a) & (pds.field("ds") <= b))
    label = table.column("label").combine_chunks()
    known = label.is_valid().to_numpy(zero_copy_only=False)
    values = label.fill_null(0).to_numpy(zero_copy_only=False).copy()
    idx = np.flatnonzero(known)
    shuffled = np.random.default_rng(seed).permutation(values[idx])
    changed = int((shuffled != values[idx]).sum())
    values[idx] = shuffled
    i = table.schema.get_field_index("label")
    table = table.set_column(i, table.schema.field(i), pa.array(values, type=label.type, mask=~known))
    write_deltalake(path, table, mode="overwrite", predicate=f"ds >= '{a}' AND ds <= '{b}'")
    log.info("sabotage of %s: shuffled %d known labels of %s..%s (%d changed)", run_date, len(idx), a, b, changed)
    return {"train": [a.isoformat(), b.isoformat()], "rows": table.num_rows, "labels_shuffled": int(len(idx)),
            "labels_changed": changed, "seed": seed}


# ---- the replay ------------------------------------------------------------------------------

PROBE = '''"""Replay probe: where do the driver and the executors import tsa_lib from?"""
import json, os
from pyspark.sql import SparkSession
import tsa_lib
spark = SparkSession.builder.appName("tsa-replay-probe").getOrCreate()
where = spark.sparkContext.parallelize(range(2), 2).map(
    lambda _: os.path.abspath(__import__("tsa_lib").__file__)).collect()
print("PROBE " + json.dumps({"driver": os.path.abspath(tsa_lib.__file__), "executors": where}))
spark.stop()
'''


def build_wheel(workdir: Path) -> Path:
    """A wheel of tsa_lib built from a snapshot of the checkout (nothing is written into the checkout)."""
    src = workdir / "src"
    shutil.copytree(PROJECT_ROOT / "tsa_lib", src / "tsa_lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(PROJECT_ROOT / "setup.py", src / "setup.py")
    subprocess.run([PY, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(workdir / "dist"), str(src)],
                   check=True, cwd=workdir, capture_output=True, text=True)
    wheels = sorted((workdir / "dist").glob("tsa_lib-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one tsa_lib wheel in {workdir / 'dist'}, found {[w.name for w in wheels]}")
    return wheels[0]


@dataclass
class Replay:
    opts: Options
    cfg_path: Path
    cfg: SuiteConfig
    feed: InputFeed
    specs: list[TaskSpec] = field(default_factory=list)
    runner: Optional[Runner] = None
    summary: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> str:
        return self.cfg.storage.table_path(name, PROJECT_ROOT)

    def probe(self) -> dict[str, Any]:
        assert self.runner is not None
        script = self.opts.workdir / "probe.py"
        script.write_text(PROBE)
        spec = TaskSpec("probe", str(script), ("--config", str(self.cfg_path)), ())
        rec = self.runner.run(spec, spec.args, "probe")
        found = json.loads(rec["output"].split("PROBE ", 1)[1])
        return {"driver_tsa_lib": found["driver"], "executor_tsa_lib": found["executors"], "seconds": rec["seconds"]}

    def bootstrap(self) -> dict[str, Any]:
        """Night 0: sequences of every history day, then the training branch for start - 1."""
        assert self.runner is not None
        ds = self.opts.start - dt.timedelta(days=1)
        first = dt.date.fromisoformat(self.cfg.generator.start_date)
        seq = self.specs[0]
        tasks = [self.runner.run(seq, range_args(seq.args, first, ds), "bootstrap")]
        tasks += [self.runner.run(t, t.render(ds.isoformat()), "bootstrap") for t in self.specs if t.training]
        return {"date": ds.isoformat(), "sequences": [first.isoformat(), ds.isoformat()], "tasks": tasks,
                "gate": self.gate_row(ds), "champion_after": self.champion()}

    def night(self, k: int, d: dt.date) -> dict[str, Any]:
        assert self.runner is not None
        training, sabotaged = self.opts.training(d), d == self.opts.sabotage
        rec: dict[str, Any] = {"night": k, "date": d.isoformat(), "training": training, "sabotaged": sabotaged,
                               "orders_appended": self.feed.append_day(d), "tasks": []}
        self.summary["nights"].append(rec)
        for t in self.specs:
            if t.training and not training:
                continue
            if t.task_id == "train" and sabotaged:
                rec["sabotage"] = shuffle_training_labels(self.cfg, d)
            kill = self.opts.kill == (t.task_id, k)
            rec["tasks"].append(self.runner.run(t, t.render(d.isoformat()), d.isoformat(), kill=kill))
        rec.update(self.night_outcome(d, training))
        return rec

    def night_outcome(self, d: dt.date, training: bool) -> dict[str, Any]:
        scores = read_delta(self.table("scores"), ["order_id"], (d, d))
        evaluated = d - dt.timedelta(days=self.cfg.labels.mature_after_days)
        metrics = read_delta(self.table("metrics"), ["ds"], (evaluated, evaluated))
        return {"scored": len(scores), "champion_after": self.champion(),
                "gate": self.gate_row(d) if training else None,
                "evaluated_day": evaluated.isoformat(), "metrics_has_day": len(metrics) > 0}

    def models(self) -> list[dict[str, Any]]:
        m = read_delta(self.table("models"))
        m = m[m["model_name"] == self.cfg.training.model_name] if len(m) else m
        return m.to_dict("records")

    def champion(self) -> Optional[str]:
        from tsa_lib.registry.champion import current_champion

        c = current_champion(self.models())
        return c.version if c else None

    def gate_row(self, d: dt.date) -> Optional[dict[str, Any]]:
        rows = [r for r in self.models() if r["action"] == "gate" and r["ds"] == d]
        if not rows:
            return None
        r = max(rows, key=lambda x: x["decided_at"])
        return {k: (None if isinstance(r[k], float) and not np.isfinite(r[k]) else r[k])
                for k in ("model_version", "decision", "reason", "model_value", "champion_version",
                          "champion_value")}


# ---- checks ----------------------------------------------------------------------------------

def _check(ok: bool, detail: str, **extra: Any) -> dict[str, Any]:
    return {"ok": bool(ok), "detail": detail, **extra}


def check_scored_exactly_once(r: Replay, truth: pd.DataFrame) -> dict[str, Any]:
    quarantine = read_delta(r.table("quarantine"), ["order_id", "job", "ds"])
    problems, total = [], 0
    for d in r.opts.dates[:len(r.summary["nights"])]:
        scores = read_delta(r.table("scores"), ["order_id"], (d, d))["order_id"]
        targets = int(read_delta(r.table("sequences_customer"), ["n_targets"], (d, d))["n_targets"].sum())
        q = quarantine[quarantine["ds"] == d] if len(quarantine) else quarantine
        q_score = q[q["job"] == "score"]["order_id"] if len(q) else pd.Series(dtype=object)
        q_seq = set(q[q["job"] == "build_sequences"]["order_id"]) if len(q) else set()
        expected = set(truth.loc[truth["day"] == d, "order_id"]) - q_seq
        missing = expected - set(scores) - set(q_score)
        if scores.duplicated().any():
            problems.append(f"{d}: {int(scores.duplicated().sum())} order ids scored twice")
        if len(scores) + len(q_score) != targets:
            problems.append(f"{d}: scored {len(scores)} + quarantined {len(q_score)} != targets {targets}")
        if missing:
            problems.append(f"{d}: {len(missing)} orders neither scored nor quarantined, e.g. {sorted(missing)[:3]}")
        total += len(scores)
    return _check(not problems and total > 0, "; ".join(problems) or
                  f"{total} orders over {len(r.summary['nights'])} nights, each scored once; scored + quarantined "
                  f"== targets every night; every clean order of the day accounted for")


def _training_dates(r: Replay) -> list[dt.date]:
    nights = [dt.date.fromisoformat(n["date"]) for n in r.summary["nights"] if n["training"]]
    return [r.opts.start - dt.timedelta(days=1), *nights]


def check_one_training(r: Replay, truth: pd.DataFrame, d: dt.date) -> dict[str, Any]:
    """Examples a training read (at its pinned version) against the ground truth known before labels_as_of."""
    from tsa_lib.training.artifact import artifact_of_run_date

    folder = artifact_of_run_date(r.cfg.storage.artifacts_path(f"models/{r.cfg.training.model_name}"), d)
    data = json.loads((folder / "manifest.json").read_text())["data"]
    at = dt.datetime.fromisoformat(data["labels_as_of"])
    lo, hi = dt.date.fromisoformat(data["train"][0]), dt.date.fromisoformat(data["valid"][1])
    ex = read_delta(r.table("examples"), ["order_id", "label", "ds"], (lo, hi), version=int(data["examples_version"]))
    m = ex.merge(truth, on="order_id", how="left")
    found = m["event_us"].notna()
    m = m[found]
    known = label_known(m["event_us"].astype("int64").to_numpy(), m["label_us"].astype("int64").to_numpy(),
                        r.cfg.labels.delay_days, at)
    labeled = m["label"].notna().to_numpy()
    sabotaged = d == r.opts.sabotage
    train_end = dt.date.fromisoformat(data["train"][1])
    compare = labeled & ~(sabotaged & (m["ds"] <= train_end).to_numpy())
    wrong = compare & (m["label"].fillna(-1).to_numpy() != m["is_fraud"].to_numpy())
    out = {"run_date": d.isoformat(), "artifact": folder.name, "examples_version": int(data["examples_version"]),
           "labels_as_of": data["labels_as_of"], "examples": int(len(ex)), "not_in_truth": int((~found).sum()),
           "labeled": int(labeled.sum()), "positives": int((m["label"] == 1).sum()),
           "labeled_but_not_known": int((labeled & ~known).sum()), "null_but_known": int((~labeled & known).sum()),
           "value_differs": int(wrong.sum()), "value_not_compared": int((labeled & ~compare).sum())}
    out["ok"] = (out["examples"] > 0 and out["not_in_truth"] == 0 and out["labeled_but_not_known"] == 0
                 and out["null_but_known"] == 0 and out["value_differs"] == 0)
    return out


def check_labels_known(r: Replay, truth: pd.DataFrame) -> dict[str, Any]:
    runs = [check_one_training(r, truth, d) for d in _training_dates(r)]
    bad = [x["run_date"] for x in runs if not x["ok"]]
    detail = "; ".join(f"{x['run_date']}: {x['labeled']}/{x['examples']} labeled ({x['positives']} fraud), "
                       f"{x['labeled_but_not_known']} labeled before known, {x['null_but_known']} null but known, "
                       f"{x['value_differs']} differ" + (f", {x['value_not_compared']} sabotaged not compared"
                                                         if x["value_not_compared"] else "") for x in runs)
    return _check(not bad, (f"failed for {bad}: " if bad else "") + detail, trainings=runs)


def check_retrain_promoted(r: Replay) -> dict[str, Any]:
    gates = [(n["date"], n["gate"]) for n in r.summary["nights"] if n["training"] and n["gate"]]
    fair = [(d, g) for d, g in gates if d != (r.opts.sabotage.isoformat() if r.opts.sabotage else None)]
    promoted = [d for d, g in fair if g["decision"] == "promoted"]
    if not fair:
        return _check(True, "not applicable: no training night after the bootstrap except the sabotaged one",
                      skipped=True)
    return _check(bool(promoted), f"promoted on {promoted}" if promoted else
                  f"every retrain was rejected: {[(d, g['reason']) for d, g in fair]}")


def check_sabotage_rejected(r: Replay) -> dict[str, Any]:
    d = r.opts.sabotage.isoformat() if r.opts.sabotage else ""
    n = next((n for n in r.summary["nights"] if n["date"] == d), None)
    g = n["gate"] if n else None
    if g is None:
        return _check(False, f"no gate decision for the sabotage night {d}")
    return _check(g["decision"] == "rejected", f"{d}: {g['model_version']} {g['decision']}: {g['reason']}")


def check_metrics_mature(r: Replay) -> dict[str, Any]:
    mature = r.cfg.labels.mature_after_days
    nights = [dt.date.fromisoformat(n["date"]) for n in r.summary["nights"]]
    allowed = {d - dt.timedelta(days=mature) for d in nights}
    days = set(read_delta(r.table("metrics"), ["ds"])["ds"])
    early = sorted(days - allowed)
    expect = sorted(allowed & set(nights))
    ok = not early and (days >= set(expect))
    return _check(ok, (f"metrics for days that were not mature: {early}; " if early else "")
                  + f"{len(days)} metric days, all matured (night - {mature} days)"
                  + (f"; expected {len(expect)} ({expect[0]}..{expect[-1]})" if expect else
                     "; no night's matured day was scored, none expected"))


def check_executors(probe: dict[str, Any]) -> dict[str, Any]:
    paths = probe["executor_tsa_lib"]
    ok = bool(paths) and all(".whl" in p and not p.startswith(str(PROJECT_ROOT / "tsa_lib")) for p in paths)
    return _check(ok, f"executors import tsa_lib from {sorted(set(paths))}")


def run_checks(r: Replay, probe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    truth = r.feed.truth()
    checks = {"scored_exactly_once": check_scored_exactly_once(r, truth),
              "labels_known_at_run_date": check_labels_known(r, truth),
              "one_retrain_promoted": check_retrain_promoted(r)}
    if r.opts.sabotage is not None:
        checks["sabotage_rejected"] = check_sabotage_rejected(r)
    checks["metrics_only_mature"] = check_metrics_mature(r)
    checks["executors_from_wheel"] = check_executors(probe)
    return checks


# ---- main ------------------------------------------------------------------------------------

def _spark_env(master: str, wheel: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TSA_SPARK_MASTER=master, TSA_WHEEL=str(wheel), TSA_PYTHON=PY, PYSPARK_PYTHON=PY,
               SPARK_LOCAL_IP="127.0.0.1", OMP_NUM_THREADS="1")
    return env


def replay(opts: Options) -> dict[str, Any]:
    """Run the whole replay; returns the summary (also written to ``<workdir>/summary.json``)."""
    from tsa_lib.orchestration.cluster import start_cluster

    t0 = time.perf_counter()
    prepare_workdir(opts.workdir)
    cfg_path, cfg = write_replay_config(opts)
    r = Replay(opts, cfg_path, cfg, InputFeed(cfg), specs=plan(str(cfg_path)))
    r.summary = {"config": str(opts.config), "replay_config": str(cfg_path), "start": opts.start.isoformat(),
                 "nights_planned": opts.nights, "customers": opts.customers,
                 "history_start": cfg.generator.start_date, "training_weekdays": list(opts.weekdays),
                 "kill_task": f"{opts.kill[0]}@{opts.kill[1]}" if opts.kill else None,
                 "sabotage_night": opts.sabotage.isoformat() if opts.sabotage else None,
                 "history_orders": r.feed.write_history(opts.start), "nights": [], "checks": {}, "failed": None}
    cluster = start_cluster(opts.workdir / "logs" / "cluster", python=PY)
    try:
        r.summary["cluster"] = {"master": cluster.master_url, "web_ui": cluster.web_url}
        wheel = build_wheel(opts.workdir)
        r.summary["wheel"] = str(wheel)
        r.runner = Runner(opts.workdir, _spark_env(cluster.master_url, wheel), opts.nproc, opts.task_timeout_s)
        probe = r.probe()
        r.summary.update(probe)
        r.summary["bootstrap"] = r.bootstrap()
        for k, d in enumerate(opts.dates, 1):
            r.night(k, d)
            _progress(r.summary["nights"][-1])
        r.summary["checks"] = run_checks(r, probe)
    except TaskFailed as e:
        r.summary["failed"] = e.record
        log.error("%s", e)
    finally:
        cluster.stop()
        r.summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
        r.summary["ok"] = r.summary["failed"] is None and bool(r.summary["checks"]) and all(
            c["ok"] for c in r.summary["checks"].values())
        (opts.workdir / "summary.json").write_text(json.dumps(r.summary, indent=1, default=str))
    return r.summary


def _progress(n: dict[str, Any]) -> None:
    gate = f", gate {n['gate']['decision']}" if n.get("gate") else ""
    log.info("night %d %s done: %d scored, champion %s%s", n["night"], n["date"], n["scored"], n["champion_after"],
             gate)


def report(summary: dict[str, Any]) -> str:
    """The compact table the CLI prints: one line per night, then the checks."""
    lines = [f"replay {summary['start']} x {summary['nights_planned']} nights, {summary['customers']} customers, "
             f"{summary.get('wall_seconds', 0):.0f}s; executors: {summary.get('executor_tsa_lib', ['?'])[0]}"]
    b = summary.get("bootstrap")
    if b:
        g = b["gate"] or {}
        lines.append(f"bootstrap {b['date']}: {g.get('model_version')} {g.get('decision')}; champion "
                     f"{b['champion_after']}")
    lines.append(f"{'night':<12}{'train':<7}{'scored':>7}  {'champion':<18}{'gate':<10}{'eval day':<12}"
                 f"{'metrics':<9}{'secs':>6}  notes")
    for n in summary["nights"]:
        lines.append(_night_line(n))
    if summary.get("failed"):
        f = summary["failed"]
        lines.append(f"FAILED: {f['task']} of {f['ds']} (exit {f['rc']}), log {f['log']}")
    for name, c in summary["checks"].items():
        lines.append(f"[{'ok' if c['ok'] else 'FAIL'}] {name}: {c['detail']}")
    lines.append("ALL CHECKS PASSED" if summary.get("ok") else "REPLAY FAILED")
    return "\n".join(lines)


def _night_line(n: dict[str, Any]) -> str:
    g = n.get("gate") or {}
    notes = []
    if n.get("sabotaged"):
        notes.append("sabotaged")
    for t in n["tasks"]:
        if t.get("killed"):
            notes.append(f"{t['task']} killed + retried" if t.get("retried") else f"{t['task']} kill missed")
    if g:
        notes.append(g.get("reason", ""))
    secs = sum(t["seconds"] for t in n["tasks"])
    return (f"{n['date']:<12}{'yes' if n['training'] else '':<7}{n.get('scored', 0):>7}  "
            f"{str(n.get('champion_after')):<18}{g.get('decision', ''):<10}{n.get('evaluated_day', ''):<12}"
            f"{'yes' if n.get('metrics_has_day') else 'no':<9}{secs:>6.0f}  {'; '.join(notes)}")


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tsa_lib.cli import setup_logging

    opts = parse_args(argv)
    setup_logging("INFO")
    signal.signal(signal.SIGTERM, _terminated)  # a kill still stops the cluster and writes the summary
    try:
        summary = replay(opts)
    except UserError as e:
        log.error("%s", e)
        return 2
    print(report(summary))
    print(f"summary: {opts.workdir / 'summary.json'}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
