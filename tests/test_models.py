"""Tests of the TSA model library (``tsa_lib.models``): no Spark, CPU only, tiny preset.

Every test is exact where the property is exact (padding invariance, empty
sequences, gates, MoE routing counts) and uses tolerances only where the
arithmetic is reordered (SDPA vs explicit attention, bf16, permutations).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tsa_lib.config_base import ConfigError, to_dict
from tsa_lib.models import (
    AttentionLayer,
    AttentionLayerPreNorm,
    FeatureAggregationMLP,
    MemberAverage,
    MixtureOfExperts,
    ModelConfig,
    NumericalEmbedding,
    OrderFeatureAttentionClassifier,
    TimeEncode,
    TwoSeqMoEOrderFeatureAttentionClassifier,
    available_presets,
    build_model,
    compute_fm_parallel,
    DataSizes,
    ModelPreset,
    load_model_preset,
    masked_gate_softmax,
    model_config,
    model_config_from_dict,
)



# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread() -> Any:
    """Tiny tensors: one intra-op thread is as fast, and does not collapse (40x) when
    other jobs (Spark tests) load the cores and the OpenMP threads spin-wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



needs_grouped_mm = pytest.mark.skipif(not hasattr(torch, "_grouped_mm"),
                                      reason=f"torch {torch.__version__} has no torch._grouped_mm")
DISPATCHES = [pytest.param("grouped_mm", marks=needs_grouped_mm), "bmm"]
TINY_SIZES = DataSizes(n_cat_features=4, n_num_features=3, n_engineered=5, vocab_size=50, seq_len=8)


def tiny_config(**changes: Any) -> ModelConfig:
    """The tiny preset on tiny data (4 categorical, 3 numerical, 5 engineered, vocabulary 50, 7 past orders)."""
    return model_config(load_model_preset("tiny").replace(**changes), TINY_SIZES)


@pytest.fixture(scope="module")
def tiny() -> ModelConfig:
    return tiny_config()


def build(cfg: ModelConfig, seed: int = 0, train: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg)
    return model.train(train)


def make_seq(cfg: ModelConfig, b: int, gen: torch.Generator, lengths: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, ...]:
    """One left-padded sequence batch as the data side produces it (zeros at padding)."""
    L = cfg.seq_len
    if lengths is None:
        lengths = torch.randint(1, L + 1, (b,), generator=gen)
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]
    x_cat = torch.randint(2, cfg.vocab_size, (b, L, cfg.n_cat_features), generator=gen)
    x_num = torch.rand(b, L, cfg.n_num_features, generator=gen)
    t = (torch.rand(b, L, generator=gen) * 30).sort(dim=1, descending=True).values
    t[:, -1] = 0.0
    x_cat = x_cat.masked_fill(~mask[..., None], 0)
    x_num = x_num.masked_fill(~mask[..., None], 0.0)
    t = t.masked_fill(~mask, 0.0)
    return x_cat, x_num, t, mask


