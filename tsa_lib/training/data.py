"""Training data off-Spark: the ``examples`` Delta table -> tensors, sharded per rank.

Reads with ``deltalake`` + pyarrow at a pinned table version (no Spark on GPU
nodes), converts whole columns to numpy with ``examples_to_batch`` (no Python
work per row) and keeps the shard in memory as tensors in compact dtypes
(categorical indices int16 when the vocabulary fits, masks bool, labels int8):
on the GPU when it fits, else in pinned host memory copied ``non_blocking``.
Batches are index gathers from a per-epoch permutation seeded by (seed, epoch),
so the data position is just (epoch, step): a resumed run sees exactly the same
batches.  A shard larger than the host memory budget is streamed from its files
in every epoch instead (``StreamedData``), with the same guarantees.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np
import torch

from tsa_lib.errors import DataError
from tsa_lib.features.encoders import Encoders
from tsa_lib.features.tensorize import ModelBatch, examples_to_batch

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

TENSOR_FIELDS = ("c_cat", "c_num", "c_dt", "c_mask", "k_cat", "k_num", "k_dt", "k_mask", "eng", "label")
DEVICE_SHARE = 0.5     # examples stay on the GPU when they take at most this share of its free memory
HOST_OVERHEAD = 3      # reading holds the Arrow table and the decoded arrays beside the tensors


def table_version(path: str) -> int:
    import deltalake

    try:
        return int(deltalake.DeltaTable(path).version())
    except Exception as e:  # deltalake raises TableNotFoundError and friends
        raise DataError(f"examples table {path!r} cannot be opened: {e}") from e


@dataclass(frozen=True)
class Shard:
    """This rank's part of the examples in [start, end] at one table version: its files, or every
    ``world_size``-th row of the window when there are fewer files than ranks."""

    path: str
    version: int
    start: dt.date
    end: dt.date
    rank: int
    world_size: int
    fragments: tuple[Any, ...]
    by_file: bool
    schema: Any
    filter: Any

    @classmethod
    def open(cls, path: str, version: int, start: dt.date, end: dt.date, rank: int = 0,
             world_size: int = 1) -> "Shard":
        import deltalake
        import pyarrow.dataset as pds

        try:
            table = deltalake.DeltaTable(path, version=version)
        except Exception as e:
            raise DataError(f"examples table {path!r} at version {version} cannot be opened: {e}") from e
        dataset = table.to_pyarrow_dataset()
        flt = (pds.field("ds") >= start) & (pds.field("ds") <= end)
        frags = sorted(dataset.get_fragments(filter=flt), key=lambda f: f.path)
        by_file = world_size > 1 and len(frags) >= world_size
        mine = frags[rank::world_size] if by_file else frags
        return cls(path=path, version=version, start=start, end=end, rank=rank, world_size=world_size,
                   fragments=tuple(mine), by_file=by_file, schema=dataset.schema, filter=flt)

    def count_rows(self) -> int:
        """Rows of the shard, from the files' metadata where it suffices."""
        n = sum(self.fragment_rows(f) for f in self.fragments)
        return n if self.by_file or self.world_size == 1 else len(range(self.rank, n, self.world_size))

    def fragment_rows(self, fragment: Any) -> int:
        return int(fragment.scanner(schema=self.schema, filter=self.filter).count_rows())

    def no_rows_error(self) -> DataError:
        return DataError(f"examples table {self.path!r} (version {self.version}) has no rows for "
                         f"{self.start}..{self.end}: run jobs/build_examples.py for these dates")

    def check(self, tbl: "pa.Table", enc: Encoders, labels_as_of: Optional[dt.datetime]) -> None:
        """The rows were encoded with ``enc`` and carry the labels known at ``labels_as_of``."""
        import pyarrow.compute as pc

        versions = set(pc.unique(tbl.column("encoder_version")).to_pylist())
        if versions - {enc.version}:
            raise DataError(f"examples for {self.start}..{self.end} were encoded with {sorted(versions)}, "
                            f"but the encoders are {enc.version}: re-run jobs/build_examples.py")
        if labels_as_of is not None:
            found = {v for v in pc.unique(tbl.column("labels_as_of")).to_pylist()}
            if found - {labels_as_of}:
                raise DataError(f"examples for {self.start}..{self.end} carry labels known before "
                                f"{sorted(str(v) for v in found)}, not before {labels_as_of}: re-run "
                                f"jobs/build_examples.py --run-date {(labels_as_of - dt.timedelta(days=1)).date()} "
                                f"--window training")


