"""The TSA model library (PyTorch; no Spark, no distribution concerns).

Public API::

    from tsa_lib.models import build_model, load_model_preset, model_config
    cfg = model_config(load_model_preset("small"), encoders)   # or DataSizes(n_cat_features=..., ...)
    model = build_model(cfg)          # MemberAverage of cfg.members classifiers when members > 1
    scores, ensemble = model(x_cat, x_num, time_seq, mask, x_engineered)
    loss = model.training_loss(scores, y, class_weight)   # cross-entropy (per member) + aux_loss
"""

from tsa_lib.models.config import (
    MODEL_TYPES,
    PRESETS,
    DataSizes,
    ModelConfig,
    ModelPreset,
    available_presets,
    load_model_preset,
    model_config,
    model_config_from_dict,
)
from tsa_lib.models.factory import TSAModel, build_model, count_parameters
from tsa_lib.models.feature_attention_layer import FeatureAttentionLayer
from tsa_lib.models.layers import (
    AttentionLayer,
    AttentionLayerPreNorm,
    FeatureAggregationMLP,
    FeedForward,
    MixtureOfExperts,
    NumericalEmbedding,
    TimeEncode,
    attention_with_weights,
    compute_fm_parallel,
    embedding_weight_for,
)
from tsa_lib.models.members import MemberAverage
from tsa_lib.models.order_attention_layer import OrderAttentionLayer
from tsa_lib.models.order_feature_attention_classifier import OrderFeatureAttentionClassifier, TSAClassifierBase
from tsa_lib.models.two_seq_moe_order_feature_attention_classifier import (
    TwoSeqMoEOrderFeatureAttentionClassifier,
    masked_gate_softmax,
)

__all__ = [
    "MODEL_TYPES",
    "PRESETS",
    "DataSizes",
    "ModelConfig",
    "ModelPreset",
    "available_presets",
    "load_model_preset",
    "model_config",
    "model_config_from_dict",
    "build_model",
    "TSAModel",
    "MemberAverage",
    "count_parameters",
    "TimeEncode",
    "FeedForward",
    "MixtureOfExperts",
    "AttentionLayer",
    "AttentionLayerPreNorm",
    "FeatureAggregationMLP",
    "NumericalEmbedding",
    "attention_with_weights",
    "compute_fm_parallel",
    "embedding_weight_for",
    "OrderAttentionLayer",
    "FeatureAttentionLayer",
    "TSAClassifierBase",
    "OrderFeatureAttentionClassifier",
    "TwoSeqMoEOrderFeatureAttentionClassifier",
    "masked_gate_softmax",
]
