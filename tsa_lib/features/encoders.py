"""Fitted encoders: a versioned JSON artifact that loads without Spark.

- categorical: one vocabulary per column, all in ONE index space shared by the
  model's embedding table: 0 = padding, 1 = unknown or null, column ``c``'s
  values at ``offsets[c] .. offsets[c] + len(vocab[c]) - 1``;
- numerical (sequence) and engineered columns: optional log1p, clip to the fitted
  [lo, hi] quantiles, then scale to [0, 1] (robust min-max);
- relative columns (high-cardinality ids such as a device, or a categorical column
  that is also embedded): four tokens each after the categorical values
  (``RELATIVE_TOKENS``), chosen per window element by
  ``tsa_lib.features.tensorize.relative_codes``;
- relative numerical columns: one more input per order, its scaled value minus the
  target order's;
- label feedback (``labels.feedback``): one more categorical input per order, three
  tokens after everything else (``FEEDBACK_TOKENS``): the order's label as known at the
  target order's time; with ``feedback_reports`` two more (``REPORT_TOKENS``) for the
  label-report slots in front of the orders.

Fitting happens in Spark (``tsa_lib.spark.encoders``); this module only holds,
validates, saves, loads and applies them, with numpy/pyarrow.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tsa_lib.errors import EncoderError
from tsa_lib.features.sequence_rows import REPORT_COLUMNS

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PAD, UNKNOWN, FIRST_INDEX = 0, 1, 2
# token offset + 2 * (same value as the target order) + (first time the value appears in the window)
RELATIVE_TOKENS = ("other_repeat", "other_first", "target_repeat", "target_first")
FEEDBACK_TOKENS = ("label_not_known", "label_known_legit", "label_known_fraud")
REPORT_TOKENS = ("report_legit", "report_fraud")   # a label-report slot (labels.feedback_reports)
FEEDBACK_INPUT = "_label_feedback"   # name of the derived categorical input (see Encoders.feedback)
RELATIVE_SUFFIX = "~relative"  # input name of a column's relative token / relative value



@dataclass(frozen=True)
class Scaler:
    """log1p (optional) -> clip to [lo, hi] -> ``(x - lo) / (hi - lo)`` (min-max, in [0, 1])."""

    lo: float
    hi: float
    log1p: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.lo > self.hi:
            raise EncoderError(f"scaler: need finite lo <= hi, got lo={self.lo!r} hi={self.hi!r}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.log1p:
            x = np.log1p(np.maximum(x, 0.0))
        span = self.hi - self.lo
        if span <= 0:
            return np.zeros(x.shape, dtype=np.float32)
        return ((np.clip(x, self.lo, self.hi) - self.lo) / span).astype(np.float32)


@dataclass(frozen=True)
class Encoders:
    """Everything needed to turn sequence rows and engineered features into model tensors."""

    version: str
    config_hash: str
    window_start: str
    window_end: str
    categorical: tuple[str, ...]
    numerical: tuple[str, ...]
    engineered: tuple[str, ...]
    vocab: dict[str, tuple[str, ...]]
    numeric_scalers: dict[str, Scaler]
    engineered_scalers: dict[str, Scaler]
    max_len: int
    max_history_days: Optional[float]
    time_unit_seconds: float = 86400.0
    numerical_default: float = 0.0
    relative: tuple[str, ...] = ()
    relative_numerical: tuple[str, ...] = ()
    feedback: bool = False
    feedback_reports: int = 0
    offsets: dict[str, int] = field(init=False)
    relative_offsets: dict[str, int] = field(init=False)
    feedback_offset: int = field(init=False)
    vocab_size: int = field(init=False)

    def __post_init__(self) -> None:
        for col in self.categorical:
            if col not in self.vocab:
                raise EncoderError(f"encoders: categorical column {col!r} has no vocabulary")
        for col in self.numerical:
            if col not in self.numeric_scalers:
                raise EncoderError(f"encoders: numerical column {col!r} has no scaler")
        for col in self.engineered:
            if col not in self.engineered_scalers:
                raise EncoderError(f"encoders: engineered column {col!r} has no scaler")
        if self.max_len < 1:
            raise EncoderError(f"encoders: max_len must be >= 1, got {self.max_len}")
        if self.feedback_reports < 0 or (self.feedback_reports and not self.feedback):
            raise EncoderError(f"encoders: feedback_reports {self.feedback_reports} must be >= 0 and needs feedback")
        offsets, nxt = {}, FIRST_INDEX
        for col in self.categorical:
            if len(set(self.vocab[col])) != len(self.vocab[col]):
                raise EncoderError(f"encoders: vocabulary of {col!r} has repeated values")
            offsets[col] = nxt
            nxt += len(self.vocab[col])
        rel_offsets = {}
        for col in self.relative:
            if col in self.numeric_scalers or col in self.engineered_scalers or col in rel_offsets \
                    or (col in self.vocab and col not in self.categorical):
                raise EncoderError(f"encoders: relative column {col!r} is also used in another role or twice")
            rel_offsets[col] = nxt
            nxt += len(RELATIVE_TOKENS)
        for col in self.relative_numerical:
            if col not in self.numerical or self.relative_numerical.count(col) > 1:
                raise EncoderError(f"encoders: relative_numerical column {col!r} is not a numerical column "
                                   f"({list(self.numerical)}) or is listed twice")
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "relative_offsets", rel_offsets)
        object.__setattr__(self, "feedback_offset", nxt)
        if self.feedback:
            nxt += len(FEEDBACK_TOKENS) + (len(REPORT_TOKENS) if self.feedback_reports else 0)
        object.__setattr__(self, "vocab_size", nxt)

    # ---- shape ------------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """L: label-report slots, history slots, then the target order."""
        return self.feedback_reports + self.max_len + 1

    @property
    def num_inputs(self) -> tuple[str, ...]:
        """The model's numerical inputs per order, in tensor order: numerical, then relative numerical
        (``<col>~relative``)."""
        return tuple(self.numerical) + tuple(c + RELATIVE_SUFFIX for c in self.relative_numerical)

    @property
    def cat_inputs(self) -> tuple[str, ...]:
        """The model's categorical inputs per order, in tensor order: categorical, then relative
        (named ``<col>~relative`` when the column is categorical too), then ``FEEDBACK_INPUT``."""
        return tuple(self.categorical) + tuple(c + RELATIVE_SUFFIX if c in self.categorical else c
                                               for c in self.relative) + ((FEEDBACK_INPUT,) if self.feedback else ())

    @property
    def sequence_row_columns(self) -> tuple[str, ...]:
        """The columns of a ``sequences_<entity>`` row that encoding reads."""
        return ("entity_id", "n_context", "n_targets", "order_id", "event_time", *self.categorical,
                *(c for c in self.relative if c not in self.categorical), *self.numerical,
                *(("label", "label_known_at") if self.feedback else ()),
                *(REPORT_COLUMNS if self.feedback_reports else ()))

    # ---- apply --------------------------------------------------------------------------------------
    def encode_categorical(self, col: str, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Global indices (int32) of ``values`` of column ``col``; unknown or null -> 1."""
        if col not in self.offsets:
            raise EncoderError(f"encode_categorical: {col!r} is not a categorical column of these encoders "
                               f"({list(self.categorical)})")
        vocab = pa.array(self.vocab[col], type=pa.string())
        idx = pc.index_in(pc.cast(values, pa.string()), value_set=vocab)  # null where unknown
        glob = pc.fill_null(pc.add(idx, pa.scalar(self.offsets[col], pa.int32())), pa.scalar(UNKNOWN, pa.int32()))
        if isinstance(glob, pa.ChunkedArray):
            glob = glob.combine_chunks()
        return np.asarray(glob.to_numpy(zero_copy_only=False), dtype=np.int32)

    def encode_numeric(self, col: str, values: np.ndarray) -> np.ndarray:
        s = self.numeric_scalers.get(col) or self.engineered_scalers.get(col)
        if s is None:
            raise EncoderError(f"encode_numeric: {col!r} is not a numerical or engineered column of these encoders")
        v = np.asarray(values, dtype=np.float64)
        v = np.where(np.isnan(v), self.numerical_default, v)
        return s.apply(v)

    # ---- persistence ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "config_hash": self.config_hash,
            "window": {"start": self.window_start, "end": self.window_end},
            "categorical": list(self.categorical),
            "numerical": list(self.numerical),
            "engineered": list(self.engineered),
            "vocab": {k: list(v) for k, v in self.vocab.items()},
            "numeric_scalers": {k: vars(v) for k, v in self.numeric_scalers.items()},
            "engineered_scalers": {k: vars(v) for k, v in self.engineered_scalers.items()},
            "max_len": self.max_len,
            "max_history_days": self.max_history_days,
            "time_unit_seconds": self.time_unit_seconds,
            "numerical_default": self.numerical_default,
            "relative": list(self.relative),
            "relative_numerical": list(self.relative_numerical),
            "feedback": self.feedback,
            "feedback_reports": self.feedback_reports,
            "vocab_size": self.vocab_size,
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``<folder>/<version>.json`` and point ``<folder>/LATEST`` at it; returns the file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.version}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        tmp.replace(path)
        (folder / "LATEST").write_text(path.name + "\n")
        log.info("saved encoders %s (vocab %d) to %s", self.version, self.vocab_size, path)
        return path