def read_examples(path: str, version: int, start: dt.date, end: dt.date, enc: Encoders,
                  rank: int = 0, world_size: int = 1, labels_as_of: Optional[dt.datetime] = None) -> ModelBatch:
    """Rows of ``ds`` in [start, end] at ``version``: this rank's shard, checked against the encoders
    and, when ``labels_as_of`` is given, against the instant the examples' labels were taken at.

    Each rank reads only its own files (every world_size-th data file of the window, in path
    order); with fewer files than ranks, each reads the window and keeps every world_size-th
    row.  Rows are in (ds, order_id) order.
    """
    return read_shard(Shard.open(path, version, start, end, rank, world_size), enc, labels_as_of)


def read_shard(shard: Shard, enc: Encoders, labels_as_of: Optional[dt.datetime] = None) -> ModelBatch:
    """The whole shard in memory (``read_examples``)."""
    import pyarrow as pa

    parts = [f.to_table(schema=shard.schema, filter=shard.filter) for f in shard.fragments]
    tbl = pa.concat_tables(parts) if parts else shard.schema.empty_table()
    if tbl.num_rows == 0:
        raise shard.no_rows_error()
    shard.check(tbl, enc, labels_as_of)
    tbl = tbl.sort_by([("ds", "ascending"), ("order_id", "ascending")])
    if shard.world_size > 1 and not shard.by_file:
        tbl = tbl.take(pa.array(np.arange(shard.rank, tbl.num_rows, shard.world_size)))
    return examples_to_batch(tbl, enc)


def labeled(batch: ModelBatch) -> ModelBatch:
    """Drop unlabeled rows (label -1): they cannot train or validate."""
    if batch.label is None:
        raise DataError("examples have no label column")
    keep = batch.label >= 0
    if keep.all():
        return batch
    return replace(batch, **{f.name: getattr(batch, f.name)[keep] for f in fields(batch)})


def bytes_per_row(enc: Encoders) -> int:
    """Host bytes of one example as ``TensorData`` holds it (compact dtypes)."""
    length, nc, nn, ne = enc.seq_len, len(enc.cat_inputs), len(enc.num_inputs), len(enc.engineered)
    cat = np.dtype(cat_dtype(enc.vocab_size)).itemsize
    return 2 * (length * nc * cat + length * nn * 4 + length * 4 + length) + ne * 4 + 1


def cat_dtype(vocab_size: int) -> type:
    """The narrowest integer type that holds every categorical index."""
    return np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32


def _host_tensors(batch: ModelBatch, vocab_size: int) -> dict[str, torch.Tensor]:
    """A labeled batch as host tensors in compact dtypes: categorical indices int16 (int32 when the
    vocabulary needs it), masks bool, labels int8, the rest float32."""
    if batch.label is None:
        raise DataError("examples have no label column")
    cat = cat_dtype(vocab_size)
    t: dict[str, torch.Tensor] = {}
    for f in TENSOR_FIELDS:
        arr = getattr(batch, f)
        dtype = np.bool_ if f.endswith("_mask") else cat if f.endswith("_cat") else np.int8 if f == "label" \
            else np.float32
        # writable and contiguous: Arrow-backed arrays are read-only views, which torch warns about
        t[f] = torch.from_numpy(np.require(arr, dtype=dtype, requirements=["C", "W"]))
    return t


