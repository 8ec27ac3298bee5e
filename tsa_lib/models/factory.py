"""``build_model``: a validated ``ModelConfig`` -> the TSA classifier."""

from __future__ import annotations

import logging
from typing import Union

from torch import nn

from tsa_lib.models.config import ModelConfig
from tsa_lib.models.members import MemberAverage
from tsa_lib.models.order_feature_attention_classifier import OrderFeatureAttentionClassifier, TSAClassifierBase
from tsa_lib.models.two_seq_moe_order_feature_attention_classifier import TwoSeqMoEOrderFeatureAttentionClassifier

log = logging.getLogger(__name__)

__all__ = ["TSAModel", "build_model", "count_parameters"]

TSAModel = Union[TSAClassifierBase, MemberAverage]

_MODELS: dict[str, type[TSAClassifierBase]] = {
    "single_seq": OrderFeatureAttentionClassifier,
    "two_seq": TwoSeqMoEOrderFeatureAttentionClassifier,
}


def build_model(cfg: ModelConfig) -> TSAModel:
    """Build the classifier ``cfg.model_type`` names (the mean of ``cfg.members`` of them when
    ``members`` > 1)."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model: expected a ModelConfig (model_config(preset, encoders)), got {cfg!r}")
    cls = _MODELS[cfg.model_type]
    model: TSAModel = MemberAverage(cfg, cls) if cfg.members > 1 else cls(cfg)
    log.info("built %s (%s parameters, config hash %s)", type(model).__name__, count_parameters(model), cfg.hash)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