def make_inputs(cfg: ModelConfig, b: int = 6, seed: int = 0, lengths: torch.Tensor | None = None,
                lengths_ccid: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    seq = make_seq(cfg, b, gen, lengths)
    if cfg.model_type == "two_seq":
        seq = seq + make_seq(cfg, b, gen, lengths_ccid)
    return seq + (torch.randn(b, cfg.n_engineered, generator=gen),)


def scramble_padding(seq: tuple[torch.Tensor, ...], vocab: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random values (incl. huge ones) at the padded positions of (x_cat, x_num, time, mask)."""
    x_cat, x_num, t, mask = seq
    gen = torch.Generator().manual_seed(seed)
    pad = ~mask
    x_cat = torch.where(pad[..., None], torch.randint(0, vocab, x_cat.shape, generator=gen), x_cat)
    x_num = torch.where(pad[..., None], torch.randn(x_num.shape, generator=gen) * 1e3, x_num)
    t = torch.where(pad, torch.rand(t.shape, generator=gen) * 1e4, t)
    return x_cat, x_num, t, mask


def run(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], details: bool = True) -> Any:
    return model(*inputs, return_details=details)


def assert_same_outputs(a: Any, b: Any) -> None:
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])
    for k, v in a[2].items():
        if v is not None:
            assert torch.equal(v, b[2][k]), k


def dense_moe_reference(moe: MixtureOfExperts, x2: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Every expert on every token ``[T, D]`` (from the stacked weights), combined with the
    router's top-k weights; 0 for padded tokens (``valid`` False)."""
    with torch.no_grad():
        hid = torch.relu(torch.einsum("td,edh->teh", x2, moe.w1) + moe.b1)
        dense = torch.einsum("teh,ehd->ted", hid, moe.w2) + moe.b2  # [T, E, D]
        _, top_idx, top_w = moe.route(x2)
        ref = (dense.gather(1, top_idx[..., None].expand(-1, -1, x2.shape[1])) * top_w[..., None]).sum(1)
        return torch.where(valid[:, None], ref, 0.0)


def moe_assignment_counts(moe: MixtureOfExperts, x: torch.Tensor,
                          token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Assignments per expert ``[E]`` that ``moe`` makes for ``x`` (padded tokens excluded)."""
    with torch.no_grad():
        _, top_idx, _ = moe.route(x.reshape(-1, x.shape[-1]))
        if token_mask is not None:
            top_idx = top_idx[token_mask.reshape(-1)]
        return torch.bincount(top_idx.reshape(-1), minlength=moe.num_experts)


class PerExpertLoopMoE(torch.nn.Module):
    """Reference MoE in the per-expert layout: a list of ``Linear -> ReLU -> Dropout -> Linear``
    experts, each applied to the tokens routed to it, outputs summed with the top-k weights."""

    def __init__(self, dim: int, num_experts: int, hidden_dim: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.experts = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(dim, hidden_dim), torch.nn.ReLU(), torch.nn.Dropout(0.0),
                                torch.nn.Linear(hidden_dim, dim))
            for _ in range(num_experts))
        self.gate = torch.nn.Linear(dim, num_experts)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        probs = torch.softmax(self.gate(x2).float(), dim=-1)
        top_p, top_idx = probs.topk(self.top_k, dim=-1)
        top_w = top_p / top_p.sum(dim=-1, keepdim=True) if self.top_k > 1 else top_p
        valid = token_mask.reshape(-1) if token_mask is not None else torch.ones(len(x2), dtype=torch.bool)
        out = torch.zeros_like(x2)
        for e, expert in enumerate(self.experts):
            for j in range(self.top_k):
                sel = (top_idx[:, j] == e) & valid
                out[sel] += top_w[sel, j, None] * expert(x2[sel])
        return out.view(x.shape)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("model_type", ["single_seq", "two_seq"])
@pytest.mark.parametrize("use_moe", [False, True])
@pytest.mark.parametrize("use_mlp", [False, True])
@pytest.mark.parametrize("use_fm", [False, True])
def test_output_shapes(tiny: ModelConfig, model_type: str, use_moe: bool, use_mlp: bool, use_fm: bool) -> None:
    cfg = tiny.replace(model_type=model_type, use_moe=use_moe, use_mlp=use_mlp, use_fm=use_fm)
    model = build(cfg)
    b, d, L = 5, cfg.dim_embed, cfg.seq_len
    scores, ens, det = run(model, make_inputs(cfg, b))
    expected_dim = d + d * (2 if use_fm else 1) + (d if use_mlp else 0)
    assert scores.shape == (b, 2) and scores.dtype == torch.float32
    assert ens.shape == (b, expected_dim) == (b, model.ensemble_dim)
    n_tok = cfg.n_cat_features + cfg.n_num_features + cfg.n_engineered
    assert det["feature_attn"].shape == (b, n_tok)
    if model_type == "single_seq":
        assert isinstance(model, OrderFeatureAttentionClassifier)
        assert det["attn"].shape == (b, L)
    else:
        assert isinstance(model, TwoSeqMoEOrderFeatureAttentionClassifier)
        assert det["attn_cid"].shape == det["attn_ccid"].shape == (b, L)
        assert det["gate"].shape == (b, 2)
    assert det["aux_loss"].shape == () and det["aux_loss"] is model.aux_loss
    if use_moe:
        assert det["aux_loss"].item() > 0
    else:
        assert det["aux_loss"].item() == 0.0
    # without details: exactly two outputs; the fast (SDPA) path agrees with the explicit one
    out2 = run(model, make_inputs(cfg, b), details=False)
    assert len(out2) == 2
    torch.testing.assert_close(out2[0], scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out2[1], ens, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- padding / empty sequences


@pytest.mark.parametrize("model_type", ["single_seq", "two_seq"])
@pytest.mark.parametrize("num_embedding", ["linear", "periodic"])
def test_padding_invariance(tiny: ModelConfig, model_type: str, num_embedding: str) -> None:
    cfg = tiny.replace(model_type=model_type, use_moe=True, n_layers_order=2, n_layers_feature=2,
                       num_embedding=num_embedding)
    model = build(cfg)
    lengths = torch.tensor([1, 3, 8, 5, 2, 0])  # includes an empty sequence (whole row padding)
    inputs = make_inputs(cfg, 6, lengths=lengths, lengths_ccid=torch.tensor([2, 0, 8, 1, 7, 4]))
    ref = run(model, inputs)
    if model_type == "single_seq":
        changed = scramble_padding(inputs[:4], cfg.vocab_size, 1) + inputs[4:]
    else:
        changed = (scramble_padding(inputs[:4], cfg.vocab_size, 1)
                   + scramble_padding(inputs[4:8], cfg.vocab_size, 2) + inputs[8:])
    assert not torch.equal(changed[1], inputs[1])
    out = run(model, changed)
    assert_same_outputs(ref, out)


@settings(max_examples=12, deadline=None)
@given(lengths=st.lists(st.integers(0, 8), min_size=1, max_size=5), data_seed=st.integers(0, 2**16),
       use_moe=st.booleans())
def test_padding_invariance_property(lengths: list[int], data_seed: int, use_moe: bool) -> None:
    cfg = tiny_config(use_moe=use_moe)
    model = build(cfg)
    inputs = make_inputs(cfg, len(lengths), seed=data_seed, lengths=torch.tensor(lengths))
    changed = scramble_padding(inputs[:4], cfg.vocab_size, data_seed + 1) + inputs[4:]
    assert_same_outputs(run(model, inputs), run(model, changed))


def test_empty_history_only_current_order(tiny: ModelConfig) -> None:
    cfg = tiny.replace(n_layers_order=2)
    model = build(cfg)
    b = 4
    inputs = make_inputs(cfg, b, lengths=torch.ones(b, dtype=torch.long))
    scores, ens, det = run(model, inputs)
    assert torch.isfinite(scores).all() and torch.isfinite(ens).all()
    # the dummy attends to the current order (and itself) only: exact zeros on the padding
    assert torch.equal(det["attn"][:, :-1], torch.zeros(b, cfg.seq_len - 1))
    assert (det["attn"][:, -1] > 0).all() and (det["attn"][:, -1] < 1).all()
    # a completely empty sequence is defined too (dummy only; zero current-order features)
    empty = make_inputs(cfg, b, lengths=torch.zeros(b, dtype=torch.long))
    s2, e2, d2 = run(model, empty)
    assert torch.isfinite(s2).all() and torch.equal(d2["attn"], torch.zeros(b, cfg.seq_len))


def test_two_seq_empty_card_sequence_gets_gate_zero(tiny: ModelConfig) -> None:
    cfg = tiny.replace(model_type="two_seq", use_moe=True)
    model = build(cfg)
    b = 5
    zeros = torch.zeros(b, dtype=torch.long)
    inputs = make_inputs(cfg, b, lengths_ccid=zeros)
    scores, ens, det = run(model, inputs)
    assert torch.equal(det["gate"], torch.tensor([[1.0, 0.0]] * b))
    # nothing of the (empty) card sequence matters
    changed = inputs[:4] + scramble_padding(inputs[4:8], cfg.vocab_size, 3) + inputs[8:]
    assert_same_outputs((scores, ens, det), run(model, changed))

    # empty customer sequence: the card sequence gets everything
    inputs = make_inputs(cfg, b, lengths=zeros)
    _, _, det = run(model, inputs)
    assert torch.equal(det["gate"], torch.tensor([[0.0, 1.0]] * b))

    # both empty: defined (gate 0/0, finite scores)
    inputs = make_inputs(cfg, b, lengths=zeros, lengths_ccid=zeros)
    scores, ens, det = run(model, inputs)
    assert torch.equal(det["gate"], torch.zeros(b, 2))
    assert torch.isfinite(scores).all() and torch.isfinite(ens).all()


def test_gate_scores_sum_to_one(tiny: ModelConfig) -> None:
    cfg = tiny.replace(model_type="two_seq")
    model = build(cfg)
    b = 16
    gen = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, cfg.seq_len + 1, (b,), generator=gen)
    lengths_ccid = torch.randint(0, cfg.seq_len + 1, (b,), generator=gen)
    lengths_ccid[lengths == 0] = torch.clamp(lengths_ccid[lengths == 0], min=1)  # at least one present
    _, _, det = run(model, make_inputs(cfg, b, lengths=lengths, lengths_ccid=lengths_ccid))
    g = det["gate"]
    assert torch.allclose(g.sum(-1), torch.ones(b), atol=1e-6)
    assert ((g >= 0) & (g <= 1)).all()
    assert torch.equal(g[:, 0] == 0, lengths == 0) and torch.equal(g[:, 1] == 0, lengths_ccid == 0)


def test_masked_gate_softmax_exact_and_nan_free() -> None:
    logits = torch.tensor([[3.0, -1.0], [0.5, 0.2], [1.0, 2.0], [7.0, 7.0]], requires_grad=True)
    present = torch.tensor([[True, False], [False, True], [False, False], [True, True]])
    g = masked_gate_softmax(logits, present)
    assert torch.equal(g[:3], torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    assert torch.allclose(g[3], torch.tensor([0.5, 0.5]))
    (g * torch.randn_like(g)).sum().backward()
    assert torch.isfinite(logits.grad).all()


# --------------------------------------------------------------------------- order / time sensitivity


def _order_rep(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    d = model.config.dim_embed
    return model(*inputs)[1][:, :d]  # the ensemble starts with the order representation


def _permute_history(inputs: tuple[torch.Tensor, ...], perm: torch.Tensor, with_time: bool) -> tuple:
    x_cat, x_num, t, mask, x_eng = inputs
    full = torch.cat([perm, torch.tensor([len(perm)])])  # the target order stays last
    t2 = t[:, full] if with_time else t
    return x_cat[:, full], x_num[:, full], t2, mask, x_eng


def test_order_attention_is_order_sensitive(tiny: ModelConfig) -> None:
    b, L = 4, tiny.seq_len
    full = torch.full((b,), L)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    base = dict(n_layers_order=2, use_moe=False)

    # time off, positions on: moving history orders around changes the representation
    m = build(tiny.replace(use_time=False, use_position=True, **base))
    inputs = make_inputs(m.config, b, lengths=full)
    ref = _order_rep(m, inputs)
    assert (ref - _order_rep(m, _permute_history(inputs, perm, with_time=False))).abs().max() > 1e-3

    # time on, positions off: orders swap ages -> changes; orders keep their ages -> same set, same output
    m = build(tiny.replace(use_time=True, use_position=False, **base))
    ref = _order_rep(m, inputs)
    assert (ref - _order_rep(m, _permute_history(inputs, perm, with_time=False))).abs().max() > 1e-3
    torch.testing.assert_close(_order_rep(m, _permute_history(inputs, perm, with_time=True)), ref,
                               atol=1e-5, rtol=1e-5)

    # neither: self-attention is a set function (shows the two checks above can fail)
    m = build(tiny.replace(use_time=False, use_position=False, **base))
    ref = _order_rep(m, inputs)
    torch.testing.assert_close(_order_rep(m, _permute_history(inputs, perm, with_time=False)), ref,
                               atol=1e-5, rtol=1e-5)


def test_time_switch(tiny: ModelConfig) -> None:
    inputs = make_inputs(tiny, 4, lengths=torch.full((4,), tiny.seq_len))
    later = inputs[:2] + (inputs[2] * 3.0,) + inputs[3:]
    m_on = build(tiny.replace(use_time=True))
    assert (_order_rep(m_on, inputs) - _order_rep(m_on, later)).abs().max() > 1e-3
    m_off = build(tiny.replace(use_time=False))
    assert m_off.order_attention.time_encoder is None
    assert torch.equal(_order_rep(m_off, inputs), _order_rep(m_off, later))


def test_time_encode_formula() -> None:
    te = TimeEncode(6)
    t = torch.tensor([[0.0, 0.5, 2.0]])
    out = te(t)
    assert out.shape == (1, 3, 6)
    z = t[..., None] * te.weight[:, 0] + te.emb_tbl_bias
    assert torch.equal(out[..., 0], z[..., 0])
    assert torch.equal(out[..., 1:], torch.sin(z[..., 1:]))


# --------------------------------------------------------------------------- gradients / determinism


@pytest.mark.parametrize("model_type, num_embedding", [("single_seq", "linear"), ("two_seq", "periodic")])
def test_gradients_reach_every_parameter(tiny: ModelConfig, model_type: str, num_embedding: str) -> None:
    cfg = tiny.replace(model_type=model_type, use_moe=True, use_mlp=True, use_fm=True, n_layers_order=2,
                       n_layers_feature=2, dropout=0.1, num_embedding=num_embedding)
    model = build(cfg, train=True)
    b = 32
    inputs = make_inputs(cfg, b, seed=1)
    y = torch.randint(0, 2, (b,), generator=torch.Generator().manual_seed(0))
    rows: dict[str, torch.Tensor] = {}  # MoE layer -> assignments per expert in this forward
    for name, mod in model.named_modules():
        if isinstance(mod, MixtureOfExperts):
            mod.register_forward_hook(
                lambda m, args, out, name=name: rows.__setitem__(name, moe_assignment_counts(m, *args)))
    scores, ens = model(*inputs)
    loss = F.cross_entropy(scores, y) + model.aux_loss
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient: {bad}"
    # Every parameter moves, with one documented exception: an expert the router sent no token
    # in this batch gets an all-zero (not None) gradient slice of w1/b1/w2/b2.  That happens in
    # the last layer of a stack, which runs on the B readout tokens only (here 32).
    n_moe_layers = cfg.n_layers_order * (2 if model_type == "two_seq" else 1) + cfg.n_layers_feature
    assert len(rows) == n_moe_layers
    expert_params = {f"{layer}.{p}" for layer in rows for p in ("w1", "b1", "w2", "b2")}
    zero = [n for n, p in model.named_parameters() if n not in expert_params and p.grad.abs().sum() == 0]
    assert not zero, f"all-zero gradient: {zero}"
    for n in sorted(expert_params):
        per_expert = model.get_parameter(n).grad.flatten(1).abs().sum(1)  # [E]
        routed = rows[n.rsplit(".", 1)[0]] > 0
        assert (per_expert[routed] > 0).all(), (n, per_expert, routed)
        assert torch.equal(per_expert[~routed], torch.zeros(int((~routed).sum()))), (n, per_expert, routed)
    unrouted = sorted(layer for layer, r in rows.items() if (r == 0).any())
    last = {f"layer_stack.{cfg.n_layers_order - 1}.ff", f"layer_stack_feature.{cfg.n_layers_feature - 1}.ff"}
    assert all(layer.split(".", 1)[1] in last for layer in unrouted), unrouted
    # the padding row of the shared table never learns
    assert torch.equal(model.embedding.weight.grad[0], torch.zeros(cfg.dim_embed))


@pytest.mark.parametrize("dispatch", DISPATCHES)
def test_unrouted_expert_gets_zero_not_none_gradient(dispatch: str) -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(8, 3, 16, top_k=1, dispatch=dispatch)
    with torch.no_grad():  # route everything to expert 0
        moe.gate.weight.zero_()
        moe.gate.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    out, aux = moe(torch.randn(10, 8), torch.tensor([True] * 8 + [False] * 2))
    (out.sum() + aux).backward()
    for p in (moe.w1, moe.b1, moe.w2, moe.b2):
        assert p.grad is not None
        assert torch.equal(p.grad[1:], torch.zeros_like(p[1:]))
        assert p.grad[0].abs().sum() > 0


@pytest.mark.parametrize("model_type", ["single_seq", "two_seq"])
def test_determinism(tiny: ModelConfig, model_type: str) -> None:
    cfg = tiny.replace(model_type=model_type, dropout=0.1, use_moe=True)
    m1, m2 = build(cfg, seed=123, train=True), build(cfg, seed=123, train=True)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    inputs = make_inputs(cfg, 6)
    torch.manual_seed(7)
    o1 = m1(*inputs)
    torch.manual_seed(7)
    o2 = m2(*inputs)
    assert torch.equal(o1[0], o2[0]) and torch.equal(o1[1], o2[1])
    m3 = build(cfg, seed=124)
    assert not torch.equal(m3.state_dict()["clf.0.weight"], s1["clf.0.weight"])


@pytest.mark.parametrize("model_type", ["single_seq", "two_seq"])
def test_gradient_checkpointing_same_loss_and_grads(tiny: ModelConfig, model_type: str) -> None:
    cfg = tiny.replace(model_type=model_type, n_layers_order=2, n_layers_feature=2, use_moe=True, dropout=0.0)
    inputs = make_inputs(cfg, 8)
    grads = []
    for ckpt in (False, True):
        model = build(cfg.replace(grad_checkpointing=ckpt), train=True)
        scores, _ = model(*inputs)
        (scores.square().mean() + model.aux_loss).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)


# --------------------------------------------------------------------------- components


@needs_grouped_mm
def test_moe_routes_each_token_to_exactly_k_experts_and_computes_only_those(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    n_exp, k, d = 4, 2, 8
    moe = MixtureOfExperts(d, n_exp, 16, top_k=k, dispatch="grouped_mm").eval()
    x = torch.randn(3, 10, d)
    mask = torch.rand(3, 10, generator=torch.Generator().manual_seed(1)) > 0.3
    calls: list[tuple[int, list[int]]] = []  # (rows given, per-expert end offsets) per grouped GEMM
    grouped_mm = torch._grouped_mm

    def recording(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        assert offs.dtype == torch.int32 and offs.device == a.device
        calls.append((a.shape[0], offs.tolist()))
        return grouped_mm(a, b, offs=offs)

    monkeypatch.setattr(torch, "_grouped_mm", recording)
    out, aux = moe(x, mask)
    monkeypatch.undo()

    x2, valid = x.reshape(-1, d), mask.reshape(-1)
    probs, top_idx, top_w = moe.route(x2)
    assert top_idx.shape == (30, k) and (top_idx[:, 0] != top_idx[:, 1]).all()
    expected = torch.bincount(top_idx[valid].reshape(-1), minlength=n_exp)
    # two GEMMs (up, down), each over the T*k sorted rows; the groups cover k rows per valid
    # token, so padded tokens' rows (past the last offset) are not computed
    assert calls == [(30 * k, expected.cumsum(0).tolist())] * 2
    assert calls[0][1][-1] == k * int(valid.sum())

    # equals the dense reference: sum over the chosen experts of weight * expert(x); 0 for padding
    ref = dense_moe_reference(moe, x2, valid)
    torch.testing.assert_close(out.reshape(-1, d), ref, atol=1e-6, rtol=1e-5)
    assert torch.allclose(top_w.sum(-1), torch.ones(30))

    # Switch load-balancing loss over the valid tokens
    f = expected.float() / (k * valid.sum())
    p = probs[valid].mean(0)
    torch.testing.assert_close(aux, n_exp * (f * p).sum())


def test_moe_top1_uses_raw_router_probability() -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(4, 3, 8, top_k=1)
    probs, idx, w = moe.route(torch.randn(5, 4))
    assert torch.equal(w[:, 0], probs.gather(1, idx)[:, 0])


MOE_SIZES = [(8, 16), (6, 10)]  # (D, H): aligned for grouped_mm at fp32 and bf16; not aligned at either


@pytest.mark.parametrize("dispatch", DISPATCHES)
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dim, hidden", MOE_SIZES)
def test_moe_equals_dense_reference(dispatch: str, top_k: int, masked: bool, dim: int, hidden: int) -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(dim, 4, hidden, top_k=top_k, dispatch=dispatch).eval()
    x = torch.randn(5, 7, dim)
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) > 0.4 if masked else None
    out, aux = moe(x, mask)
    valid = mask.reshape(-1) if mask is not None else torch.ones(35, dtype=torch.bool)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.reshape(-1, dim), dense_moe_reference(moe, x.reshape(-1, dim), valid),
                               atol=1e-5, rtol=1e-5)
    if mask is not None:
        assert torch.equal(out[~mask], torch.zeros(int((~mask).sum()), dim))


def _moe_step(moe: MixtureOfExperts, dispatch: str, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Forward and backward of ``moe`` with ``dispatch``: output, aux loss, input and parameter gradients."""
    moe.dispatch = dispatch
    moe.zero_grad()
    xg = x.clone().requires_grad_()
    out, aux = moe(xg, mask)
    (out.square().sum() + aux).backward()
    return [out, aux, xg.grad] + [p.grad.clone() for p in moe.parameters()]


@needs_grouped_mm
@pytest.mark.parametrize("dim, hidden", MOE_SIZES)
def test_moe_bmm_fallback_equals_grouped_mm(dim: int, hidden: int) -> None:
    """Same outputs, aux loss and gradients (input and every parameter) from both expert kernels."""
    torch.manual_seed(0)
    moe = MixtureOfExperts(dim, 5, hidden, top_k=2)  # training mode, dropout 0
    x = torch.randn(4, 9, dim)
    mask = torch.rand(4, 9, generator=torch.Generator().manual_seed(2)) > 0.3
    results = [_moe_step(moe, dispatch, x, mask) for dispatch in ("grouped_mm", "bmm")]
    for a, b in zip(*results):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_grouped_mm
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_moe_rows_past_the_last_offset_never_leak(monkeypatch: pytest.MonkeyPatch, dropout: float) -> None:
    """``torch._grouped_mm`` leaves the rows past the last offset (padded tokens) uninitialised,
    in its output and in its input gradient.  With NaN written there, every output and gradient
    stays finite and (without dropout) equals the bmm path's."""
    grouped_mm = torch._grouped_mm

    class Poisoned(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(a, b, offs)
            out = grouped_mm(a, b, offs=offs)
            out[int(offs[-1]):] = float("nan")
            return out

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
            a, b, offs = ctx.saved_tensors
            with torch.enable_grad():
                a_, b_ = a.detach().requires_grad_(), b.detach().requires_grad_()
                ga, gb = torch.autograd.grad(grouped_mm(a_, b_, offs=offs), (a_, b_), g)
            ga = ga.clone()
            ga[int(offs[-1]):] = float("nan")
            return ga, gb, None

    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 4, 10, top_k=2, dropout=dropout)
    x = torch.randn(4, 9, 6)
    mask = torch.rand(4, 9, generator=torch.Generator().manual_seed(2)) > 0.5
    results = []
    for dispatch in ("grouped_mm", "bmm"):
        with monkeypatch.context() as mp:
            mp.setattr(torch, "_grouped_mm", lambda a, b, offs: Poisoned.apply(a, b, offs))
            results.append(_moe_step(moe, dispatch, x, mask))
        out, _, x_grad = results[-1][:3]
        assert all(torch.isfinite(t).all() for t in results[-1]), dispatch
        assert torch.equal(out[~mask], torch.zeros(int((~mask).sum()), 6))
        assert torch.equal(x_grad[~mask], torch.zeros(int((~mask).sum()), 6))
    if dropout == 0.0:
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dispatch", DISPATCHES)
@pytest.mark.parametrize("dim, hidden", MOE_SIZES)
def test_moe_autocast_bf16_agrees_with_fp32(dispatch: str, dim: int, hidden: int) -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(dim, 4, hidden, top_k=2, dispatch=dispatch)
    x = torch.randn(64, dim)
    mask = torch.rand(64, generator=torch.Generator().manual_seed(3)) > 0.25
    ref, ref_aux = moe(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, aux = moe(x, mask)
    (out.square().sum() + aux).backward()
    assert out.dtype == torch.float32 and torch.equal(out[~mask], torch.zeros(int((~mask).sum()), dim))
    # tokens whose bf16 router picks other experts (near ties) are left out of the comparison
    _, idx32, _ = moe.route(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, idx16, _ = moe.route(x)
    agree = (idx32.sort(-1).values == idx16.sort(-1).values).all(-1)
    assert agree.float().mean() > 0.9, agree.float().mean()
    torch.testing.assert_close(out[agree], ref.detach()[agree], atol=0.05, rtol=0.05)
    torch.testing.assert_close(aux, ref_aux, atol=0.05, rtol=0.05)
    for p in moe.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("dispatch", DISPATCHES)
def test_moe_empty_and_fully_padded_inputs(dispatch: str) -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(8, 3, 16, top_k=2, dispatch=dispatch)
    for x, mask in ((torch.randn(0, 8), None), (torch.randn(2, 5, 8), torch.zeros(2, 5, dtype=torch.bool))):
        moe.zero_grad()
        xg = x.clone().requires_grad_()
        out, aux = moe(xg, mask)
        (out.sum() + aux).backward()
        assert torch.equal(out, torch.zeros_like(x)) and float(aux.detach()) == 0.0
        assert torch.equal(xg.grad, torch.zeros_like(x))
        for p in (moe.w1, moe.b1, moe.w2, moe.b2):
            assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))


def test_moe_rejects_unknown_dispatch() -> None:
    with pytest.raises(ValueError, match="dispatch: must be one of .*got 'loop'"):
        MixtureOfExperts(8, 3, 16, dispatch="loop")


@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_loads_per_expert_state_dict(top_k: int, tmp_path: Path) -> None:
    """Old per-expert keys (``experts.{e}.0.weight`` ...) load into the stacked layout."""
    from safetensors.torch import load_model, save_file

    dim, n_exp, hidden = 6, 4, 10
    torch.manual_seed(3)
    ref = PerExpertLoopMoE(dim, n_exp, hidden, top_k).eval()
    torch.manual_seed(3)
    fresh = MixtureOfExperts(dim, n_exp, hidden, top_k)
    moe = MixtureOfExperts(dim, n_exp, hidden, top_k).eval()
    moe.load_state_dict(ref.state_dict())  # strict
    assert set(moe.state_dict()) == {"w1", "b1", "w2", "b2", "gate.weight", "gate.bias"}
    # initialisation: nn.Linear's, in the same random stream as per-expert nn.Linear layers
    for name, t in fresh.state_dict().items():
        assert torch.equal(t, moe.state_dict()[name]), name
    x = torch.randn(4, 6, dim)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.3
    for m in (None, mask):
        torch.testing.assert_close(moe(x, m)[0], ref(x, m), atol=1e-5, rtol=1e-5)

    # nested under a prefix and through safetensors (the artifact loader's path)
    save_file({f"ff.{k}": v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "old.safetensors"))
    holder = torch.nn.ModuleDict({"ff": MixtureOfExperts(dim, n_exp, hidden, top_k)}).eval()
    load_model(holder, str(tmp_path / "old.safetensors"), strict=True)
    torch.testing.assert_close(holder["ff"](x, mask)[0], ref(x, mask), atol=1e-5, rtol=1e-5)

    # a different number of experts is not converted: the keys are reported
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*w1.*Unexpected key.*experts\.0\.0\.weight"):
        MixtureOfExperts(dim, n_exp + 1, hidden, top_k).load_state_dict(ref.state_dict())


@pytest.mark.parametrize("model_type", ["single_seq", "two_seq"])
def test_model_loads_per_expert_state_dict(tiny: ModelConfig, model_type: str) -> None:
    cfg = tiny.replace(model_type=model_type, use_moe=True)
    model = build(cfg)
    old: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        layer, _, leaf = name.rpartition(".")
        if leaf in ("w1", "b1", "w2", "b2") and isinstance(model.get_submodule(layer), MixtureOfExperts):
            index, part = {"w1": ("0", "weight"), "b1": ("0", "bias"), "w2": ("3", "weight"),
                           "b2": ("3", "bias")}[leaf]
            for e in range(t.shape[0]):
                old[f"{layer}.experts.{e}.{index}.{part}"] = t[e].T if part == "weight" else t[e]
        else:
            old[name] = t
    other = build(cfg, seed=99)
    other.load_state_dict(old)
    inputs = make_inputs(cfg, 4)
    assert_same_outputs(run(model, inputs), run(other, inputs))


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=[pytest.mark.slow, pytest.mark.skipif(
        os.environ.get("TSA_SLOW_TESTS") != "1", reason="set TSA_SLOW_TESTS=1 (torch.compile on CPU)")]),
])
def test_moe_compiles_to_one_graph(backend: str) -> None:
    """fullgraph: no graph break; a new routing of the same shapes does not recompile."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    moe = MixtureOfExperts(8, 4, 16, top_k=2)  # training mode, dropout 0
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(moe, fullgraph=True, backend=counter)
    mask = torch.rand(3, 10, generator=torch.Generator().manual_seed(1)) > 0.3
    for seed, m in ((0, None), (1, None), (0, mask), (1, mask)):
        x = torch.randn(3, 10, 8, generator=torch.Generator().manual_seed(seed))
        results = []
        for fn in (moe, compiled):
            moe.zero_grad()
            xg = x.clone().requires_grad_()
            out, aux = fn(xg, m)
            (out.square().sum() + aux).backward()
            results.append([out, aux, xg.grad] + [p.grad.clone() for p in moe.parameters()])
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 2  # one graph without a mask, one with


def test_fm_equals_bruteforce_pairwise() -> None:
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    fm = compute_fm_parallel(e)
    n = e.shape[1]
    brute = sum(e[:, i] * e[:, j] for i in range(n) for j in range(i + 1, n))
    torch.testing.assert_close(fm, brute, atol=1e-12, rtol=1e-12)
    dots = sum((e[:, i] * e[:, j]).sum(-1) for i in range(n) for j in range(i + 1, n))
    torch.testing.assert_close(fm.sum(-1), dots, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("layer_cls", [AttentionLayer, AttentionLayerPreNorm])
def test_explicit_attention_matches_sdpa_and_readout_is_exact(layer_cls: type) -> None:
    torch.manual_seed(0)
    layer = layer_cls(ModelPreset(dim_embed=16, num_heads=4, dim_feedforward=32, dropout=0.1, use_moe=True,
                                  num_experts=3, moe_top_k=2)).eval()
    x = torch.randn(3, 6, 16)
    mask = torch.tensor([[True] * 6, [True, False, False, True, True, True], [True] + [False] * 5])
    fast, w_none, aux = layer(x, mask)
    slow, w, _ = layer(x, mask, need_weights=True)
    assert w_none is None and aux is not None
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    assert w.shape == (3, 6, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 6))
    assert torch.equal(w[~mask[:, None, :].expand(-1, 6, -1)], torch.zeros(int((~mask).sum()) * 6))
    # computing only the readout token gives exactly that row of the full output
    one, w1, _ = layer(x, mask, need_weights=True, query_index=0)
    torch.testing.assert_close(one[:, 0], fast[:, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w1[:, 0], w[:, 0], atol=1e-6, rtol=1e-5)


def test_numerical_aggregation_fused_equals_materialized() -> None:
    torch.manual_seed(0)
    for bias in (True, False):
        emb = NumericalEmbedding(5, 8, bias=bias).double()
        if bias:
            torch.nn.init.normal_(emb.bias)
        agg = FeatureAggregationMLP(5, 8).double()
        v = torch.randn(4, 3, 5, dtype=torch.float64)
        torch.testing.assert_close(agg.forward_numerical(v, emb), agg(emb(v)), atol=1e-12, rtol=1e-10)


# --------------------------------------------------------------------------- learning


def test_learns_planted_sequential_pattern(tiny: ModelConfig) -> None:
    """Label = category 7 of column 0 occurs in the HISTORY.  It is independent of the target order
    and of the engineered features by construction, so the last order alone allows 50% accuracy."""
    cfg = tiny.replace(use_moe=False, dropout=0.0)
    L, marker = cfg.seq_len, 7

    def batch(b: int, gen: torch.Generator) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        lengths = torch.randint(2, L + 1, (b,), generator=gen)  # >= 1 past order
        x_cat, x_num, t, mask = make_seq(cfg, b, gen, lengths)
        col = x_cat[:, :, 0]
        hist = mask.clone()
        hist[:, -1] = False
        col = torch.where(hist & (col == marker), marker + 1, col)  # no marker in any history...
        y = torch.arange(b) % 2
        for i in torch.nonzero(y).flatten().tolist():  # ...except one planted for the positives
            pos = L - int(torch.randint(2, int(lengths[i]) + 1, (1,), generator=gen))
            col[i, pos] = marker
        x_cat = x_cat.clone()
        x_cat[:, :, 0] = col
        return (x_cat, x_num, t, mask, torch.randn(b, cfg.n_engineered, generator=gen)), y

    model = build(cfg, seed=0, train=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(300):
        inputs, y = batch(64, gen)
        loss = F.cross_entropy(model(*inputs)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - start
    model.eval()
    inputs, y = batch(1000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        acc = (model(*inputs)[0].argmax(-1) == y).float().mean().item()
    # (about 2 s on 2 idle cores; not asserted: a timing assert flakes when the machine is busy)
    assert acc > 0.9, f"accuracy {acc:.3f} after 300 steps ({elapsed:.1f}s)"


# --------------------------------------------------------------------------- configs / presets


def test_presets_hold_the_architecture_and_the_data_gives_the_sizes(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    assert {"tiny", "small", "seed"} <= set(available_presets())
    seed = load_model_preset("seed")
    assert type(seed) is ModelPreset and not hasattr(seed, "seq_len")
    assert (seed.dim_embed, seed.num_heads, seed.n_layers_order, seed.n_layers_feature) == (128, 8, 2, 2)
    assert seed.use_moe and seed.num_experts == 5
    small = load_model_preset("small")
    assert small.dim_embed == 32 and small.num_heads == 4 and small.members == 3
    sizes = DataSizes(n_cat_features=7, n_num_features=2, n_engineered=0, vocab_size=123, seq_len=21)
    cfg = model_config(small, sizes)
    assert cfg.sizes() == sizes and cfg.preset() == small and cfg.dim_embed == 32
    assert all(m.embedding.num_embeddings == 123 for m in build_model(cfg).members)
    for c in (cfg, model_config(load_model_preset("tiny"), TINY_SIZES)):
        assert model_config_from_dict(to_dict(c)) == c and c.hash == model_config_from_dict(c.to_dict()).hash
        assert build_model(c).config is c
    assert model_config(cfg, TINY_SIZES).sizes() == TINY_SIZES       # a bound config re-binds to other data
    with pytest.raises(ConfigError, match="vocab_size: must be >= 3, got 0"):
        cfg.replace(vocab_size=0)
    with pytest.raises(ConfigError, match="seq_len: must be >= 1, got 0"):
        DataSizes(n_cat_features=1, n_num_features=1, n_engineered=0, vocab_size=3, seq_len=0)
    with pytest.raises(TypeError, match="expected a ModelConfig"):
        build_model(small)  # type: ignore[arg-type]
    # a preset by path works too; sizes written in an old preset file are dropped, with a warning
    assert load_model_preset(Path(__file__).resolve().parents[1] / "tsa_lib/models/presets/tiny.yaml") == \
        load_model_preset("tiny")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({**to_dict(small), "n_cat_features": 20, "vocab_size": 20000}))
    with caplog.at_level("WARNING"):
        assert load_model_preset(path) == small
    assert "{'n_cat_features': 20, 'vocab_size': 20000} ignored" in caplog.text


BAD_PRESETS = [
    ({"dim_embed": 30, "num_heads": 4}, ["dim_embed", "num_heads"]),
    ({"moe_top_k": 5, "num_experts": 4}, ["moe_top_k", "num_experts"]),
    ({"dropout": 1.5}, ["dropout"]),
    ({"dropout": -0.1}, ["dropout"]),
    ({"model_type": "three_seq"}, ["model_type", "three_seq"]),
    ({"use_time": "yes"}, ["use_time"]),
    ({"num_embedding": "log"}, ["num_embedding", "log"]),
    ({"members": 0}, ["members", "0"]),
    ({"members": 2.0}, ["members", "2.0"]),
    ({"members": False}, ["members", "False"]),
    ({"n_layers_order": 1.5}, ["n_layers_order"]),
    ({"dim_embeding": 16}, ["dim_embeding"]),
]


@pytest.mark.parametrize("changes,keys", BAD_PRESETS)
def test_bad_preset_names_the_key(tmp_path: Path, changes: dict[str, Any], keys: list[str]) -> None:
    data = to_dict(load_model_preset("tiny"))
    data.update(changes)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_model_preset(path)
    msg = str(err.value)
    assert str(path) in msg
    for key in keys:
        assert key in msg, msg


def test_missing_size_unknown_preset_bad_yaml(tmp_path: Path) -> None:
    data = to_dict(tiny_config())
    del data["vocab_size"]
    with pytest.raises(ConfigError, match="vocab_size: required key is missing"):
        model_config_from_dict(data)                 # an artifact's stored config must hold the sizes
    with pytest.raises(ConfigError, match="n_cat_features: expected an integer, got 'big'"):
        model_config_from_dict({**to_dict(tiny_config()), "n_cat_features": "big"})
    with pytest.raises(ConfigError, match="no_such_preset.*available"):
        load_model_preset("no_such_preset")
    path = tmp_path / "bad.yaml"
    path.write_text("dim_embed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_preset(path)


def test_stored_config_from_before_the_removed_options() -> None:
    """An artifact's model_config.json written when time_bias, readout, count_pool and member_bagging
    existed: at their "off" values they load as today's config; any other value is refused by name."""
    old = {**to_dict(tiny_config()),
           "time_bias": False, "readout": "dummy", "count_pool": 0, "member_bagging": False}
    assert model_config_from_dict(old) == tiny_config()
    for key, value in (("time_bias", True), ("readout", "target"), ("count_pool", 16), ("count_pool", False),
                       ("member_bagging", True)):
        with pytest.raises(ConfigError, match=f"{key}: this option was removed.*got {value!r}"):
            model_config_from_dict({**old, key: value})


