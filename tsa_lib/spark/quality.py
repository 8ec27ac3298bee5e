"""Data quality: split the user's transactions into clean orders and quarantined rows.

Pure DataFrame -> DataFrame transforms.  A row is quarantined (with a reason and
a detail naming the column and value) when:
- a required key (order id, customer id) is null                -> ``null_key``
- the event time is null, cannot be parsed, or is implausible:
  before ``quality.min_event_time`` or more than
  ``quality.max_future_days`` after the job started              -> ``bad_event_time``
- a numerical value is NaN or +-inf                              -> ``non_finite``
- a numerical value is outside ``quality.numeric_ranges``        -> ``out_of_range``
- its label is not 0, 1 or null                                  -> ``bad_label``
- its label time (``columns.label_time``) is before the order     -> ``bad_label_time``
- its order id was already seen (one copy is kept, chosen by
  event time then a hash of the whole row: deterministic)       -> ``duplicate_order_id``

Later jobs add ``entity_daily_cap`` (the sequence job), ``non_finite`` engineered values
and ``duplicate_order_features`` (``input.order_features`` holds more than one row for an
order: one is kept, chosen by a hash of its values; the others are recorded, and the
order itself is still scored, so these rows are not counted as lost orders).
Nulls in feature columns are not errors: they get the configured default
(relative columns keep the null: it equals no other value, see tensorize); a blank
string counts as a null (``quality.blank_is_null``).
A null second-entity id (card) is allowed: that order has no card sequence.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from tsa_lib.config import ColumnsConfig, LabelsConfig, QualityConfig
from tsa_lib.errors import ConfigError, DataError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

log = logging.getLogger(__name__)

# Canonical internal column names used by every Spark stage after quality checks.
OID, CID, KID, TS, DS = "_order_id", "_customer_id", "_card_id", "_ts", "ds"
# Quarantine rows that record a problem without removing the order (see the module docstring).
RECORD_ONLY_REASONS = ("duplicate_order_features",)
QUARANTINE_REASONS = ("null_key", "bad_event_time", "non_finite", "out_of_range", "bad_label", "bad_label_time",
                      "duplicate_order_id", "entity_daily_cap", "duplicate_order_features")
LABEL, LABEL_KNOWN_AT = "label", "label_known_at"   # the sequence columns of labels.feedback


@dataclass(frozen=True)
class Checked:
    """``clean``: canonical columns + feature columns; ``rejected``: rows with reason/detail/raw."""

    clean: "DataFrame"
    rejected: "DataFrame"


EPOCH_UNITS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}


def event_time_column(df: "DataFrame", name: str, key: str = "columns.event_time", unit: str = "s") -> "Column":
    """Column ``name`` (configured as ``key``) as a timestamp; strings are parsed (unparseable -> null),
    numbers are epoch ``unit`` (``columns.event_time_unit``: s, ms or us)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DateType, NumericType, StringType, TimestampNTZType, TimestampType

    if name not in df.columns:
        raise DataError(f"{key}: column {name!r} is not in the input (columns: {df.columns})")
    dtype = df.schema[name].dataType
    if isinstance(dtype, TimestampType):
        return F.col(name)
    if isinstance(dtype, (TimestampNTZType, DateType)):
        return F.col(name).cast("timestamp")
    if isinstance(dtype, StringType):
        return F.try_to_timestamp(F.col(name))
    if isinstance(dtype, NumericType):
        if unit == "s":
            return F.timestamp_seconds(F.col(name))
        if unit == "ms":
            return F.timestamp_millis(F.col(name).cast("long"))
        if unit == "us":
            return F.timestamp_micros(F.col(name).cast("long"))
        raise ConfigError(f"columns.event_time_unit: {unit!r} is not one of {list(EPOCH_UNITS)}")
    raise DataError(f"{key}: column {name!r} has type {dtype.simpleString()}, "
                     f"expected timestamp, date, string or epoch {EPOCH_UNITS.get(unit, unit)}")


def label_time_column(df: "DataFrame", cols: ColumnsConfig) -> "Column":
    """``columns.label_time`` as a timestamp (read like the event time, in its epoch unit)."""
    assert cols.label_time is not None
    return event_time_column(df, cols.label_time, "columns.label_time", cols.event_time_unit)


