"""Model evaluation: ranking metrics for fraud scores (numpy only)."""

from tsa_lib.evaluation.metrics import (
    average_precision,
    card_precision_at_k,
    psi,
    recall_at_fpr,
    roc_auc,
    summarize,
)

__all__ = ["average_precision", "card_precision_at_k", "psi", "recall_at_fpr", "roc_auc", "summarize"]
