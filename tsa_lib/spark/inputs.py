"""Reading the user's tables for a date window, by the column mapping of the config."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Optional, Sequence

from tsa_lib.config import SuiteConfig
from tsa_lib.spark.delta_io import read_source
from tsa_lib.spark.quality import event_time_column

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


def read_transactions(spark: "SparkSession", cfg: SuiteConfig, lo: Optional[dt.datetime], hi: dt.datetime,
                      with_null_time: bool = True) -> tuple["DataFrame", "Column"]:
    """Transactions with event time in [lo, hi) (and, if asked, those whose time is unknown)."""
    from pyspark.sql import functions as F

    raw = read_source(spark, cfg.input.transactions)
    ts = event_time_column(raw, cfg.columns.event_time)
    cond = ts < F.lit(hi)
    if lo is not None:
        cond &= ts >= F.lit(lo)
    if with_null_time:
        cond |= ts.isNull()
    return raw.filter(cond), ts


def read_labels(spark: "SparkSession", cfg: SuiteConfig, dates: Sequence[dt.date]) -> "DataFrame":
    """order_id (string), event_time, label of the orders on ``dates``; null labels when unlabeled.

    Duplicated order ids (quarantined by the sequence job) resolve to the copy with the same
    event time; if two copies share it, the larger label wins (deterministic).
    """
    from pyspark.sql import functions as F

    cols = cfg.columns
    lo = dt.datetime.combine(min(dates), dt.time())
    hi = dt.datetime.combine(max(dates) + dt.timedelta(days=1), dt.time())
    raw, ts = read_transactions(spark, cfg, lo, hi, with_null_time=False)
    label = F.col(cols.label).cast("int") if cols.label and cols.label in raw.columns else F.lit(None).cast("int")
    return (raw.select(F.col(cols.order_id).cast("string").alias("order_id"), ts.alias("event_time"),
                       label.alias("label"))
            .groupBy("order_id", "event_time").agg(F.max("label").alias("label")))


def read_engineered(spark: "SparkSession", cfg: SuiteConfig,
                    order_ids: Optional["DataFrame"] = None) -> "DataFrame":
    """order_id (string) + engineered columns (double), one row per order id.

    From ``input.order_features`` when configured, else from the transactions table.
    Repeated order ids keep one row chosen by a hash of its values (deterministic).
    ``order_ids`` (a DataFrame with a string ``order_id``) restricts the read to those orders.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = cfg.columns
    src = cfg.input.order_features or cfg.input.transactions
    where = "input.order_features" if cfg.input.order_features else "input.transactions"
    df = read_source(spark, src)
    missing = [c for c in (cols.order_id, *cols.engineered) if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} not found; the table has {df.columns}")
    sel = df.select(F.col(cols.order_id).cast("string").alias("order_id"),
                    *[F.col(c).cast("double").alias(c) for c in cols.engineered])
    if order_ids is not None:
        sel = sel.join(order_ids.select("order_id"), "order_id", "left_semi")
    w = Window.partitionBy("order_id").orderBy(F.xxhash64(*[F.col(c) for c in cols.engineered]))
    return sel.withColumn("_rn", F.row_number().over(w)).filter("_rn = 1").drop("_rn")
