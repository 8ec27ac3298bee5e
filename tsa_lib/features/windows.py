"""Cut each target order's window out of (entity, ds) sequence rows, vectorized.

A sequence row (see ``tsa_lib.spark.sequences``) holds ``n_context`` history
elements then ``n_targets`` target elements, sorted by (event time, order id).
For the target at flat position ``p`` the window is: the last ``max_len``
elements of its row that are strictly earlier in time than it (elements with
the same timestamp are not history) and not older than ``max_age``, then the
target itself.  Windows are left-padded: the target is always the last slot.

Everything here is numpy over flat Arrow buffers: no Python loop per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAD = -1


@dataclass(frozen=True)
class Windows:
    """``index`` [T, max_len + 1] into the flat element arrays (PAD = -1), left-padded.

    ``target`` [T] flat index of each target element, ``row`` [T] the row each
    target came from, ``hist_len`` [T] number of real history elements.
    """

    index: np.ndarray
    target: np.ndarray
    row: np.ndarray
    hist_len: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.index != PAD


def cut_windows(
    offsets: np.ndarray,
    n_context: np.ndarray,
    n_targets: np.ndarray,
    ts: np.ndarray,
    max_len: int,
    max_age: Optional[int] = None,
) -> Windows:
    """Window indices for every target of every row.

    ``offsets`` [R + 1] start of each row in the flat arrays; ``ts`` [E] int64
    event times (any unit; ``max_age`` in the same unit, or None).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n_context = np.asarray(n_context, dtype=np.int64)
    n_targets = np.asarray(n_targets, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    if max_len < 0:
        raise ValueError(f"max_len: must be >= 0, got {max_len}")
    n_rows = len(offsets) - 1
    if len(n_context) != n_rows or len(n_targets) != n_rows:
        raise ValueError(f"offsets has {n_rows} rows but n_context has {len(n_context)} and n_targets "
                         f"{len(n_targets)}")
    sizes = np.diff(offsets)
    if np.any(n_context + n_targets != sizes):
        bad = int(np.flatnonzero(n_context + n_targets != sizes)[0])
        raise ValueError(f"row {bad}: n_context {n_context[bad]} + n_targets {n_targets[bad]} != "
                         f"{sizes[bad]} elements")
    n_elem = int(offsets[-1]) if n_rows else 0
    if len(ts) != n_elem:
        raise ValueError(f"ts has {len(ts)} elements, rows hold {n_elem}")

    row_of_elem = np.repeat(np.arange(n_rows), sizes)
    # first index of each run of equal timestamps within a row
    pos = np.arange(n_elem)
    new_run = np.ones(n_elem, dtype=bool)
    if n_elem > 1:
        new_run[1:] = (ts[1:] != ts[:-1]) | (row_of_elem[1:] != row_of_elem[:-1])
    tie_start = np.maximum.accumulate(np.where(new_run, pos, 0)) if n_elem else pos

    # targets: the last n_targets elements of each row
    t_row = np.repeat(np.arange(n_rows), n_targets)
    first_target = offsets[:-1] + n_context
    t_off = np.arange(len(t_row)) - np.repeat(np.cumsum(n_targets) - n_targets, n_targets)
    target = np.repeat(first_target, n_targets) + t_off

    end = tie_start[target] if len(target) else target  # exclusive end of history
    cand = end[:, None] - max_len + np.arange(max_len)[None, :]  # [T, max_len]
    ok = cand >= offsets[t_row][:, None]
    if max_age is not None and len(target):
        safe = np.where(ok, cand, 0)
        ok &= ts[safe] >= (ts[target] - max_age)[:, None]
    hist = np.where(ok, cand, PAD)
    # left-pad: valid candidates are a contiguous suffix already (cand increases, bounds are lower bounds)
    index = np.concatenate([hist, target[:, None]], axis=1)
    return Windows(index=index, target=target, row=t_row, hist_len=ok.sum(axis=1))


def windows_of_batch(batch: pa.RecordBatch | pa.Table, max_len: int, max_age_seconds: Optional[float]) -> Windows:
    """``cut_windows`` on a batch of the sequences table (needs order_id, event_time, n_context, n_targets)."""
    ev = batch.column("event_time")
    if isinstance(ev, pa.ChunkedArray):
        ev = ev.combine_chunks()
    offsets = ev.offsets.to_numpy() - ev.offsets[0].as_py()
    values = pc.cast(ev.flatten(), pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    max_age = None if max_age_seconds is None else int(round(max_age_seconds * 1e6))
    return cut_windows(offsets, _np(batch.column("n_context")), _np(batch.column("n_targets")), values,
                       max_len, max_age)


def _np(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return col.to_numpy() if isinstance(col, pa.ChunkedArray) else col.to_numpy(zero_copy_only=False)


def flat_values(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    """The flat element values of list column ``name`` (aligned with window indices)."""
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    start = col.offsets[0].as_py()
    end = col.offsets[-1].as_py()
    return col.values.slice(start, end - start)


def window_order_ids(batch: pa.RecordBatch | pa.Table, max_len: int,
                     max_age_seconds: Optional[float] = None) -> dict[str, list[str]]:
    """{target order id: [history order ids..., target order id]}: a readable view for tests and debugging."""
    w = windows_of_batch(batch, max_len, max_age_seconds)
    oids = np.asarray(flat_values(batch, "order_id").to_pylist(), dtype=object)
    out: dict[str, list[str]] = {}
    for i in range(len(w.target)):
        idx = w.index[i]
        out[str(oids[w.target[i]])] = [str(o) for o in oids[idx[idx != PAD]]]
    return out
