"""Order aggregation: point-in-time per-entity sequences, one row per (entity, ds).

Layout (chosen by measured cost, see bench/bench_sequences.py): a row holds the
ordered history that the entity's orders of date ``ds`` need, as parallel
arrays (struct of arrays, no per-element structs):

- the last ``max_len`` orders of the entity strictly before ``ds`` (the
  *context*, ``n_context`` elements) within ``max_history_days``,
- then every order of the entity on ``ds`` (the *targets*, ``n_targets``),

sorted by (event time, order id).  The model input of the target at array
position ``p`` is cut later, vectorized, by ``tsa_lib.features.windows``: the
last ``max_len`` elements strictly earlier in time than it (ties are not
history), then itself.  Storing one row per entity-day instead of one window
per order writes ``max_len + k`` elements for an entity with ``k`` orders that
day instead of ``k * (max_len + 1)``, and a hot entity (a test card with
thousands of orders) costs its own orders plus one context.

Labels never enter this table.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

from tsa_lib.config import ColumnsConfig, SequenceConfig
from tsa_lib.spark.quality import CID, DS, KID, OID, TS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

Entity = Literal["customer", "card"]
ENTITY_KEY = {"customer": CID, "card": KID}


@dataclass(frozen=True)
class SequenceResult:
    rows: "DataFrame"       # the sequences table's rows (schema: sequence_schema)
    capped: "DataFrame"     # target orders over the per-entity daily cap (for quarantine)


def sequence_schema(cols: ColumnsConfig) -> "StructType":
    """Explicit schema of ``sequences_<entity>`` tables (partitioned by ds)."""
    from pyspark.sql.types import (ArrayType, DateType, DoubleType, IntegerType, StringType, StructField,
                                   StructType, TimestampType)

    fields = [
        StructField("entity_id", StringType(), False),
        StructField("n_context", IntegerType(), False),
        StructField("n_targets", IntegerType(), False),
        StructField("order_id", ArrayType(StringType(), True), False),
        StructField("event_time", ArrayType(TimestampType(), True), False),
        *[StructField(c, ArrayType(StringType(), True), False) for c in cols.categorical],
        *[StructField(c, ArrayType(DoubleType(), True), False) for c in cols.numerical],
        StructField("run_id", StringType(), False),
        StructField("ds", DateType(), False),
    ]
    return StructType(fields)


def read_window(dates: Sequence[dt.date], seq: SequenceConfig) -> tuple[dt.datetime | None, dt.datetime]:
    """The [from, to) event-time range a run over ``dates`` must read: lookback plus the dates."""
    hi = dt.datetime.combine(max(dates) + dt.timedelta(days=1), dt.time())
    if seq.max_history_days is None:
        return None, hi
    lo = dt.datetime.combine(min(dates), dt.time()) - dt.timedelta(days=float(seq.max_history_days))
    return lo, hi


def build_sequences(
    clean: "DataFrame",
    dates: Sequence[dt.date],
    entity: Entity,
    cols: ColumnsConfig,
    seq: SequenceConfig,
    run_id: str,
) -> SequenceResult:
    """Build the (entity, ds) sequence rows for the target ``dates`` from quality-checked orders.

    ``clean`` holds canonical columns (see ``tsa_lib.spark.quality``) for the
    run dates and their lookback.  Pure transform: nothing is read or written.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if entity not in ENTITY_KEY:
        raise ValueError(f"entity: {entity!r} is not one of {sorted(ENTITY_KEY)}")
    if not dates:
        raise ValueError("dates: at least one run date is required")
    key = ENTITY_KEY[entity]
    n = seq.max_len
    day_list = sorted(set(dates))
    feats = list(cols.categorical) + list(cols.numerical)
    lo, hi = read_window(day_list, seq)

    orders = clean.filter(F.col(key).isNotNull() & (F.col(TS) < F.lit(hi)))
    if lo is not None:
        orders = orders.filter(F.col(TS) >= F.lit(lo))
    is_target = F.col(DS).isin(day_list)

    # Per (entity, date): rank orders from the day's end.  Only the last max_len of a
    # day can ever be history for a later day; targets are kept up to the daily cap.
    w_desc = Window.partitionBy(key, DS).orderBy(F.col(TS).desc(), F.col(OID).desc())
    w_asc = Window.partitionBy(key, DS).orderBy(F.col(TS), F.col(OID))
    ranked = (orders.withColumn("_rn_desc", F.row_number().over(w_desc))
                    .withColumn("_rn_asc", F.row_number().over(w_asc)))
    cap = seq.max_orders_per_entity_day
    capped = ranked.filter(is_target & (F.col("_rn_asc") > cap))
    kept = ranked.filter((is_target & (F.col("_rn_asc") <= cap)) | (~is_target & (F.col("_rn_desc") <= n)))

    # only entities with a target on a run date need rows
    active = kept.filter(is_target).select(key).distinct()
    kept = kept.join(active, key, "left_semi")

    elem = F.struct(F.col(TS).alias("ts"), F.col(OID).alias("oid"), *[F.col(c) for c in feats],
                    F.col(DS).alias("d"))
    per_entity = kept.groupBy(key).agg(
        F.array_sort(F.collect_list(elem)).alias("h"),
        F.array_sort(F.collect_set(F.when(is_target, F.col(DS)))).alias("days"),
    )
    per_day = per_entity.select(F.col(key).alias("entity_id"), "h", F.explode("days").alias(DS))
    day_start = F.to_timestamp(F.col(DS))
    ctx_all = F.filter("h", lambda x: x["ts"] < day_start)
    if seq.max_history_days is not None:
        horizon = day_start - F.expr(f"INTERVAL {int(round(seq.max_history_days * 86400))} SECONDS")
        ctx_all = F.filter(ctx_all, lambda x: x["ts"] >= horizon)
    rows = per_day.select(
        "entity_id", DS,
        ctx_all.alias("_ctx_all"),
        F.filter("h", lambda x: x["d"] == F.col(DS)).alias("_day"),
    ).select(
        "entity_id", DS,
        F.slice("_ctx_all", F.greatest(F.size("_ctx_all") - n + 1, F.lit(1)), n).alias("_ctx"),
        "_day",
    ).select(
        "entity_id", DS,
        F.size("_ctx").alias("n_context"),
        F.size("_day").alias("n_targets"),
        F.concat("_ctx", "_day").alias("_e"),
    )
    out = rows.select(
        "entity_id",
        F.col("n_context").cast("int"),
        F.col("n_targets").cast("int"),
        F.transform("_e", lambda x: x["oid"].cast("string")).alias("order_id"),
        F.transform("_e", lambda x: x["ts"]).alias("event_time"),
        *[F.transform("_e", _field(c)).alias(c) for c in feats],
        F.lit(run_id).alias("run_id"),
        F.col(DS),
    )
    capped_out = capped.select(
        F.col(OID).cast("string").alias("order_id"), F.col(TS).alias("event_time"),
        F.lit("entity_daily_cap").alias("reason"),
        F.concat(F.lit(f"{entity} "), F.col(key), F.lit(f" has more than {cap} orders on "),
                 F.col(DS).cast("string")).alias("detail"),
        F.lit(None).cast("string").alias("raw"),
    )
    return SequenceResult(rows=out, capped=capped_out)


def _field(name: str):  # type: ignore[no-untyped-def]
    """A one-argument lambda for F.transform (a 2-argument one would receive the index)."""
    return lambda x: x[name]
