"""Two-sequence TSA classifier: customer (cid) and card (ccid) sequences weighed by a gate.

Each sequence has its own order attention (sharing the categorical table); a
gate network scores the two order representations and a softmax over the
sequences that are present weighs them (the mixture-of-experts structure of the
seed's ``TwoSeqMoEOrderFeatureAttentionClassifier``).  The gate reads the two
order representations themselves (the seed's separate ``gate_emb`` pass over the
raw sequences would gather every embedding a second time).

Empty sequences: a sequence whose mask is all False gets gate weight exactly 0
(masked before the softmax) and the other exactly 1; when both are empty both
weights are 0, the order part of the ensemble is 0 and the output is still
defined (feature attention and MLP on zeros for the order, engineered features).
The target order's features for the feature attention and the MLP come from the
customer sequence's last element, or the card sequence's when the customer
sequence is empty, or zeros when both are.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from tsa_lib.models.config import ModelConfig
from tsa_lib.models.order_feature_attention_classifier import Output, TSAClassifierBase

log = logging.getLogger(__name__)

__all__ = ["TwoSeqMoEOrderFeatureAttentionClassifier", "masked_gate_softmax"]


def masked_gate_softmax(logits: Tensor, present: Tensor) -> Tensor:
    """Softmax over the present entries only: absent ones get exactly 0; a row with none present is all 0.

    ``logits`` ``[B, S]``; ``present`` bool ``[B, S]``.  Computed in fp32, NaN-free
    in value and gradient.
    """
    logits = logits.float().masked_fill(~present, float("-inf"))
    none = ~present.any(dim=-1, keepdim=True)
    logits = logits.masked_fill(none, 0.0)
    return torch.softmax(logits, dim=-1).masked_fill(~present, 0.0)


class TwoSeqMoEOrderFeatureAttentionClassifier(TSAClassifierBase):
    """Two-sequence TSA model.

    ``forward(x_cat_cid, x_num_cid, time_cid, mask_cid, x_cat_ccid, x_num_ccid,
    time_ccid, mask_ccid, x_engineered, return_details=False)`` returns
    ``(scores, ensemble)`` or ``(scores, ensemble, details)``, details =
    ``{"attn_cid": [B, L], "attn_ccid": [B, L], "gate": [B, 2] (cid, ccid),
    "feature_attn": [B, n_tokens], "aux_loss": 0-dim}``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d = cfg.dim_embed
        self.order_attention_cid = self._order_attention()
        self.order_attention_ccid = self._order_attention()
        self.gate_score = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, 2))

    def forward(
        self,
        x_cat_cid: Tensor,
        x_num_cid: Tensor,
        time_cid: Tensor,
        mask_cid: Tensor,
        x_cat_ccid: Tensor,
        x_num_ccid: Tensor,
        time_ccid: Tensor,
        mask_ccid: Tensor,
        x_engineered: Tensor,
        return_details: bool = False,
    ) -> Output:
        b = self._check_sequence("_cid", x_cat_cid, x_num_cid, time_cid, mask_cid)
        b2 = self._check_sequence("_ccid", x_cat_ccid, x_num_ccid, time_ccid, mask_ccid)
        if b2 != b:
            raise ValueError(f"x_cat_ccid: batch size {b2} differs from x_cat_cid's {b}")
        self._check_engineered(x_engineered, b)
        emb_weight = self._emb_weight(x_cat_cid.numel() + x_cat_ccid.numel())

        x_cid, attn_cid, aux_1 = self.order_attention_cid(
            x_cat_cid, x_num_cid, time_cid, mask_cid, emb_weight, return_details)
        x_ccid, attn_ccid, aux_2 = self.order_attention_ccid(
            x_cat_ccid, x_num_ccid, time_ccid, mask_ccid, emb_weight, return_details)

        present = torch.stack([mask_cid.any(dim=-1), mask_ccid.any(dim=-1)], dim=-1)  # [B, 2]
        gate = masked_gate_softmax(self.gate_score(torch.cat([x_cid, x_ccid], dim=-1)), present)
        x_order = gate[:, :1] * x_cid + gate[:, 1:] * x_ccid

        cur_cid, cur_ccid = mask_cid[:, -1:], mask_ccid[:, -1:]
        cat_cur = torch.where(cur_cid, x_cat_cid[:, -1], x_cat_ccid[:, -1].masked_fill(~cur_ccid, 0))
        num_cur = torch.where(cur_cid, x_num_cid[:, -1], x_num_ccid[:, -1].masked_fill(~cur_ccid, 0.0))
        x_feature, fattn, aux_f = self.feature_attention(cat_cur, num_cur, x_engineered, emb_weight, return_details)

        scores, ensemble = self._head(x_order, x_feature, num_cur, x_engineered)
        aux = self._set_aux(aux_1 + aux_2 + aux_f, scores.device)
        if return_details:
            return scores, ensemble, {"attn_cid": attn_cid, "attn_ccid": attn_ccid, "gate": gate,
                                      "feature_attn": fattn, "aux_loss": aux}
        return scores, ensemble
