"""Building blocks of the TSA model: time encoding, attention layers, MoE, FM, feature aggregation.

Conventions used throughout the package:

- a *key padding mask* is a BoolTensor ``[B, S]`` with **True = real element**
  (the data contract's ``mask``), which is also what
  ``F.scaled_dot_product_attention`` takes as a boolean ``attn_mask``
  (True = takes part), so it is passed as a broadcast view ``[B, 1, 1, S]``
  without inversion or materialization;
- attention layers return ``(x, attn_weights | None, aux_loss | None)``;
  ``attn_weights`` is computed (explicitly, softmax(QK^T/sqrt(d)) with the mask,
  averaged over heads) only when asked for; the fast path is SDPA;
- ``query_index=i`` makes a layer compute its output for token ``i`` only (keys
  and values still come from every token).  The classifiers read one token (a
  learnable dummy/CLS token) out of the last layer of each stack, so the last
  layer's query, output projection and feed-forward run on one token per sample
  instead of ``S``: the result is identical, with far fewer bytes moved.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = [
    "TimeEncode",
    "FeedForward",
    "MixtureOfExperts",
    "AttentionLayer",
    "AttentionLayerPreNorm",
    "FeatureAggregationMLP",
    "NumericalEmbedding",
    "PeriodicEmbedding",
    "numerical_embedding",
    "compute_fm_parallel",
    "attention_with_weights",
    "run_layer_stack",
    "autocast_dtype",
    "embedding_weight_for",
]


# --------------------------------------------------------------------------- helpers


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype active for ``device_type``, or None when autocast is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def embedding_weight_for(weight: Tensor, n_lookups: int) -> Tensor:
    """The table to gather categorical embeddings from.

    Under autocast an ``nn.Embedding`` gathers fp32 rows and the next Linear casts
    the gathered ``[N, F, D]`` tensor to bf16/fp16: one write and two reads of the
    largest activation at fp32.  When the table has fewer rows than the number of
    lookups it is cheaper to cast the table once and gather low-precision rows
    (the gradient is cast back to the fp32 parameter, as autocast does for Linear
    weights).  The classifiers call this once per forward and share the result.
    """
    dt = autocast_dtype(weight.device.type)
    if dt is not None and weight.dtype != dt and weight.shape[0] <= n_lookups:
        return weight.to(dt)
    return weight


def compute_fm_parallel(feature_embedding: Tensor) -> Tensor:
    """Factorization-machine second-order interactions over the feature axis (-2).

    ``[..., n, D] -> [..., D]``: ``0.5 * ((sum_i e_i)^2 - sum_i e_i^2)``, which is
    ``sum_{i<j} e_i * e_j`` (element-wise); its sum over D is the sum of pairwise
    dot products.  Computed in at least fp32.
    """
    x = feature_embedding
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    summed = x.sum(dim=-2)
    squared_sum = (x * x).sum(dim=-2)
    return 0.5 * (summed * summed - squared_sum)


def attention_with_weights(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Explicit attention (the explanation path): returns ``(out, weights)``.

    ``q/k/v``: ``[B, H, S_q|S, dh]``; ``attn_mask``: broadcastable to ``[B, H, S_q, S]``,
    bool (True = attend) or float (added to the scores, -inf = masked), as for SDPA.
    ``weights``: softmax probabilities averaged over heads, ``[B, S_q, S]`` (fp32, before
    dropout).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)).float() * scale
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask.float()
    probs = torch.softmax(scores, dim=-1)
    p = F.dropout(probs, dropout_p) if dropout_p > 0.0 else probs
    out = torch.matmul(p.to(v.dtype), v)
    return out, probs.mean(dim=1)


# --------------------------------------------------------------------------- time encoding


class TimeEncode(nn.Module):
    """Learnable time encoding (Time2Vec): one linear term plus ``time_dim - 1`` periodic terms.

    ``out[..., 0] = w_0 t + b_0``; ``out[..., i] = sin(w_i t + b_i)`` for i >= 1.
    The OrderAttentionLayer feeds it ``log1p(days)``.
    """

    def __init__(self, time_dim: int) -> None:
        super().__init__()
        if time_dim < 1:
            raise ValueError(f"time_dim: must be >= 1, got {time_dim!r}")
        self.time_dim = time_dim
        self.weight = nn.Parameter(torch.empty((time_dim, 1)))
        self.emb_tbl_bias = nn.Parameter(torch.empty(time_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Linear term: identity on log1p(days).  Periodic terms: frequencies spread
        # geometrically over [0.2, 60] rad per log-day (from ~a month down to ~an hour
        # near t = 0), random phases.
        self.weight[0, 0] = 1.0
        self.emb_tbl_bias[0] = 0.0
        n = self.time_dim - 1
        if n > 0:
            freqs = torch.logspace(math.log10(0.2), math.log10(60.0), n)
            self.weight[1:, 0] = freqs
            self.emb_tbl_bias[1:].uniform_(0.0, 2.0 * math.pi)

    def forward(self, tt: Tensor) -> Tensor:
        """``tt``: ``[...]`` -> ``[..., time_dim]`` (a broadcast multiply, not a K=1 GEMM)."""
        z = tt.unsqueeze(-1) * self.weight[:, 0] + self.emb_tbl_bias
        return torch.cat([z[..., :1], torch.sin(z[..., 1:])], dim=-1)


# --------------------------------------------------------------------------- feed-forward / MoE


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class MixtureOfExperts(nn.Module):
    """Sparse top-k mixture of feed-forward experts with a Switch load-balancing loss.

    Each (valid) token is routed to its ``top_k`` experts by a linear router;
    the expert outputs are combined with the router probabilities (renormalised
    over the chosen experts when ``top_k > 1``).  Only the selected experts run on
    a token: assignments are sorted by expert, each expert gets the gathered
    rows of its tokens, and the weighted outputs are ``index_add``-ed back.

    Every expert is called on every forward, with zero rows when it received no
    token: its parameters then get zero (not None) gradients, so DDP needs no
    ``find_unused_parameters``.  The dispatch costs one host sync per call (the
    per-expert counts) and runs eagerly under ``torch.compile`` (the router and
    the loss are compiled; see ``_dispatch``).

    ``forward(x, token_mask=None) -> (out, aux_loss)``: ``x`` ``[..., D]``;
    ``token_mask`` (bool, ``x.shape[:-1]``, True = real token) excludes padded
    tokens from routing, compute and the loss (their output is 0).
    ``aux_loss = E * sum_e f_e * P_e`` (Switch Transformer), with ``f_e`` the share
    of assignments that went to expert ``e`` and ``P_e`` the mean router
    probability of ``e`` over valid tokens; it is 1.0 under perfect balance.
    """

    def __init__(self, dim: int, num_experts: int, hidden_dim: int, top_k: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k: must be in [1, num_experts={num_experts}], got {top_k!r}")
        self.dim = dim
        self.num_experts = num_experts
        self.top_k = top_k
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                          nn.Linear(hidden_dim, dim))
            for _ in range(num_experts)
        )
        self.gate = nn.Linear(dim, num_experts)

    def route(self, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router for flat tokens ``[T, D]`` -> ``(probs [T, E] fp32, top_idx [T, k], top_w [T, k])``."""
        probs = torch.softmax(self.gate(x2).float(), dim=-1)
        top_p, top_idx = probs.topk(self.top_k, dim=-1)
        top_w = top_p / top_p.sum(dim=-1, keepdim=True) if self.top_k > 1 else top_p
        return probs, top_idx, top_w

    def forward(self, x: Tensor, token_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        n_tok = x2.shape[0]
        k, n_exp = self.top_k, self.num_experts
        probs, top_idx, top_w = self.route(x2)

        flat_e = top_idx.reshape(-1)  # [T*k]; assignment a belongs to token a // k
        valid: Optional[Tensor] = None
        if token_mask is not None:
            valid = token_mask.reshape(-1)
            # padded tokens go to an extra bucket n_exp that is never computed
            flat_e = torch.where(valid[:, None].expand(-1, k).reshape(-1), flat_e, n_exp)
        # (not bincount: its output shape is data-dependent, which torch.compile cannot trace)
        counts = torch.zeros(n_exp + 1, dtype=torch.long, device=x.device).scatter_add_(
            0, flat_e, torch.ones_like(flat_e))
        out = self._dispatch(x2, flat_e, top_w.reshape(-1), counts)

        if valid is not None:
            m = valid.to(probs.dtype)
            n_valid = m.sum().clamp_min(1.0)
            p_mean = (probs * m[:, None]).sum(0) / n_valid
            frac = counts[:n_exp].to(probs.dtype) / (n_valid * k)
        else:
            p_mean = probs.sum(0) / max(n_tok, 1)
            frac = counts[:n_exp].to(probs.dtype) / (max(n_tok, 1) * k)
        aux = n_exp * (frac * p_mean).sum()
        return out.view(shape), aux

    @torch.compiler.disable
    def _dispatch(self, x2: Tensor, flat_e: Tensor, flat_w: Tensor, counts: Tensor) -> Tensor:
        """Gather each expert's tokens, run it, ``index_add`` the weighted outputs back.

        Runs eagerly under ``torch.compile`` (one graph break per MoE layer): the
        per-expert token counts are data-dependent shapes, and tracing them would
        recompile on every new routing.
        """
        order = torch.argsort(flat_e, stable=True)
        counts_list = counts.tolist()  # the one host sync
        tok_sorted = order // self.top_k
        w_sorted = flat_w[order]
        out = x2.new_zeros(x2.shape)
        start = 0
        for e, expert in enumerate(self.experts):
            c = counts_list[e]
            idx = tok_sorted[start:start + c]
            y = expert(x2[idx])
            out.index_add_(0, idx, (y * w_sorted[start:start + c, None]).to(out.dtype))
            start += c
        return out


# --------------------------------------------------------------------------- attention layers


class _AttentionBase(nn.Module):
    """Shared parts of the post-norm and pre-norm layers: fused QKV projection + SDPA."""

    def __init__(self, dim_embed: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1,
                 use_moe: bool = False, num_experts: int = 5, moe_top_k: int = 2) -> None:
        super().__init__()
        if dim_embed % num_heads:
            raise ValueError(f"dim_embed: {dim_embed} is not divisible by num_heads: {num_heads}")
        self.dim_embed = dim_embed
        self.num_heads = num_heads
        self.head_dim = dim_embed // num_heads
        self.dropout_p = dropout
        self.in_proj = nn.Linear(dim_embed, 3 * dim_embed)
        self.out_proj = nn.Linear(dim_embed, dim_embed)
        self.norm1 = nn.LayerNorm(dim_embed)
        self.norm2 = nn.LayerNorm(dim_embed)
        self.dropout = nn.Dropout(dropout)
        self.use_moe = use_moe
        self.ff: nn.Module = (
            MixtureOfExperts(dim_embed, num_experts, dim_feedforward, moe_top_k, dropout)
            if use_moe else FeedForward(dim_embed, dim_feedforward, dropout)
        )

    def _ff(self, x: Tensor, token_mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        if self.use_moe:
            return self.ff(x, token_mask)
        return self.ff(x), None

    def _attend(self, h: Tensor, key_padding_mask: Optional[Tensor], need_weights: bool,
                query_index: Optional[int]) -> tuple[Tensor, Optional[Tensor]]:
        b, s, d = h.shape
        nh, dh = self.num_heads, self.head_dim
        w, bias = self.in_proj.weight, self.in_proj.bias
        if query_index is None:
            # one GEMM for Q, K, V; q/k/v are strided views [B, H, S, dh] (no copies)
            q, k, v = self.in_proj(h).view(b, s, 3, nh, dh).permute(2, 0, 3, 1, 4).unbind(0)
            s_q = s
        else:
            hq = h[:, query_index:query_index + 1]
            q = F.linear(hq, w[:d], bias[:d]).view(b, 1, nh, dh).transpose(1, 2)
            k, v = F.linear(h, w[d:], bias[d:]).view(b, s, 2, nh, dh).permute(2, 0, 3, 1, 4).unbind(0)
            s_q = 1
        mask4 = key_padding_mask[:, None, None, :] if key_padding_mask is not None else None
        p = self.dropout_p if self.training else 0.0
        if need_weights:
            out, weights = attention_with_weights(q, k, v, mask4, p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask4, dropout_p=p)
            weights = None
        out = out.transpose(1, 2).reshape(b, s_q, d)
        return self.out_proj(out), weights

    @staticmethod
    def _select(x: Tensor, mask: Optional[Tensor], query_index: Optional[int]
                ) -> tuple[Tensor, Optional[Tensor]]:
        if query_index is None:
            return x, mask
        sl = slice(query_index, query_index + 1)
        return x[:, sl], (mask[:, sl] if mask is not None else None)


class AttentionLayer(_AttentionBase):
    """Temporal multi-head self-attention layer, post-norm (as ``nn.TransformerEncoderLayer``).

    The order attention feeds it order tokens that already carry their time
    encoding (and position), so attention scores and values are time-aware.
    ``x = LN(x + Attn(x)); x = LN(x + FF(x))`` with FF a feed-forward or an MoE.
    """

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None, need_weights: bool = False,
                query_index: Optional[int] = None) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """``x`` ``[B, S, D]``; ``key_padding_mask`` ``[B, S]`` (True = real) ->
        ``(out [B, S or 1, D], weights [B, S or 1, S] | None, aux | None)``."""
        attn, weights = self._attend(x, key_padding_mask, need_weights, query_index)
        res, tok_mask = self._select(x, key_padding_mask, query_index)
        x = self.norm1(res + self.dropout(attn))
        y, aux = self._ff(x, tok_mask)
        x = self.norm2(x + self.dropout(y))
        return x, weights, aux


class AttentionLayerPreNorm(_AttentionBase):
    """Pre-norm multi-head self-attention layer: ``x = x + Attn(LN(x)); x = x + FF(LN(x))``."""

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None, need_weights: bool = False,
                query_index: Optional[int] = None) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        attn, weights = self._attend(self.norm1(x), key_padding_mask, need_weights, query_index)
        res, tok_mask = self._select(x, key_padding_mask, query_index)
        x = res + self.dropout(attn)
        y, aux = self._ff(self.norm2(x), tok_mask)
        x = x + self.dropout(y)
        return x, weights, aux


