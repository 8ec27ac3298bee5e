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
from tsa_lib.errors import DataError, InternalError, UserError
from tsa_lib.spark.delta_io import ensure_table, replace_partitions, set_table_properties, table_properties
from tsa_lib.spark.inputs import read_transactions
from tsa_lib.spark.quality import DS, EPOCH_UNITS, KID, RECORD_ONLY_REASONS, check_quality, event_time_column, \
    implausible, plausible_range
from tsa_lib.spark.sequences import BUILT_MAX_LEN, BUILT_REPORTS, ENTITY_KEY, SEQUENCE_STATS_COLUMNS, \
    build_sequences, built_shape, read_window, sequence_schema

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

JOB = "build_sequences"


class ReconciliationError(InternalError):
    """Rows went missing: input targets != sequence targets + quarantined rows."""


class EmptyRunDateError(DataError):
    """A run date has no input orders at all (a late or broken feed, unless the business says so)."""


SEEN = "_seen_earlier"   # on quarantine candidates: an undatable row recorded by an earlier run date


class EventTimeUnitError(DataError):
    """Numeric event times read in the configured epoch unit are mostly implausible: a unit mismatch."""


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
    undatable_seen: int = 0       # undatable rows quarantined by an earlier run date (not again)


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
    """This job's quarantined orders for ``dates`` (for the reconciliation of later stages): its
    quarantine rows, less those that only record a problem (``RECORD_ONLY_REASONS``)."""
    from pyspark.sql import functions as F

    path = cfg.storage.table_path("quarantine", PROJECT_ROOT)
    return (spark.read.format("delta").load(path)
            .filter(F.col("ds").isin(list(dates)) & (F.col("job") == job)
                    & ~F.col("reason").isin(list(RECORD_ONLY_REASONS))).count())


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
        raise DataError(f"no customer sequences for {fmt_dates(dates)} in {path!r}: "
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
        raise UserError("build_sequences needs --run-date or --start-date/--end-date")
    dates = sorted(ctx.dates)
    cols, seq = cfg.columns, cfg.sequences
    lo, hi = read_window(dates, seq)
    now = ctx.started_at
    raw, ts = read_transactions(spark, cfg, lo, hi, with_undatable=True, now=now)

    checked = check_quality(raw, cols, cfg.quality, cfg.labels, now=now)
    last = dates[-1]
    # Undatable rows (no time, an unparseable or an implausible one) belong to no day: they are
    # reported once, with the last run date of the first run that reads them (their quarantine
    # rows have no event_time: an implausible instant is kept in the detail only).
    dated = ts.isNotNull() & ~implausible(ts, cfg.quality, now)
    rejected = (checked.rejected.withColumn(DS, F.coalesce(F.to_date("event_time"), F.lit(last)))
                .filter(F.col(DS).isin(dates)))
    marked = (_mark_reported_undatable(spark, cfg, rejected, dates)
              .withColumn("job", F.lit(JOB)).withColumn("stage", F.lit("input"))
              .withColumn("run_id", F.lit(ctx.run_id)).persist(StorageLevel.MEMORY_AND_DISK))
    rejected = marked.filter(~F.col(SEEN)).drop(SEEN)
    clean = checked.clean.persist(StorageLevel.MEMORY_AND_DISK)
    s = BuildSummary(dates=tuple(dates))
    try:
        alt = _other_unit_plausible(raw, cfg, now, dated)   # numeric times: undatable rows another unit dates
        day_counts = (raw.select(F.when(dated, F.to_date(ts)).otherwise(F.lit(last)).alias("d"),
                                 dated.alias("dated"), *[c.alias(u) for u, c in alt.items()])
                      .filter(F.col("d").isin(dates)).groupBy("d", "dated")
                      .agg(F.count(F.lit(1)).alias("n"), *[F.sum(F.col(u).cast("int")).alias(u) for u in alt])
                      .collect())
        per_day = {(r["d"], r["dated"]): int(r["n"]) for r in day_counts}
        _check_epoch_unit(raw, cfg, ts, now, sum(n for (_, ok), n in per_day.items() if ok),
                          {u: sum(int(r[u] or 0) for r in day_counts) for u in alt})
        empty = [d for d in dates if not per_day.get((d, True))]    # undatable rows are no day's orders
        if empty and not allow_empty:
            raise EmptyRunDateError(f"no input orders for {fmt_dates(empty)} in input.transactions: a late or "
                                    f"broken feed? (--allow-empty for a day known to be empty); nothing written")
        s.input_rows = sum(per_day.values())
        counts = marked.groupBy("reason", SEEN).count().collect()
        s.reasons = {r["reason"]: int(r["count"]) for r in counts if not r[SEEN]}
        s.undatable_seen = sum(int(r["count"]) for r in counts if r[SEEN])
        s.quarantined_input = sum(s.reasons.values())
        if s.undatable_seen:
            log.info("%d undatable row(s) were quarantined by an earlier run date; not recorded again",
                     s.undatable_seen)
        targets = clean.filter(F.col(DS).isin(dates))
        c = targets.agg(F.count(F.lit(1)).alias("n"), F.sum(F.col(KID).isNull().cast("int")).alias("no_card")).first()
        s.clean_targets, s.no_card = int(c["n"]), int(c["no_card"] or 0)
        all_rejected = rejected
        for entity, table in (("customer", "sequences_customer"), ("card", "sequences_card")):
            key = ENTITY_KEY[entity]
            res = build_sequences(clean, dates, entity, cols, seq, ctx.run_id,  # type: ignore[arg-type]
                                  feedback=cfg.labels.feedback, reports=cfg.labels.feedback_reports)
            path = cfg.storage.table_path(table, PROJECT_ROOT)
            ensure_table(spark, path, sequence_schema(cols, cfg.labels.feedback, cfg.labels.feedback_reports > 0),
                         cfg.storage.qualified(table),
                         comment=f"TSA {entity} sequences: context + targets per ({entity}, ds)",
                         stats_columns=SEQUENCE_STATS_COLUMNS)
            check_built_shape(spark, path, seq.max_len, cfg.labels.feedback_reports)
            # Backfills: one file per date (writing straight from the entity partitions makes up
            # to shuffle partitions x dates files and is not faster: bench/bench_sequences.py).
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
        for table in ("sequences_customer", "sequences_card"):
            set_table_properties(spark, cfg.storage.table_path(table, PROJECT_ROOT),
                                 built_shape(seq.max_len, cfg.labels.feedback_reports))
    finally:
        clean.unpersist()
        marked.unpersist()
    reconcile(s)
    return s


def check_built_shape(spark: "SparkSession", path: str, max_len: int, reports: int) -> None:
    """A sequences table holds rows of one shape: a build with another ``sequences.max_len`` or
    ``labels.feedback_reports`` than the table records is refused before anything is written."""
    props = table_properties(spark, path)
    built = {k: props[k] for k in (BUILT_MAX_LEN, BUILT_REPORTS) if k in props}
    want = built_shape(max_len, reports)
    diff = {k: (v, want[k]) for k, v in built.items() if v != want[k]}
    if diff:
        raise DataError(f"sequences table at {path!r} was built with "
                        + ", ".join(f"{k.rsplit('.', 1)[1]}={v}" for k, (v, _) in diff.items())
                        + "; this config has " + ", ".join(f"{k.rsplit('.', 1)[1]}={w}" for k, (_, w) in diff.items())
                        + ": rebuild every date into a new table (storage.database or warehouse), or keep the "
                          "built shape; nothing written")


def _mark_reported_undatable(spark: "SparkSession", cfg: SuiteConfig, rejected: "DataFrame",
                             dates: Sequence[dt.date]) -> "DataFrame":
    """``rejected`` with a boolean column ``SEEN``: an undatable row this job already quarantined
    under a date outside this run (the same raw row), not to be recorded again.  A rerun of
    that date records them again, as it replaces its own quarantine rows."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = cfg.storage.table_path("quarantine", PROJECT_ROOT)
    if not DeltaTable.isDeltaTable(spark, path):
        return rejected.withColumn(SEEN, F.lit(False))
    key = F.coalesce(F.col("raw"), F.lit(""))
    undatable = F.col("event_time").isNull()
    earlier = (spark.read.format("delta").load(path)
               .filter((F.col("job") == JOB) & ~F.col("ds").isin(list(dates)) & undatable)
               .select(key.alias("_raw")).distinct().withColumn("_earlier", F.lit(True)))
    return (rejected.withColumn("_raw", F.when(undatable, key)).join(earlier, "_raw", "left")
            .withColumn(SEEN, F.coalesce(F.col("_earlier"), F.lit(False))).drop("_raw", "_earlier"))


def _other_unit_plausible(raw: "DataFrame", cfg: SuiteConfig, now: dt.datetime, dated: "Column") -> dict[str, "Column"]:
    """For a numeric event time: per other epoch unit, whether an undatable row would be dated
    in that unit (empty for timestamp or string times)."""
    from pyspark.sql.types import NumericType

    cols = cfg.columns
    if not isinstance(raw.schema[cols.event_time].dataType, NumericType):
        return {}
    out = {}
    for u in (u for u in EPOCH_UNITS if u != cols.event_time_unit):
        t = event_time_column(raw, cols.event_time, unit=u)
        out[u] = ~dated & t.isNotNull() & ~implausible(t, cfg.quality, now)
    return out


def _check_epoch_unit(raw: "DataFrame", cfg: SuiteConfig, ts: "Column", now: dt.datetime, plausible: int,
                      other_unit: dict[str, int]) -> None:
    """When more undatable rows read as plausible in another epoch unit than there are plausible
    rows on the run dates, the unit is wrong: an error naming the column, both units, a value
    and what it reads as."""
    from pyspark.sql import functions as F

    if not other_unit:
        return
    cols = cfg.columns
    best = max(other_unit, key=lambda u: other_unit[u])
    if other_unit[best] > plausible:
        lo, hi = plausible_range(cfg.quality, now)
        row = raw.filter(implausible(ts, cfg.quality, now)).select(
            F.col(cols.event_time).alias("v"), ts.cast("string").alias("t")).first()
        raise EventTimeUnitError(
            f"columns.event_time: {other_unit[best]} rows of {cols.event_time!r} read as epoch "
            f"{EPOCH_UNITS[cols.event_time_unit]} fall outside [{lo:%Y-%m-%d}, {hi:%Y-%m-%d}] but are plausible as "
            f"epoch {EPOCH_UNITS[best]}, against {plausible} plausible rows on the run dates (e.g. {row['v']} reads "
            f"as {row['t']}): is columns.event_time_unit ({cols.event_time_unit!r}) right?  Nothing written")


def reconcile(s: BuildSummary) -> None:
    """Nothing lost: every input row of the run dates is in a sequence or in quarantine (undatable
    rows that an earlier run date quarantined count as quarantined)."""
    if s.input_rows != s.clean_targets + s.quarantined_input + s.undatable_seen:
        raise ReconciliationError(f"input rows {s.input_rows} != clean {s.clean_targets} + quarantined "
                                  f"{s.quarantined_input} + quarantined earlier {s.undatable_seen} for "
                                  f"{fmt_dates(s.dates)}")
    for entity, targets in s.entity_targets.items():
        expect = s.clean_targets - s.entity_capped[entity] - (s.no_card if entity == "card" else 0)
        if targets != expect:
            raise ReconciliationError(
                f"{entity} sequences hold {targets} targets, expected {expect} (clean {s.clean_targets}, "
                f"capped {s.entity_capped[entity]}, without card {s.no_card if entity == 'card' else 0})")
    log.info("reconciled %s: input %d = clean %d + quarantined %d + quarantined earlier %d; customer targets %d, "
             "card targets %d (+%d without card)", fmt_dates(s.dates), s.input_rows, s.clean_targets,
             s.quarantined_input, s.undatable_seen, s.entity_targets.get("customer", 0),
             s.entity_targets.get("card", 0), s.no_card)
