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
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tsa_lib.models.config import ModelPreset

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


def _grouped_mm_traces(dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm``'s meta kernel (what ``torch.compile`` traces with) takes ``dtype``.

    torch 2.11's takes bf16 only, though its CPU kernel also runs fp32 and fp16 eagerly.
    """
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        torch._grouped_mm(torch.empty(8, 8, dtype=dtype, device="meta"),
                          torch.empty(2, 8, 8, dtype=dtype, device="meta"),
                          offs=torch.empty(2, dtype=torch.int32, device="meta"))
    except RuntimeError:
        return False
    return True


#: the dtypes at which ``torch._grouped_mm`` runs and compiles, found once at import
_GROUPED_MM_DTYPES = frozenset(dt for dt in (torch.float32, torch.bfloat16, torch.float16)
                               if _grouped_mm_traces(dt))


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
    over the chosen experts when ``top_k > 1``).  Expert ``e`` is
    ``Linear(D, H) -> ReLU -> Dropout -> Linear(H, D)`` with its weights stored
    stacked over the experts: ``w1 [E, D, H]``, ``b1 [E, H]``, ``w2 [E, H, D]``,
    ``b2 [E, D]`` (``x @ w1[e] + b1[e]``, i.e. the transposes of ``nn.Linear``
    weights).  State dicts in the per-expert layout
    (``experts.{e}.0.weight [H, D]``, ``.0.bias``, ``.3.weight [D, H]``, ``.3.bias``)
    are converted when loaded.

    Dispatch has no Python loop over experts, no host sync and no data-dependent
    shape, so the whole module compiles into one graph (``fullgraph=True``):
    the ``T * k`` assignments are sorted by expert (stable; padded tokens'
    assignments go to a bucket ``E`` after the real experts), the rows are
    gathered in that order and run through the experts (less ``b2``), each
    output times its routing weight is written back to its assignment slot (the
    inverse permutation), a token's ``k`` slots are summed, and ``b2`` is added
    per token as ``W @ b2`` (``W [T, E]``: the routing weights, 0 for padded
    tokens).  Two kernels compute the experts on the sorted rows (``dispatch``):

    - ``"grouped_mm"``: ``torch._grouped_mm`` with per-expert end offsets (a device
      tensor, ``int32``), so each row is multiplied by its own expert's weights
      only; ``b1`` is a row of the first GEMM's weights, against a column of ones
      appended to the input.  Rows past the last offset (padded tokens) are not
      written by the kernel and hold uninitialised memory (NaN or inf included),
      as do their input gradients in the backward; ``torch.where`` (not a product
      with 0) on the gathered input and on the expert output keeps them out of
      the result and of every gradient (the GEMMs themselves skip those rows).
      Each operand needs a 16-byte aligned data pointer, one of its two inner
      dimensions contiguous and the other's stride a multiple of 16 bytes
      (``D + 1``, ``H`` and ``D`` rounded up to multiples of 4 in fp32, of 8 in
      bf16/fp16, here): the input columns and the weights are padded with zeros
      inside the computation, which adds exact zeros only.
    - ``"bmm"``: ``torch.baddbmm`` over a zero-filled ``[E, T, .]`` buffer in which
      each expert's rows are packed at the front (capacity ``T``: top-k experts
      are distinct, so an expert receives a token at most once; no token is
      dropped).  It computes ``E * T`` rows instead of ``k * T``; it is the path
      where ``torch._grouped_mm`` is absent or would not run natively.
    - ``"auto"`` (default): ``"grouped_mm"`` where ``grouped_mm_is_native`` says
      so, else ``"bmm"``.  An empty input always takes ``"bmm"``.

    Under autocast the experts run at the autocast dtype (weights and biases are
    cast to it; ``torch._grouped_mm`` is not covered by autocast); the weighted
    sum over a token's experts is done at fp32 (the router weights' dtype) and
    the output has the dtype of ``x``.

    Every expert parameter gets a gradient on every backward: an expert that
    received no token gets an all-zero slice of ``w1``/``b1``/``w2``/``b2``
    (not None), so DDP needs no ``find_unused_parameters``.

    ``forward(x, token_mask=None) -> (out, aux_loss)``: ``x`` ``[..., D]``;
    ``token_mask`` (bool, ``x.shape[:-1]``, True = real token) excludes padded
    tokens from routing, compute and the loss (their output is 0).
    ``aux_loss = E * sum_e f_e * P_e`` (Switch Transformer), with ``f_e`` the share
    of assignments that went to expert ``e`` and ``P_e`` the mean router
    probability of ``e`` over valid tokens; it is 1.0 under perfect balance.
    """

    DISPATCH_MODES: ClassVar[tuple[str, ...]] = ("auto", "grouped_mm", "bmm")
    #: ``torch._grouped_mm``: each operand's data pointer and the stride of its
    #: non-contiguous inner dimension must be multiples of this many bytes.
    GROUPED_MM_ALIGN_BYTES: ClassVar[int] = 16

    def __init__(self, dim: int, num_experts: int, hidden_dim: int, top_k: int = 2,
                 dropout: float = 0.0, dispatch: str = "auto") -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k: must be in [1, num_experts={num_experts}], got {top_k!r}")
        if dispatch not in self.DISPATCH_MODES:
            raise ValueError(f"dispatch: must be one of {self.DISPATCH_MODES}, got {dispatch!r}")
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.num_experts = num_experts
        self.top_k = top_k
        self.dispatch = dispatch
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.b2 = nn.Parameter(torch.empty(num_experts, dim))
        self.dropout = nn.Dropout(dropout)
        # experts first, then the gate: the random stream of per-expert nn.Linear layers then the gate
        self.reset_expert_parameters()
        self.gate = nn.Linear(dim, num_experts)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden_dim={self.hidden_dim}, num_experts={self.num_experts}, "
                f"top_k={self.top_k}, dispatch={self.dispatch!r}")

    @torch.no_grad()
    def reset_expert_parameters(self) -> None:
        """Initialise every expert as ``nn.Linear(D, H)`` then ``nn.Linear(H, D)`` would be.

        Weights and biases uniform in ``+-1/sqrt(fan_in)``, drawn expert by expert in
        ``nn.Linear``'s order and ``[out, in]`` layout, so the values equal those of
        per-expert ``nn.Linear`` layers created from the same random state.
        """
        for e in range(self.num_experts):
            for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
                fan_in, fan_out = w.shape[1], w.shape[2]
                weight = torch.empty(fan_out, fan_in, dtype=w.dtype, device=w.device)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                w[e].copy_(weight.T)
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(b[e], -bound, bound)

    @staticmethod
    def grouped_mm_is_native(device: torch.device, dtype: torch.dtype) -> bool:
        """Whether ``torch._grouped_mm`` runs on ``device`` at ``dtype`` without a host sync.

        CPU: fp32, bf16 and fp16 (a loop over the groups inside the kernel, the
        offsets already on the host), where ``torch.compile`` can trace it at that
        dtype too (torch 2.11: bf16 only).  CUDA: bf16 on compute capability 9.x (the
        grouped GEMM kernel); other CUDA dtypes go through a fallback that copies the
        offsets to the host, and on compute capability 10.x groups without rows are
        reported to get non-zero weight gradients (pytorch/pytorch#172439).
        """
        if dtype not in _GROUPED_MM_DTYPES:
            return False
        if device.type == "cpu":
            return True
        if device.type == "cuda":
            return dtype == torch.bfloat16 and torch.cuda.get_device_properties(device).major == 9
        return False

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
            # padded tokens go to an extra bucket n_exp that is never computed, with weight 0
            flat_e = torch.where(valid[:, None].expand(-1, k).reshape(-1), flat_e, n_exp)
            top_w = torch.where(valid[:, None], top_w, 0.0)
        # (not bincount: its output shape is data-dependent)
        counts = torch.zeros(n_exp + 1, dtype=torch.long, device=x.device).scatter_add_(
            0, flat_e, torch.ones_like(flat_e))
        out = self._mix(x2, flat_e, top_idx, top_w, counts, masked=valid is not None)

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

    def _mix(self, x2: Tensor, flat_e: Tensor, top_idx: Tensor, top_w: Tensor, counts: Tensor,
             masked: bool) -> Tensor:
        """``sum_j top_w[t, j] * expert_{top_idx[t, j]}(x2[t])`` for every token ``t`` ``[T, D]``.

        ``flat_e [T*k]`` is ``top_idx`` flattened with padded tokens' assignments set
        to ``E``, ``counts [E+1]`` the assignments per bucket; ``top_w`` is 0 for
        padded tokens; ``masked`` says whether bucket ``E`` may be non-empty.  The
        experts' second bias is added per token as ``W @ b2`` with ``W [T, E]``
        the routing weights, instead of per assignment.
        """
        n_tok, d = x2.shape
        k, n_exp = self.top_k, self.num_experts
        ac = autocast_dtype(x2.device.type)
        dt = ac if ac is not None else x2.dtype
        order = torch.argsort(flat_e, stable=True)
        e_sorted = flat_e[order]
        tok_sorted = order // k
        real = (e_sorted < n_exp)[:, None] if masked else None
        xd = x2.to(dt)
        if self._use_grouped_mm(x2.device, dt, n_tok):
            y = self._experts_grouped_mm(xd, tok_sorted, counts, real)
        else:
            y = self._experts_bmm(xd, tok_sorted, e_sorted, counts)
        if real is not None:
            # before the product: its backward multiplies by y, where garbage * 0 can be NaN
            y = torch.where(real, y, 0.0)
        contrib = y * top_w.reshape(-1)[order, None]
        # back to assignment order (order is a permutation: inverse by a scatter), then a token's k slots summed
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.shape[0], device=order.device))
        out = contrib.index_select(0, inverse).view(n_tok, k, d).sum(1)
        routing = torch.zeros(n_tok, n_exp, dtype=top_w.dtype, device=top_w.device).scatter(1, top_idx, top_w)
        return (out + routing @ self.b2.to(top_w.dtype)).to(x2.dtype)

    def _use_grouped_mm(self, device: torch.device, dtype: torch.dtype, n_tok: int) -> bool:
        if self.dispatch == "bmm" or n_tok == 0:
            return False
        if self.dispatch == "grouped_mm":
            if not hasattr(torch, "_grouped_mm"):
                raise RuntimeError(f"dispatch: 'grouped_mm' needs torch._grouped_mm, which torch "
                                   f"{torch.__version__} does not have; use 'auto' or 'bmm'")
            return True
        return self.grouped_mm_is_native(device, dtype)

    def _experts_grouped_mm(self, xd: Tensor, tok_sorted: Tensor, counts: Tensor,
                            real: Optional[Tensor]) -> Tensor:
        """Expert outputs less ``b2``, ``[T*k, D]``, for the expert-sorted rows: two ``torch._grouped_mm``.

        ``b1`` rides in the first GEMM (a column of ones appended to the input, ``b1``
        as an extra row of ``w1``); the inner dimensions are zero-padded to the
        alignment.  ``real [T*k, 1]`` (None when no row is padded) marks the rows of
        real experts; the other rows come out with garbage, which the caller
        masks.  Only the GEMMs read those rows' hidden activations and their
        gradients, and they skip them; the mask on the gathered input (with
        autograd on) keeps the first GEMM's garbage input gradient out of ``x``'s
        gradient.
        """
        n_exp, d, h = self.num_experts, self.dim, self.hidden_dim
        n_tok, dt = xd.shape[0], xd.dtype
        align = self.GROUPED_MM_ALIGN_BYTES // xd.element_size()
        d_in, h_p, d_out = (-(-n // align) * align for n in (d + 1, h, d))
        tail = xd.new_zeros(d_in - d)
        tail[0] = 1.0
        xa = torch.cat([xd, tail.expand(n_tok, -1)], dim=1)  # [T, d_in]: x, 1, zeros
        w1 = torch.cat([self.w1.to(dt), self.b1.to(dt)[:, None, :]], dim=1)  # [E, D+1, H]
        w1 = F.pad(w1, (0, h_p - h, 0, d_in - d - 1))
        w2 = F.pad(self.w2.to(dt), (0, d_out - d, 0, h_p - h))
        offs = counts[:n_exp].cumsum(0).to(torch.int32)
        xs = xa.index_select(0, tok_sorted)
        if real is not None and torch.is_grad_enabled():
            xs = torch.where(real, xs, 0.0)
        hid = self.dropout(F.relu(torch._grouped_mm(xs, w1, offs=offs)))
        y = torch._grouped_mm(hid, w2, offs=offs)
        return y[:, :d] if d_out != d else y

    def _experts_bmm(self, xd: Tensor, tok_sorted: Tensor, e_sorted: Tensor, counts: Tensor) -> Tensor:
        """Expert outputs less ``b2``, ``[T*k, D]``, for the expert-sorted rows: ``torch.bmm`` on ``[E, T, .]``.

        Row ``i`` (expert ``e``) goes to slot ``i - start_e`` of expert ``e``'s block
        of ``T`` rows; the blocks' unused slots hold zeros and are never read back.
        Rows of the padded bucket (up to ``T * k``) land after the ``E`` blocks and
        are not computed; their output is an arbitrary row, which the caller masks.
        """
        n_exp, d = self.num_experts, self.dim
        n_tok, n_rows, dt = xd.shape[0], e_sorted.shape[0], xd.dtype
        starts = counts.cumsum(0) - counts
        slot = torch.arange(n_rows, device=xd.device) - starts[e_sorted]
        dest = e_sorted * n_tok + slot
        buf = xd.new_zeros((n_exp * n_tok + n_rows, d)).index_copy(0, dest, xd.index_select(0, tok_sorted))
        xb = buf[:n_exp * n_tok].view(n_exp, n_tok, d)
        hid = self.dropout(F.relu(torch.baddbmm(self.b1.to(dt)[:, None, :], xb, self.w1.to(dt))))
        yb = torch.bmm(hid, self.w2.to(dt)).reshape(n_exp * n_tok, d)
        return yb.index_select(0, dest.clamp(max=max(n_exp * n_tok - 1, 0)))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        self._stack_expert_list(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _stack_expert_list(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Replace per-expert keys ``experts.{e}.{0,3}.{weight,bias}`` by the stacked ``w1/b1/w2/b2``.

        Converts only when all four tensors of all ``num_experts`` experts are
        there and no other ``experts.*`` key is; otherwise the keys are left as they
        are and ``load_state_dict`` reports them.
        """
        old = prefix + "experts."
        found = [key for key in state_dict if key.startswith(old)]
        if not found:
            return
        parts = {"w1": ("0.weight", True), "b1": ("0.bias", False),
                 "w2": ("3.weight", True), "b2": ("3.bias", False)}
        wanted = {f"{old}{e}.{suffix}" for e in range(self.num_experts) for suffix, _ in parts.values()}
        if set(found) != wanted:
            return
        for name, (suffix, transpose) in parts.items():
            ts = [state_dict.pop(f"{old}{e}.{suffix}") for e in range(self.num_experts)]
            state_dict[prefix + name] = torch.stack([t.T if transpose else t for t in ts])


# --------------------------------------------------------------------------- attention layers


class _AttentionBase(nn.Module):
    """Shared parts of the post-norm and pre-norm layers: fused QKV projection + SDPA, and a
    feed-forward or an MoE, sized by the config (``dim_embed``, ``num_heads``, ``dim_feedforward``,
    ``dropout``, ``use_moe``, ``num_experts``, ``moe_top_k``)."""

    def __init__(self, cfg: ModelPreset) -> None:
        super().__init__()
        d = cfg.dim_embed
        self.dim_embed = d
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.dropout_p = cfg.dropout
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.use_moe = cfg.use_moe
        self.ff: nn.Module = (
            MixtureOfExperts(d, cfg.num_experts, cfg.dim_feedforward, cfg.moe_top_k, cfg.dropout)
            if cfg.use_moe else FeedForward(d, cfg.dim_feedforward, cfg.dropout)
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
            x, w_i, aux = checkpoint(
                layer, x, key_padding_mask, nw, qi, use_reentrant=False)
        else:
            x, w_i, aux = layer(x, key_padding_mask, nw, qi)
        if aux is not None:
            auxes.append(aux)
        if last and w_i is not None:
            weights = w_i[:, 0]
    return x[:, 0], weights, auxes
