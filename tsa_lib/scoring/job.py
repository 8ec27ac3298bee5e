"""Nightly bulk scoring: sequences -> the shared tensorization -> model in mapInArrow -> ``scores``.

Shaped like Spark's ``predict_batch_udf``: a driver-side factory
(``make_scorer``) validates the artifact before anything runs, and returns a
function that loads the model once per Python worker (cached by artifact path
and version), slices Arrow batches into model batches of ``scoring.batch_size``
and uses ``scoring.torch_threads`` threads (GPU when the executor has one).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa

from tsa_lib.cli import RunContext, fmt_dates
from tsa_lib.config import PROJECT_ROOT, SuiteConfig
from tsa_lib.errors import InternalError, UserError
from tsa_lib.features.tensorize import examples_to_batch
from tsa_lib.scoring.predict import cached_model, predict, top_attended
from tsa_lib.spark.delta_io import ensure_table, replace_partitions
from tsa_lib.spark.examples import ExamplesFrame, build_examples_frame, log_without_features
from tsa_lib.training.artifact import ArtifactError, LoadedModel, load_artifact, resolve_artifact

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

JOB = "score"


class ScoringError(InternalError):
    """Scores do not reconcile with the sequence targets."""


class NoChampionError(UserError):
    """No model is named and the ``models`` table has no champion."""


def scores_schema() -> "StructType":
    from pyspark.sql.types import ArrayType, DateType, DoubleType, FloatType, StringType, StructField, \
        StructType, TimestampType

    return StructType([
        StructField("order_id", StringType(), False), StructField("customer_id", StringType(), True),
        StructField("card_id", StringType(), True), StructField("event_time", TimestampType(), False),
        StructField("score", DoubleType(), False),
        StructField("gate_customer", FloatType(), True), StructField("gate_card", FloatType(), True),
        StructField("top_customer_orders", ArrayType(StringType()), True),
        StructField("top_customer_weights", ArrayType(FloatType()), True),
        StructField("top_card_orders", ArrayType(StringType()), True),
        StructField("top_card_weights", ArrayType(FloatType()), True),
        StructField("model_name", StringType(), False), StructField("model_version", StringType(), False),
        StructField("encoder_version", StringType(), False), StructField("run_id", StringType(), False),
        StructField("scored_at", TimestampType(), False), StructField("ds", DateType(), False),
    ])


def _udf_schema() -> "StructType":
    drop = {"model_name", "model_version", "encoder_version", "run_id", "scored_at", "ds"}
    from pyspark.sql.types import StructType

    return StructType([f for f in scores_schema().fields if f.name not in drop])


def resolve_model_path(spark: "SparkSession", cfg: SuiteConfig, override: Optional[str] = None) -> Path:
    """The artifact that scores: ``override``, else ``scoring.model_path``, else the champion of
    ``training.model_name`` in the ``models`` table; never "the newest model"."""
    from tsa_lib.registry.models_table import champion

    path = override or cfg.scoring.model_path
    if path is None:
        champ = champion(spark, cfg)
        if champ is None:
            raise NoChampionError(f"no champion yet for model {cfg.training.model_name!r} in "
                               f"{cfg.storage.qualified('models')}: train one (jobs/train.py), judge it with "
                               f"jobs/gate.py, or name one with jobs/promote.py --model VERSION")
        log.info("scoring with the champion %s", champ.version)
        path = champ.path
    return resolve_artifact(path)


def make_scorer(loaded: LoadedModel, cfg: SuiteConfig) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Driver-side factory: captures only the artifact path/version and settings, never the model."""
    path, version, enc = str(loaded.path), loaded.version, loaded.encoders
    sc = cfg.scoring
    device = None if sc.device == "auto" else sc.device

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = cached_model(path, version, device, sc.torch_threads)
        for b in batches:
            yield score_arrow(model, b, sc.batch_size, sc.top_k, enc_check=enc.version)

    return score


