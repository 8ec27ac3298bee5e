"""The ``models`` Delta table (``tsa.models``): every decision about a model, one row each.

The gate (``run_gate``) scores a newly trained model and the current champion on the
new model's validation window, each with its own encoders, on the same orders and the
labels known at the run date; it records the verdict.  ``run_promote`` and
``run_rollback`` record a manual change of champion.  Scoring reads the champion from
here (``champion``), never "the newest model".

Re-running the gate for a date replaces that date's gate row (idempotent per logical
date); manual actions are appended.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tsa_lib.cli import RunContext, fmt_dates
from tsa_lib.config import PROJECT_ROOT, SuiteConfig
from tsa_lib.errors import DataError, UserError
from tsa_lib.evaluation.metrics import average_precision, roc_auc
from tsa_lib.registry.champion import (Champion, PromotionError, champion_history, current_champion, decide,
                                       latest_gate)
from tsa_lib.schedule import day_range, training_windows
from tsa_lib.spark.delta_io import ensure_table, replace_partitions
from tsa_lib.spark.labels import read_labels
from tsa_lib.training.artifact import LoadedModel, artifact_of_run_date, load_artifact, resolve_artifact

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

GATE_JOB = "gate"
METRICS = {"average_precision": average_precision, "roc_auc": roc_auc}


class GateError(DataError):
    """The gate cannot judge: no validation labels of both classes, or no candidate."""


def models_schema() -> "StructType":
    from pyspark.sql.types import DateType, DoubleType, StringType, StructField, StructType, TimestampType

    s, d = StringType(), DoubleType()
    return StructType([
        StructField("model_name", s, False), StructField("model_version", s, False),
        StructField("artifact_path", s, False), StructField("action", s, False),
        StructField("decision", s, False), StructField("reason", s, False), StructField("metric", s, False),
        StructField("model_value", d, True), StructField("champion_version", s, True),
        StructField("champion_value", d, True), StructField("margin", d, True),
        StructField("valid_start", DateType(), True), StructField("valid_end", DateType(), True),
        StructField("labels_as_of", TimestampType(), True), StructField("valid_orders", d, True),
        StructField("valid_positives", d, True),
        StructField("champion_after", s, True), StructField("champion_after_path", s, True),
        StructField("run_id", s, False), StructField("decided_at", TimestampType(), False),
        StructField("ds", DateType(), False),
    ])


def _path(cfg: SuiteConfig) -> str:
    return cfg.storage.table_path("models", PROJECT_ROOT)


def _ensure(spark: "SparkSession", cfg: SuiteConfig) -> str:
    path = _path(cfg)
    ensure_table(spark, path, models_schema(), cfg.storage.qualified("models"),
                 comment="TSA model decisions: gate verdicts, promotions, rollbacks; champion_after is the champion")
    return path


def history(spark: "SparkSession", cfg: SuiteConfig) -> list[dict[str, Any]]:
    """Every decision about ``training.model_name``, as dicts (empty when the table does not exist)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = _path(cfg)
    if not DeltaTable.isDeltaTable(spark, path):
        return []
    rows = spark.read.format("delta").load(path).filter(F.col("model_name") == cfg.training.model_name).collect()
    return [r.asDict() for r in rows]


def champion(spark: "SparkSession", cfg: SuiteConfig) -> Optional[Champion]:
    """The current champion of ``training.model_name``, or None."""
    return current_champion(history(spark, cfg))


def _record(spark: "SparkSession", cfg: SuiteConfig, row: dict[str, Any], ctx: RunContext, replace: bool) -> None:
    path = _ensure(spark, cfg)
    schema = models_schema()
    df = spark.createDataFrame([tuple(row.get(f.name) for f in schema.fields)], schema)
    meta = ctx.metadata(cfg.hash, action=row["action"], model=row["model_version"])
    if replace:
        replace_partitions(df, path, [row["ds"]], meta,
                           extra_condition=f"action = 'gate' AND model_name = '{cfg.training.model_name}'")
    else:
        df.write.format("delta").mode("append").option("userMetadata", json.dumps(meta, default=str)).save(path)
    log.info("recorded %s of %s: %s (%s); champion is now %s", row["action"], row["model_version"],
             row["decision"], row["reason"], row["champion_after"])
    if row["champion_after"] and row["champion_after"] != row["champion_version"]:
        from tsa_lib.tracking import mirror_champion    # the registry's @champion follows a change; a failure warns

        mirror_champion(cfg, row["champion_after"])


