"""Feature attention: the target order's features plus the engineered features as tokens.

Processing flow (seed design, "Feature Attention Layer"):

1. last-order extraction: the classifier passes the target (current) order's
   categorical and numerical values (zeros when the sequence is empty);
2. feature tokens: each categorical value through the shared table plus a
   learnable column embedding (so "unknown" in column A differs from "unknown"
   in column B), each numerical and each engineered value through its own
   embedding ``v * W_f (+ b_f)``;
3. a learnable dummy (CLS) token in front, a stack of pre-norm attention layers
   (no padding: every token is real), a final LayerNorm of the CLS output;
4. with ``use_fm`` the factorization-machine second-order term over the feature
   tokens (``compute_fm_parallel``, LayerNorm-ed) is concatenated:
   the output is ``[B, D]`` or ``[B, 2D]`` (``out_dim``).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsa_lib.models.config import ModelConfig
from tsa_lib.models.layers import (
    AttentionLayerPreNorm,
    numerical_embedding,
    compute_fm_parallel,
    run_layer_stack,
)

log = logging.getLogger(__name__)

__all__ = ["FeatureAttentionLayer"]


class FeatureAttentionLayer(nn.Module):
    """Pre-norm attention over the target order's feature tokens and the engineered features.

    ``forward(x_cat [B, n_cat] int, x_num [B, n_num], x_engineered [B, n_eng],
    emb_weight=None, need_weights=False) -> (rep [B, out_dim], attn [B, n_tokens] |
    None, aux_losses)``; tokens are ordered categorical, numerical, engineered.
    ``embedding`` is referenced, not registered (see ``OrderAttentionLayer``).
    """

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        d = cfg.dim_embed
        if embedding.embedding_dim != d:
            raise ValueError(f"embedding: dim {embedding.embedding_dim} != dim_embed {d}")
        self._shared = (embedding,)
        self.n_cat_features = cfg.n_cat_features
        self.n_num_features = cfg.n_num_features
        self.n_engineered = cfg.n_engineered
        self.n_tokens = cfg.n_cat_features + cfg.n_num_features + cfg.n_engineered
        self.dim_embed = d
        self.use_fm = cfg.use_fm
        self.grad_checkpointing = cfg.grad_checkpointing
        self.cat_column_embedding = nn.Parameter(torch.randn(cfg.n_cat_features, d) * 0.1)
        self.num_embedding = numerical_embedding(cfg.num_embedding, cfg.n_num_features, d, bias=cfg.num_bias)
        self.embedding_engineered = (
            numerical_embedding(cfg.num_embedding, cfg.n_engineered, d, bias=cfg.num_bias)
            if cfg.n_engineered > 0 else None
        )
        self.dummy_feature = nn.Parameter(torch.rand(1, d))
        self.layer_stack_feature = nn.ModuleList(AttentionLayerPreNorm(cfg) for _ in range(cfg.n_layers_feature))
        self.final_norm = nn.LayerNorm(d)
        self.fm_norm = nn.LayerNorm(d) if cfg.use_fm else None
        self.out_dim = d * (2 if cfg.use_fm else 1)

    @property
    def embedding(self) -> nn.Embedding:
        return self._shared[0]

    def feature_tokens(self, x_cat: Tensor, x_num: Tensor, x_engineered: Tensor, emb_weight: Tensor) -> Tensor:
        """``[B, n_tokens, D]``: categorical, numerical, engineered feature tokens."""
        parts = [
            F.embedding(x_cat, emb_weight, padding_idx=0) + self.cat_column_embedding,
            self.num_embedding(x_num),
        ]
        if self.embedding_engineered is not None:
            parts.append(self.embedding_engineered(x_engineered))
        return torch.cat(parts, dim=1)

    def forward(
        self,
        x_cat: Tensor,
        x_num: Tensor,
        x_engineered: Tensor,
        emb_weight: Optional[Tensor] = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Optional[Tensor], list[Tensor]]:
        if emb_weight is None:
            emb_weight = self.embedding.weight
        tokens = self.feature_tokens(x_cat, x_num, x_engineered, emb_weight)
        b = tokens.shape[0]
        x = torch.cat([self.dummy_feature.to(tokens.dtype).expand(b, 1, -1), tokens], dim=1)
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        cls, weights, auxes = run_layer_stack(self.layer_stack_feature, x, None, need_weights, ckpt)
        rep = self.final_norm(cls)
        if self.fm_norm is not None:
            rep = torch.cat([rep, self.fm_norm(compute_fm_parallel(tokens))], dim=-1)
        attn = weights[:, 1:] if weights is not None else None
        return rep, attn, auxes
