"""Order aggregation: point-in-time per-entity sequences, one row per (entity, ds).

Layout (chosen by measured cost, see bench/bench_sequences.py): a row holds the
ordered history that the entity's orders of date ``ds`` need, as parallel
arrays (struct of arrays, no per-element structs):

- the last ``max_len`` orders of the entity strictly before ``ds`` (the
  *context*, ``n_context`` elements) within ``max_history_days``,
- then the entity's orders on ``ds`` (the *targets*, ``n_targets``; at most
  ``max_orders_per_entity_day``, the rest are quarantined but stay history),

sorted by (event time, order id).  The model input of the target at array
position ``p`` is cut later, vectorized, by ``tsa_lib.features.windows``: the
last ``max_len`` elements strictly earlier in time than it (ties are not
history), then itself.  Storing one row per entity-day instead of one window
per order writes ``max_len + k`` elements for an entity with ``k`` orders that
day instead of ``k * (max_len + 1)``, and a hot entity (a test card with
thousands of orders) costs its own orders plus one context.

Entities are hashed into ``sequences.build_groups`` groups; Spark groups the
orders by that hash (``groupBy().applyInArrow``) and numpy sorts each group by
(entity, time, order id) and cuts its rows (``tsa_lib.features.sequence_rows``).
Grouping is a logical guarantee: every order of an entity reaches the same call.
A physical guarantee (``repartition(entity)`` then ``sortWithinPartitions``) does not
hold under adaptive execution: when a semi-join feeding it turns into a broadcast join
at run time, the shuffle is read with a *local* reader and one entity's orders land in
several partitions.  ``tests/test_sequences.py`` forces that plan and checks every
window against a brute-force build.  Labels enter this table only with ``labels.feedback``:
each element's label and the time it became known, as facts; which of them a target may
see (known strictly before its own time, never its own) is decided when a window is cut
(``tsa_lib.features.tensorize``).  With ``labels.feedback_reports`` a row also carries the
label reports its targets may need (``report_*``, see ``tsa_lib.features.sequence_rows``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import pyarrow as pa

from tsa_lib.config import ColumnsConfig, SequenceConfig
from tsa_lib.features.sequence_rows import REPORT_COLUMNS, RowSpec, build_rows, days_since_epoch, \
    sort_for_build
from tsa_lib.spark.quality import CID, DS, KID, LABEL, LABEL_KNOWN_AT, OID, TS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

Entity = Literal["customer", "card"]
ENTITY_KEY = {"customer": CID, "card": KID}
GROUP = "_build_group"   # hash bucket of the entity (see build_sequences)


@dataclass(frozen=True)
class SequenceResult:
    rows: "DataFrame"       # the sequences table's rows (schema: sequence_schema)
    capped: "DataFrame"     # target orders over the per-entity daily cap (for quarantine)


# Delta file statistics only where a query can skip files (the arrays never can).
SEQUENCE_STATS_COLUMNS = ("entity_id", "n_context", "n_targets", "run_id")
# Table properties recording the shape the rows were built with: windows longer than the
# context a row holds, or more label reports than it carries, cannot be cut from it.
BUILT_MAX_LEN, BUILT_REPORTS = "tsa.sequences.max_len", "tsa.sequences.feedback_reports"


def built_shape(max_len: int, reports: int) -> dict[str, str]:
    return {BUILT_MAX_LEN: str(max_len), BUILT_REPORTS: str(reports)}


def sequence_schema(cols: ColumnsConfig, feedback: bool = False, reports: bool = False) -> "StructType":
    """Explicit schema of ``sequences_<entity>`` tables (partitioned by ds).  With ``feedback``
    (``labels.feedback``) every element also carries its label and when that label became known;
    with ``reports`` (``labels.feedback_reports`` > 0) the row also holds label reports."""
    from pyspark.sql.types import (ArrayType, DateType, DoubleType, IntegerType, StringType, StructField,
                                   StructType, TimestampType)

    fields = [
        StructField("entity_id", StringType(), False),
        StructField("n_context", IntegerType(), False),
        StructField("n_targets", IntegerType(), False),
        StructField("order_id", ArrayType(StringType(), True), False),
        StructField("event_time", ArrayType(TimestampType(), True), False),
        *[StructField(c, ArrayType(StringType(), True), False) for c in cols.string_columns],
        *[StructField(c, ArrayType(DoubleType(), True), False) for c in cols.numerical],
        *([StructField(LABEL, ArrayType(IntegerType(), True), False),
           StructField(LABEL_KNOWN_AT, ArrayType(TimestampType(), True), False)] if feedback else []),
        *([StructField(name, ArrayType(typ, True), False) for name, typ in zip(
            REPORT_COLUMNS, (StringType(), TimestampType(), IntegerType(), TimestampType()))] if reports else []),
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
    feedback: bool = False,
    reports: int = 0,
) -> SequenceResult:
    """Build the (entity, ds) sequence rows for the target ``dates`` from quality-checked orders.

    ``clean`` holds canonical columns (see ``tsa_lib.spark.quality``) for the
    run dates and their lookback.  Pure transform: nothing is read or written.  ``reports``:
    label reports per target (``labels.feedback_reports``; needs ``feedback``).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    if entity not in ENTITY_KEY:
        raise ValueError(f"entity: {entity!r} is not one of {sorted(ENTITY_KEY)}")
    if not dates:
        raise ValueError("dates: at least one run date is required")
    if reports < 0 or (reports and not feedback):
        raise ValueError(f"reports: {reports} must be >= 0 and needs feedback (the label columns)")
    key = ENTITY_KEY[entity]
    n = seq.max_len
    day_list = sorted(set(dates))
    feats = list(cols.sequence_columns) + ([LABEL, LABEL_KNOWN_AT] if feedback else [])
    lo, hi = read_window(day_list, seq)

    orders = clean.filter(F.col(key).isNotNull() & (F.col(TS) < F.lit(hi)))
    if lo is not None:
        orders = orders.filter(F.col(TS) >= F.lit(lo))
    is_target = F.col(DS).isin(day_list)

    # Only entities with an order on a run date need rows: drop the others' history early.
    active = orders.filter(is_target).select(key).distinct()
    orders = orders.join(active, key, "left_semi").select(key, TS, OID, *feats)
    spec = RowSpec(key=key, ts=TS, order_id=OID, features=tuple(feats), target_days=days_since_epoch(day_list),
                   max_len=n, cap=seq.max_orders_per_entity_day,
                   max_age_us=None if seq.max_history_days is None else int(round(seq.max_history_days * 86400e6)),
                   reports=reports, label=LABEL if reports else None, known_at=LABEL_KNOWN_AT if reports else None)
    arrow_out = sequence_schema(cols, feedback, bool(reports))
    arrow_out = StructType([f for f in arrow_out.fields if f.name != "run_id"])

    def build(group: pa.Table) -> pa.Table:
        return build_rows(sort_for_build(group.drop_columns([GROUP]), spec), spec)

    # Group by a hash of the entity: each call gets ALL orders of its entities (a logical
    # guarantee, unlike a repartition: see the module docstring), sorts and cuts them.
    rows = (orders.withColumn(GROUP, F.pmod(F.xxhash64(F.col(key)), F.lit(seq.build_groups)))
            .groupBy(GROUP).applyInArrow(build, arrow_out)
            .withColumn("run_id", F.lit(run_id))
            .select(*[f.name for f in sequence_schema(cols, feedback, bool(reports)).fields]))

    # Targets over the daily cap, built only when asked for (the job counts them first).
    day_orders = clean.filter(is_target & F.col(key).isNotNull())
    over = (day_orders.groupBy(key, DS).count()
            .filter(F.col("count") > seq.max_orders_per_entity_day).select(key, DS))
    w_asc = Window.partitionBy(key, DS).orderBy(F.col(TS), F.col(OID))
    hot = day_orders.join(over, [key, DS], "left_semi")
    capped = (hot.withColumn("_rn", F.row_number().over(w_asc))
              .filter(F.col("_rn") > seq.max_orders_per_entity_day)
              .select(F.col(OID).cast("string").alias("order_id"), F.col(TS).alias("event_time"),
                      F.lit("entity_daily_cap").alias("reason"),
                      F.concat(F.lit(f"{entity} "), F.col(key),
                               F.lit(f" has more than {seq.max_orders_per_entity_day} orders on "),
                               F.col(DS).cast("string")).alias("detail"),
                      F.to_json(F.struct(*[F.col(c) for c in day_orders.columns])).alias("raw")))
    return SequenceResult(rows=rows, capped=capped)