def plausible_range(quality: QualityConfig, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[earliest, latest] plausible event time: ``quality.min_event_time`` and ``now`` plus
    ``quality.max_future_days`` (both UTC)."""
    if now.tzinfo is None:
        raise ValueError(f"now: {now!r} has no time zone; give an aware (UTC) datetime")
    lo = dt.datetime.combine(dt.date.fromisoformat(quality.min_event_time), dt.time(), tzinfo=dt.timezone.utc)
    return lo, now.astimezone(dt.timezone.utc) + dt.timedelta(days=quality.max_future_days)


def implausible(ts: "Column", quality: QualityConfig, now: dt.datetime) -> "Column":
    """True where a (non-null) event time lies outside ``plausible_range``."""
    from pyspark.sql import functions as F

    lo, hi = plausible_range(quality, now)
    return ts.isNotNull() & ((ts < F.lit(lo)) | (ts > F.lit(hi)))


def known_time_column(df: "DataFrame", ts: "Column", cols: ColumnsConfig, labels: LabelsConfig) -> "Column":
    """When each row's label became known: its label time, else its order time + ``labels.delay_days``
    (the one rule of ``tsa_lib.spark.labels``)."""
    from pyspark.sql import functions as F

    fallback = F.timestamp_micros(F.unix_micros(ts) + F.lit(int(round(labels.delay_days * 86400e6))))
    if cols.label_time is None:
        return fallback
    return F.coalesce(label_time_column(df, cols), fallback)


def check_input_columns(df: "DataFrame", cols: ColumnsConfig, where: str = "input.transactions") -> None:
    """Fail with the missing column names when the input lacks a configured column."""
    need = [cols.order_id, cols.customer_id, cols.card_id, cols.event_time, *cols.sequence_columns]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{where}: configured column(s) {missing} not found; the table has {df.columns}")


def _text(col: str, quality: QualityConfig) -> "Column":
    """A categorical or relative value as a string; blank strings are nulls unless configured otherwise."""
    from pyspark.sql import functions as F

    v = F.col(col).cast("string")
    return F.when(F.trim(v) == "", F.lit(None).cast("string")).otherwise(v) if quality.blank_is_null else v


def check_quality(df: "DataFrame", cols: ColumnsConfig, quality: QualityConfig,
                  labels: Optional[LabelsConfig] = None, now: Optional[dt.datetime] = None) -> Checked:
    """Split ``df`` (the user's transactions) into clean canonical rows and quarantined rows.

    With ``labels`` whose ``feedback`` is on, clean rows also carry ``label`` and
    ``label_known_at`` (when the label became known), for the sequences.  ``now`` (the job's
    start, default the current time) bounds plausible event times (``plausible_range``).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    check_input_columns(df, cols)
    originals = list(df.columns)
    ts = event_time_column(df, cols.event_time, unit=cols.event_time_unit)
    now = now or dt.datetime.now(dt.timezone.utc)
    lo, hi = plausible_range(quality, now)
    raw_time = F.coalesce(F.col(cols.event_time).cast("string"), F.lit("null"))
    num = {c: F.col(c).cast("double") for c in cols.numerical}
    checks: list[tuple[Column, str, Column]] = [
        (F.col(cols.order_id).isNull(), "null_key", F.lit(f"{cols.order_id} is null")),
        (F.col(cols.customer_id).isNull(), "null_key", F.lit(f"{cols.customer_id} is null")),
        (ts.isNull(), "bad_event_time", F.concat(F.lit(f"{cols.event_time}="), raw_time)),
        (implausible(ts, quality, now), "bad_event_time",
         F.concat(F.lit(f"{cols.event_time}="), raw_time, F.lit(" reads as "), ts.cast("string"),
                  F.lit(f" UTC, outside the plausible [{lo:%Y-%m-%d}, {hi:%Y-%m-%d %H:%M}] (quality.min_event_time, "
                        f"quality.max_future_days)"))),
    ]
    for c, v in num.items():
        checks.append((F.isnan(v) | v.isin(float("inf"), float("-inf")), "non_finite",
                       F.concat(F.lit(f"{c}="), v.cast("string"))))
    for c, (lo, hi) in quality.numeric_ranges.items():
        if c in num:
            v = num[c]
            checks.append(((v < lo) | (v > hi), "out_of_range",
                           F.concat(F.lit(f"{c}="), v.cast("string"), F.lit(f" not in [{lo}, {hi}]"))))
    if cols.label is not None and cols.label in df.columns:
        lab = F.col(cols.label)
        checks.append((lab.isNotNull() & ~F.coalesce(lab.cast("double").isin(0.0, 1.0), F.lit(False)), "bad_label",
                       F.concat(F.lit(f"{cols.label}="), lab.cast("string"), F.lit(" is not 0, 1 or null"))))
    if cols.label_time is not None and cols.label_time in df.columns:
        lt = label_time_column(df, cols)
        checks.append((lt < ts, "bad_label_time",
                       F.concat(F.lit(f"{cols.label_time}="), lt.cast("string"), F.lit(f" is before {cols.event_time}="),
                                ts.cast("string"))))
    reason = F.lit(None).cast("string")
    detail = F.lit(None).cast("string")
    for cond, r, d in reversed(checks):  # first failing check wins
        reason = F.when(F.coalesce(cond, F.lit(False)), F.lit(r)).otherwise(reason)
        detail = F.when(F.coalesce(cond, F.lit(False)), d).otherwise(detail)
    feedback = labels is not None and labels.feedback
    extra = [] if not feedback else [
        (F.col(cols.label).cast("int") if cols.label in df.columns else F.lit(None).cast("int")).alias(LABEL),
        known_time_column(df, ts, cols, labels).alias(LABEL_KNOWN_AT)]  # type: ignore[arg-type]
    tagged = df.select(*[F.col(c) for c in originals], ts.alias(TS), reason.alias("_reason"),
                       detail.alias("_detail"), *extra)

    # duplicates among otherwise valid rows: keep the earliest, ties broken by a hash of the whole row
    ok = tagged.filter(F.col("_reason").isNull())
    w = Window.partitionBy(cols.order_id).orderBy(F.col(TS), F.xxhash64(*originals), F.hash(*originals))
    ok = ok.withColumn("_rn", F.row_number().over(w))
    dups = (ok.filter(F.col("_rn") > 1)
              .withColumn("_reason", F.lit("duplicate_order_id"))
              .withColumn("_detail", F.concat(F.lit(f"{cols.order_id}="), F.col(cols.order_id).cast("string"),
                                              F.lit(" already seen (kept copy "), F.col("_rn").cast("string"),
                                              F.lit(" is a repeat)")))
              .drop("_rn"))
    rejected = tagged.filter(F.col("_reason").isNotNull()).unionByName(dups)
    clean = ok.filter(F.col("_rn") == 1).select(
        F.col(cols.order_id).alias(OID),
        F.col(cols.customer_id).cast("string").alias(CID),
        F.col(cols.card_id).cast("string").alias(KID),
        F.col(TS),
        *[F.coalesce(_text(c, quality), F.lit(quality.categorical_default)).alias(c)
          for c in cols.categorical],
        # null stays null: it matches nothing (a column that is categorical too has its default)
        *[_text(c, quality).alias(c) for c in cols.relative_only],
        *[F.coalesce(num[c], F.lit(float(quality.numerical_default))).alias(c) for c in cols.numerical],
        *([F.col(LABEL), F.when(F.col(LABEL).isNotNull(), F.col(LABEL_KNOWN_AT)).alias(LABEL_KNOWN_AT)]
          if feedback else []),
    ).withColumn(DS, F.to_date(F.col(TS)))
    return Checked(clean=clean,
                   rejected=rejected.select(F.col(cols.order_id).cast("string").alias("order_id"),
                                            # an implausible instant is kept in the detail only
                                            F.when(~implausible(F.col(TS), quality, now), F.col(TS))
                                            .alias("event_time"), F.col("_reason").alias("reason"),
                                            F.col("_detail").alias("detail"),
                                            F.to_json(F.struct(*originals)).alias("raw")))
