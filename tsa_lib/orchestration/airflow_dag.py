"""The nightly Airflow DAG: the suite's life, one DAG run per logical date.

Every night (``{{ ds }}`` is the logical date D):
    build_sequences(D) -> score(D) with the champion -> evaluate(--as-of D: the day whose labels matured)
On training nights (``training_weekdays``, or a run triggered with ``{"train": true}``),
between the sequences and the scoring:
    fit_encoders(D: the new training window) -> build_examples(D: training + validation windows,
    labels known at the end of D) -> train(D, torchrun) -> gate(D: challenger vs champion)
so tonight's scoring already uses the new champion if the gate promoted it.

Drop this file (or a two-line file calling ``build_dag``) into the DAGs folder.  Every job
replaces exactly the partitions of its logical date (the gate its own decision row), so
retries cannot duplicate data and ``airflow dags backfill`` just works.

Variants (``TSA_AIRFLOW_VARIANT`` or ``build_dag(variant=...)``):
- ``spark_submit``: BashOperator running ``./spark-submit.sh --target local|emr`` on the worker;
- ``databricks``: DatabricksSubmitRunOperator, with an idempotency token per (task, logical date);
- ``emr``: EmrAddStepsOperator + EmrStepSensor per job.

The plan (tasks, order, commands) is plain Python (``plan``), so it can be checked, and
replayed night by night (``tsa_lib.orchestration.replay``), without Airflow installed.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any, Optional

from tsa_lib.schedule import DEFAULT_TRAIN_WEEKDAYS, is_training_night

SUITE_DIR = os.environ.get("TSA_SUITE_DIR", "/opt/tsa")
CONFIG = os.environ.get("TSA_CONFIG", "conf/databricks.yaml")
VARIANTS = ("spark_submit", "databricks", "emr")
LOGICAL_DATE = "{{ ds }}"


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    job: str                  # jobs/<file>
    args: tuple[str, ...]     # job arguments; LOGICAL_DATE stands for the logical date
    upstream: tuple[str, ...]
    torchrun: bool = False
    training: bool = False    # runs on training nights only

    def render(self, ds: str) -> tuple[str, ...]:
        """The arguments for logical date ``ds`` (YYYY-MM-DD)."""
        return tuple(a.replace(LOGICAL_DATE, ds) for a in self.args)


def plan(config: str = CONFIG) -> list[TaskSpec]:
    """The nightly chain in execution order (see the module docstring)."""
    c = ("--config", config)
    day = ("--run-date", LOGICAL_DATE)
    return [
        TaskSpec("build_sequences", "jobs/build_sequences.py", (*c, *day), ()),
        TaskSpec("fit_encoders", "jobs/fit_encoders.py", (*c, *day), ("build_sequences",), training=True),
        TaskSpec("build_examples", "jobs/build_examples.py", (*c, *day, "--window", "training"), ("fit_encoders",),
                 training=True),
        TaskSpec("train", "jobs/train.py", (*c, *day), ("build_examples",), torchrun=True, training=True),
        TaskSpec("gate", "jobs/gate.py", (*c, *day), ("train",), training=True),
        TaskSpec("score", "jobs/score.py", (*c, *day), ("build_sequences", "gate")),
        TaskSpec("evaluate", "jobs/evaluate.py", (*c, "--as-of", LOGICAL_DATE, "--no-report"), ("score",)),
    ]


def _command(t: TaskSpec, target: str) -> str:
    if t.torchrun:
        return (f"cd {SUITE_DIR} && torchrun --nproc-per-node ${{TSA_GPUS_PER_NODE:-1}} {t.job} "
                + " ".join(t.args))
    return f"cd {SUITE_DIR} && ./spark-submit.sh --target {target} {t.job} " + " ".join(t.args)


def build_dag(variant: Optional[str] = None, dag_id: str = "tsa_nightly", schedule: str = "0 3 * * *",
              start: dt.datetime = dt.datetime(2026, 1, 1), config: str = CONFIG,
              training_weekdays: tuple[int, ...] = DEFAULT_TRAIN_WEEKDAYS) -> Any:
    """Build the Airflow DAG (imports Airflow; everything else in this module does not)."""
    variant = variant or os.environ.get("TSA_AIRFLOW_VARIANT", "spark_submit")
    if variant not in VARIANTS:
        raise ValueError(f"variant: {variant!r} is not one of {list(VARIANTS)}")
    from airflow import DAG

    try:
        from airflow.providers.standard.operators.python import ShortCircuitOperator
    except ImportError:  # Airflow 2
        from airflow.operators.python import ShortCircuitOperator  # type: ignore[no-redef]

    default_args = {"retries": 2, "retry_delay": dt.timedelta(minutes=10), "depends_on_past": False}
    dag = DAG(dag_id=dag_id, schedule=schedule, start_date=start, catchup=True, max_active_runs=3,
              default_args=default_args, tags=["fraud", "tsa"],
              doc_md=__doc__)
    tasks: dict[str, Any] = {}
    specs = plan(config)
    with dag:
        night = ShortCircuitOperator(
            task_id="is_training_night",
            python_callable=_is_training_night,
            op_kwargs={"weekdays": training_weekdays},
            ignore_downstream_trigger_rules=False,
        )
        for t in specs:
            tasks[t.task_id] = _operator(variant, t)
        for t in specs:
            for up in t.upstream:
                if t.training and not _spec(specs, up).training:
                    tasks[up] >> night >> tasks[t.task_id]   # the training branch starts behind the check
                else:
                    tasks[up] >> tasks[t.task_id]
        # scoring and evaluation run whether or not the training branch ran tonight
        tasks["score"].trigger_rule = "none_failed"
    return dag


def _spec(specs: list[TaskSpec], task_id: str) -> TaskSpec:
    return next(t for t in specs if t.task_id == task_id)


def _is_training_night(weekdays: tuple[int, ...] = DEFAULT_TRAIN_WEEKDAYS, **context: Any) -> bool:
    conf = (context.get("dag_run").conf or {}) if context.get("dag_run") else {}
    return is_training_night(context["logical_date"].date(), weekdays, conf)


def _operator(variant: str, t: TaskSpec) -> Any:
    if variant == "spark_submit" or t.torchrun and variant != "databricks":
        try:
            from airflow.providers.standard.operators.bash import BashOperator
        except ImportError:
            from airflow.operators.bash import BashOperator  # type: ignore[no-redef]
        target = "emr" if variant == "emr" else os.environ.get("TSA_SUBMIT_TARGET", "local")
        return BashOperator(task_id=t.task_id, bash_command=_command(t, target))
    if variant == "databricks":
        from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator

        root = os.environ.get("TSA_DATABRICKS_ROOT", "/Volumes/main/fraud/tsa")   # or a legacy dbfs:/ root
        conf_remote = f"{root}/conf/{os.path.basename(CONFIG)}".replace("dbfs:/", "/dbfs/")
        params = [a.replace(CONFIG, conf_remote) for a in t.args]
        return DatabricksSubmitRunOperator(
            task_id=t.task_id,
            json={"run_name": f"tsa-{t.task_id}-{{{{ ds }}}}",
                  # same (task, logical date) -> same token: a retry never starts a second run
                  "idempotency_token": f"tsa-{t.task_id}-" + "{{ ds_nodash }}",
                  "tasks": [{"task_key": t.task_id,
                             "spark_python_task": {"python_file": f"{root}/{t.job}", "parameters": params},
                             "libraries": [{"whl": f"{root}/wheels/tsa_lib-0.1.0-py3-none-any.whl"}],
                             "existing_cluster_id": os.environ.get("TSA_DATABRICKS_CLUSTER_ID", "")}]},
        )
    from airflow.providers.amazon.aws.operators.emr import EmrAddStepsOperator

    step = {"Name": f"tsa-{t.task_id}-{{{{ ds }}}}", "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {"Jar": "command-runner.jar",
                              "Args": ["bash", "-c", _command(t, "emr")]}}
    return EmrAddStepsOperator(task_id=t.task_id, job_flow_id=os.environ.get("TSA_EMR_CLUSTER_ID", ""),
                               steps=[step], wait_for_completion=True)


try:  # Airflow imports this module to find `dag`; without Airflow it is a plain library module
    import airflow  # noqa: F401

    dag = build_dag()
except ImportError:
    dag = None
