"""Encoded examples: sequences + engineered features + labels -> fixed-shape arrays, in Spark.

The encoding itself is ``tsa_lib.features.tensorize`` (numpy), called inside
``mapInArrow``: the same function scoring uses, so training and scoring see
identical tensors.  ``build_examples_frame`` is a pure-ish transform (it reads
the suite's tables, writes nothing); ``run_build_examples`` writes the
``examples`` table and the quarantine.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from tsa_lib.cli import RunContext, fmt_dates
from tsa_lib.config import PROJECT_ROOT, SuiteConfig
from tsa_lib.errors import DataError, InternalError, UserError
from tsa_lib.features.encoders import Encoders
from tsa_lib.features.tensorize import encode_engineered, encode_sequence_batch, seq_tensors_to_arrow
from tsa_lib.spark.delta_io import ensure_table, replace_partitions, table_properties
from tsa_lib.spark.inputs import read_engineered
from tsa_lib.spark.labels import read_labels
from tsa_lib.spark.sequences import BUILT_MAX_LEN, BUILT_REPORTS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

JOB = "build_examples"


class ExamplesError(InternalError):
    """The examples do not reconcile with the sequence targets."""


def encoded_seq_schema(entity: str, with_history_ids: bool = False) -> "StructType":
    from pyspark.sql.types import ArrayType, FloatType, IntegerType, StringType, StructField, StructType, \
        TimestampType

    p = {"customer": "c", "card": "k"}[entity]
    fields = [StructField("order_id", StringType()), StructField(f"{entity}_id", StringType()),
              StructField("event_time", TimestampType()), StructField(f"{p}_cat", ArrayType(IntegerType())),
              StructField(f"{p}_num", ArrayType(FloatType())), StructField(f"{p}_dt", ArrayType(FloatType())),
              StructField(f"{p}_len", IntegerType())]
    if with_history_ids:
        fields.append(StructField(f"{p}_hist_ids", ArrayType(StringType())))
    return StructType(fields)


def examples_schema() -> "StructType":
    from pyspark.sql.types import ArrayType, DateType, FloatType, IntegerType, StringType, StructField, \
        StructType, TimestampType

    arr_i, arr_f = ArrayType(IntegerType(), True), ArrayType(FloatType(), True)
    return StructType([
        StructField("order_id", StringType(), False), StructField("customer_id", StringType(), True),
        StructField("card_id", StringType(), True), StructField("event_time", TimestampType(), False),
        StructField("label", IntegerType(), True),
        StructField("c_cat", arr_i, False), StructField("c_num", arr_f, False), StructField("c_dt", arr_f, False),
        StructField("c_len", IntegerType(), False),
        StructField("k_cat", arr_i, False), StructField("k_num", arr_f, False), StructField("k_dt", arr_f, False),
        StructField("k_len", IntegerType(), False),
        StructField("eng", arr_f, False),
        StructField("labels_as_of", TimestampType(), False),
        StructField("encoder_version", StringType(), False), StructField("run_id", StringType(), False),
        StructField("ds", DateType(), False),
    ])


def encoded_sequences(spark: "SparkSession", cfg: SuiteConfig, enc: Encoders, dates: Sequence[dt.date],
                      entity: str, with_history_ids: bool = False) -> "DataFrame":
    """Per-target encoded windows of one entity's sequences for ``dates``."""
    from pyspark.sql import functions as F

    path = cfg.storage.table_path(f"sequences_{entity}", PROJECT_ROOT)
    seq = spark.read.format("delta").load(path).filter(F.col("ds").isin(list(dates)))
    need = list(enc.sequence_row_columns)
    missing = [c for c in need if c not in seq.columns]
    if missing:
        raise DataError(f"sequences_{entity} at {path!r} lacks column(s) {missing} the encoders need")
    props = table_properties(spark, path)
    for key, used in ((BUILT_MAX_LEN, enc.max_len), (BUILT_REPORTS, enc.feedback_reports)):
        if key in props and used > int(props[key]):
            raise DataError(f"sequences_{entity} at {path!r} was built with {key.rsplit('.', 1)[1]}="
                            f"{props[key]} but the encoders {enc.version} cut windows of {used}: rebuild the "
                            f"sequences with the encoders' settings, or refit the encoders")

    def encode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            yield seq_tensors_to_arrow(encode_sequence_batch(b, enc, with_history_ids), entity, with_history_ids)

    return seq.select(*need).mapInArrow(encode, encoded_seq_schema(entity, with_history_ids))


@dataclass(frozen=True)
class ExamplesFrame:
    examples: "DataFrame"
    rejected: "DataFrame"       # order_id, event_time, reason, detail, raw
    without_features: "DataFrame"          # order_id of targets with no engineered row (defaults used)
    engineered: "DataFrame"                # the targets' engineered rows, read by the three frames above
    labels: Optional["DataFrame"] = None   # order_id, event_time, label, label_pending (tsa_lib.spark.labels)

    def cache(self) -> None:
        """Keep the targets' engineered rows once read (one read of the features table for the
        examples, the quarantine rows and the count, instead of one each); ``release`` frees them."""
        from pyspark import StorageLevel

        self.engineered.persist(StorageLevel.MEMORY_AND_DISK)

    def release(self) -> None:
        self.engineered.unpersist()


