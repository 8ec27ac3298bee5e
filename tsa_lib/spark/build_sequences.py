"""The build-sequences job: read -> quality -> sequences per entity -> write -> reconcile.

I/O lives here at the edges; the transforms are ``tsa_lib.spark.quality`` and
``tsa_lib.spark.sequences``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from tsa_lib.cli import RunContext, fmt_dates
from tsa_lib.config import PROJECT_ROOT, SuiteConfig
from tsa_lib.spark.delta_io import ensure_table, replace_partitions
from tsa_lib.spark.inputs import read_transactions
from tsa_lib.spark.quality import DS, KID, check_quality
from tsa_lib.spark.sequences import ENTITY_KEY, SEQUENCE_STATS_COLUMNS, build_sequences, read_window, \
    sequence_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

JOB = "build_sequences"


class ReconciliationError(RuntimeError):
    """Rows went missing: input targets != sequence targets + quarantined rows."""


class EmptyRunDateError(ValueError):
    """A run date has no input orders at all (a late or broken feed, unless the business says so)."""


@dataclass
class BuildSummary:
    dates: tuple[dt.date, ...]
    input_rows: int = 0
    quarantined_input: int = 0
    clean_targets: int = 0
    entity_targets: dict[str, int] = field(default_factory=dict)
    entity_rows: dict[str, int] = field(default_factory=dict)
    entity_capped: dict[str, int] = field(default_factory=dict)
    no_card: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def quarantine_schema() -> "StructType":
    from pyspark.sql.types import DateType, StringType, StructField, StructType, TimestampType

    return StructType([
        StructField("order_id", StringType(), True),
        StructField("event_time", TimestampType(), True),
        StructField("reason", StringType(), False),
        StructField("detail", StringType(), True),
        StructField("raw", StringType(), True),
        StructField("job", StringType(), False),
        StructField("stage", StringType(), False),
        StructField("run_id", StringType(), False),
        StructField("ds", DateType(), False),
    ])


def write_quarantine(spark: "SparkSession", cfg: SuiteConfig, ctx: RunContext, rejected: "DataFrame",
                     job: str) -> None:
    """Replace this job's quarantine rows for the run dates (other jobs' rows stay)."""
    path = cfg.storage.table_path("quarantine", PROJECT_ROOT)
    schema = quarantine_schema()
    ensure_table(spark, path, schema, cfg.storage.qualified("quarantine"))
    replace_partitions(rejected.select(*[f.name for f in schema.fields]), path, ctx.dates,
                       ctx.metadata(cfg.hash), extra_condition=f"job = '{job}'")


def count_quarantined(spark: "SparkSession", cfg: SuiteConfig, dates: Sequence[dt.date], job: str) -> int:
    """This job's quarantine rows for ``dates`` (for the reconciliation of later stages)."""
    from pyspark.sql import functions as F

    path = cfg.storage.table_path("quarantine", PROJECT_ROOT)
    return spark.read.format("delta").load(path).filter(F.col("ds").isin(list(dates)) & (F.col("job") == job)).count()