@pytest.mark.parametrize("model_type", ["single_seq", "two_seq"])
def test_bad_inputs_name_the_argument(tiny: ModelConfig, model_type: str) -> None:
    cfg = tiny.replace(model_type=model_type)
    model = build(cfg)
    inputs = list(make_inputs(cfg, 3))
    suffix = "_cid" if model_type == "two_seq" else ""
    bad = list(inputs)
    bad[0] = bad[0][..., :2]
    with pytest.raises(ValueError, match=f"x_cat{suffix}: expected shape"):
        model(*bad)
    bad = list(inputs)
    bad[3] = bad[3].float()
    with pytest.raises(ValueError, match=f"mask{suffix}: expected a bool"):
        model(*bad)
    bad = list(inputs)
    bad[-1] = bad[-1][:, :2]
    with pytest.raises(ValueError, match="x_engineered: expected shape"):
        model(*bad)
    if model_type == "two_seq":
        bad = list(inputs)
        bad[5] = bad[5][:, :4]
        with pytest.raises(ValueError, match="x_num_ccid: expected shape"):
            model(*bad)


# --------------------------------------------------------------------------- artifacts / precision / compile


@pytest.mark.parametrize("model_type", ["single_seq", "two_seq"])
def test_state_dict_holds_shared_table_once_and_round_trips(tiny: ModelConfig, model_type: str,
                                                            tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    cfg = tiny.replace(model_type=model_type, use_moe=True)
    model = build(cfg)
    sd = model.state_dict()
    assert [k for k in sd if k.endswith("embedding.weight") and "engineered" not in k
            and "num_" not in k] == ["embedding.weight"]
    save_file(sd, str(tmp_path / "m.safetensors"))
    other = build(cfg, seed=99)
    other.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    inputs = make_inputs(cfg, 4)
    assert_same_outputs(run(model, inputs), run(other, inputs))
    # the order/feature attention still use the (reloaded) table
    assert other.feature_attention.embedding is other.embedding


@pytest.mark.parametrize("model_type", ["single_seq", "two_seq"])
def test_autocast_bf16_cpu(tiny: ModelConfig, model_type: str) -> None:
    cfg = tiny.replace(model_type=model_type, use_moe=True, n_layers_order=2)
    model = build(cfg, train=True)
    inputs = make_inputs(cfg, 8)
    ref = model(*inputs)[0].detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, ens, det = model(*inputs, return_details=True)
        loss = scores.float().logsumexp(-1).mean() + model.aux_loss
    loss.backward()
    assert scores.dtype == torch.bfloat16 and torch.isfinite(scores.float()).all()
    assert torch.isfinite(ens.float()).all()
    torch.testing.assert_close(scores.float(), ref, atol=0.15, rtol=0.1)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.embedding.weight.grad is not None and model.embedding.weight.grad.dtype == torch.float32


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TSA_SLOW_TESTS") != "1", reason="set TSA_SLOW_TESTS=1 (torch.compile on CPU)")
@pytest.mark.parametrize("model_type", ["single_seq", "two_seq"])
def test_torch_compile_smoke(tiny: ModelConfig, model_type: str) -> None:
    cfg = tiny.replace(model_type=model_type)
    model = build(cfg, train=True)
    compiled = torch.compile(model)
    inputs = make_inputs(cfg, 4)
    eager = model(*inputs)[0]
    out = compiled(*inputs)[0]
    torch.testing.assert_close(out, eager, atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert model.clf[0].weight.grad is not None


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TSA_SLOW_TESTS") != "1", reason="set TSA_SLOW_TESTS=1 (torch.compile on CPU)")
def test_torch_compile_member_average(tiny: ModelConfig) -> None:
    """training.compile with members: the member scores the loss reads come from the compiled forward."""
    cfg = tiny.replace(model_type="two_seq", members=2, dropout=0.0)
    model = build(cfg, train=True)
    inputs, y, w = make_inputs(cfg, 4), torch.tensor([0, 1, 0, 1]), torch.tensor([1.0, 2.0])
    eager = model.training_loss(model(*inputs)[0], y, w).detach()
    compiled = torch.compile(model)
    loss = model.training_loss(compiled(*inputs)[0], y, w)
    torch.testing.assert_close(loss.detach(), eager, atol=1e-4, rtol=1e-4)
    loss.backward()
    assert all(m.clf[0].weight.grad is not None for m in model.members)


def test_periodic_embedding_exact_values() -> None:
    """PeriodicEmbedding: ReLU([sin(2 pi c v), cos(2 pi c v)] @ W_f + b_f), per feature."""
    import math

    from tsa_lib.models.layers import PeriodicEmbedding, numerical_embedding

    emb = PeriodicEmbedding(2, 3, n_frequencies=1, sigma=1.0)
    with torch.no_grad():
        emb.freq.copy_(torch.tensor([[0.25], [0.5]]))
        emb.weight.copy_(torch.tensor([[[1.0, -1.0, 2.0], [0.0, 1.0, 0.0]],
                                       [[0.5, 0.0, -1.0], [1.0, 1.0, 1.0]]]))
        emb.bias.copy_(torch.tensor([[0.0, 0.0, -5.0], [0.1, 0.0, 0.0]]))
    x = torch.tensor([[1.0, 0.5]])          # feature 0: 2 pi * 0.25 = pi/2; feature 1: 2 pi * 0.25 = pi/2
    out = emb(x)
    s, c = math.sin(math.pi / 2), math.cos(math.pi / 2)
    expected = torch.tensor([[[max(s, 0.0), max(-s + c, 0.0), max(2 * s - 5.0, 0.0)],
                              [max(0.5 * s + c + 0.1, 0.0), max(c, 0.0), max(-s + c, 0.0)]]])
    torch.testing.assert_close(out, expected)
    assert out.shape == (1, 2, 3)
    nob = numerical_embedding("periodic", 2, 3, bias=False)       # num_bias: false reaches it too
    assert nob.bias is None and (nob(x) >= 0).all()
    with pytest.raises(ValueError, match="n_frequencies.*0"):
        PeriodicEmbedding(2, 3, n_frequencies=0)
    with pytest.raises(ValueError, match="sigma.*-1"):
        PeriodicEmbedding(2, 3, sigma=-1.0)
    with pytest.raises(ValueError, match="num_embedding.*'log'"):
        numerical_embedding("log", 2, 3)


# --------------------------------------------------------------------------- members (logit average)


@pytest.mark.parametrize("model_type", ["single_seq", "two_seq"])
def test_member_average_is_the_exact_mean_of_independent_members(tiny: ModelConfig, model_type: str) -> None:
    """Output = mean of the members' logits; embedding = theirs side by side; explanations = their means;
    the members start from different weights; the state round-trips into a fresh build."""
    cfg = tiny.replace(model_type=model_type, members=3)
    model = build(cfg, seed=3)
    assert isinstance(model, MemberAverage) and len(model.members) == 3
    assert all(m.config.members == 1 and m.config.model_type == model_type for m in model.members)
    w = [m.embedding.weight for m in model.members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    inputs = make_inputs(cfg, b=5, seed=1)
    scores, emb, det = run(model, inputs)
    alone = [m(*inputs, return_details=True) for m in model.members]
    torch.testing.assert_close(scores, (alone[0][0] + alone[1][0] + alone[2][0]) / 3, rtol=0, atol=1e-6)
    assert torch.equal(emb, torch.cat([a[1] for a in alone], dim=-1))
    assert emb.shape == (5, model.ensemble_dim)
    keys = ("attn_cid", "attn_ccid", "gate", "feature_attn") if model_type == "two_seq" else ("attn", "feature_attn")
    for k in keys:
        torch.testing.assert_close(det[k], torch.stack([a[2][k] for a in alone]).mean(0), rtol=0, atol=1e-7)
    if model_type == "two_seq":
        torch.testing.assert_close(det["gate"].sum(-1), torch.ones(5))  # still weights that sum to one
    torch.testing.assert_close(run(model, inputs, details=False)[0], scores)  # SDPA vs explicit attention
    fresh = build(cfg, seed=99)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(run(fresh, inputs)[0], scores)


def test_member_average_trains_each_member_on_its_own_loss(tiny: ModelConfig) -> None:
    """training_loss = sum of the members' weighted cross-entropies (+ aux), so every member's gradient
    equals the gradient of that member trained alone; clip_groups is one group per member."""
    cfg = tiny.replace(model_type="two_seq", members=2, use_moe=True, dropout=0.0)
    model = build(cfg, seed=5, train=True)
    inputs = make_inputs(cfg, b=6, seed=2)
    y = torch.tensor([0, 1, 0, 0, 1, 0])
    weight = torch.tensor([1.0, 3.0])
    scores, _ = model(*inputs)
    loss = model.training_loss(scores, y, weight)
    expected = sum(F.cross_entropy(s, y, weight=weight) for s in model.member_scores) + model.aux_loss
    torch.testing.assert_close(loss, expected)
    assert model.aux_loss.item() > 0
    loss.backward()
    got = [[p.grad.clone() for p in m.parameters()] for m in model.members]
    for i, m in enumerate(model.members):
        m.zero_grad()
        s, _ = m(*inputs)
        m.training_loss(s, y, weight).backward()
        for a, b in zip(got[i], m.parameters()):
            torch.testing.assert_close(a, b.grad, rtol=1e-5, atol=1e-7)
    groups = model.clip_groups()
    assert [len(g) for g in groups] == [len(list(m.parameters())) for m in model.members]
    assert sum(len(g) for g in groups) == len(list(model.parameters()))
    single = build(tiny)
    assert len(single.clip_groups()) == 1 and len(single.clip_groups()[0]) == len(list(single.parameters()))


def test_member_average_bad_use_names_the_problem(tiny: ModelConfig) -> None:
    with pytest.raises(ValueError, match="members.*at least 2.*1"):
        MemberAverage(tiny, OrderFeatureAttentionClassifier)
    model = build(tiny.replace(members=2))
    with pytest.raises(RuntimeError, match="training_loss.*after a forward"):
        model.training_loss(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.ones(2))
    with pytest.raises(ValueError, match="x_cat: expected shape"):
        model(*make_inputs(tiny.replace(seq_len=tiny.seq_len + 1), b=2))
