"""Scoring a batch of encoded examples with a loaded model: shared by the Spark job and direct calls.

``predict`` takes numpy model inputs (``ModelBatch``) and returns fraud
probabilities plus the explanations the model gives: gate weights of the two
sequences and the most-attended past orders of each sequence.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch

from tsa_lib.errors import ArtifactError
from tsa_lib.features.tensorize import ModelBatch
from tsa_lib.training.artifact import LoadedModel, load_artifact

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str], LoadedModel] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Predictions:
    score: np.ndarray                    # [B] probability of fraud
    gate: Optional[np.ndarray]           # [B, 2] customer, card weights (two-sequence model)
    attn_customer: np.ndarray            # [B, L] dummy-token attention over the customer sequence
    attn_card: Optional[np.ndarray]      # [B, L]


def cached_model(path: str, version: str, device: Optional[str] = None, threads: int = 1) -> LoadedModel:
    """The model at ``path``, loaded once per Python process (a Spark worker) and kept."""
    key = (path, version)
    with _LOCK:
        if key not in _CACHE:
            if threads > 0:
                torch.set_num_threads(threads)
            dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
            loaded = load_artifact(path, device=dev)
            if loaded.version != version:
                raise ArtifactError(f"model at {path!r} is version {loaded.version}, expected {version}")
            _CACHE[key] = loaded
            log.info("worker %d loaded model %s %s on %s", os.getpid(), loaded.name, version, dev)
        return _CACHE[key]


def _batches(loaded: LoadedModel, mb: ModelBatch, batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """The model's positional inputs for ``mb``, ``batch_size`` rows at a time, on the model's device."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    dev = next(loaded.model.parameters()).device
    fields = ("c_cat", "c_num", "c_dt", "c_mask") + (("k_cat", "k_num", "k_dt", "k_mask")
                                                      if loaded.config.model_type == "two_seq" else ()) + ("eng",)
    dtypes = {"cat": torch.int32, "num": torch.float32, "dt": torch.float32, "mask": torch.bool, "eng": torch.float32}
    for s in range(0, len(mb), batch_size):
        yield tuple(torch.from_numpy(np.require(getattr(mb, f)[s:s + batch_size], requirements=["C", "W"]))
                    .to(dev, dtypes[f.split("_")[-1]]) for f in fields)


def predict_scores(loaded: LoadedModel, mb: ModelBatch, batch_size: int = 1024) -> np.ndarray:
    """Probabilities only (no explanations: the fused attention path) for every row of ``mb``."""
    scores = []
    with torch.inference_mode():
        for inputs in _batches(loaded, mb, batch_size):
            logits, _ = loaded.model(*inputs)
            scores.append(torch.softmax(logits.float(), -1)[:, 1].cpu().numpy())
    return np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)


def predict(loaded: LoadedModel, mb: ModelBatch, batch_size: int = 1024) -> Predictions:
    """Probabilities and explanations for every row of ``mb``, in batches of ``batch_size``."""
    two = loaded.config.model_type == "two_seq"
    scores, gates, ac, ak = [], [], [], []
    with torch.inference_mode():
        for inputs in _batches(loaded, mb, batch_size):
            logits, _, det = loaded.model(*inputs, return_details=True)
            if two:
                gates.append(det["gate"].float().cpu().numpy())
                ac.append(det["attn_cid"].float().cpu().numpy())
                ak.append(det["attn_ccid"].float().cpu().numpy())
            else:
                ac.append(det["attn"].float().cpu().numpy())
            scores.append(torch.softmax(logits.float(), -1)[:, 1].cpu().numpy())
    length = mb.c_mask.shape[1] if len(mb) else 0
    empty = np.zeros((0, length), np.float32)
    return Predictions(
        score=np.concatenate(scores).astype(np.float64) if scores else np.zeros(0),
        gate=(np.concatenate(gates) if gates else np.zeros((0, 2), np.float32)) if two else None,
        attn_customer=np.concatenate(ac) if ac else empty,
        attn_card=(np.concatenate(ak) if ak else empty) if two else None,
    )


def top_attended(attn: np.ndarray, mask: np.ndarray, hist_ids: np.ndarray, k: int
                 ) -> tuple["pa.ListArray", "pa.ListArray"]:
    """Per row, the ``k`` past orders (not the target, not padding) with the highest attention,
    as Arrow list arrays of order ids and weights (vectorized; rows may hold fewer than k)."""
    import pyarrow as pa

    a = np.where(mask, attn, -np.inf).astype(np.float64)
    if a.shape[1]:
        a[:, -1] = -np.inf                               # the target itself is not a past order
    order = np.argsort(-a, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(a, order, axis=1)
    ids = np.take_along_axis(hist_ids, order, axis=1)
    ok = np.isfinite(w)
    offsets = pa.array(np.concatenate([[0], np.cumsum(ok.sum(axis=1))]).astype(np.int32))
    return (pa.ListArray.from_arrays(offsets, pa.array(ids[ok].astype(str), pa.string())),
            pa.ListArray.from_arrays(offsets, pa.array(w[ok].astype(np.float32), pa.float32())))
