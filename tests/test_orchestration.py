"""The Airflow DAG's plan and the spark-submit wrapper's commands (dry runs)."""

from __future__ import annotations

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


def _dry(*args: str) -> str:
    r = subprocess.run([SUBMIT, "--dry-run", *args], capture_output=True, text=True, timeout=120)
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
    assert '"idempotency_token"' in db and "/dbfs/FileStore/tsa/conf/databricks.yaml" in db
    again = _dry("--target", "databricks", "jobs/score.py", "--config", "conf/databricks.yaml", "--run-date", "2026-02-25")
    assert again == db  # same job + args + config -> same token


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