def score_arrow(model: LoadedModel, b: pa.RecordBatch | pa.Table, batch_size: int, top_k: int,
                enc_check: Optional[str] = None) -> pa.RecordBatch:
    """Score one Arrow batch of examples (with history ids) into the UDF's output columns."""
    if enc_check is not None and b.num_rows and "encoder_version" in b.schema.names:
        got = set(b.column("encoder_version").to_pylist())
        if got != {enc_check}:
            raise ArtifactError(f"examples encoded with {sorted(got)} but the model expects {enc_check}")
    mb = examples_to_batch(b, model.encoders)
    p = predict(model, mb, batch_size)
    bad = ~np.isfinite(p.score)
    if bad.any():
        first = str(np.asarray(b.column("order_id").to_pylist(), dtype=object)[bad][0])
        raise ScoringError(f"model {model.name}/{model.version} gave {int(bad.sum())} non-finite score(s) in a "
                           f"batch of {len(bad)} (first: order {first}); nothing is written")
    length = model.encoders.seq_len

    def ids(name: str) -> np.ndarray:
        col = b.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=object).reshape(-1, length) \
            if b.num_rows else np.zeros((0, length), object)

    tc_ids, tc_w = top_attended(p.attn_customer, mb.c_mask, ids("c_hist_ids"), top_k)
    if p.attn_card is not None:
        tk_ids, tk_w = top_attended(p.attn_card, mb.k_mask, ids("k_hist_ids"), top_k)
        g0 = pa.array(p.gate[:, 0], pa.float32())
        g1 = pa.array(p.gate[:, 1], pa.float32())
    else:
        n = b.num_rows
        tk_ids = pa.nulls(n, pa.list_(pa.string()))
        tk_w = pa.nulls(n, pa.list_(pa.float32()))
        g0 = g1 = pa.nulls(n, pa.float32())
    cols = [b.column("order_id"), b.column("customer_id"), b.column("card_id"), b.column("event_time"),
            pa.array(p.score, pa.float64()), g0, g1, tc_ids, tc_w, tk_ids, tk_w]
    names = ["order_id", "customer_id", "card_id", "event_time", "score", "gate_customer", "gate_card",
             "top_customer_orders", "top_customer_weights", "top_card_orders", "top_card_weights"]
    return pa.RecordBatch.from_arrays([c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in cols],
                                      names=names)


@dataclass
class ScoreSummary:
    dates: tuple[dt.date, ...]
    model: str
    targets: int = 0
    scored: int = 0
    quarantined: int = 0
    without_features: int = 0         # scored with the engineered defaults (no engineered row)


def score_frame(spark: "SparkSession", cfg: SuiteConfig, loaded: LoadedModel, dates: list[dt.date],
                run_id: str) -> tuple["DataFrame", ExamplesFrame]:
    """(scores without run metadata, the examples frame with its rejected rows) for ``dates``: a
    transform, nothing written."""
    frame = build_examples_frame(spark, cfg, loaded.encoders, dates, run_id, with_history_ids=True,
                                 with_labels=False)
    scored = frame.examples.mapInArrow(make_scorer(loaded, cfg), _udf_schema())
    return scored, frame


def run_scoring(spark: "SparkSession", cfg: SuiteConfig, ctx: RunContext, model_path: Optional[str] = None
                ) -> ScoreSummary:
    """Score ``ctx.dates`` into ``scores`` (replaceWhere per date) and reconcile with the targets."""
    from tsa_lib.spark.build_sequences import sequence_targets

    if not ctx.dates:
        raise UserError("score needs --run-date or --start-date/--end-date")
    dates = sorted(ctx.dates)
    loaded = load_artifact(resolve_model_path(spark, cfg, model_path))  # fails before anything is written
    s = ScoreSummary(dates=tuple(dates), model=f"{loaded.name}/{loaded.version}")
    s.targets = sequence_targets(spark, cfg, dates)
    scored, frame = score_frame(spark, cfg, loaded, dates, ctx.run_id)
    frame.cache()
    try:
        _write_scores(spark, cfg, ctx, loaded, scored, frame, s)
    finally:
        frame.release()
    if s.scored + s.quarantined != s.targets:
        raise ScoringError(f"scored {s.scored} + quarantined {s.quarantined} != targets {s.targets}")
    log.info("scored %d orders of %s with %s (+%d quarantined)", s.scored, fmt_dates(dates),
             s.model, s.quarantined)
    return s


def _write_scores(spark: "SparkSession", cfg: SuiteConfig, ctx: RunContext, loaded: LoadedModel,
                  scored: "DataFrame", frame: ExamplesFrame, s: ScoreSummary) -> None:
    """Write the scores and the quarantine rows, and fill in the summary's counts."""
    from pyspark.sql import functions as F

    from tsa_lib.spark.build_sequences import count_quarantined, write_quarantine

    dates = list(s.dates)
    rejected = frame.rejected
    out = scored.select(
        "*", F.lit(loaded.name).alias("model_name"), F.lit(loaded.version).alias("model_version"),
        F.lit(loaded.encoders.version).alias("encoder_version"), F.lit(ctx.run_id).alias("run_id"),
        F.lit(ctx.started_at.replace(tzinfo=None)).cast("timestamp").alias("scored_at"),
        F.to_date("event_time").alias("ds"))
    path = cfg.storage.table_path("scores", PROJECT_ROOT)
    schema = scores_schema()
    ensure_table(spark, path, schema, cfg.storage.qualified("scores"),
                 comment="TSA fraud scores with explanations (gate weights, most-attended past orders)")
    replace_partitions(out.select(*[f.name for f in schema.fields]), path, dates,
                       ctx.metadata(cfg.hash, model=s.model))
    write_quarantine(spark, cfg, ctx, rejected.withColumn("ds", F.to_date("event_time"))
                     .withColumn("job", F.lit(JOB)).withColumn("stage", F.lit("score"))
                     .withColumn("run_id", F.lit(ctx.run_id)), JOB)
    s.scored = spark.read.format("delta").load(path).filter(F.col("ds").isin(dates)).count()
    s.quarantined = count_quarantined(spark, cfg, dates, JOB)
    s.without_features = log_without_features(frame, dates)
