"""A real Delta round trip on local Spark: create, write, replace one date, read off-Spark."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest

from tsa_lib.config import TableSource
from tsa_lib.spark.delta_io import ensure_table, read_source, replace_partitions

D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)


def _schema():  # type: ignore[no-untyped-def]
    from pyspark.sql.types import DateType, DoubleType, LongType, StructField, StructType

    return StructType([StructField("id", LongType(), False), StructField("v", DoubleType(), True),
                       StructField("ds", DateType(), False)])


def test_replace_one_partition_leaves_others(spark, warehouse: Path) -> None:  # type: ignore[no-untyped-def]
    from delta.tables import DeltaTable

    path = str(warehouse / "t_roundtrip")
    ensure_table(spark, path, _schema(), "tsa_test.roundtrip")
    rows = [(1, 1.0, D1), (2, 2.0, D1), (3, 3.0, D2), (4, 4.0, D3)]
    replace_partitions(spark.createDataFrame(rows, _schema()), path, [D1, D2, D3], {"run_id": "r1"})
    replace_partitions(spark.createDataFrame([(5, 50.0, D2)], _schema()), path, [D2], {"run_id": "r2"})
    got = sorted((r.id, r.v, r.ds) for r in spark.read.format("delta").load(path).collect())
    assert got == [(1, 1.0, D1), (2, 2.0, D1), (4, 4.0, D3), (5, 50.0, D2)]
    # registered name works from SQL
    assert spark.sql("SELECT count(*) AS n FROM tsa_test.roundtrip WHERE ds = DATE'2026-01-02'").first().n == 1
    # the commit carries the run metadata; deletion vectors are off
    last = DeltaTable.forPath(spark, path).history(1).first()
    assert json.loads(last.userMetadata)["run_id"] == "r2"
    props = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}
    assert props["delta.enableDeletionVectors"] == "false"


def test_replace_rejects_rows_outside_dates(spark, warehouse: Path) -> None:  # type: ignore[no-untyped-def]
    path = str(warehouse / "t_guard")
    ensure_table(spark, path, _schema())
    replace_partitions(spark.createDataFrame([(1, 1.0, D1)], _schema()), path, [D1])
    with pytest.raises(Exception, match="(?i)replaceWhere|DELTA_REPLACE_WHERE"):
        replace_partitions(spark.createDataFrame([(2, 2.0, D2)], _schema()), path, [D1])
    with pytest.raises(ValueError, match="no dates"):
        replace_partitions(spark.createDataFrame([(2, 2.0, D2)], _schema()), path, [])
    assert [r.id for r in spark.read.format("delta").load(path).collect()] == [1]


def test_deltalake_reads_suite_tables(spark, warehouse: Path) -> None:  # type: ignore[no-untyped-def]
    import deltalake

    path = str(warehouse / "t_offspark")
    ensure_table(spark, path, _schema())
    replace_partitions(spark.createDataFrame([(7, 0.5, D1), (8, None, D2)], _schema()), path, [D1, D2])
    t = deltalake.DeltaTable(path).to_pyarrow_table(filters=[("ds", "=", D2)])
    assert t.column("id").to_pylist() == [8]


def test_existing_table_missing_columns_is_an_error(spark, warehouse: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql.types import StringType, StructField, StructType

    path = str(warehouse / "t_schema")
    ensure_table(spark, path, _schema())
    wider = StructType(_schema().fields + [StructField("extra", StringType(), True)])
    with pytest.raises(ValueError, match=r"without columns \['extra'\]"):
        ensure_table(spark, path, wider)


def test_read_source_errors(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_source(spark, TableSource(path=str(tmp_path / "nothing")))


def test_stats_columns(spark, warehouse: Path) -> None:  # type: ignore[no-untyped-def]
    """Per-file statistics only for the named columns; numRecords stays (training splits on it)."""
    from deltalake import DeltaTable as RsTable

    path = str(warehouse / "t_stats")
    ensure_table(spark, path, _schema(), stats_columns=("id",))
    replace_partitions(spark.createDataFrame([(1, 1.0, D1), (7, 2.0, D1)], _schema()), path, [D1])
    props = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}
    assert props["delta.dataSkippingStatsColumns"] == "id"
    adds = pa.table(RsTable(path).get_add_actions(flatten=False)).to_pylist()
    assert sum(a["num_records"] for a in adds) == 2
    assert all(set(a["min"]) == {"id"} and set(a["null_count"]) == {"id"} for a in adds)
    with pytest.raises(ValueError, match=r"stats_columns: \['nope'\] are not columns"):
        ensure_table(spark, str(warehouse / "t_stats_bad"), _schema(), stats_columns=("nope",))
