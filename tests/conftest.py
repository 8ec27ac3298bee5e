"""One local SparkSession for the whole test run (local[2], few partitions, UI off)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("PYTHONPATH", str(ROOT))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long CPU tests (torch.compile); run with TSA_SLOW_TESTS=1")


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("warehouse")


@pytest.fixture(scope="session")
def write_orders(spark):  # type: ignore[no-untyped-def]
    """Write tiny order rows (oid, cust, card, ts, mcc, amount, y, age) as a Delta table; returns its path."""
    from pyspark.sql.types import DoubleType, IntegerType, LongType, StringType, StructField, StructType, \
        TimestampType

    schema = StructType([StructField("oid", LongType()), StructField("cust", StringType()),
                         StructField("card", StringType()), StructField("ts", TimestampType()),
                         StructField("mcc", StringType()), StructField("amount", DoubleType()),
                         StructField("y", IntegerType()), StructField("age", DoubleType())])

    def write(rows: list, path: Path) -> str:
        spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite").save(str(path))
        return str(path)

    return write


@pytest.fixture(scope="session")
def spark(warehouse: Path) -> Iterator["object"]:
    from tsa_lib.config import SparkConfig, StorageConfig
    from tsa_lib.spark.session import get_spark

    s = get_spark(SparkConfig(master="local[2]", shuffle_partitions=2, driver_memory="2g",
                              app_name="tsa-tests"), StorageConfig(warehouse=str(warehouse)))
    yield s
    s.stop()
