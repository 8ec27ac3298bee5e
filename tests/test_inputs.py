"""Schema drift in the user's input: a day's Parquet file without a configured column, or with a
column of another type, is named before anything is read (or, when configured, defaulted)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tsa_lib.config import ColumnsConfig, InputConfig, QualityConfig, SuiteConfig, TableSource
from tsa_lib.spark.schema_check import SchemaDriftError

COLS = ColumnsConfig(order_id="oid", customer_id="cust", card_id="card", event_time="ts", label="y",
                     categorical=("mcc",), numerical=("amount",), engineered=())
UTC = dt.timezone.utc


def _day(folder: Path, day: int, drop: tuple[str, ...] = (), amount_type: pa.DataType = pa.float64()) -> Path:
    t = pa.table({"oid": pa.array([day * 10 + 1, day * 10 + 2], pa.int64()), "cust": ["A", "B"], "card": ["K1", "K2"],
                  "ts": pa.array([dt.datetime(2026, 1, day, 9, tzinfo=UTC), dt.datetime(2026, 1, day, 10, tzinfo=UTC)],
                                 pa.timestamp("us", tz="UTC")),
                  "mcc": ["fuel", "grocery"], "amount": pa.array(["1.5", "2.5"]).cast(amount_type),
                  "y": pa.array([0, 1], pa.int32())})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"day={day:02d}.parquet"
    pq.write_table(t.drop_columns(list(drop)), path)
    return path


def _cfg(folder: Path, missing: str = "fail") -> SuiteConfig:
    return SuiteConfig(input=InputConfig(transactions=TableSource(path=str(folder), format="parquet")), columns=COLS,
                       quality=QualityConfig(missing_columns=missing))  # type: ignore[arg-type]


def _read(spark, cfg: SuiteConfig):  # type: ignore[no-untyped-def]
    from tsa_lib.spark.inputs import read_transactions

    raw, _ = read_transactions(spark, cfg, None, dt.datetime(2026, 2, 1))
    return raw


def test_a_file_without_a_configured_column_fails_by_default(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _day(tmp_path / "in", 1)
    bad = _day(tmp_path / "in", 2, drop=("mcc",))
    with pytest.raises(SchemaDriftError, match=f"input.transactions: file '{bad}' lacks configured column\\(s\\) "
                                               r"\['mcc'\] \(schema drift\)"):
        _read(spark, _cfg(tmp_path / "in"))


def test_missing_columns_can_be_read_as_defaults(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.spark.quality import check_quality

    _day(tmp_path / "in", 1)
    _day(tmp_path / "in", 2, drop=("mcc",))
    cfg = _cfg(tmp_path / "in", missing="default")
    clean = check_quality(_read(spark, cfg), COLS, cfg.quality).clean
    assert {r._order_id: r.mcc for r in clean.collect()} == {11: "fuel", 12: "grocery", 21: "__null__",
                                                             22: "__null__"}


def test_a_retyped_column_fails(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _day(tmp_path / "in", 1)
    bad = _day(tmp_path / "in", 3, amount_type=pa.string())
    with pytest.raises(SchemaDriftError, match=f"file '{bad}' has retyped column\\(s\\): amount is string, "
                                               "expected a number"):
        _read(spark, _cfg(tmp_path / "in"))


def test_a_retyped_delta_column_fails(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    t = pq.read_table(_day(tmp_path / "p", 1, amount_type=pa.string()))
    spark.createDataFrame(t.to_pandas()).write.format("delta").save(str(tmp_path / "d"))
    cfg = SuiteConfig(input=InputConfig(transactions=TableSource(path=str(tmp_path / "d"))), columns=COLS)
    with pytest.raises(SchemaDriftError, match="input.transactions: retyped column\\(s\\): amount is string, "
                                               "expected a number"):
        _read(spark, cfg)
