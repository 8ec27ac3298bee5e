"""Build (entity, ds) sequence rows from orders sorted by (entity, time, order id): numpy/Arrow.

This is the inner loop of the build-sequences job (run inside Spark's
``groupBy().applyInArrow``, one group of entities at a time) and of the
single-process reference in ``bench/``.  No Python loop per row or per entity.

For every (entity, target day) group the row holds:
- context: the last ``max_len`` orders of the entity strictly before the day,
  not older than ``max_history_days`` before the day's start;
- targets: the day's orders, the first ``cap`` of them by (time, order id).
Orders over the cap are left out of the row (the job quarantines them), but
they stay history for later days: history never depends on which dates a run
covers.

With ``reports`` (``labels.feedback_reports``) a row also holds label *reports*:
the entity's orders whose label is known, sorted by when it became known, as
many as its targets need: for each target, the last ``reports`` known strictly
before it (``report_*`` list columns: order id, order time, label, known at).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

US_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class RowSpec:
    """What the builder needs to know: column names and limits."""

    key: str                       # entity column
    ts: str                        # event time column (timestamp)
    order_id: str                  # order id column
    features: tuple[str, ...]      # carried as list columns, in this order
    target_days: tuple[int, ...]   # days since epoch of the run dates
    max_len: int
    cap: int
    max_age_us: Optional[int]
    reports: int = 0               # label reports per target (needs label and known_at)
    label: Optional[str] = None    # label column (int, null = none)
    known_at: Optional[str] = None  # when the label became known (timestamp)

    def __post_init__(self) -> None:
        if self.max_len < 1 or self.cap < 1:
            raise ValueError(f"max_len and cap must be >= 1, got max_len={self.max_len} cap={self.cap}")
        if self.reports < 0 or (self.reports and (self.label is None or self.known_at is None)):
            raise ValueError(f"reports: {self.reports} must be >= 0 and needs label and known_at columns "
                             f"(got {self.label!r}, {self.known_at!r})")


REPORT_COLUMNS = ("report_order_id", "report_time", "report_label", "report_known_at")


def output_schema(spec: RowSpec, input_schema: pa.Schema) -> pa.Schema:
    return pa.schema([
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("n_context", pa.int32(), nullable=False),
        pa.field("n_targets", pa.int32(), nullable=False),
        pa.field("order_id", pa.list_(pa.string()), nullable=False),
        pa.field("event_time", pa.list_(input_schema.field(spec.ts).type), nullable=False),
        *[pa.field(c, pa.list_(input_schema.field(c).type), nullable=False) for c in spec.features],
        *([pa.field(name, pa.list_(typ), nullable=False) for name, typ in zip(REPORT_COLUMNS, (
            pa.string(), input_schema.field(spec.ts).type, pa.int32(), input_schema.field(spec.known_at).type))]
          if spec.reports else []),
        pa.field("ds", pa.date32(), nullable=False),
    ])


def count_before(group: np.ndarray, times: np.ndarray, q_group: np.ndarray, q_times: np.ndarray) -> np.ndarray:
    """For each query, how many elements sort strictly before it by (group, time): elements of
    earlier groups, and of its own group with a time strictly earlier.  ``group``/``times`` must
    be sorted by (group, time); vectorized (one lexsort), no per-query Python."""
    n = len(group)
    g = np.concatenate([np.asarray(group, np.int64), np.asarray(q_group, np.int64)])
    t = np.concatenate([np.asarray(times, np.int64), np.asarray(q_times, np.int64)])
    kind = np.concatenate([np.ones(n, np.int8), np.zeros(len(q_group), np.int8)])  # ties: a query first
    order = np.lexsort((kind, t, g))
    is_elem = kind[order] == 1
    before = np.cumsum(is_elem) - is_elem          # elements strictly before each sorted position
    out = np.empty(len(q_group), dtype=np.int64)
    out[order[~is_elem] - n] = before[~is_elem]
    return out


def _report_take(tbl: pa.Table, spec: RowSpec, ent_id: np.ndarray, ts: np.ndarray, starts: np.ndarray,
                 t_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which orders each row carries as label reports: (flat positions into ``tbl``, row offsets).

    Per target, the last ``spec.reports`` orders of its entity whose label became known strictly
    before it; a row carries the union over its targets, sorted by (known at, position)."""
    lab = tbl.column(spec.label).combine_chunks()
    kat_col = pc.cast(tbl.column(spec.known_at).combine_chunks(), pa.timestamp("us"))
    has = pc.and_(pc.is_valid(lab), pc.is_valid(kat_col)).to_numpy(zero_copy_only=False)
    kat = pc.fill_null(kat_col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    rep = np.flatnonzero(has)
    rep = rep[np.lexsort((rep, kat[rep], ent_id[rep]))]
    r_ent, r_kat = ent_id[rep], kat[rep]
    n_tgt = t_end - starts
    t_row = np.repeat(np.arange(len(starts)), n_tgt)
    tgt = np.repeat(starts, n_tgt) + (np.arange(n_tgt.sum()) - np.repeat(np.cumsum(n_tgt) - n_tgt, n_tgt))
    t_ent = ent_id[tgt]
    hi = count_before(r_ent, r_kat, t_ent, ts[tgt])
    lo = np.maximum(np.searchsorted(r_ent, t_ent, side="left"), hi - spec.reports)   # not before the entity's first
    # union over a row's targets: targets are in time order, so hi never decreases within a row
    prev_hi = np.concatenate([[0], hi[:-1]])
    new_row = np.concatenate([[True], t_row[1:] != t_row[:-1]]) if len(t_row) else np.zeros(0, bool)
    lo = np.where(new_row, lo, np.maximum(lo, prev_hi))
    cnt = np.maximum(hi - lo, 0)
    per_row = np.bincount(t_row, weights=cnt, minlength=len(starts)).astype(np.int64)
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(per_row, out=offsets[1:])
    within = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    return rep[np.repeat(lo, cnt) + within], offsets


def _starts(changed: np.ndarray, n: int) -> np.ndarray:
    """Flags of the first element of each run, given ``changed[i] = x[i+1] != x[i]``."""
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = changed
    return first


def build_rows(tbl: pa.Table, spec: RowSpec) -> pa.Table:
    """Sequence rows of all *complete* entities in ``tbl`` (sorted by key, ts, order id)."""
    n = tbl.num_rows
    schema = output_schema(spec, tbl.schema)
    if n == 0:
        return schema.empty_table()
    key = tbl.column(spec.key).combine_chunks()
    ts = pc.cast(tbl.column(spec.ts), pa.timestamp("us")).cast(pa.int64()).to_numpy()
    day = np.floor_divide(ts, US_PER_DAY)
    key_changed = pc.not_equal(key.slice(1), key.slice(0, n - 1)).to_numpy(zero_copy_only=False) \
        if n > 1 else np.zeros(0, bool)
    ent_first = _starts(key_changed, n)
    grp_first = _starts(key_changed | (day[1:] != day[:-1]), n)
    pos = np.arange(n)
    ent_start = np.maximum.accumulate(np.where(ent_first, pos, 0))
    ent_id = np.cumsum(ent_first) - 1
    is_target = np.isin(day, np.asarray(spec.target_days, dtype=np.int64))

    starts = np.flatnonzero(grp_first & is_target)              # one row per (entity, target day)
    if len(starts) == 0:
        return schema.empty_table()
    grp_ends = np.append(np.flatnonzero(grp_first)[1:], n)
    ends = grp_ends[np.searchsorted(np.flatnonzero(grp_first), starts)]
    t_end = np.minimum(ends, starts + spec.cap)                  # first `cap` orders of the day
    # context: up to max_len orders before the day, same entity, not too old
    m = spec.max_len
    lo = np.maximum(starts - m, ent_start[starts])
    if spec.max_age_us is not None:
        horizon = day[starts] * US_PER_DAY - spec.max_age_us
        cand = lo[:, None] + np.arange(m)[None, :]
        old = (cand < starts[:, None]) & (ts[np.minimum(cand, n - 1)] < horizon[:, None])
        lo = lo + old.sum(axis=1)   # old elements form a prefix: times increase along the row
    n_ctx = starts - lo
    n_tgt = t_end - starts
    sizes = n_ctx + n_tgt
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], sizes)
    take = pa.array(np.repeat(lo, sizes) + within)
    off = pa.array(offsets.astype(np.int32))

    def lst(col: str) -> pa.ListArray:
        return pa.ListArray.from_arrays(off, tbl.column(col).combine_chunks().take(take))

    cols = {
        "entity_id": pc.cast(key.take(pa.array(starts)), pa.string()),
        "n_context": pa.array(n_ctx.astype(np.int32)),
        "n_targets": pa.array(n_tgt.astype(np.int32)),
        "order_id": pa.ListArray.from_arrays(off, pc.cast(tbl.column(spec.order_id).combine_chunks().take(take),
                                                          pa.string())),
        "event_time": lst(spec.ts),
        **{c: lst(c) for c in spec.features},
    }
    if spec.reports:
        r_take, r_off = _report_take(tbl, spec, ent_id, ts, starts, t_end)
        rt, ro = pa.array(r_take), pa.array(r_off.astype(np.int32))

        def rep(col: str, typ: Optional[pa.DataType] = None) -> pa.ListArray:
            values = tbl.column(col).combine_chunks().take(rt)
            return pa.ListArray.from_arrays(ro, values if typ is None else pc.cast(values, typ))

        cols.update(zip(REPORT_COLUMNS, (rep(spec.order_id, pa.string()), rep(spec.ts), rep(spec.label, pa.int32()),
                                         rep(spec.known_at))))
    cols["ds"] = pa.array(day[starts].astype("datetime64[D]"), type=pa.date32())
    return pa.Table.from_pydict(cols, schema=schema)


def sort_for_build(tbl: pa.Table, spec: RowSpec) -> pa.Table:
    """Sort a table the way ``build_rows`` expects (for single-process use)."""
    return tbl.sort_by([(spec.key, "ascending"), (spec.ts, "ascending"), (spec.order_id, "ascending")])


def days_since_epoch(dates: Sequence["object"]) -> tuple[int, ...]:
    return tuple(int(np.datetime64(d, "D").astype(np.int64)) for d in dates)
