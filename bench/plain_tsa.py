"""A plain implementation of the TSA classifiers: the yardstick the GPU benchmarks divide by.

The same architecture as ``tsa_lib.models`` (order attention over one or two sequences with
time encoding, positions and a dummy token; pre-norm feature attention with FM; MLP branch;
gate; head; optional top-k MoE feed-forwards), written the straightforward way:
``nn.MultiheadAttention`` layers computing every token in every layer, an ``nn.Embedding``
lookup followed by a Linear over the flattened ``[B, L, F, D]`` embeddings, materialized
numerical embeddings, a Python loop over the experts with ``index_add_``, and the loss
outside the model.  ``bench_model.py --impl plain`` and ``bench_training.py --impl plain``
time it beside the suite's model in the same process, so every run reports the ratio.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsa_lib.models.config import ModelConfig


class PlainMoE(nn.Module):
    """Top-k mixture of feed-forward experts: a loop over the experts, ``index_add_`` back."""

    def __init__(self, d: int, h: int, n_experts: int, k: int, dropout: float) -> None:
        super().__init__()
        self.k = k
        self.gate = nn.Linear(d, n_experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout), nn.Linear(h, d))
                                     for _ in range(n_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate(x2).float(), -1)
        top_p, top_i = probs.topk(self.k, -1)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros_like(x2)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.where(top_i == e)
            if tok.numel():
                out.index_add_(0, tok, (expert(x2[tok]) * top_p[tok, slot, None]).to(out.dtype))
        frac = torch.stack([(top_i == e).float().mean() for e in range(len(self.experts))]) / self.k
        aux = len(self.experts) * (frac * probs.mean(0)).sum()
        return out.view(shape), aux


class PlainLayer(nn.Module):
    """``nn.MultiheadAttention`` + feed-forward or MoE, post-norm or pre-norm."""

    def __init__(self, cfg: ModelConfig, pre_norm: bool) -> None:
        super().__init__()
        d = cfg.dim_embed
        self.pre_norm = pre_norm
        self.attn = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.moe = PlainMoE(d, cfg.dim_feedforward, cfg.num_experts, cfg.moe_top_k, cfg.dropout) if cfg.use_moe \
            else None
        self.ff = None if cfg.use_moe else nn.Sequential(nn.Linear(d, cfg.dim_feedforward), nn.ReLU(),
                                                         nn.Dropout(cfg.dropout), nn.Linear(cfg.dim_feedforward, d))

    def _ff(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.moe is not None:
            return self.moe(x)
        assert self.ff is not None
        return self.ff(x), x.new_zeros(())

    def forward(self, x: Tensor, pad: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if self.pre_norm:
            h = self.norm1(x)
            x = x + self.drop(self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
            y, aux = self._ff(self.norm2(x))
            return x + self.drop(y), aux
        x = self.norm1(x + self.drop(self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]))
        y, aux = self._ff(x)
        return self.norm2(x + self.drop(y)), aux


class PlainSequence(nn.Module):
    """Order attention over one left-padded sequence, read out through a dummy token."""

    def __init__(self, cfg: ModelConfig, emb: nn.Embedding) -> None:
        super().__init__()
        d = cfg.dim_embed
        self.emb = (emb,)
        self.num_w = nn.Parameter(torch.randn(cfg.n_num_features, d))
        self.num_b = nn.Parameter(torch.zeros(cfg.n_num_features, d))
        self.agg_cat = nn.Sequential(nn.Linear(cfg.n_cat_features * d, d), nn.ReLU(), nn.Linear(d, d))
        self.agg_num = nn.Sequential(nn.Linear(cfg.n_num_features * d, d), nn.ReLU(), nn.Linear(d, d))
        self.t_w = nn.Parameter(torch.randn(d))
        self.t_b = nn.Parameter(torch.rand(d) * 2 * math.pi)
        self.position = nn.Parameter(torch.randn(cfg.seq_len, d))
        self.dummy = nn.Parameter(torch.rand(1, 1, d))
        self.layers = nn.ModuleList(PlainLayer(cfg, pre_norm=False) for _ in range(cfg.n_layers_order))

    def forward(self, x_cat: Tensor, x_num: Tensor, t: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        e = self.emb[0](x_cat.long()).flatten(-2)
        n = (x_num.unsqueeze(-1) * self.num_w + self.num_b).flatten(-2)
        z = torch.log1p(t.clamp_min(0)).unsqueeze(-1) * self.t_w + self.t_b
        time = torch.cat([z[..., :1], torch.sin(z[..., 1:])], -1)
        h = self.agg_cat(e) + self.agg_num(n) + time + self.position
        x = torch.cat([self.dummy.expand(h.shape[0], 1, -1), h], 1)
        pad = torch.cat([mask.new_zeros(mask.shape[0], 1), ~mask], 1)
        aux = x.new_zeros(())
        for layer in self.layers:
            x, a = layer(x, pad)
            aux = aux + a
        return x[:, 0], aux


class PlainTSA(nn.Module):
    """The classifier ``cfg`` describes (single- or two-sequence), same inputs as ``tsa_lib.models``:
    ``forward(*sequences, x_engineered) -> (logits, aux_loss)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.dim_embed
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, d, padding_idx=0)
        self.seqs = nn.ModuleList(PlainSequence(cfg, self.emb) for _ in range(2 if cfg.model_type == "two_seq" else 1))
        self.gate = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, 2)) if len(self.seqs) == 2 else None
        self.col = nn.Parameter(torch.randn(cfg.n_cat_features, d) * 0.1)
        self.f_w = nn.Parameter(torch.randn(cfg.n_num_features + cfg.n_engineered, d))
        self.f_b = nn.Parameter(torch.zeros(cfg.n_num_features + cfg.n_engineered, d))
        self.f_dummy = nn.Parameter(torch.rand(1, 1, d))
        self.f_layers = nn.ModuleList(PlainLayer(cfg, pre_norm=True) for _ in range(cfg.n_layers_feature))
        self.f_norm, self.fm_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_num_features + cfg.n_engineered, cfg.dim_mlp), nn.ReLU(),
                                 nn.Dropout(cfg.dropout), nn.Linear(cfg.dim_mlp, d), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4 * d, d), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(d, cfg.n_classes))

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        eng = inputs[-1]
        seqs = [inputs[i:i + 4] for i in range(0, len(inputs) - 1, 4)]
        reps, aux = [], eng.new_zeros(())
        for module, s in zip(self.seqs, seqs):
            r, a = module(*s)
            reps.append(r)
            aux = aux + a
        if self.gate is not None:
            present = torch.stack([seqs[0][3].any(-1), seqs[1][3].any(-1)], -1)
            g = torch.softmax(self.gate(torch.cat(reps, -1)).float().masked_fill(~present, -1e9), -1).to(reps[0].dtype)
            x_order = g[:, :1] * reps[0] + g[:, 1:] * reps[1]
        else:
            x_order = reps[0]
        cat_cur, num_cur = seqs[0][0][:, -1], seqs[0][1][:, -1]
        vals = torch.cat([num_cur, eng], -1)
        tokens = torch.cat([self.emb(cat_cur.long()) + self.col, vals.unsqueeze(-1) * self.f_w + self.f_b], 1)
        x = torch.cat([self.f_dummy.expand(tokens.shape[0], 1, -1), tokens], 1)
        for layer in self.f_layers:
            x, a = layer(x, None)
            aux = aux + a
        s = tokens.float().sum(1)
        fm = 0.5 * (s * s - (tokens.float() ** 2).sum(1))
        ens = torch.cat([x_order, self.f_norm(x[:, 0]), self.fm_norm(fm.to(x.dtype)), self.mlp(vals)], -1)
        return self.head(ens), aux * self.cfg.moe_aux_weight

    def training_loss(self, logits: Tensor, labels: Tensor, weight: Tensor, aux: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels, weight=weight) + aux
