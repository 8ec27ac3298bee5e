"""Labels as known at a time: the one rule, in Spark.

A label is *known at T* when its label time (``columns.label_time``), or, where that is
null or not configured, its order time plus ``labels.delay_days``, is strictly before T
(``tsa_lib.schedule.label_known`` is the numpy form of the same rule).  Training reads the
labels known at its run date, the nightly evaluation those known at its as-of date; a
label not known yet is null, never a negative.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Optional, Sequence

from tsa_lib.config import SuiteConfig
from tsa_lib.spark.inputs import read_transactions
from tsa_lib.spark.quality import known_time_column, label_time_column

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def read_labels(spark: "SparkSession", cfg: SuiteConfig, dates: Sequence[dt.date],
                as_of: Optional[dt.datetime] = None) -> "DataFrame":
    """order_id (string), event_time, label (int: known at ``as_of``, else null) and ``label_pending``
    (a label exists but is not known at ``as_of``) of the orders on ``dates``.

    ``as_of`` None means now.  Duplicated order ids (quarantined by the sequence job) resolve to
    the copy with the same event time; if two copies share it, the larger label wins.  An order
    whose label time is earlier than the order itself never has a known label: the sequence job
    quarantines it (``bad_label_time``).
    """
    from pyspark.sql import functions as F

    cols = cfg.columns
    at = as_of or dt.datetime.now(dt.timezone.utc)
    if at.tzinfo is None:
        raise ValueError(f"as_of: {at!r} has no time zone; give an aware (UTC) datetime")
    lo = dt.datetime.combine(min(dates), dt.time())
    hi = dt.datetime.combine(max(dates) + dt.timedelta(days=1), dt.time())
    raw, ts = read_transactions(spark, cfg, lo, hi, with_undatable=False)
    has_label = bool(cols.label) and cols.label in raw.columns
    label = F.col(cols.label).cast("int") if has_label else F.lit(None).cast("int")
    valid = F.lit(True)
    if cols.label_time is not None and has_label:
        valid = F.coalesce(label_time_column(raw, cols) >= ts, F.lit(True))
    reached = known_time_column(raw, ts, cols, cfg.labels) < F.lit(at)
    out = raw.select(F.col(cols.order_id).cast("string").alias("order_id"), ts.alias("event_time"),
                     F.when(valid & reached, label).alias("label"),
                     (label.isNotNull() & valid & ~reached).alias("label_pending"))
    return (out.groupBy("order_id", "event_time")
            .agg(F.max("label").alias("label"), F.max("label_pending").alias("label_pending")))