def encoders_from_json(data: Mapping[str, Any], where: str = "encoders") -> Encoders:
    """Rebuild ``Encoders`` from ``to_json()`` output; errors name the key that is wrong."""
    if not isinstance(data, Mapping):
        raise EncoderError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format_version") != FORMAT_VERSION:
        raise EncoderError(f"{where}: format_version {data.get('format_version')!r} is not {FORMAT_VERSION}")
    required = ("version", "config_hash", "window", "categorical", "numerical", "engineered", "vocab",
                "numeric_scalers", "engineered_scalers", "max_len", "max_history_days")
    missing = [k for k in required if k not in data]
    if missing:
        raise EncoderError(f"{where}: missing key(s) {missing}")

    def scalers(key: str) -> dict[str, Scaler]:
        raw = data[key]
        if not isinstance(raw, Mapping):
            raise EncoderError(f"{where}.{key}: expected an object, got {raw!r}")
        out = {}
        for col, s in raw.items():
            try:
                out[col] = Scaler(lo=float(s["lo"]), hi=float(s["hi"]), log1p=bool(s.get("log1p", False)))
                # artifacts written before standardised scaling was removed hold mean and std,
                # std 0 meaning min-max (the only scaling this code applies)
                std = float(s.get("std", 0.0))
            except (KeyError, TypeError, ValueError) as e:
                raise EncoderError(f"{where}.{key}.{col}: bad scaler {s!r}: {e}") from e
            if std != 0.0:
                raise EncoderError(f"{where}.{key}.{col}: std {std!r}: a standardised scaler "
                                   f"(encoders.scaling: standard, removed) cannot be applied: refit the encoders")
        return out

    for key in ("relative", "relative_numerical"):
        if not isinstance(data.get(key, []), list):
            raise EncoderError(f"{where}.{key}: expected a list of column names, got {data[key]!r}")
    if data.get("gap_feature"):   # artifacts written before the option was removed hold "gap_feature": false
        raise EncoderError(f"{where}.gap_feature: {data['gap_feature']!r}: the gap input (encoders.gap_feature, "
                           f"removed) cannot be built: refit the encoders")
    try:
        enc = Encoders(
            version=str(data["version"]), config_hash=str(data["config_hash"]),
            window_start=str(data["window"]["start"]), window_end=str(data["window"]["end"]),
            categorical=tuple(data["categorical"]), numerical=tuple(data["numerical"]),
            engineered=tuple(data["engineered"]),
            vocab={k: tuple(str(x) for x in v) for k, v in data["vocab"].items()},
            numeric_scalers=scalers("numeric_scalers"), engineered_scalers=scalers("engineered_scalers"),
            max_len=int(data["max_len"]),
            max_history_days=None if data["max_history_days"] is None else float(data["max_history_days"]),
            time_unit_seconds=float(data.get("time_unit_seconds", 86400.0)),
            numerical_default=float(data.get("numerical_default", 0.0)),
            relative=tuple(data.get("relative", ())),
            relative_numerical=tuple(data.get("relative_numerical", ())),
            feedback=bool(data.get("feedback", False)),
            feedback_reports=int(data.get("feedback_reports", 0)),
        )
    except (TypeError, AttributeError, KeyError) as e:
        raise EncoderError(f"{where}: malformed artifact: {e}") from e
    if "vocab_size" in data and data["vocab_size"] != enc.vocab_size:
        raise EncoderError(f"{where}: vocab_size {data['vocab_size']} does not match the vocabularies "
                           f"({enc.vocab_size})")
    return enc


def load_encoders(path: str | Path) -> Encoders:
    """Load an encoder artifact: a ``.json`` file, or a folder (its ``LATEST``)."""
    p = Path(path)
    if p.is_dir():
        latest = p / "LATEST"
        if not latest.is_file():
            raise EncoderError(f"encoders folder {str(p)!r} has no LATEST file: run jobs/fit_encoders.py")
        p = p / latest.read_text().strip()
    if not p.is_file():
        raise EncoderError(f"encoder artifact {str(p)!r} does not exist: run jobs/fit_encoders.py")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EncoderError(f"encoder artifact {str(p)!r} is not valid JSON: {e}") from e
    return encoders_from_json(data, where=str(p))


def new_version(config_hash: str, now: Optional[dt.datetime] = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"enc-{now.strftime('%Y%m%dT%H%M%S')}-{config_hash[:8]}"
