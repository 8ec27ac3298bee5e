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

    ``forward(x_cat [B, n_cat] long, x_num [B, n_num], x_engineered [B, n_eng],
    emb_weight=None, need_weights=False) -> (rep [B, out_dim], attn [B, n_tokens] |
    None, aux_losses)``; tokens are ordered categorical, numerical, engineered.
    ``embedding`` is referenced, not registered (see ``OrderAttentionLayer``).
    """

    def __init__(
        self,
        n_cat_features: int,
        n_num_features: int,
        n_engineered: int,
        dim_embed: int,
        num_heads: int,
        dim_feedforward: int,
        n_layers: int,
        embedding: nn.Embedding,
        dropout: float = 0.1,
        num_bias: bool = True,
        use_fm: bool = True,
        use_moe: bool = False,
        num_experts: int = 5,
        moe_top_k: int = 2,
        grad_checkpointing: bool = False,
        num_embedding: str = "linear",
    ) -> None:
        super().__init__()
        if embedding.embedding_dim != dim_embed:
            raise ValueError(f"embedding: dim {embedding.embedding_dim} != dim_embed {dim_embed}")
        self._shared = (embedding,)
        self.n_cat_features = n_cat_features
        self.n_num_features = n_num_features
        self.n_engineered = n_engineered
        self.n_tokens = n_cat_features + n_num_features + n_engineered
        self.dim_embed = dim_embed
        self.use_fm = use_fm
        self.grad_checkpointing = grad_checkpointing
        self.cat_column_embedding = nn.Parameter(torch.randn(n_cat_features, dim_embed) * 0.1)
        self.num_embedding = numerical_embedding(num_embedding, n_num_features, dim_embed, bias=num_bias)
        self.embedding_engineered = (
            numerical_embedding(num_embedding, n_engineered, dim_embed, bias=num_bias) if n_engineered > 0 else None
        )
        self.dummy_feature = nn.Parameter(torch.rand(1, dim_embed))
        self.layer_stack_feature = nn.ModuleList(
            AttentionLayerPreNorm(dim_embed, num_heads, dim_feedforward, dropout, use_moe, num_experts,
                                  moe_top_k)
            for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(dim_embed)
        self.fm_norm = nn.LayerNorm(dim_embed) if use_fm else None
        self.out_dim = dim_embed * (2 if use_fm else 1)

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
