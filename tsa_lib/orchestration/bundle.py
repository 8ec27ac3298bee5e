"""The Databricks Asset Bundle (``databricks.yml``) of the nightly life, generated from the same
plan as the Airflow DAG (``tsa_lib.orchestration.airflow_dag.plan``).

Two jobs, one per kind of night, both run for ``run_date`` (default ``yesterday``: they start
after midnight UTC, like the DAG's logical date):
- ``tsa_nightly``: build_sequences -> score (the champion) -> evaluate, on the nights that are
  not training nights;
- ``tsa_training``: the whole plan, training included (fit_encoders -> build_examples ->
  train on the GPU job cluster under torchrun -> gate) before the scoring, on the nights after
  each training weekday.

Tasks run the repository's job files (deployed with the bundle) with the wheel built from it as
a library; the config is the deployed ``conf/databricks.yaml`` unless ``var.config`` names
another (in a Unity Catalog volume), and its ``storage.artifacts`` is a volume path.

    python -m tsa_lib.orchestration.bundle > databricks.yml     # regenerate after changing the plan
    databricks bundle deploy -t prod
    databricks bundle run tsa_training --params run_date=2026-03-01   # a backfill or a re-run
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from tsa_lib.orchestration.airflow_dag import LOGICAL_DATE, TaskSpec, plan
from tsa_lib.schedule import DEFAULT_TRAIN_WEEKDAYS

CONFIG_VAR = "${var.config}"
RUN_DATE = "{{job.parameters.run_date}}"
QUARTZ_DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")   # Monday = 0, like datetime
WHEEL = "./dist/*.whl"


def _task(t: TaskSpec, specs: list[TaskSpec], training_job: bool) -> dict[str, Any]:
    args = [a.replace(LOGICAL_DATE, RUN_DATE) for a in t.args]
    args = [CONFIG_VAR if i > 0 and args[i - 1] == "--config" else a for i, a in enumerate(args)]
    known = {s.task_id for s in specs if training_job or not s.training}
    task: dict[str, Any] = {"task_key": t.task_id}
    deps = [u for u in t.upstream if u in known]
    if deps:
        task["depends_on"] = [{"task_key": u} for u in deps]
    if t.torchrun:
        task["job_cluster_key"] = "gpu"
        task["spark_python_task"] = {"python_file": "./jobs/torchrun.py",
                                     "parameters": ["--nproc-per-node", "auto", "--", *args]}
    else:
        task["job_cluster_key"] = "cpu"
        task["spark_python_task"] = {"python_file": f"./{t.job}", "parameters": args}
    task["libraries"] = [{"whl": WHEEL}]
    task["max_retries"] = 2                      # every task replaces exactly its run date's partitions
    task["min_retry_interval_millis"] = 600000
    return task


def _cluster(spark_version: str, node_type: str, workers: str) -> dict[str, Any]:
    return {"spark_version": spark_version, "node_type_id": node_type, "num_workers": workers,
            "data_security_mode": "SINGLE_USER",
            "spark_conf": {"spark.sql.execution.arrow.pyspark.enabled": "true"}}


def _job(name: str, specs: list[TaskSpec], training: bool, days: list[str]) -> dict[str, Any]:
    tasks = [_task(t, specs, training) for t in specs if training or not t.training]
    clusters = [{"job_cluster_key": "cpu",
                 "new_cluster": _cluster("${var.spark_version}", "${var.cpu_node_type}", "${var.cpu_workers}")}]
    if training:
        clusters.append({"job_cluster_key": "gpu",
                         "new_cluster": _cluster("${var.gpu_spark_version}", "${var.gpu_node_type}", "0")})
    return {
        "name": f"{name} (${{bundle.target}})",
        "parameters": [{"name": "run_date", "default": "yesterday"}],
        "schedule": {"quartz_cron_expression": f"0 0 3 ? * {','.join(days)}", "timezone_id": "UTC",
                     "pause_status": "${var.schedule_pause_status}"},
        "max_concurrent_runs": 1,
        "tags": {"product": "tsa", "kind": "fraud"},
        "job_clusters": clusters,
        "tasks": tasks,
    }


def bundle(training_weekdays: tuple[int, ...] = DEFAULT_TRAIN_WEEKDAYS) -> dict[str, Any]:
    """The bundle as a mapping (``databricks.yml``)."""
    specs = plan(CONFIG_VAR)
    after_training = sorted({(w + 1) % 7 for w in training_weekdays})
    training_days = [QUARTZ_DAYS[d] for d in after_training]
    other_days = [QUARTZ_DAYS[d] for d in range(7) if d not in after_training]
    return {
        "bundle": {"name": "tsa"},
        "variables": {
            "config": {"description": "the suite config: the deployed copy of conf/databricks.yaml, or one "
                                      "in a Unity Catalog volume (/Volumes/<catalog>/<schema>/<volume>/...)",
                       "default": "${workspace.file_path}/conf/databricks.yaml"},
            "spark_version": {"default": "17.3.x-scala2.13"},
            "gpu_spark_version": {"default": "17.3.x-gpu-ml-scala2.13"},
            "cpu_node_type": {"default": "Standard_E8ds_v5"},
            "cpu_workers": {"default": 8},
            "gpu_node_type": {"description": "one node, its GPUs all used by torchrun",
                              "default": "Standard_NC48ads_A100_v4"},
            "schedule_pause_status": {"default": "PAUSED"},
        },
        "artifacts": {"tsa_lib": {"type": "whl", "path": ".",
                                  "build": "python -m pip wheel --no-deps -w dist ."}},
        "resources": {"jobs": {
            "tsa_nightly": _job("tsa-nightly", specs, False, other_days),
            "tsa_training": _job("tsa-training", specs, True, training_days),
        }},
        "targets": {
            "dev": {"mode": "development", "default": True},
            "prod": {"mode": "production", "variables": {"schedule_pause_status": "UNPAUSED"}},
        },
    }


def render() -> str:
    head = ("# Generated by `python -m tsa_lib.orchestration.bundle > databricks.yml` from the nightly plan;\n"
            "# edit tsa_lib/orchestration/bundle.py (or the variables at deploy time), not this file.\n")
    return head + yaml.safe_dump(bundle(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