def _model_dtypes(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model and the loss take: int32 indices (embedding lookups), int64 labels."""
    out = dict(b)
    for f in ("c_cat", "k_cat"):
        out[f] = b[f].to(torch.int32)
    out["label"] = b["label"].to(torch.int64)
    return out


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(x.numel() * x.element_size() for x in tensors.values())


def _device_budget(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * DEVICE_SHARE)


class TrainingData:
    """A rank's labeled examples, served as batches of an epoch (``TensorData`` or ``StreamedData``)."""

    n: int
    device: torch.device
    on_device: bool
    streamed = False           # read from the files again in every epoch

    @property
    def host_bytes(self) -> int:
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        raise NotImplementedError

    def batches(self, batch_size: int, seed: int, epoch: int, start_step: int = 0, shuffle: bool = True,
                drop_last: bool = False, steps: Optional[int] = None) -> Iterator[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def num_steps(self, batch_size: int, drop_last: bool = False, steps: Optional[int] = None) -> int:
        """Batches in an epoch (at most ``steps``)."""
        n = self.n // batch_size if drop_last else -(-self.n // batch_size)
        return n if steps is None else min(n, steps)

    def _to_model(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A host batch on the device (pinned, non-blocking) in the model's dtypes."""
        if self.device.type == "cuda":
            b = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in b.items()}
        return _model_dtypes(b)


@dataclass
class TensorData(TrainingData):
    """One shard as tensors on ``device`` when it fits there, else in (pinned) host memory."""

    tensors: dict[str, torch.Tensor]
    n: int
    device: torch.device
    on_device: bool

    @classmethod
    def from_batch(cls, batch: ModelBatch, device: torch.device, vocab_size: int,
                   max_device_bytes: Optional[int] = None) -> "TensorData":
        t = _host_tensors(batch, vocab_size)
        budget = _device_budget(device) if max_device_bytes is None else max_device_bytes
        on_device = device.type != "cpu" and _nbytes(t) <= budget
        if on_device:
            t = {k: v.to(device) for k, v in t.items()}
        elif device.type == "cuda":
            t = {k: v.pin_memory() for k, v in t.items()}
        return cls(tensors=t, n=len(batch), device=device, on_device=on_device)

    @property
    def host_bytes(self) -> int:
        return 0 if self.on_device else _nbytes(self.tensors)

    def labels(self) -> np.ndarray:
        return self.tensors["label"].cpu().numpy().astype(np.int64)

    def batches(self, batch_size: int, seed: int, epoch: int, start_step: int = 0, shuffle: bool = True,
                drop_last: bool = False, steps: Optional[int] = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of the epoch's permutation, from ``start_step`` on (at most ``steps`` batches)."""
        if shuffle:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        n_steps = self.num_steps(batch_size, drop_last, steps)
        if self.on_device:
            perm = perm.to(self.device)
        nxt: Optional[dict[str, torch.Tensor]] = None
        for step in range(start_step, n_steps):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            cur = nxt if nxt is not None else self._gather(idx)
            nxt = self._gather(perm[(step + 1) * batch_size:(step + 2) * batch_size]) \
                if step + 1 < n_steps else None  # prefetch: the next copy overlaps this step's compute
            yield cur

    def _gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {k: v.index_select(0, idx) for k, v in self.tensors.items()}
        return _model_dtypes(out) if self.on_device else self._to_model(out)


class StreamedData(TrainingData):
    """A shard too large for host memory, read from its Delta files again in every epoch.

    The epoch's order: the shard's files in a permutation seeded by (seed, epoch), each read in
    chunks of ``chunk_rows`` rows, each chunk's rows in a permutation seeded by (seed, epoch, chunk).
    Batches run across chunk boundaries, so every labeled row is in exactly one batch of an epoch
    (the last, short one aside with ``drop_last``).  With fewer files than ranks, row ``i`` of the
    window's files, in path order, belongs to rank ``i % world_size``.  Resuming at a step reads the
    epoch again up to that step.  At most two chunks (the rest of one, the next) and a batch are in
    memory at a time.
    """

    streamed = True

    def __init__(self, shard: Shard, enc: Encoders, device: torch.device, chunk_rows: int,
                 labels_as_of: Optional[dt.datetime] = None) -> None:
        import pyarrow.compute as pc

        self.shard, self.enc, self.device = shard, enc, device
        self.chunk_rows = max(1, chunk_rows)
        self.labels_as_of = labels_as_of
        # with fewer files than ranks, row i of the window (files in path order) belongs to rank i % world
        self._offsets: Optional[np.ndarray] = None
        if shard.world_size > 1 and not shard.by_file:
            self._offsets = np.concatenate([[0], np.cumsum([shard.fragment_rows(f) for f in shard.fragments])])
        labels: list[np.ndarray] = []
        columns = [c for c in ("label", "encoder_version", "labels_as_of") if c in shard.schema.names]
        for tbl in self._chunks(np.arange(len(shard.fragments)), columns):
            shard.check(tbl, enc, labels_as_of)
            lab = pc.fill_null(tbl.column("label"), -1).to_numpy(zero_copy_only=False)
            labels.append(lab[lab >= 0].astype(np.int64))
        self._labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        if not len(self._labels) and not shard.count_rows():
            raise shard.no_rows_error()
        self.n = len(self._labels)
        self.on_device = False

    @property
    def host_bytes(self) -> int:
        return self.chunk_rows * bytes_per_row(self.enc) * HOST_OVERHEAD

    def labels(self) -> np.ndarray:
        return self._labels

    def _chunks(self, order: np.ndarray, columns: Optional[list[str]] = None) -> Iterator["pa.Table"]:
        """The shard's rows, file by file in ``order``, in chunks of at most ``chunk_rows`` rows."""
        import pyarrow as pa

        sh, offsets = self.shard, self._offsets
        for fi in order:
            frag = sh.fragments[int(fi)]
            pos = int(offsets[fi]) if offsets is not None else 0
            for rb in frag.to_batches(schema=sh.schema, filter=sh.filter, columns=columns,
                                      batch_size=self.chunk_rows):
                tbl = pa.Table.from_batches([rb])
                if offsets is not None:
                    first = (sh.rank - pos) % sh.world_size
                    tbl = tbl.take(pa.array(np.arange(first, tbl.num_rows, sh.world_size)))
                pos += rb.num_rows
                if tbl.num_rows:
                    yield tbl

    def batches(self, batch_size: int, seed: int, epoch: int, start_step: int = 0, shuffle: bool = True,
                drop_last: bool = False, steps: Optional[int] = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of the epoch's order (see the class), from ``start_step`` on (at most ``steps``)."""
        n_steps = self.num_steps(batch_size, drop_last, steps)
        g = np.random.default_rng([seed, epoch])
        order = g.permutation(len(self.shard.fragments)) if shuffle else np.arange(len(self.shard.fragments))
        step, pending, have = 0, [], 0
        for ci, tbl in enumerate(self._chunks(order)):
            if step >= n_steps:
                return
            t = _host_tensors(labeled(examples_to_batch(tbl, self.enc)), self.enc.vocab_size)
            m = len(t["label"])
            if shuffle and m:
                perm = torch.from_numpy(np.random.default_rng([seed, epoch, ci]).permutation(m))
                t = {k: v.index_select(0, perm) for k, v in t.items()}
            pending.append(t)
            have += m
            while have >= batch_size and step < n_steps:
                b, pending, have = _take(pending, batch_size), _rest(pending, batch_size), have - batch_size
                if step >= start_step:
                    yield self._to_model(b)
                step += 1
        if have and step < n_steps and not drop_last:
            b = _take(pending, have)
            if step >= start_step:
                yield self._to_model(b)


def _take(parts: list[dict[str, torch.Tensor]], n: int) -> dict[str, torch.Tensor]:
    """The first ``n`` rows of the concatenation of ``parts``."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in parts[0]}
    left = n
    for p in parts:
        if left == 0:
            break
        k = min(left, len(p["label"]))
        for f, v in p.items():
            out[f].append(v[:k])
        left -= k
    return {f: torch.cat(v) for f, v in out.items()}


def _rest(parts: list[dict[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    """``parts`` without their first ``n`` rows."""
    out = []
    for p in parts:
        m = len(p["label"])
        if n >= m:
            n -= m
            continue
        out.append({f: v[n:] for f, v in p.items()} if n else p)
        n = 0
    return out


def load_training_data(shard: Shard, enc: Encoders, device: torch.device, host_budget_bytes: int,
                       labels_as_of: Optional[dt.datetime] = None) -> tuple[TrainingData, int]:
    """The shard's labeled rows, in memory when reading them fits ``host_budget_bytes``, else streamed
    from its files in chunks of at most a quarter of the budget; and the number of rows read, labeled
    or not."""
    per_row = bytes_per_row(enc)
    rows = shard.count_rows()
    if rows * per_row * HOST_OVERHEAD <= host_budget_bytes:
        batch = read_shard(shard, enc, labels_as_of)
        return TensorData.from_batch(labeled(batch), device, enc.vocab_size), len(batch)
    chunk = max(1, host_budget_bytes // (4 * per_row * HOST_OVERHEAD))
    log.info("examples %s..%s: %d rows x %d bytes do not fit the host memory budget of %d MB on rank %d: "
             "streaming them from the files in chunks of %d rows", shard.start, shard.end, rows, per_row,
             host_budget_bytes >> 20, shard.rank, chunk)
    return StreamedData(shard, enc, device, chunk, labels_as_of), rows


def model_inputs(b: dict[str, torch.Tensor], model_type: str) -> tuple[torch.Tensor, ...]:
    """Positional inputs of the classifier ``model_type`` from a batch dict."""
    c = (b["c_cat"], b["c_num"], b["c_dt"], b["c_mask"])
    if model_type == "single_seq":
        return (*c, b["eng"])
    return (*c, b["k_cat"], b["k_num"], b["k_dt"], b["k_mask"], b["eng"])


__all__ = ["DataError", "Shard", "StreamedData", "TensorData", "TrainingData", "bytes_per_row", "cat_dtype", "labeled",
           "load_training_data", "model_inputs", "read_examples", "read_shard", "table_version", "TENSOR_FIELDS"]
