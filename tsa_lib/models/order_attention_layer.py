"""Order attention: one entity's sequence of orders -> one vector (the dummy token's output).

Processing flow (seed design, "Order Attention Layer"):

1. embedding: categorical values through the model's shared table, numerical
   values through per-feature embeddings ``v * W_f (+ b_f)`` (or, with
   ``num_embedding="periodic"``, ``PeriodicEmbedding``: not in the seed design);
2. feature aggregation: ``FeatureAggregationMLP`` for the categorical and for the
   numerical embeddings of each order, summed into one token per order;
3. sequence formation: the token gets the time encoding of its age
   (``TimeEncode(log1p(days))``) and a learnable position embedding (position
   counted from the target order, which is always last: sequences are
   left-padded), and a learnable dummy token is put in front;
4. a stack of post-norm temporal attention layers with the key padding mask
   (the dummy is always a valid key, so no query row is ever fully masked);
5. the dummy token's output of the last layer is the order representation.

Padded positions never influence a valid token: they are masked as keys,
excluded from MoE routing, and everything else is per-token.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tsa_lib.models.config import ModelConfig
from tsa_lib.models.layers import (
    AttentionLayer,
    FeatureAggregationMLP,
    NumericalEmbedding,
    TimeEncode,
    numerical_embedding,
    run_layer_stack,
)

log = logging.getLogger(__name__)

__all__ = ["OrderAttentionLayer"]


class OrderAttentionLayer(nn.Module):
    """Temporal attention over a left-padded order sequence, read out through a dummy token.

    ``embedding`` is the classifier's categorical table, shared by all categorical
    features, both sequences and the feature attention.  It is *referenced*, not
    registered as a sub-module, so a classifier's ``state_dict`` holds it once
    (``safetensors`` refuses shared tensors); the owner of the table must
    optimize it.

    ``forward(x_cat [B, L, n_cat] int, x_num [B, L, n_num] float, time_seq [B, L]
    float (days before the target order), mask [B, L] bool (True = real),
    emb_weight=None, need_weights=False) -> (rep [B, D], attn [B, L] | None,
    aux_losses list)``; ``attn`` is the head-averaged attention of the dummy token
    over the L positions in the last layer (the remainder of the row is the dummy
    attending to itself).
    """

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        d = cfg.dim_embed
        if embedding.embedding_dim != d:
            raise ValueError(f"embedding: dim {embedding.embedding_dim} != dim_embed {d}")
        self._shared = (embedding,)  # a reference, deliberately not a registered sub-module
        self.n_cat_features = cfg.n_cat_features
        self.n_num_features = cfg.n_num_features
        self.seq_len = cfg.seq_len
        self.dim_embed = d
        self.use_time = cfg.use_time
        self.grad_checkpointing = cfg.grad_checkpointing
        self.num_embedding = numerical_embedding(cfg.num_embedding, cfg.n_num_features, d, bias=cfg.num_bias)
        self.feature_aggregation_cat = FeatureAggregationMLP(cfg.n_cat_features, d)
        self.feature_aggregation_num = FeatureAggregationMLP(cfg.n_num_features, d)
        self.time_encoder = TimeEncode(d) if cfg.use_time else None
        self.position = nn.Parameter(torch.randn(cfg.seq_len, d)) if cfg.use_position else None
        self.dummy_order = nn.Parameter(torch.rand(1, d))
        self.layer_stack = nn.ModuleList(AttentionLayer(cfg) for _ in range(cfg.n_layers_order))

    @property
    def embedding(self) -> nn.Embedding:
        return self._shared[0]

    def order_tokens(self, x_cat: Tensor, x_num: Tensor, time_seq: Tensor, emb_weight: Tensor) -> Tensor:
        """Per-order tokens with the dummy in front: ``[B, 1 + L, D]``."""
        b = x_cat.shape[0]
        h = self.feature_aggregation_cat(F.embedding(x_cat, emb_weight, padding_idx=0))
        if isinstance(self.num_embedding, NumericalEmbedding):   # linear: fused, no [B, L, F, D] tensor
            h = h + self.feature_aggregation_num.forward_numerical(x_num, self.num_embedding)
        else:
            h = h + self.feature_aggregation_num(self.num_embedding(x_num))
        if self.time_encoder is not None:
            h = h + self.time_encoder(torch.log1p(time_seq.float().clamp_min(0.0)))
        if self.position is not None:
            h = h + self.position
        return torch.cat([self.dummy_order.to(h.dtype).expand(b, 1, -1), h], dim=1)

    def forward(
        self,
        x_cat: Tensor,
        x_num: Tensor,
        time_seq: Tensor,
        mask: Tensor,
        emb_weight: Optional[Tensor] = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Optional[Tensor], list[Tensor]]:
        if emb_weight is None:
            emb_weight = self.embedding.weight
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        if ckpt:
            x = checkpoint(
                self.order_tokens, x_cat, x_num, time_seq, emb_weight, use_reentrant=False)
        else:
            x = self.order_tokens(x_cat, x_num, time_seq, emb_weight)
        key_mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        rep, weights, auxes = run_layer_stack(self.layer_stack, x, key_mask, need_weights, ckpt)
        attn = weights[:, 1:] if weights is not None else None
        return rep, attn, auxes