def sequence_targets(spark: "SparkSession", cfg: SuiteConfig, dates: Sequence[dt.date]) -> int:
    """Target orders in ``sequences_customer`` for ``dates``; an error naming the dates when there are none."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = cfg.storage.table_path("sequences_customer", PROJECT_ROOT)
    n = 0
    if DeltaTable.isDeltaTable(spark, path):
        n = int(spark.read.format("delta").load(path).filter(F.col(DS).isin(list(dates)))
                .agg(F.sum("n_targets")).first()[0] or 0)
    if n == 0:
        raise ValueError(f"no customer sequences for {fmt_dates(dates)} in {path!r}: "
                         f"run jobs/build_sequences.py for these dates first")
    return n


def run_build_sequences(spark: "SparkSession", cfg: SuiteConfig, ctx: RunContext,
                        allow_empty: bool = False) -> BuildSummary:
    """Build and write ``sequences_customer`` and ``sequences_card`` for ``ctx.dates``.

    A run date without a single input order is an ``EmptyRunDateError`` before anything is
    written, unless ``allow_empty`` (a day the business knows is empty).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if not ctx.dates:
        raise ValueError("build_sequences needs --run-date or --start-date/--end-date")
    dates = sorted(ctx.dates)
    cols, seq = cfg.columns, cfg.sequences
    lo, hi = read_window(dates, seq)
    raw, ts = read_transactions(spark, cfg, lo, hi, with_null_time=True)

    checked = check_quality(raw, cols, cfg.quality, cfg.labels)
    last = dates[-1]
    # rows whose time is unknown cannot be dated: they are reported with the last run date
    target_date = F.coalesce(F.to_date("event_time"), F.lit(last))
    rejected = (checked.rejected.withColumn(DS, target_date).filter(F.col(DS).isin(dates))
                .withColumn("job", F.lit(JOB)).withColumn("stage", F.lit("input"))
                .withColumn("run_id", F.lit(ctx.run_id)))
    clean = checked.clean.persist(StorageLevel.MEMORY_AND_DISK)
    rejected = rejected.persist(StorageLevel.MEMORY_AND_DISK)
    s = BuildSummary(dates=tuple(dates))
    try:
        per_day = {(r["d"], r["dated"]): int(r["n"]) for r in raw.select(
            F.coalesce(F.to_date(ts), F.lit(last)).alias("d"), ts.isNotNull().alias("dated"))
            .filter(F.col("d").isin(dates)).groupBy("d", "dated").agg(F.count(F.lit(1)).alias("n")).collect()}
        empty = [d for d in dates if not per_day.get((d, True))]    # undated rows are no day's orders
        if empty and not allow_empty:
            raise EmptyRunDateError(f"no input orders for {fmt_dates(empty)} in input.transactions: a late or "
                                    f"broken feed? (--allow-empty for a day known to be empty); nothing written")
        s.input_rows = sum(per_day.values())
        s.reasons = {r["reason"]: int(r["count"]) for r in rejected.groupBy("reason").count().collect()}
        s.quarantined_input = sum(s.reasons.values())
        targets = clean.filter(F.col(DS).isin(dates))
        c = targets.agg(F.count(F.lit(1)).alias("n"), F.sum(F.col(KID).isNull().cast("int")).alias("no_card")).first()
        s.clean_targets, s.no_card = int(c["n"]), int(c["no_card"] or 0)
        all_rejected = rejected
        for entity, table in (("customer", "sequences_customer"), ("card", "sequences_card")):
            key = ENTITY_KEY[entity]
            res = build_sequences(clean, dates, entity, cols, seq, ctx.run_id,  # type: ignore[arg-type]
                                  feedback=cfg.labels.feedback)
            path = cfg.storage.table_path(table, PROJECT_ROOT)
            ensure_table(spark, path, sequence_schema(cols, cfg.labels.feedback), cfg.storage.qualified(table),
                         comment=f"TSA {entity} sequences: context + targets per ({entity}, ds)",
                         stats_columns=SEQUENCE_STATS_COLUMNS)
            # Backfills: one file per date.  Writing straight from the entity partitions instead
            # (up to shuffle partitions x dates files) measured no faster on 1.9M orders
            # (42.6 / 53.7 s against 48.0 / 45.9 s: bench/results/sequences_profile.jsonl).
            rows = res.rows.repartition(DS) if len(dates) > 1 else res.rows
            replace_partitions(rows, path, dates, ctx.metadata(cfg.hash, entity=entity))
            agg = (spark.read.format("delta").load(path).filter(F.col(DS).isin(dates))
                   .agg(F.count("*").alias("rows"), F.sum("n_targets").alias("targets")).collect()[0])
            s.entity_rows[entity] = int(agg["rows"])
            s.entity_targets[entity] = int(agg["targets"] or 0)
            # orders over the daily cap, counted cheaply; their rows are only built when there are some
            over = (targets.filter(F.col(key).isNotNull()).groupBy(key, DS).count()
                    .agg(F.sum(F.greatest(F.col("count") - seq.max_orders_per_entity_day, F.lit(0)))).first()[0])
            s.entity_capped[entity] = int(over or 0)
            if s.entity_capped[entity]:
                all_rejected = all_rejected.unionByName(
                    res.capped.withColumn(DS, F.to_date("event_time")).withColumn("job", F.lit(JOB))
                    .withColumn("stage", F.lit(table)).withColumn("run_id", F.lit(ctx.run_id)))
        write_quarantine(spark, cfg, ctx, all_rejected, JOB)
    finally:
        clean.unpersist()
        rejected.unpersist()
    reconcile(s)
    return s


def reconcile(s: BuildSummary) -> None:
    """Nothing lost: every input row of the run dates is in a sequence or in quarantine."""
    if s.input_rows != s.clean_targets + s.quarantined_input:
        raise ReconciliationError(f"input rows {s.input_rows} != clean {s.clean_targets} + quarantined "
                                  f"{s.quarantined_input} for {fmt_dates(s.dates)}")
    for entity, targets in s.entity_targets.items():
        expect = s.clean_targets - s.entity_capped[entity] - (s.no_card if entity == "card" else 0)
        if targets != expect:
            raise ReconciliationError(
                f"{entity} sequences hold {targets} targets, expected {expect} (clean {s.clean_targets}, "
                f"capped {s.entity_capped[entity]}, without card {s.no_card if entity == 'card' else 0})")
    log.info("reconciled %s: input %d = clean %d + quarantined %d; customer targets %d, card targets %d "
             "(+%d without card)", fmt_dates(s.dates), s.input_rows, s.clean_targets,
             s.quarantined_input, s.entity_targets.get("customer", 0), s.entity_targets.get("card", 0), s.no_card)