# --------------------------------------------------------------------------- embeddings / aggregation


class NumericalEmbedding(nn.Module):
    """Numerical feature embeddings: feature ``f`` with value ``v`` -> ``v * W_f (+ b_f)``."""

    def __init__(self, n_features: int, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.n_features = n_features
        self.weight = nn.Parameter(torch.randn(n_features, dim))
        self.bias = nn.Parameter(torch.zeros(n_features, dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """``[..., n] -> [..., n, D]``."""
        out = x.unsqueeze(-1) * self.weight
        return out + self.bias if self.bias is not None else out


class PeriodicEmbedding(nn.Module):
    """Periodic numerical embeddings (not in the seed; Gorishniy et al. 2022, "PLR"):
    feature ``f`` with value ``v`` -> ``ReLU([sin(2 pi c_f v), cos(2 pi c_f v)] @ W_f + b_f)``.

    ``c_f`` (``n_frequencies`` per feature) start as ``N(0, sigma)`` and are learned.  A linear
    embedding ``v * W_f`` gives the next layer one direction per feature, so a sharp threshold
    ("amount ratio above 1.4", "under an hour") has to be built from a few ReLUs; periodic
    features give it many, which is what lets neural models approach trees on such inputs.
    """

    def __init__(self, n_features: int, dim: int, n_frequencies: int = 16, sigma: float = 4.0,
                 bias: bool = True) -> None:
        super().__init__()
        if n_frequencies < 1:
            raise ValueError(f"n_frequencies: must be >= 1, got {n_frequencies!r}")
        if not sigma > 0:
            raise ValueError(f"sigma: must be > 0, got {sigma!r}")
        self.n_features = n_features
        self.freq = nn.Parameter(torch.randn(n_features, n_frequencies) * sigma)
        bound = 1.0 / math.sqrt(2 * n_frequencies)
        self.weight = nn.Parameter(torch.empty(n_features, 2 * n_frequencies, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_features, dim).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """``[..., n] -> [..., n, D]``."""
        z = (2.0 * math.pi) * x.unsqueeze(-1) * self.freq.to(x.dtype)          # [..., n, K]
        p = torch.cat([torch.sin(z), torch.cos(z)], dim=-1)                      # [..., n, 2K]
        out = torch.einsum("...fk,fkd->...fd", p, self.weight.to(p.dtype))
        return F.relu(out + self.bias.to(p.dtype) if self.bias is not None else out)


def numerical_embedding(kind: str, n_features: int, dim: int, bias: bool = True) -> nn.Module:
    """``NumericalEmbedding`` (``kind="linear"``, the seed's) or ``PeriodicEmbedding`` (``"periodic"``)."""
    if kind == "linear":
        return NumericalEmbedding(n_features, dim, bias=bias)
    if kind == "periodic":
        return PeriodicEmbedding(n_features, dim, bias=bias)
    raise ValueError(f"num_embedding: must be 'linear' or 'periodic', got {kind!r}")


class FeatureAggregationMLP(nn.Module):
    """Reduces the per-feature embeddings of an order to one vector: ``[..., F, D] -> [..., D_out]``.

    An MLP over the flattened feature embeddings: ``fc2(ReLU(fc1(flatten(E))))``.
    The flattened view of a contiguous ``[N, F, D]`` gather is free, so the first
    layer is one plain GEMM that reads the embeddings once (mixing over the
    feature axis instead would force a transposed copy of the largest activation).

    ``forward_numerical(values, emb)`` gives the same result as
    ``forward(emb(values))`` for a ``NumericalEmbedding`` without materializing
    ``[..., F, D]``: ``fc1(flatten(v * W + b)) = v @ M^T + c`` with
    ``M[h, f] = <fc1_w[h, f, :], W_f>`` and ``c = fc1_b + sum_f fc1_w[:, f, :] b_f``.
    """

    def __init__(self, n_features: int, dim_embed: int, dim_out: Optional[int] = None,
                 hidden: Optional[int] = None) -> None:
        super().__init__()
        dim_out = dim_out or dim_embed
        hidden = hidden or dim_out
        self.n_features = n_features
        self.dim_embed = dim_embed
        self.fc1 = nn.Linear(n_features * dim_embed, hidden)
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, emb: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(emb.flatten(-2))))

    def forward_numerical(self, values: Tensor, emb: NumericalEmbedding) -> Tensor:
        w1 = self.fc1.weight.view(-1, self.n_features, self.dim_embed)  # [H, F, D]
        m = torch.einsum("hfd,fd->hf", w1, emb.weight)
        c = self.fc1.bias
        if emb.bias is not None:
            c = c + torch.einsum("hfd,fd->h", w1, emb.bias)
        return self.fc2(F.relu(F.linear(values, m, c)))


def run_layer_stack(
    layers: nn.ModuleList,
    x: Tensor,
    key_padding_mask: Optional[Tensor],
    need_weights: bool,
    checkpointing: bool,
) -> tuple[Tensor, Optional[Tensor], list[Tensor]]:
    """Run an attention stack and read token 0 (the dummy/CLS token) out of its last layer.

    The last layer computes that token only (``query_index=0``).  Returns
    ``(token 0's output [B, D], its last-layer attention weights [B, S] | None,
    MoE aux losses)``.  With ``checkpointing`` each layer is recomputed in the
    backward pass (``torch.utils.checkpoint``, ``use_reentrant=False``).
    """
    auxes: list[Tensor] = []
    weights: Optional[Tensor] = None
    n = len(layers)
    for i, layer in enumerate(layers):
        last = i == n - 1
        qi = 0 if last else None
        nw = need_weights and last
        if checkpointing:
            x, w_i, aux = torch.utils.checkpoint.checkpoint(
                layer, x, key_padding_mask, nw, qi, use_reentrant=False)
        else:
            x, w_i, aux = layer(x, key_padding_mask, nw, qi)
        if aux is not None:
            auxes.append(aux)
        if last and w_i is not None:
            weights = w_i[:, 0]
    return x[:, 0], weights, auxes
