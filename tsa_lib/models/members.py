"""``MemberAverage``: ``members`` independently initialised TSA classifiers trained side by side.

One training run of a TSA model lands on one of many equally good solutions, and
on the quality bench the spread between runs is as large as the gap to the
strongest peer (bench/quality/README.md).  Averaging the logits of a few
independently trained copies removes most of that variance.  This module does it
inside ONE model, so DDP, AMP, checkpoints, resume, the artifact and the
scoring job need nothing new:

- every member is a complete classifier of ``model_type``, built one after the
  other from the same RNG stream, so each starts from different weights, and
  each draws its own dropout masks;
- ``training_loss`` is the SUM of the members' own losses, so each member gets
  exactly the gradient it would get alone (the members never co-adapt to the
  average); ``clip_groups`` lets the trainer clip each member's gradient by itself;
- the output is the mean of the members' logits (a geometric mean of their
  odds); the ensemble embedding is the members' embeddings side by side; the
  explanations (gate weights, attention) are the members' means.

Cost: ``members`` times the compute and parameters of one model, in training
and in scoring.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsa_lib.models.config import ModelConfig
from tsa_lib.models.order_feature_attention_classifier import Output, TSAClassifierBase

log = logging.getLogger(__name__)

__all__ = ["MemberAverage"]


class MemberAverage(nn.Module):
    """The mean of ``cfg.members`` classifiers; same inputs and outputs as one of them."""

    def __init__(self, cfg: ModelConfig, member_type: type[TSAClassifierBase]) -> None:
        super().__init__()
        if cfg.members < 2:
            raise ValueError(f"members: MemberAverage needs at least 2 members, got {cfg.members}")
        self.config = cfg
        one = cfg.replace(members=1)
        self.members = nn.ModuleList(member_type(one) for _ in range(cfg.members))
        self.ensemble_dim = sum(int(m.ensemble_dim) for m in self.members)
        self.aux_loss: Tensor = torch.zeros(())
        self.member_scores: Tensor = torch.zeros(())  # [members, B, n_classes] after every forward

    def forward(self, *inputs: Tensor, return_details: bool = False) -> Output:
        outs = [m(*inputs, return_details=return_details) for m in self.members]
        self.member_scores = torch.stack([o[0] for o in outs])
        self.aux_loss = torch.stack([m.aux_loss.float() for m in self.members]).sum()
        scores = self.member_scores.float().mean(dim=0).to(self.member_scores.dtype)
        embedding = torch.cat([o[1] for o in outs], dim=-1)
        if not return_details:
            return scores, embedding
        details: dict[str, Any] = {k: torch.stack([o[2][k].float() for o in outs]).mean(dim=0)
                                   for k in outs[0][2] if k != "aux_loss"}
        details["aux_loss"] = self.aux_loss
        return scores, embedding, details

    def training_loss(self, scores: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
        """Sum of the members' own weighted cross-entropies plus their auxiliary losses.

        ``scores`` (the mean) is accepted for the common signature; the loss reads the
        member scores of the same forward pass.
        """
        if self.member_scores.dim() != 3 or self.member_scores.shape[1] != scores.shape[0]:
            raise RuntimeError("training_loss: call it right after a forward pass of this model")
        # per row w_y * ce; summed over rows / sum(w_y) it is F.cross_entropy's weighted mean
        per_row = torch.stack([F.cross_entropy(s.float(), labels, weight=weight, reduction="none")
                               for s in self.member_scores])                       # [members, B]
        return (per_row.sum(dim=1) / weight[labels].sum()).sum() + self.aux_loss

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """One parameter group per member: each member's gradient is clipped by itself."""
        return [list(m.parameters()) for m in self.members]
