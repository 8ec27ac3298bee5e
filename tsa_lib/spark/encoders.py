"""Fit the encoders in Spark on a training window only (never data after it)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Optional

from tsa_lib.config import SuiteConfig
from tsa_lib.errors import DataError, UserError
from tsa_lib.features.encoders import Encoders, Scaler, new_version
from tsa_lib.spark.inputs import orphan_feature_rows, read_engineered, read_transactions
from tsa_lib.spark.quality import OID, check_quality

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def _scalers(df: "DataFrame", columns: tuple[str, ...], cfg: SuiteConfig) -> dict[str, Scaler]:
    """Per column: optional log1p and the configured quantiles (finite values only) as clip bounds."""
    from pyspark.sql import functions as F

    if not columns:
        return {}
    e = cfg.encoders
    exprs = []
    for c in columns:
        v = F.col(c).cast("double")
        v = F.when(F.isnan(v) | v.isin(float("inf"), float("-inf")), None).otherwise(v)
        if c in e.log1p:
            v = F.log1p(F.greatest(v, F.lit(0.0)))
        exprs.append(F.percentile_approx(v, [e.quantile_low, e.quantile_high], 10000).alias(c))
    row = df.agg(*exprs).first()
    bounds = {}
    for c in columns:
        q = row[c]
        bounds[c] = (float(q[0]), float(q[1])) if q and q[0] is not None else (0.0, 0.0)
        if q is None or q[0] is None:
            log.warning("column %s has no finite values in the fit window: it will encode as 0", c)
    return {c: Scaler(lo=bounds[c][0], hi=bounds[c][1], log1p=c in e.log1p) for c in columns}


def fit_encoders(spark: "SparkSession", cfg: SuiteConfig, start: dt.date, end: dt.date,
                 version: Optional[str] = None) -> Encoders:
    """Vocabularies and scalers from the orders of [start, end] (inclusive), quality-checked.

    ``version`` names the artifact (default: a new time-stamped one); a training night names it
    after its run date, so a retried night rewrites the same version.
    """
    from pyspark.sql import functions as F

    if end < start:
        raise UserError(f"training window: end {end} is before start {start}")
    cols, e = cfg.columns, cfg.encoders
    lo = dt.datetime.combine(start, dt.time())
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time())
    raw, _ = read_transactions(spark, cfg, lo, hi, with_undatable=False)
    clean = check_quality(raw, cols, cfg.quality).clean.cache()
    try:
        n = clean.count()
        if n == 0:
            raise DataError(f"training window {start}..{end}: no usable orders in input.transactions")
        vocab: dict[str, tuple[str, ...]] = {c: () for c in cols.categorical}
        if cols.categorical:
            pairs = F.explode(F.array(*[F.struct(F.lit(c).alias("col"), F.col(c).alias("val"))
                                        for c in cols.categorical])).alias("p")
            counts = (clean.select(pairs).select("p.col", "p.val").groupBy("col", "val").count()
                      .filter((F.col("count") >= e.min_frequency) & (F.col("val") != cfg.quality.categorical_default)))
            grouped: dict[str, list[tuple[int, str]]] = {c: [] for c in cols.categorical}
            for r in counts.collect():
                grouped[r["col"]].append((-int(r["count"]), str(r["val"])))
            vocab = {c: tuple(v for _, v in sorted(grouped[c])[: e.max_vocab_per_column]) for c in cols.categorical}
        num = _scalers(clean, tuple(cols.numerical), cfg)
        eng_df = read_engineered(spark, cfg, clean.select(F.col(OID).cast("string").alias("order_id"))).rows
        eng = _scalers(eng_df, tuple(cols.engineered), cfg)
    finally:
        clean.unpersist()
    enc = Encoders(
        version=version or new_version(cfg.hash), config_hash=cfg.hash,
        window_start=start.isoformat(), window_end=end.isoformat(),
        categorical=tuple(cols.categorical), numerical=tuple(cols.numerical), engineered=tuple(cols.engineered),
        vocab=vocab, numeric_scalers=num, engineered_scalers=eng,
        max_len=cfg.sequences.max_len, max_history_days=cfg.sequences.max_history_days,
        time_unit_seconds=cfg.sequences.time_unit_seconds, numerical_default=cfg.quality.numerical_default,
        relative=tuple(cols.relative), relative_numerical=tuple(e.relative_numerical),
        feedback=cfg.labels.feedback, feedback_reports=cfg.labels.feedback_reports,
    )
    log.info("fit encoders on %d orders of %s..%s: vocab %s (total %d)", n, start, end,
             {c: len(v) for c, v in vocab.items()}, enc.vocab_size)
    orphans = orphan_feature_rows(spark, cfg)
    if orphans:
        log.warning("input.order_features holds %d row(s) whose order id is in no transaction: no job uses them "
                    "(a changed id format would also leave orders without engineered features)", orphans)
    return enc