# ---- the gate ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateResult:
    model_version: str
    decision: str
    reason: str
    metric: str
    model_value: float
    champion_version: Optional[str]
    champion_value: Optional[float]
    champion_after: Optional[str]
    valid: tuple[dt.date, dt.date]
    valid_orders: int
    valid_positives: int


def _scores(spark: "SparkSession", cfg: SuiteConfig, loaded: LoadedModel, dates: list[dt.date],
            run_id: str) -> "Any":
    from tsa_lib.scoring.job import score_frame

    scored, _ = score_frame(spark, cfg, loaded, dates, run_id)
    return scored.select("order_id", "event_time", "score").toPandas()


def _metric(name: str, merged: "Any", col: str) -> float:
    return float(METRICS[name](merged["label"].to_numpy().astype(int), merged[col].to_numpy()))


def run_gate(spark: "SparkSession", cfg: SuiteConfig, ctx: RunContext, candidate: Optional[str] = None
             ) -> GateResult:
    """Judge the model trained for the run date against the champion and record the verdict."""
    if len(ctx.dates) != 1:
        raise UserError(f"the gate runs for one date (the training night), got {fmt_dates(ctx.dates)}")
    run_date = ctx.dates[0]
    w = training_windows(cfg, run_date)
    assert w.labels_as_of is not None
    models = cfg.storage.artifacts_path(f"models/{cfg.training.model_name}")
    cand = load_artifact(resolve_artifact(candidate) if candidate else artifact_of_run_date(models, run_date))
    rows = history(spark, cfg)
    prior = [r for r in rows if not (r["action"] == "gate" and r["ds"] == run_date)]  # a retry replaces its own
    champ = current_champion(prior)
    dates = list(day_range(*w.valid))
    labels = read_labels(spark, cfg, dates, w.labels_as_of).filter("label IS NOT NULL") \
        .select("order_id", "event_time", "label").toPandas()
    if labels.empty or labels["label"].nunique() != 2:
        raise GateError(f"validation window {fmt_dates(dates)} has no known labels of both classes before "
                        f"{w.labels_as_of:%Y-%m-%d %H:%M}; the gate cannot judge {cand.version}")
    metric = cfg.promotion.metric
    merged = labels.merge(_scores(spark, cfg, cand, dates, ctx.run_id).rename(columns={"score": "cand"}),
                          on=["order_id", "event_time"], how="inner")
    champ_value: Optional[float] = None
    if champ is not None and champ.version != cand.version:
        champ_loaded = load_artifact(champ.path)
        cs = _scores(spark, cfg, champ_loaded, dates, ctx.run_id).rename(columns={"score": "champ"})
        merged = merged.merge(cs, on=["order_id", "event_time"], how="inner")
        champ_value = _metric(metric, merged, "champ")
    value = _metric(metric, merged, "cand")
    if champ is not None and champ.version == cand.version:
        decision, reason = "promoted", f"{cand.version} is already the champion"
        champ_value = value
    else:
        decision, reason = decide(value, champ_value, champ.version if champ else None, cfg.promotion)
    after = Champion(cand.version, str(cand.path)) if decision == "promoted" else champ
    row = {"model_name": cfg.training.model_name, "model_version": cand.version, "artifact_path": str(cand.path),
           "action": "gate", "decision": decision, "reason": reason, "metric": metric,
           "model_value": _finite(value), "champion_version": champ.version if champ else None,
           "champion_value": _finite(champ_value), "margin": cfg.promotion.margin,
           "valid_start": w.valid[0], "valid_end": w.valid[1], "labels_as_of": w.labels_as_of,
           "valid_orders": float(len(merged)), "valid_positives": float(merged["label"].sum()),
           "champion_after": after.version if after else None, "champion_after_path": after.path if after else None,
           "run_id": ctx.run_id, "decided_at": _now(), "ds": run_date}
    _record(spark, cfg, row, ctx, replace=True)
    return GateResult(model_version=cand.version, decision=decision, reason=reason, metric=metric,
                      model_value=value, champion_version=champ.version if champ else None,
                      champion_value=champ_value, champion_after=row["champion_after"], valid=w.valid,
                      valid_orders=len(merged), valid_positives=int(merged["label"].sum()))


