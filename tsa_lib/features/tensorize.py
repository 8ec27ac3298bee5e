"""The one tensorization path shared by training and scoring.

Sequence rows (``sequences_<entity>`` batches) -> per-target fixed-shape arrays,
engineered features -> scaled vectors, and encoded examples -> model tensors.
All numpy/pyarrow over whole batches: no Python work per row.

Shapes (T targets, L = feedback_reports + max_len + 1 slots, target last, left-padded;
the real slots are contiguous: label reports (oldest known first), past orders, target):
- ``cat``  int32   [T, L, n_cat]  global vocabulary indices, 0 = padding, 1 = unknown;
                                  the categorical columns, then the relative ones, then
                                  the label feedback (``feedback_codes``) when on; a
                                  label-report slot holds only its report token
- ``num``  float32 [T, L, n_num]  scaled to [0, 1], 0 at padding; the numerical columns,
                                  then each relative numerical one (scaled value minus the
                                  target's)
- ``dt``   float32 [T, L]         days between each element and the target (0 for it); for
                                  a label report, the age of the order it is about
- ``mask`` bool    [T, L]         True where an order is present
- ``hist_len`` int32 [T]          real history slots, reports included (-1 when the entity
                                  is missing)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tsa_lib.features.encoders import FEEDBACK_TOKENS, PAD, UNKNOWN, Encoders, EncoderError
from tsa_lib.features.sequence_rows import count_before
from tsa_lib.features.windows import PAD as WPAD, flat_values, windows_of_batch

US_PER_SECOND = 1_000_000
SEQ_PREFIX = {"customer": "c", "card": "k"}


RELATIVE_CHUNK = 4096


def relative_codes(values: np.ndarray) -> np.ndarray:
    """Per element of each window: ``2 * same + first`` where ``same`` = the value equals the
    target's (the last slot) and ``first`` = no earlier slot of the window holds the value.

    ``values``: int64 ``[T, L]`` value ids, negative for padding or null (a null equals
    nothing, itself included).  Returns int8 ``[T, L]`` in 0..3, -1 where ``values`` < 0.
    The target's own code is 3 when its value is new to the window and 2 when it was seen.
    """
    if values.ndim != 2:
        raise ValueError(f"values: expected a [T, L] array, got shape {values.shape}")
    t, length = values.shape
    out = np.full((t, length), -1, dtype=np.int8)
    if t == 0 or length == 0:
        return out
    earlier = np.tril(np.ones((length, length), dtype=bool), k=-1)  # [i, j]: slot j is before slot i
    for lo in range(0, t, RELATIVE_CHUNK):
        v = values[lo: lo + RELATIVE_CHUNK]
        valid = v >= 0
        eq = (v[:, :, None] == v[:, None, :]) & valid[:, :, None]
        first = ~(eq & earlier).any(axis=2)
        same = valid & (v == v[:, -1:])
        out[lo: lo + RELATIVE_CHUNK] = np.where(valid, 2 * same + first, -1)
    return out


def feedback_codes(labels: np.ndarray, known_at_us: np.ndarray, target_us: np.ndarray,
                   mask: np.ndarray) -> np.ndarray:
    """Per slot of each window: 0 = label not known at the target's time, 1 = known legitimate,
    2 = known fraud; -1 at padding.  A label is visible only when it became known strictly
    before the target order's own time; the target's own label (the last slot) never is.

    ``labels`` int64 ``[T, L]`` (negative where there is none), ``known_at_us`` int64 ``[T, L]``
    (when each label became known, microseconds), ``target_us`` int64 ``[T]``, ``mask`` bool ``[T, L]``.
    """
    if not (labels.shape == known_at_us.shape == mask.shape) or labels.ndim != 2 or \
            target_us.shape != labels.shape[:1]:
        raise ValueError(f"labels {labels.shape}, known_at_us {known_at_us.shape}, mask {mask.shape} and "
                         f"target_us {target_us.shape}: expected [T, L], [T, L], [T, L] and [T]")
    visible = mask & (labels >= 0) & (known_at_us < target_us[:, None])
    if visible.shape[1]:
        visible[:, -1] = False
    codes = np.where(visible, 1 + (labels > 0), 0).astype(np.int8)
    return np.where(mask, codes, -1).astype(np.int8)


def report_windows(report_offsets: np.ndarray, known_at_us: np.ndarray, target_row: np.ndarray,
                   target_us: np.ndarray, k: int) -> np.ndarray:
    """Per target, its row's last ``k`` label reports known strictly before its time.

    ``report_offsets`` [R + 1] start of each row's reports in the flat arrays, ``known_at_us`` [E]
    (sorted within each row), ``target_row`` / ``target_us`` [T].  Returns int64 [T, k] flat
    indices, oldest first, right-aligned, -1 where there is none.
    """
    report_offsets = np.asarray(report_offsets, np.int64)
    sizes = np.diff(report_offsets)
    if len(known_at_us) != (report_offsets[-1] if len(report_offsets) else 0):
        raise ValueError(f"known_at_us has {len(known_at_us)} reports, the offsets hold {report_offsets[-1]}")
    row_of = np.repeat(np.arange(len(sizes)), sizes)
    hi = count_before(row_of, known_at_us, target_row, target_us)
    lo = np.maximum(report_offsets[target_row], hi - k)
    slot = np.arange(k)[None, :] - k + (hi - lo)[:, None]   # position within [lo, hi), negative = none
    return np.where(slot >= 0, lo[:, None] + slot, -1)


def _add_reports(batch: pa.RecordBatch | pa.Table, enc: Encoders, target_row: np.ndarray, target_us: np.ndarray,
                 cat: np.ndarray, num: np.ndarray, dt: np.ndarray, mask: np.ndarray, hist_len: np.ndarray,
                 hist_ids: Optional[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Put each target's label reports (``report_windows``) in front of its past orders."""
    k = enc.feedback_reports
    col = batch.column("report_known_at")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    r_off = col.offsets.to_numpy() - col.offsets[0].as_py()
    kat = pc.cast(flat_values(batch, "report_known_at"), pa.timestamp("us")).cast(pa.int64()).to_numpy(
        zero_copy_only=False)
    rep = report_windows(r_off, kat, target_row, target_us, k)
    have = rep >= 0
    safe = np.where(have, rep, 0)
    t, l0 = mask.shape
    dest = np.arange(k)[None, :] + (l0 - 1 - hist_len)[:, None]    # right before the first past order
    rows = np.broadcast_to(np.arange(t)[:, None], (t, k))[have]
    cols = dest[have]

    def widen(a: np.ndarray, fill: Any) -> np.ndarray:
        out = np.full((t, k + l0, *a.shape[2:]), fill, dtype=a.dtype)
        out[:, k:] = a
        return out

    # the report slots land on padding: every input but the feedback token stays padding / 0
    cat, num, dt, mask = widen(cat, PAD), widen(num, 0.0), widen(dt, 0.0), widen(mask, False)
    hist_ids = None if hist_ids is None else widen(hist_ids, "")
    if len(kat):
        lab = pc.fill_null(flat_values(batch, "report_label"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        r_us = pc.cast(flat_values(batch, "report_time"), pa.timestamp("us")).cast(pa.int64()).to_numpy(
            zero_copy_only=False)
        cat[rows, cols, -1] = enc.feedback_offset + len(FEEDBACK_TOKENS) + (lab[safe] > 0)[have]
        dt[rows, cols] = ((target_us[:, None] - r_us[safe]) / (US_PER_SECOND * enc.time_unit_seconds))[have]
        mask[rows, cols] = True
        if hist_ids is not None:
            ids = np.asarray(flat_values(batch, "report_order_id").to_numpy(zero_copy_only=False), dtype=object)
            hist_ids[rows, cols] = ids[safe][have]
    return cat, num, dt, mask, (hist_len + have.sum(axis=1)).astype(hist_len.dtype), hist_ids


@dataclass(frozen=True)
class SeqTensors:
    order_id: np.ndarray        # [T] str (object)
    entity_id: np.ndarray       # [T] str (object)
    event_time_us: np.ndarray   # [T] int64, the target's time
    cat: np.ndarray
    num: np.ndarray
    dt: np.ndarray
    mask: np.ndarray
    hist_len: np.ndarray
    hist_order_id: Optional[np.ndarray] = None  # [T, L] str, "" at padding (for explanations)


def encode_sequence_batch(batch: pa.RecordBatch | pa.Table, enc: Encoders,
                          with_history_ids: bool = False) -> SeqTensors:
    """Cut every target's window out of sequence rows and encode it."""
    missing = [c for c in enc.sequence_row_columns if c not in batch.schema.names]
    if missing:
        raise EncoderError(f"sequence batch lacks column(s) {missing}; it has {batch.schema.names}")
    w = windows_of_batch(batch, enc.max_len, None if enc.max_history_days is None
                         else enc.max_history_days * 86400.0)
    idx = w.index
    mask = idx != WPAD
    safe = np.where(mask, idx, 0)
    t, length = idx.shape
    cat = np.zeros((t, length, len(enc.cat_inputs)), dtype=np.int32)
    for j, c in enumerate(enc.categorical):
        codes = enc.encode_categorical(c, flat_values(batch, c))
        if len(codes):
            cat[:, :, j] = np.where(mask, codes[safe], PAD)
    for j, c in enumerate(enc.relative, start=len(enc.categorical)):
        ids = pc.dictionary_encode(pc.cast(flat_values(batch, c), pa.string()))  # one array: one dictionary
        codes = pc.fill_null(ids.indices.cast(pa.int64()), -1).to_numpy(zero_copy_only=False) if len(ids) \
            else np.zeros(0, np.int64)
        if len(codes):
            rel = relative_codes(np.where(mask, codes[safe], -1))
            cat[:, :, j] = np.where(rel >= 0, enc.relative_offsets[c] + rel, np.where(mask, UNKNOWN, PAD))
    ts = pc.cast(flat_values(batch, "event_time"), pa.timestamp("us")).cast(pa.int64()).to_numpy(
        zero_copy_only=False)
    t_ts = ts[w.target] if len(ts) else np.zeros(0, np.int64)
    if enc.feedback and len(ts):
        lab = pc.fill_null(pc.cast(flat_values(batch, "label"), pa.int64()), -1).to_numpy(zero_copy_only=False)
        kat = pc.fill_null(pc.cast(pc.cast(flat_values(batch, "label_known_at"), pa.timestamp("us")), pa.int64()),
                           np.iinfo(np.int64).max).to_numpy(zero_copy_only=False)
        fb = feedback_codes(np.where(mask, lab[safe], -1), np.where(mask, kat[safe], 0), t_ts, mask)
        cat[:, :, len(enc.categorical) + len(enc.relative)] = np.where(fb >= 0, enc.feedback_offset + fb, PAD)
    num = np.zeros((t, length, len(enc.num_inputs)), dtype=np.float32)
    for j, c in enumerate(enc.numerical):
        vals = flat_values(batch, c).to_numpy(zero_copy_only=False).astype(np.float64)
        if len(vals):
            num[:, :, j] = np.where(mask, enc.encode_numeric(c, vals)[safe], 0.0)
    for j, c in enumerate(enc.relative_numerical, start=len(enc.numerical)):
        v = num[:, :, enc.numerical.index(c)]
        num[:, :, j] = np.where(mask, v - v[:, -1:], 0.0)   # the target (last slot) is always present
    dt = np.where(mask, (t_ts[:, None] - ts[safe]) / (US_PER_SECOND * enc.time_unit_seconds), 0.0) \
        .astype(np.float32) if len(ts) else np.zeros((t, length), np.float32)
    oids = np.asarray(flat_values(batch, "order_id").to_numpy(zero_copy_only=False), dtype=object)
    ent = batch.column("entity_id")
    ent_np = np.asarray(ent.to_numpy(zero_copy_only=False) if isinstance(ent, pa.ChunkedArray)
                        else ent.to_numpy(zero_copy_only=False), dtype=object)
    hist_ids = None
    if with_history_ids:
        hist_ids = np.where(mask, oids[safe] if len(oids) else "", "").astype(object)
    hist_len = w.hist_len.astype(np.int32)
    if enc.feedback_reports:
        cat, num, dt, mask, hist_len, hist_ids = _add_reports(batch, enc, w.row, t_ts, cat, num, dt, mask,
                                                              hist_len, hist_ids)
    return SeqTensors(order_id=oids[w.target] if len(oids) else np.zeros(0, object),
                      entity_id=ent_np[w.row], event_time_us=t_ts, cat=cat, num=num, dt=dt, mask=mask,
                      hist_len=hist_len, hist_order_id=hist_ids)


def seq_arrow_schema(entity: str, with_history_ids: bool = False) -> pa.Schema:
    """Flat Arrow (and Spark) layout of one sequence's encoded targets."""
    p = SEQ_PREFIX[entity]
    fields = [
        pa.field("order_id", pa.string()),
        pa.field(f"{entity}_id", pa.string()),
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field(f"{p}_cat", pa.list_(pa.int32())),
        pa.field(f"{p}_num", pa.list_(pa.float32())),
        pa.field(f"{p}_dt", pa.list_(pa.float32())),
        pa.field(f"{p}_len", pa.int32()),
    ]
    if with_history_ids:
        fields.append(pa.field(f"{p}_hist_ids", pa.list_(pa.string())))
    return pa.schema(fields)


def _fixed_list(values: np.ndarray, width: int, typ: pa.DataType) -> pa.ListArray:
    n = values.shape[0]
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=typ))


