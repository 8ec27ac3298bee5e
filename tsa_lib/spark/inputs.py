"""Reading the user's tables for a date window, by the column mapping of the config."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from tsa_lib.config import PROJECT_ROOT, SuiteConfig, TableSource
from tsa_lib.errors import DataError
from tsa_lib.spark.delta_io import read_source
from tsa_lib.spark.schema_check import KEY, NUMERIC, check_parquet_files, check_spark_schema, expected_kinds
from tsa_lib.spark.quality import event_time_column, implausible

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


def read_transactions(spark: "SparkSession", cfg: SuiteConfig, lo: Optional[dt.datetime], hi: dt.datetime,
                      with_undatable: bool = True, now: Optional[dt.datetime] = None) -> tuple["DataFrame", "Column"]:
    """Transactions with event time in [lo, hi), and, if asked, the undatable ones: a null or
    unparseable time, or one outside the plausible range at ``now`` (``quality.plausible_range``)."""
    from pyspark.sql import functions as F

    src = cfg.input.transactions
    kinds = expected_kinds(cfg.columns, engineered_here=cfg.input.order_features is None)
    _check_files(src, kinds, "input.transactions", cfg)
    raw = read_source(spark, src)
    check_spark_schema(raw.schema, kinds, "input.transactions")
    ts = event_time_column(raw, cfg.columns.event_time, unit=cfg.columns.event_time_unit)
    cond = ts < F.lit(hi)
    if lo is not None:
        cond &= ts >= F.lit(lo)
    if with_undatable:
        cond |= ts.isNull() | implausible(ts, cfg.quality, now or dt.datetime.now(dt.timezone.utc))
    return raw.filter(cond), ts


@dataclass(frozen=True)
class Engineered:
    """``rows``: order_id (string) + engineered columns (double), one row per order id;
    ``repeats``: the other rows of repeated order ids (order_id, copies, raw JSON of the row)."""

    rows: "DataFrame"
    repeats: "DataFrame"


def read_engineered(spark: "SparkSession", cfg: SuiteConfig,
                    order_ids: Optional["DataFrame"] = None) -> Engineered:
    """The engineered features, one row per order id.

    From ``input.order_features`` when configured, else from the transactions table.
    Repeated order ids keep one row chosen by a hash of its values (deterministic); the
    others come back as ``repeats``.  ``order_ids`` (a DataFrame with a string ``order_id``)
    restricts the read to those orders.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = cfg.columns
    src = cfg.input.order_features or cfg.input.transactions
    where = "input.order_features" if cfg.input.order_features else "input.transactions"
    kinds = {cols.order_id: KEY, **{c: NUMERIC for c in cols.engineered}}
    _check_files(src, kinds, where, cfg)
    df = read_source(spark, src)
    check_spark_schema(df.schema, kinds, where)
    missing = [c for c in (cols.order_id, *cols.engineered) if c not in df.columns]
    if missing:
        raise DataError(f"{where}: column(s) {missing} not found; the table has {df.columns}")
    sel = df.select(F.col(cols.order_id).cast("string").alias("order_id"),
                    *[F.col(c).cast("double").alias(c) for c in cols.engineered])
    if order_ids is not None:
        sel = sel.join(order_ids.select("order_id"), "order_id", "left_semi")
    w = Window.partitionBy("order_id").orderBy(F.xxhash64(*[F.col(c) for c in cols.engineered]),
                                               F.hash(*[F.col(c) for c in cols.engineered]))
    numbered = (sel.withColumn("_rn", F.row_number().over(w))
                .withColumn("_copies", F.count(F.lit(1)).over(Window.partitionBy("order_id"))))
    repeats = numbered.filter("_rn > 1").select(
        "order_id", F.col("_copies").alias("copies"),
        F.to_json(F.struct(*[F.col(c) for c in cols.engineered])).alias("raw"))
    return Engineered(rows=numbered.filter("_rn = 1").drop("_rn", "_copies"), repeats=repeats)


def orphan_feature_rows(spark: "SparkSession", cfg: SuiteConfig) -> int:
    """Rows of ``input.order_features`` whose order id is in no transaction (0 without that table).

    They belong to no run date and no job reads them, so nothing else would notice them; a
    feed whose ids stopped matching (a type or format change) shows here and in the nightly
    count of targets without an engineered row.  One pass over the two id columns."""
    from pyspark.sql import functions as F

    if cfg.input.order_features is None:
        return 0
    oid = cfg.columns.order_id
    feats = read_source(spark, cfg.input.order_features).select(F.col(oid).cast("string").alias("_oid"))
    tx = read_source(spark, cfg.input.transactions).select(F.col(oid).cast("string").alias("_oid"))
    return feats.join(tx, "_oid", "left_anti").count()


def _check_files(src: TableSource, kinds: dict[str, str], where: str, cfg: SuiteConfig) -> None:
    """File-by-file schema check of a local Parquet input (``tsa_lib.spark.schema_check``)."""
    path = src.resolved_path(PROJECT_ROOT)
    if src.format == "parquet" and path is not None and "://" not in path and Path(path).exists():
        check_parquet_files(path, kinds, where, cfg.quality.missing_columns)
