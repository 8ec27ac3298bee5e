"""The Airflow DAG's plan and the spark-submit wrapper's commands (dry runs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tsa_lib.config import PROJECT_ROOT
from tsa_lib.orchestration.airflow_dag import plan

SUBMIT = str(PROJECT_ROOT / "spark-submit.sh")


def test_plan_order_and_templated_dates() -> None:
    p = {t.task_id: t for t in plan("conf/x.yaml")}
    assert list(p) == ["build_sequences", "fit_encoders", "build_examples", "train", "gate", "score", "evaluate"]
    assert [t for t, s in p.items() if s.training] == ["fit_encoders", "build_examples", "train", "gate"]
    assert p["fit_encoders"].upstream == ("build_sequences",) and p["gate"].upstream == ("train",)
    assert p["score"].upstream == ("build_sequences", "gate") and p["evaluate"].upstream == ("score",)
    for t in ("build_sequences", "fit_encoders", "train", "gate", "score"):
        assert p[t].args[-2:] == ("--run-date", "{{ ds }}")  # the logical date, so retries/backfills are idempotent
    assert p["build_examples"].render("2026-03-01") == ("--config", "conf/x.yaml", "--run-date", "2026-03-01",
                                                         "--window", "training")
    assert p["evaluate"].render("2026-03-08") == ("--config", "conf/x.yaml", "--as-of", "2026-03-08", "--no-report")
    assert p["train"].torchrun and not p["score"].torchrun


def test_dag_with_airflow() -> None:
    pytest.importorskip("airflow", reason="apache-airflow is an optional extra (pip install .[airflow])")
    from tsa_lib.orchestration.airflow_dag import build_dag

    dag = build_dag("spark_submit", training_weekdays=(6,))
    ids = {t.task_id for t in dag.tasks}
    assert {"build_sequences", "is_training_night", "fit_encoders", "build_examples", "train", "gate", "score",
            "evaluate"} == ids
    assert "{{ ds }}" in dag.get_task("score").bash_command
    assert dag.get_task("is_training_night").downstream_task_ids == {"fit_encoders"}
    assert dag.get_task("score").upstream_task_ids == {"build_sequences", "gate"}
    assert dag.get_task("score").trigger_rule == "none_failed"
    assert "torchrun" in dag.get_task("train").bash_command


def _dry(*args: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run([SUBMIT, "--dry-run", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_spark_submit_local_dry_run() -> None:
    out = _dry("jobs/score.py", "--config", "conf/local.yaml", "--run-date", "2026-02-25")
    assert "spark-submit --master local\\[2\\]" in out and "delta-spark_4.2_2.13-4.4.0.jar" in out
    assert "io.delta.sql.DeltaSparkSessionExtension" in out and out.rstrip().endswith("--run-date 2026-02-25")


def test_spark_submit_cluster_dry_runs() -> None:
    emr = _dry("--target", "emr", "jobs/score.py", "--config", "conf/emr.yaml", "--run-date", "2026-02-25")
    assert "--master yarn --deploy-mode cluster --py-files" in emr and "--files conf/emr.yaml" in emr
    assert "--config emr.yaml --run-date 2026-02-25" in emr
    db = _dry("--target", "databricks", "jobs/score.py", "--config", "conf/databricks.yaml", "--run-date", "2026-02-25")
    run = json.loads(db)["tasks"][0]      # Unity Catalog volume paths by default
    assert run["spark_python_task"]["python_file"] == "/Volumes/main/fraud/tsa/jobs/score.py"
    assert run["spark_python_task"]["parameters"][:2] == ["--config", "/Volumes/main/fraud/tsa/conf/databricks.yaml"]
    assert run["libraries"][0]["whl"].startswith("/Volumes/main/fraud/tsa/wheels/tsa_lib-")
    again = _dry("--target", "databricks", "jobs/score.py", "--config", "conf/databricks.yaml", "--run-date", "2026-02-25")
    assert again == db and '"idempotency_token"' in db   # same job + args + config -> same token
    legacy = _dry("--target", "databricks", "jobs/score.py", "--config", "conf/databricks.yaml", "--run-date",
                  "2026-02-25", env={"TSA_DATABRICKS_ROOT": "dbfs:/FileStore/tsa"})
    assert "/dbfs/FileStore/tsa/conf/databricks.yaml" in legacy


def test_databricks_bundle_is_the_plan() -> None:
    """databricks.yml is what the generator renders from the plan, and every task's file, wheel,
    parameters and cluster exist: no workspace needed."""
    import yaml

    from tsa_lib.orchestration.bundle import render

    text = (PROJECT_ROOT / "databricks.yml").read_text()
    assert text == render(), "databricks.yml is stale: python -m tsa_lib.orchestration.bundle > databricks.yml"
    b = yaml.safe_load(text)
    jobs = b["resources"]["jobs"]
    plan_ids = [t.task_id for t in plan("x")]
    training_ids = [t.task_id for t in plan("x") if t.training]
    assert [t["task_key"] for t in jobs["tsa_training"]["tasks"]] == plan_ids
    assert [t["task_key"] for t in jobs["tsa_nightly"]["tasks"]] == [t for t in plan_ids if t not in training_ids]
    nightly = {t["task_key"]: t for t in jobs["tsa_nightly"]["tasks"]}
    assert nightly["score"]["depends_on"] == [{"task_key": "build_sequences"}]     # no gate without training
    # the two schedules cover each night once: training after Sunday (the default training weekday)
    days = [j["schedule"]["quartz_cron_expression"].split()[-1].split(",") for j in jobs.values()]
    assert sorted(days[0] + days[1]) == sorted(["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"])
    assert jobs["tsa_training"]["schedule"]["quartz_cron_expression"] == "0 0 3 ? * MON"
    clusters = {c["job_cluster_key"] for j in jobs.values() for c in j["job_clusters"]}
    for job in jobs.values():
        assert job["parameters"] == [{"name": "run_date", "default": "yesterday"}]
        for t in job["tasks"]:
            task = t["spark_python_task"]
            assert (PROJECT_ROOT / task["python_file"]).is_file(), task["python_file"]
            params = task["parameters"]
            assert params[params.index("--config") + 1] == "${var.config}"
            assert "{{job.parameters.run_date}}" in params
            assert t["libraries"] == [{"whl": "./dist/*.whl"}] and t["job_cluster_key"] in clusters
            for up in t.get("depends_on", []):
                assert up["task_key"] in [x["task_key"] for x in job["tasks"]]
    train = {t["task_key"]: t for t in jobs["tsa_training"]["tasks"]}["train"]
    assert train["job_cluster_key"] == "gpu" and train["spark_python_task"]["python_file"] == "./jobs/torchrun.py"
    assert b["variables"]["config"]["default"] == "${workspace.file_path}/conf/databricks.yaml"
    assert (PROJECT_ROOT / "conf" / "databricks.yaml").is_file()
    assert b["artifacts"]["tsa_lib"]["type"] == "whl" and (PROJECT_ROOT / "setup.py").is_file()


def test_torchrun_launcher_and_yesterday() -> None:
    import datetime as dt
    import importlib.util

    from tsa_lib.cli import parse_date
    from tsa_lib.errors import UserError

    spec = importlib.util.spec_from_file_location("torchrun_job", PROJECT_ROOT / "jobs" / "torchrun.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    args = mod.torchrun_args("4", ["--config", "c.yaml", "--run-date", "yesterday"])
    assert args[:5] == ["--standalone", "--nnodes", "1", "--nproc-per-node", "4"]
    assert args[5].endswith("jobs/train.py") and args[6:] == ["--config", "c.yaml", "--run-date", "yesterday"]
    assert mod.torchrun_args("auto", [])[4].isdigit()
    with pytest.raises(UserError, match=r"--nproc-per-node: '0' is not a positive integer or 'auto'"):
        mod.torchrun_args("0", [])
    assert parse_date("--run-date", "yesterday", today=dt.date(2026, 3, 2)) == dt.date(2026, 3, 1)
    with pytest.raises(UserError, match=r"--run-date: '2026-13-01' is not a YYYY-MM-DD date \(or 'yesterday'\)"):
        parse_date("--run-date", "2026-13-01")


@pytest.mark.parametrize("args, words", [
    (["--target", "yarn", "jobs/score.py", "--config", "c"], "--target must be local, emr or databricks"),
    (["jobs/nope.py", "--config", "c"], "job file 'jobs/nope.py' not found"),
    (["jobs/score.py", "--run-date", "2026-01-01"], "needs --config"),
    ([], "give a job file"),
])
def test_spark_submit_bad_arguments(args: list[str], words: str) -> None:
    r = subprocess.run([SUBMIT, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and words in r.stderr


def test_demo_fresh_removes_only_project_tables(tmp_path: Path) -> None:
    import dataclasses

    from tsa_lib.config import StorageConfig, load_config
    from tsa_lib.demo import clear_suite_tables

    base = load_config(PROJECT_ROOT / "conf" / "local.yaml")
    outside = dataclasses.replace(base, storage=StorageConfig(warehouse=str(tmp_path / "wh"), database="tsa"))
    assert clear_suite_tables(outside) == []                      # nothing there yet
    (tmp_path / "wh" / "tsa" / "sequences_customer").mkdir(parents=True)
    with pytest.raises(SystemExit, match="is outside the project"):
        clear_suite_tables(outside)
    assert (tmp_path / "wh" / "tsa" / "sequences_customer").is_dir()   # left alone
    inside = dataclasses.replace(base, storage=StorageConfig(warehouse="warehouse-test-fresh", database="tsa"))
    folder = Path(inside.storage.warehouse_path()) / "tsa" / "scores"
    folder.mkdir(parents=True)
    try:
        assert clear_suite_tables(inside) == ["scores"] and not folder.parent.exists()
    finally:
        shutil.rmtree(Path(inside.storage.warehouse_path()), ignore_errors=True)