# ---- manual actions ----------------------------------------------------------------------------

def run_promote(spark: "SparkSession", cfg: SuiteConfig, ctx: RunContext, model: str, force: bool = False,
                reason: Optional[str] = None) -> dict[str, Any]:
    """Make ``model`` (a version of ``training.model_name`` or an artifact folder) the champion.

    Without ``force`` the model must have passed a gate: a model the gate rejected, or one
    never judged, is refused with the numbers; ``force`` records the promotion anyway.
    """
    folder = Path(model) if Path(model).is_dir() else \
        cfg.storage.artifacts_path(f"models/{cfg.training.model_name}") / model
    loaded = load_artifact(folder)  # the model must load before it may score
    rows = history(spark, cfg)
    champ = current_champion(rows)
    if champ is not None and champ.version == loaded.version:
        raise PromotionError(f"{loaded.version} is already the champion of {cfg.training.model_name}")
    gate = latest_gate(rows, loaded.version)
    if not force:
        if gate is None:
            raise PromotionError(f"{loaded.version} was never judged by the gate: run jobs/gate.py for its run "
                                 f"date, or promote it with --force")
        if gate["decision"] != "promoted":
            raise PromotionError(f"{loaded.version} is worse than the champion: {gate['reason']} (gate of "
                                 f"{gate['ds']}); promote it anyway with --force")
    row = {"model_name": cfg.training.model_name, "model_version": loaded.version,
           "artifact_path": str(loaded.path), "action": "promote", "decision": "forced" if force else "promoted",
           "reason": reason or ("promoted by hand with --force" if force else "promoted by hand"),
           "metric": cfg.promotion.metric, "model_value": gate["model_value"] if gate else None,
           "champion_version": champ.version if champ else None,
           "champion_value": gate["champion_value"] if gate else None, "margin": cfg.promotion.margin,
           "valid_start": gate["valid_start"] if gate else None, "valid_end": gate["valid_end"] if gate else None,
           "labels_as_of": gate["labels_as_of"] if gate else None,
           "valid_orders": gate["valid_orders"] if gate else None,
           "valid_positives": gate["valid_positives"] if gate else None,
           "champion_after": loaded.version, "champion_after_path": str(loaded.path), "run_id": ctx.run_id,
           "decided_at": _now(), "ds": ctx.dates[0] if ctx.dates else _now().date()}
    _record(spark, cfg, row, ctx, replace=False)
    return row


def run_rollback(spark: "SparkSession", cfg: SuiteConfig, ctx: RunContext, reason: Optional[str] = None
                 ) -> dict[str, Any]:
    """Make the previous champion the champion again."""
    rows = history(spark, cfg)
    chain = champion_history(rows)
    if len(chain) < 2:
        raise PromotionError(f"{cfg.training.model_name} has no previous champion to roll back to "
                             f"(champions so far: {[c.version for c in chain]})")
    cur, prev = chain[-1], chain[-2]
    load_artifact(prev.path)
    row = {"model_name": cfg.training.model_name, "model_version": prev.version, "artifact_path": prev.path,
           "action": "rollback", "decision": "rolled_back", "reason": reason or f"rolled back from {cur.version}",
           "metric": cfg.promotion.metric, "model_value": None, "champion_version": cur.version,
           "champion_value": None, "margin": cfg.promotion.margin, "valid_start": None, "valid_end": None,
           "labels_as_of": None, "valid_orders": None, "valid_positives": None,
           "champion_after": prev.version, "champion_after_path": prev.path, "run_id": ctx.run_id,
           "decided_at": _now(), "ds": ctx.dates[0] if ctx.dates else _now().date()}
    _record(spark, cfg, row, ctx, replace=False)
    return row


def _finite(x: Optional[float]) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


__all__ = ["GateError", "GateResult", "models_schema", "history", "champion", "run_gate", "run_promote",
           "run_rollback"]
