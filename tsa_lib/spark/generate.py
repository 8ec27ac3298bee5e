"""Write the synthetic input tables (the embedded default's ``input:``) as Delta."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from tsa_lib.config import PROJECT_ROOT, SuiteConfig
from tsa_lib.data.synthetic import Generated, generate
from tsa_lib.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

SIZES = {
    # name: (n_customers, n_days) -- about 10 orders per customer over 60 days
    "tiny": (300, 30),
    "demo": (20_000, 60),
    "bench": (200_000, 60),
}


@dataclass(frozen=True)
class GenerateSummary:
    transactions_path: str
    order_features_path: str
    n_orders: int
    n_fraud: int
    n_customers: int
    n_cards: int
    scenarios: dict[str, int]

    @property
    def fraud_rate(self) -> float:
        return self.n_fraud / max(self.n_orders, 1)


def write_generated(spark: "SparkSession", cfg: SuiteConfig, data: Generated) -> GenerateSummary:
    """Overwrite the configured input tables with ``data`` (Delta, sorted by time for data skipping)."""
    tx_src, feat_src = cfg.input.transactions, cfg.input.order_features
    if tx_src.path is None:
        raise ConfigError(f"input.transactions: the generator writes by path, got table={tx_src.table!r}")
    tx_path = tx_src.resolved_path(PROJECT_ROOT)
    feat_path = feat_src.resolved_path(PROJECT_ROOT) if feat_src is not None and feat_src.path else None
    assert tx_path is not None
    tx = data.transactions
    _write(spark, tx, tx_path, sort_col="order_ts", fmt=tx_src.format)
    if feat_path is not None and feat_src is not None:
        _write(spark, data.order_features, feat_path, sort_col="order_id", fmt=feat_src.format)
    else:
        log.info("input.order_features not set: engineered features are expected in the transactions table")
    counts = tx["scenario"].value_counts().to_dict()
    return GenerateSummary(
        transactions_path=tx_path,
        order_features_path=feat_path or "",
        n_orders=len(tx),
        n_fraud=int(tx["is_fraud"].sum()),
        n_customers=int(tx["customer_id"].nunique()),
        n_cards=int(tx["card_id"].nunique()),
        scenarios={str(k): int(v) for k, v in counts.items()},
    )


def _write(spark: "SparkSession", frame: pd.DataFrame, path: str, sort_col: str, fmt: str) -> None:
    df = spark.createDataFrame(frame)
    n_files = max(1, len(frame) // 500_000)
    (df.repartitionByRange(n_files, sort_col).sortWithinPartitions(sort_col)
       .write.format(fmt).mode("overwrite").option("overwriteSchema", "true").save(path))
    log.info("wrote %d rows to %s (%s)", len(frame), path, fmt)


def generate_and_write(spark: "SparkSession", cfg: SuiteConfig, dirty_rate: float = 0.0005) -> GenerateSummary:
    return write_generated(spark, cfg, generate(cfg.generator, dirty_rate=dirty_rate))