def build_examples_frame(spark: "SparkSession", cfg: SuiteConfig, enc: Encoders, dates: Sequence[dt.date],
                         run_id: str, with_history_ids: bool = False, labels_as_of: Optional[dt.datetime] = None,
                         with_labels: bool = True) -> ExamplesFrame:
    """Join the encoded customer and card windows, engineered features and labels per target order.

    ``label`` is the label known at ``labels_as_of`` (None: now), null when not known then
    (``tsa_lib.spark.labels``); ``with_labels=False`` (scoring) reads no labels at all.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    if not dates:
        raise ValueError("dates: at least one date is required")
    length, nc, nn = enc.seq_len, len(enc.cat_inputs), len(enc.num_inputs)
    cust = encoded_sequences(spark, cfg, enc, dates, "customer", with_history_ids)
    card = encoded_sequences(spark, cfg, enc, dates, "card", with_history_ids).drop("event_time")

    eng_cols = list(enc.engineered)
    # target order ids and times straight from the sequence rows: what needs no window (the
    # engineered rows, the quarantine rows, the counts) never runs the window encoder again
    seq_path = cfg.storage.table_path("sequences_customer", PROJECT_ROOT)
    targets = (spark.read.format("delta").load(seq_path).filter(F.col("ds").isin(list(dates)))
               .select(F.explode(F.arrays_zip(
                   F.slice("order_id", F.col("n_context") + 1, F.col("n_targets")).alias("order_id"),
                   F.slice("event_time", F.col("n_context") + 1, F.col("n_targets")).alias("event_time"))).alias("t"))
               .select("t.order_id", "t.event_time"))
    engineered = read_engineered(spark, cfg, targets.select("order_id"))
    eng_raw = engineered.rows
    bad = F.lit(None).cast("string")
    for c in reversed(eng_cols):
        v = F.col(c)
        bad = F.when(F.isnan(v) | v.isin(float("inf"), float("-inf")),
                     F.concat(F.lit(f"{c}="), v.cast("string"))).otherwise(bad)
    eng_raw = eng_raw.withColumn("_bad", bad)

    def encode_eng(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            e = encode_engineered(b, enc)
            offsets = pa.array(np.arange(b.num_rows + 1, dtype=np.int32) * len(eng_cols))
            yield pa.RecordBatch.from_arrays(
                [b.column("order_id"), pa.ListArray.from_arrays(offsets, pa.array(e.reshape(-1), pa.float32())),
                 b.column("_bad")], names=["order_id", "eng", "_bad"])

    eng = eng_raw.mapInArrow(encode_eng, StructType([StructField("order_id", StringType()),
                                                    StructField("eng", ArrayType(FloatType())),
                                                    StructField("_bad", StringType())]))
    # orders with no engineered row get every engineered feature's default, scaled
    default_eng = encode_engineered(pa.table({c: pa.array([None], pa.float64()) for c in eng_cols}), enc)[0] \
        if eng_cols else np.zeros(0, np.float32)
    at = labels_as_of or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    known = read_labels(spark, cfg, dates, at) if with_labels else None
    labels = known.drop("label_pending") if known is not None else None

    def zeros(n: int) -> "F.Column":
        return F.array_repeat(F.lit(0).cast("int"), n)

    joined = cust.join(card, "order_id", "left").join(eng, "order_id", "left")
    joined = joined.join(labels, ["order_id", "event_time"], "left") if labels is not None \
        else joined.withColumn("label", F.lit(None).cast("int"))
    where = "input.order_features" if cfg.input.order_features else "input.transactions"
    repeats = engineered.repeats.join(targets, "order_id").select(
        "order_id", "event_time", F.lit("duplicate_order_features").alias("reason"),
        F.concat(F.lit(f"{where} has "), F.col("copies").cast("string"),
                 F.lit(" rows for this order; kept one chosen by a hash of its values")).alias("detail"), "raw")
    rejected = targets.join(eng_raw.filter(F.col("_bad").isNotNull()), "order_id").select(
        "order_id", "event_time", F.lit("non_finite").alias("reason"),
        F.concat(F.lit("engineered "), F.col("_bad")).alias("detail"), F.lit(None).cast("string").alias("raw")
    ).unionByName(repeats)
    hist = [] if not with_history_ids else [
        "c_hist_ids", F.coalesce("k_hist_ids", F.array_repeat(F.lit(""), length)).alias("k_hist_ids")]
    examples = joined.filter(F.col("_bad").isNull()).select(
        "order_id", "customer_id", "card_id", "event_time", "label",
        "c_cat", "c_num", "c_dt", "c_len",
        F.coalesce("k_cat", zeros(length * nc)).alias("k_cat"),
        F.coalesce("k_num", zeros(length * nn).cast("array<float>")).alias("k_num"),
        F.coalesce("k_dt", zeros(length).cast("array<float>")).alias("k_dt"),
        F.coalesce("k_len", F.lit(-1)).alias("k_len"),
        F.coalesce("eng", F.array(*[F.lit(float(x)).cast("float") for x in default_eng])
                   if eng_cols else F.array().cast("array<float>")).alias("eng"),
        F.lit(at).cast("timestamp").alias("labels_as_of"),
        F.lit(enc.version).alias("encoder_version"), F.lit(run_id).alias("run_id"),
        F.to_date("event_time").alias("ds"), *hist)
    without = targets.select("order_id").join(eng_raw, "order_id", "left_anti") if eng_cols else \
        targets.select("order_id").limit(0)
    return ExamplesFrame(examples=examples, rejected=rejected, without_features=without, engineered=eng_raw,
                         labels=known)


def log_without_features(frame: ExamplesFrame, dates: Sequence[dt.date]) -> int:
    """Count and log the target orders that have no engineered row (scored with the defaults)."""
    n = frame.without_features.count()
    if n:
        log.warning("%d target order(s) of %s have no engineered row: their engineered features are the "
                    "configured defaults", n, fmt_dates(dates))
    return n


@dataclass
class ExamplesSummary:
    dates: tuple[dt.date, ...]
    targets: int = 0
    examples: int = 0
    quarantined: int = 0
    labeled: int = 0
    positives: int = 0
    pending: int = 0                  # orders whose label exists but is not known at labels_as_of
    without_features: int = 0         # orders with no engineered row (their defaults were used)
    labels_as_of: Optional[dt.datetime] = None


def run_build_examples(spark: "SparkSession", cfg: SuiteConfig, ctx: RunContext, enc: Encoders,
                       labels_as_of: Optional[dt.datetime] = None) -> ExamplesSummary:
    """Write the ``examples`` partitions of ``ctx.dates`` with the labels known at ``labels_as_of``
    (None: now) and reconcile them with the sequence targets."""
    from tsa_lib.spark.build_sequences import sequence_targets

    if not ctx.dates:
        raise UserError("build_examples needs --run-date or --start-date/--end-date")
    dates = sorted(ctx.dates)
    at = labels_as_of or ctx.started_at
    s = ExamplesSummary(dates=tuple(dates), labels_as_of=at)
    s.targets = sequence_targets(spark, cfg, dates)
    frame = build_examples_frame(spark, cfg, enc, dates, ctx.run_id, labels_as_of=at)
    frame.cache()
    try:
        _write_examples(spark, cfg, ctx, enc, frame, s)
    finally:
        frame.release()
    if s.examples + s.quarantined != s.targets:
        raise ExamplesError(f"examples {s.examples} + quarantined {s.quarantined} != customer sequence targets "
                            f"{s.targets} for {fmt_dates(dates)}")
    log.info("examples for %s: %d (+%d quarantined), %d with a label known before %s (%d positive), %d labels "
             "not known yet (left unlabeled)", fmt_dates(dates), s.examples, s.quarantined, s.labeled,
             at.isoformat(), s.positives, s.pending)
    return s


def _write_examples(spark: "SparkSession", cfg: SuiteConfig, ctx: RunContext, enc: Encoders, frame: ExamplesFrame,
                    s: ExamplesSummary) -> None:
    """Write the examples and their quarantine rows, and fill in the summary's counts."""
    from pyspark.sql import functions as F

    from tsa_lib.spark.build_sequences import count_quarantined, write_quarantine

    dates = list(s.dates)
    path = cfg.storage.table_path("examples", PROJECT_ROOT)
    schema = examples_schema()
    ensure_table(spark, path, schema, cfg.storage.qualified("examples"),
                 comment="TSA encoded examples: fixed-shape arrays per target order")
    replace_partitions(frame.examples.select(*[f.name for f in schema.fields]), path, dates,
                       ctx.metadata(cfg.hash, encoder_version=enc.version))
    rejected = (frame.rejected.withColumn("ds", F.to_date("event_time")).withColumn("job", F.lit(JOB))
                .withColumn("stage", F.lit("examples")).withColumn("run_id", F.lit(ctx.run_id)))
    write_quarantine(spark, cfg, ctx, rejected, JOB)
    agg = (spark.read.format("delta").load(path).filter(F.col("ds").isin(dates))
           .agg(F.count(F.lit(1)).alias("n"), F.count("label").alias("labeled"), F.sum("label").alias("pos"))
           .first())
    s.examples, s.labeled, s.positives = int(agg["n"]), int(agg["labeled"]), int(agg["pos"] or 0)
    s.quarantined = count_quarantined(spark, cfg, dates, JOB)
    assert frame.labels is not None
    s.pending = frame.labels.filter(F.col("label_pending")).count()
    s.without_features = log_without_features(frame, dates)