def seq_tensors_to_arrow(t: SeqTensors, entity: str, with_history_ids: bool = False) -> pa.RecordBatch:
    """``SeqTensors`` as a flat RecordBatch (fixed-size lists stored as lists)."""
    length = t.mask.shape[1] if t.mask.ndim == 2 else 0
    cols = [
        pa.array(t.order_id.astype(str) if len(t.order_id) else [], type=pa.string()),
        pa.array(t.entity_id.astype(str) if len(t.entity_id) else [], type=pa.string()),
        pa.array(t.event_time_us, type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        _fixed_list(t.cat, length * t.cat.shape[2], pa.int32()),
        _fixed_list(t.num, length * t.num.shape[2], pa.float32()),
        _fixed_list(t.dt, length, pa.float32()),
        pa.array(t.hist_len, type=pa.int32()),
    ]
    if with_history_ids:
        assert t.hist_order_id is not None
        cols.append(_fixed_list(t.hist_order_id.astype(str), length, pa.string()))
    return pa.RecordBatch.from_arrays(cols, schema=seq_arrow_schema(entity, with_history_ids))


def encode_engineered(batch: pa.RecordBatch | pa.Table, enc: Encoders) -> np.ndarray:
    """Scaled engineered features [T, n_eng] (float32); nulls get the default before scaling."""
    out = np.zeros((batch.num_rows, len(enc.engineered)), dtype=np.float32)
    for j, c in enumerate(enc.engineered):
        if c not in batch.schema.names:
            raise EncoderError(f"engineered column {c!r} missing from the batch ({batch.schema.names})")
        col = batch.column(c)
        vals = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        out[:, j] = enc.encode_numeric(c, np.asarray(vals, dtype=np.float64))
    return out


@dataclass(frozen=True)
class ModelBatch:
    """Numpy inputs of the two-sequence model (the single-sequence model uses the customer part)."""

    order_id: np.ndarray
    c_cat: np.ndarray
    c_num: np.ndarray
    c_dt: np.ndarray
    c_mask: np.ndarray
    k_cat: np.ndarray
    k_num: np.ndarray
    k_dt: np.ndarray
    k_mask: np.ndarray
    eng: np.ndarray
    label: Optional[np.ndarray]

    def __len__(self) -> int:
        return len(self.order_id)


def lens_to_mask(lens: np.ndarray, length: int) -> np.ndarray:
    """Left-padded mask: the last ``len + 1`` slots are real; len = -1 means nothing is there."""
    pos = np.arange(length)[None, :]
    return pos >= (length - 1 - lens[:, None])


def _reshape(col: pa.Array | pa.ChunkedArray, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    flat = col.flatten().to_numpy(zero_copy_only=False) if n else np.zeros(0)
    expect = n * int(np.prod(shape))
    if flat.size != expect:
        raise EncoderError(f"column of {n} rows holds {flat.size} values, expected {expect} for shape {shape}")
    return flat.astype(dtype, copy=False).reshape((n, *shape))


def examples_to_batch(tbl: pa.Table | pa.RecordBatch, enc: Encoders) -> ModelBatch:
    """Examples rows (see ``tsa_lib.spark.examples``) -> numpy model inputs, no per-row Python."""
    length, nc, nn, ne = enc.seq_len, len(enc.cat_inputs), len(enc.num_inputs), len(enc.engineered)

    def np1(name: str) -> np.ndarray:
        c = tbl.column(name)
        return np.asarray(c.to_numpy(zero_copy_only=False) if isinstance(c, pa.ChunkedArray)
                          else c.to_numpy(zero_copy_only=False))

    c_len, k_len = np1("c_len").astype(np.int64), np1("k_len").astype(np.int64)
    label = None
    if "label" in tbl.schema.names:
        lab = np1("label")
        label = np.where(np.equal(lab, None), -1, lab).astype(np.int64) if lab.dtype == object \
            else np.nan_to_num(lab.astype(np.float64), nan=-1).astype(np.int64)
    return ModelBatch(
        order_id=np1("order_id").astype(object),
        c_cat=_reshape(tbl.column("c_cat"), (length, nc), np.int32),
        c_num=_reshape(tbl.column("c_num"), (length, nn), np.float32),
        c_dt=_reshape(tbl.column("c_dt"), (length,), np.float32),
        c_mask=lens_to_mask(c_len, length),
        k_cat=_reshape(tbl.column("k_cat"), (length, nc), np.int32),
        k_num=_reshape(tbl.column("k_num"), (length, nn), np.float32),
        k_dt=_reshape(tbl.column("k_dt"), (length,), np.float32),
        k_mask=lens_to_mask(k_len, length),
        eng=_reshape(tbl.column("eng"), (ne,), np.float32),
        label=label,
    )
