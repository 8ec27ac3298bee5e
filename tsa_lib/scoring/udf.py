"""The model as a pandas UDF: ``df.withColumn("score", udf(*UDF_COLUMNS))`` or, registered, from SQL.

Shaped like Spark's ``predict_batch_udf``: ``score_udf`` loads and validates the artifact on
the driver (a broken or missing model fails there, before any task runs) and returns a
scalar-iterator pandas UDF that loads the model once per Python worker (the scoring job's
cache) and scores batches of examples-shaped rows: the columns of the ``examples`` table.

    from tsa_lib.scoring.udf import UDF_COLUMNS, score_udf
    tsa_score = score_udf("artifacts/models/tsa_two_seq/v20260219")
    spark.read.table("tsa.examples").withColumn("score", tsa_score(*UDF_COLUMNS))
    spark.udf.register("tsa_score", tsa_score)
    spark.sql("SELECT order_id, tsa_score(c_cat, c_num, c_dt, c_len, k_cat, k_num, k_dt, k_len, eng) FROM tsa.examples")

The nightly job (``tsa_lib.scoring.job``) scores with ``mapInArrow`` instead: it also writes
the explanations and needs no conversion through pandas.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np
import pandas as pd

from tsa_lib.errors import UserError
from tsa_lib.features.encoders import Encoders
from tsa_lib.features.tensorize import ModelBatch, lens_to_mask
from tsa_lib.scoring.predict import cached_model, predict_scores
from tsa_lib.training.artifact import load_artifact, resolve_artifact

log = logging.getLogger(__name__)

# The examples columns the UDF takes, in this order (customer window, card window, engineered).
UDF_COLUMNS = ("c_cat", "c_num", "c_dt", "c_len", "k_cat", "k_num", "k_dt", "k_len", "eng")


class UdfInputError(UserError):
    """A column given to the scoring UDF does not have the shape the model was trained on."""


def _widths(enc: Encoders) -> dict[str, int]:
    length, nc, nn = enc.seq_len, len(enc.cat_inputs), len(enc.num_inputs)
    return {"c_cat": length * nc, "c_num": length * nn, "c_dt": length,
            "k_cat": length * nc, "k_num": length * nn, "k_dt": length, "eng": len(enc.engineered)}


def _stack(name: str, s: pd.Series, width: int, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """A Series of equal-length arrays as one [n, *shape] array; an error names the column otherwise."""
    n = len(s)
    if n == 0:
        return np.zeros((0, *shape), dtype)
    sizes = s.map(lambda v: -1 if v is None else len(v)).to_numpy()
    bad = np.flatnonzero(sizes != width)
    if len(bad):
        i = int(bad[0])
        got = "null" if sizes[i] < 0 else f"{sizes[i]} values"
        raise UdfInputError(f"{name}: expected {width} values per row (shape {list(shape)}), got {got} in "
                            f"row {i} of the batch ({len(bad)} such rows)")
    return np.concatenate(s.to_list()).astype(dtype, copy=False).reshape((n, *shape))


def to_model_batch(cols: Tuple[pd.Series, ...], enc: Encoders) -> ModelBatch:
    """The UDF's input Series (``UDF_COLUMNS`` order) as model inputs, shapes checked per column."""
    if len(cols) != len(UDF_COLUMNS):
        raise UdfInputError(f"the scoring UDF takes {len(UDF_COLUMNS)} columns {list(UDF_COLUMNS)}, "
                            f"got {len(cols)}")
    w, length, nc, nn = _widths(enc), enc.seq_len, len(enc.cat_inputs), len(enc.num_inputs)
    c_cat, c_num, c_dt, c_len, k_cat, k_num, k_dt, k_len, eng = cols
    lens = {}
    for name, s in (("c_len", c_len), ("k_len", k_len)):
        if s.isna().any():
            raise UdfInputError(f"{name}: null in row {int(np.flatnonzero(s.isna().to_numpy())[0])} of the batch "
                                f"(-1 means no history)")
        v = s.to_numpy().astype(np.int64)
        if ((v < -1) | (v >= length)).any():
            raise UdfInputError(f"{name}: {int(v[(v < -1) | (v >= length)][0])} is not in [-1, {length - 1}]")
        lens[name] = v
    return ModelBatch(
        order_id=np.arange(len(c_cat)).astype(object),
        c_cat=_stack("c_cat", c_cat, w["c_cat"], np.int32, (length, nc)),
        c_num=_stack("c_num", c_num, w["c_num"], np.float32, (length, nn)),
        c_dt=_stack("c_dt", c_dt, w["c_dt"], np.float32, (length,)),
        c_mask=lens_to_mask(lens["c_len"], length),
        k_cat=_stack("k_cat", k_cat, w["k_cat"], np.int32, (length, nc)),
        k_num=_stack("k_num", k_num, w["k_num"], np.float32, (length, nn)),
        k_dt=_stack("k_dt", k_dt, w["k_dt"], np.float32, (length,)),
        k_mask=lens_to_mask(lens["k_len"], length),
        eng=_stack("eng", eng, w["eng"], np.float32, (len(enc.engineered),)),
        label=None,
    )


def score_udf(model: str | Path, batch_size: int = 1024, device: Optional[str] = None, threads: int = 1):  # type: ignore[no-untyped-def]
    """A pandas UDF returning P(fraud) (double) for examples-shaped columns (``UDF_COLUMNS``).

    ``model``: an artifact folder (or its model name folder, whose ``LATEST`` is taken).  It is
    loaded on the driver now, so a missing or broken artifact fails before any task runs.
    """
    from pyspark.sql.functions import pandas_udf

    if batch_size < 1:
        raise UserError(f"batch_size: must be >= 1, got {batch_size}")
    path = resolve_artifact(model)
    loaded = load_artifact(path)          # validates weights, config and encoders on the driver
    path_s, version, enc = str(path), loaded.version, loaded.encoders
    log.info("scoring UDF for %s/%s (%d inputs per window slot, %d slots)", loaded.name, version,
             len(enc.cat_inputs) + len(enc.num_inputs), enc.seq_len)

    @pandas_udf("double")  # type: ignore[call-overload]
    def tsa_score(batches: Iterator[Tuple[pd.Series, ...]]) -> Iterator[pd.Series]:
        m = cached_model(path_s, version, device, threads)
        for cols in batches:
            yield pd.Series(predict_scores(m, to_model_batch(cols, enc), batch_size))

    return tsa_score
