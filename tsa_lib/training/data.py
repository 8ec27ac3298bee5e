"""Training data off-Spark: the ``examples`` Delta table -> tensors, sharded per rank.

Reads with ``deltalake`` + pyarrow at a pinned table version (no Spark on GPU
nodes), converts whole columns to numpy with ``examples_to_batch`` (no Python
work per row) and keeps the shard in memory as tensors: on the GPU when it
fits, else in pinned host memory copied ``non_blocking``.  Batches are index
gathers from a per-epoch permutation seeded by (seed, epoch), so the data
position is just (epoch, step): a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from tsa_lib.errors import DataError
from tsa_lib.features.encoders import Encoders
from tsa_lib.features.tensorize import ModelBatch, examples_to_batch

log = logging.getLogger(__name__)

TENSOR_FIELDS = ("c_cat", "c_num", "c_dt", "c_mask", "k_cat", "k_num", "k_dt", "k_mask", "eng", "label")



def table_version(path: str) -> int:
    import deltalake

    try:
        return int(deltalake.DeltaTable(path).version())
    except Exception as e:  # deltalake raises TableNotFoundError and friends
        raise DataError(f"examples table {path!r} cannot be opened: {e}") from e


def read_examples(path: str, version: int, start: dt.date, end: dt.date, enc: Encoders,
                  rank: int = 0, world_size: int = 1, labels_as_of: Optional[dt.datetime] = None) -> ModelBatch:
    """Rows of ``ds`` in [start, end] at ``version``: this rank's shard, checked against the encoders
    and, when ``labels_as_of`` is given, against the instant the examples' labels were taken at.

    Each rank reads only its own files (every world_size-th data file of the window, in path
    order); with fewer files than ranks, each reads the window and keeps every world_size-th
    row.  Rows are in (ds, order_id) order.
    """
    import deltalake
    import pyarrow as pa
    import pyarrow.compute as pc
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
    parts = [f.to_table(schema=dataset.schema, filter=flt) for f in mine]
    tbl = pa.concat_tables(parts) if parts else dataset.schema.empty_table()
    if tbl.num_rows == 0:
        raise DataError(f"examples table {path!r} (version {version}) has no rows for {start}..{end}: "
                        f"run jobs/build_examples.py for these dates")
    versions = set(pc.unique(tbl.column("encoder_version")).to_pylist())
    if versions != {enc.version}:
        raise DataError(f"examples for {start}..{end} were encoded with {sorted(versions)}, "
                        f"but the encoders are {enc.version}: re-run jobs/build_examples.py")
    if labels_as_of is not None:
        found = {v for v in pc.unique(tbl.column("labels_as_of")).to_pylist()}
        if found != {labels_as_of}:
            raise DataError(f"examples for {start}..{end} carry labels known before "
                            f"{sorted(str(v) for v in found)}, not before {labels_as_of}: re-run "
                            f"jobs/build_examples.py --run-date {(labels_as_of - dt.timedelta(days=1)).date()} "
                            f"--window training")
    tbl = tbl.sort_by([("ds", "ascending"), ("order_id", "ascending")])
    if world_size > 1 and not by_file:
        tbl = tbl.take(pa.array(np.arange(rank, tbl.num_rows, world_size)))
    return examples_to_batch(tbl, enc)


@dataclass
class TensorData:
    """One shard as tensors on ``device`` (or pinned host memory)."""

    tensors: dict[str, torch.Tensor]
    n: int
    device: torch.device
    on_device: bool

    @classmethod
    def from_batch(cls, batch: ModelBatch, device: torch.device, max_device_bytes: int = 8 << 30) -> "TensorData":
        if batch.label is None:
            raise DataError("examples have no label column")
        t: dict[str, torch.Tensor] = {}
        for f in TENSOR_FIELDS:
            arr = getattr(batch, f)
            dtype = np.bool_ if f.endswith("_mask") else np.int64 if (f.endswith("_cat") or f == "label") \
                else np.float32
            # writable and contiguous: Arrow-backed arrays are read-only views, which torch warns about
            t[f] = torch.from_numpy(np.require(arr, dtype=dtype, requirements=["C", "W"]))
        size = sum(x.numel() * x.element_size() for x in t.values())
        on_device = device.type != "cpu" and size <= max_device_bytes
        if on_device:
            t = {k: v.to(device) for k, v in t.items()}
        elif device.type == "cuda":
            t = {k: v.pin_memory() for k, v in t.items()}
        return cls(tensors=t, n=len(batch), device=device, on_device=on_device)

    def labels(self) -> np.ndarray:
        return self.tensors["label"].cpu().numpy()

    def batches(self, batch_size: int, seed: int, epoch: int, start_step: int = 0, shuffle: bool = True,
                drop_last: bool = False, steps: Optional[int] = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of the epoch's permutation, from ``start_step`` on (at most ``steps`` batches)."""
        if shuffle:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        n_steps = self.n // batch_size if drop_last else -(-self.n // batch_size)
        if steps is not None:
            n_steps = min(n_steps, steps)
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
        if not self.on_device and self.device.type == "cuda":
            out = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in out.items()}
        return out

    def num_steps(self, batch_size: int, drop_last: bool = False) -> int:
        return self.n // batch_size if drop_last else -(-self.n // batch_size)


def model_inputs(b: dict[str, torch.Tensor], model_type: str) -> tuple[torch.Tensor, ...]:
    """Positional inputs of the classifier ``model_type`` from a batch dict."""
    c = (b["c_cat"], b["c_num"], b["c_dt"], b["c_mask"])
    if model_type == "single_seq":
        return (*c, b["eng"])
    return (*c, b["k_cat"], b["k_num"], b["k_dt"], b["k_mask"], b["eng"])


__all__ = ["DataError", "TensorData", "model_inputs", "read_examples", "table_version", "TENSOR_FIELDS"]
