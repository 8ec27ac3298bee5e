"""Single-sequence TSA classifier (``OrderFeatureAttentionClassifier``) and the shared classifier parts.

Input contract (produced by the data side, ``tsa_lib.features``):

- ``x_cat`` LongTensor ``[B, L, n_cat]``: 0 = padding, 1 = unknown, values < vocab_size
  (one index space shared by all columns);
- ``x_num`` FloatTensor ``[B, L, n_num]``;
- ``time_seq`` FloatTensor ``[B, L]``: days from each element to the target order
  (>= 0, 0 for the target itself); the model applies ``log1p``;
- ``mask`` BoolTensor ``[B, L]``: True = real element.  Sequences are LEFT-padded:
  the target order is at position L-1 (``mask[:, -1]`` True unless the whole
  sequence is empty), its history before it, padding first;
- ``x_engineered`` FloatTensor ``[B, n_engineered]``.

Output: ``(scores [B, n_classes] logits, ensemble_embedding [B, ensemble_dim])``
(softmax of the scores gives probabilities; class 1 = fraud), plus a details
dict with ``return_details=True``.  After every forward ``model.aux_loss`` holds
the MoE load-balancing loss, already scaled by ``moe_aux_weight`` (a 0-dim zero
tensor without MoE): the trainer adds it to the classification loss.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsa_lib.models.config import ModelConfig
from tsa_lib.models.feature_attention_layer import FeatureAttentionLayer
from tsa_lib.models.layers import embedding_weight_for
from tsa_lib.models.order_attention_layer import OrderAttentionLayer

log = logging.getLogger(__name__)

__all__ = ["OrderFeatureAttentionClassifier", "TSAClassifierBase"]

Output = Union[tuple[Tensor, Tensor], tuple[Tensor, Tensor, dict[str, Any]]]


class TSAClassifierBase(nn.Module):
    """Parts shared by both classifiers: the categorical table, feature attention, MLP branch, head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.dim_embed
        self.embedding = nn.Embedding(cfg.vocab_size, d, padding_idx=0)
        self.feature_attention = FeatureAttentionLayer(cfg, self.embedding)
        self.mlp: Optional[nn.Module] = None
        if cfg.use_mlp:
            self.mlp = nn.Sequential(
                nn.Linear(cfg.n_num_features + cfg.n_engineered, cfg.dim_mlp), nn.ReLU(),
                nn.Dropout(cfg.dropout), nn.Linear(cfg.dim_mlp, d), nn.ReLU(),
            )
        self.ensemble_dim = d + self.feature_attention.out_dim + (d if cfg.use_mlp else 0)
        self.clf = nn.Sequential(
            nn.Linear(self.ensemble_dim, d), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(d, cfg.n_classes),
        )
        self.aux_loss: Tensor = torch.zeros(())

    def _order_attention(self) -> OrderAttentionLayer:
        return OrderAttentionLayer(self.config, self.embedding)

    # ------------------------------------------------------------------ input checks (shapes only: no sync)

    def _check_sequence(self, suffix: str, x_cat: Tensor, x_num: Tensor, time_seq: Tensor, mask: Tensor) -> int:
        cfg = self.config
        b = x_cat.shape[0] if x_cat.dim() > 0 else -1
        expect = {
            f"x_cat{suffix}": (x_cat, [b, cfg.seq_len, cfg.n_cat_features]),
            f"x_num{suffix}": (x_num, [b, cfg.seq_len, cfg.n_num_features]),
            f"time{suffix}" if suffix else "time_seq": (time_seq, [b, cfg.seq_len]),
            f"mask{suffix}": (mask, [b, cfg.seq_len]),
        }
        for name, (t, shape) in expect.items():
            if list(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape} (B, seq_len, features), got {list(t.shape)}")
        if x_cat.is_floating_point() or x_cat.is_complex() or x_cat.dtype == torch.bool:
            raise ValueError(f"x_cat{suffix}: expected an integer tensor, got {x_cat.dtype}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask{suffix}: expected a bool tensor, got {mask.dtype}")
        return b

    def _check_engineered(self, x_engineered: Tensor, b: int) -> None:
        shape = [b, self.config.n_engineered]
        if list(x_engineered.shape) != shape:
            raise ValueError(f"x_engineered: expected shape {shape}, got {list(x_engineered.shape)}")

    # ------------------------------------------------------------------ shared forward parts

    def _emb_weight(self, n_lookups: int) -> Tensor:
        return embedding_weight_for(self.embedding.weight, n_lookups)

    def _head(self, x_order: Tensor, x_feature: Tensor, num_cur: Tensor, x_engineered: Tensor
              ) -> tuple[Tensor, Tensor]:
        parts = [x_order, x_feature]
        if self.mlp is not None:
            parts.append(self.mlp(torch.cat([num_cur, x_engineered], dim=-1)))
        ensemble = torch.cat(parts, dim=-1)
        return self.clf(ensemble), ensemble

    # ------------------------------------------------------------------ training hooks (shared with MemberAverage)

    def training_loss(self, scores: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
        """Weighted cross-entropy of this forward's ``scores`` plus the auxiliary (MoE) loss."""
        return F.cross_entropy(scores.float(), labels, weight=weight) + self.aux_loss

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups whose gradient norms are clipped separately: one, the whole model."""
        return [list(self.parameters())]

    def _set_aux(self, auxes: list[Tensor], device: torch.device) -> Tensor:
        if auxes:
            aux = torch.stack([a.float() for a in auxes]).mean() * self.config.moe_aux_weight
        else:
            aux = torch.zeros((), device=device)
        self.aux_loss = aux
        return aux


class OrderFeatureAttentionClassifier(TSAClassifierBase):
    """Single-sequence TSA model: order attention + feature attention (+ MLP branch) -> classifier.

    ``forward(x_cat, x_num, time_seq, mask, x_engineered, return_details=False)``
    returns ``(scores, ensemble)`` or ``(scores, ensemble, details)`` with details
    ``{"attn": [B, L] last-layer attention of the dummy token over the sequence
    positions, "feature_attn": [B, n_cat + n_num + n_eng] the feature attention's
    CLS row, "aux_loss": 0-dim}``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.order_attention = self._order_attention()

    def forward(self, x_cat: Tensor, x_num: Tensor, time_seq: Tensor, mask: Tensor, x_engineered: Tensor,
                return_details: bool = False) -> Output:
        b = self._check_sequence("", x_cat, x_num, time_seq, mask)
        self._check_engineered(x_engineered, b)
        emb_weight = self._emb_weight(x_cat.numel())
        x_order, attn, aux_o = self.order_attention(x_cat, x_num, time_seq, mask, emb_weight, return_details)

        has_cur = mask[:, -1:]  # [B, 1]; False only for an empty sequence
        cat_cur = x_cat[:, -1].masked_fill(~has_cur, 0)
        num_cur = x_num[:, -1].masked_fill(~has_cur, 0.0)
        x_feature, fattn, aux_f = self.feature_attention(cat_cur, num_cur, x_engineered, emb_weight, return_details)

        scores, ensemble = self._head(x_order, x_feature, num_cur, x_engineered)
        aux = self._set_aux(aux_o + aux_f, scores.device)
        if return_details:
            return scores, ensemble, {"attn": attn, "feature_attn": fattn, "aux_loss": aux}
        return scores, ensemble
