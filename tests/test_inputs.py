"""Schema drift in the user's input: a day's Parquet file without a configured column, or with a
column of another type, is named before anything is read (or, when configured, defaulted)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tsa_lib.config import PROJECT_ROOT, ColumnsConfig, InputConfig, QualityConfig, SuiteConfig, TableSource, \
    load_config
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


# ---- event times: epoch units, implausible instants, undatable rows quarantined once ----

def _ms(s: str) -> int:
    return int(dt.datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp() * 1000)


HOSTILE_TIMES = {  # order id -> (customer, event time in epoch ms, planted problem or None)
    1: ("A", _ms("2026-01-02 09:00"), None), 2: ("A", _ms("2026-01-03 09:00"), None),
    3: ("B", _ms("2026-01-03 10:00"), None), 4: ("B", _ms("2026-01-04 11:00"), None),
    5: ("A", None, "null"), 6: ("B", _ms("2099-01-01 00:00"), "future"), 7: ("A", -86_400_000, "negative"),
    8: ("B", _ms("2026-01-03 12:00") // 1000, "seconds among milliseconds"),
}


def _hostile(folder: Path) -> str:
    ids = sorted(HOSTILE_TIMES)
    t = pa.table({"oid": pa.array(ids, pa.int64()), "cust": [HOSTILE_TIMES[i][0] for i in ids],
                  "card": ["K1"] * len(ids), "ts": pa.array([HOSTILE_TIMES[i][1] for i in ids], pa.int64()),
                  "mcc": ["fuel"] * len(ids), "amount": [1.0] * len(ids), "y": pa.array([0] * len(ids), pa.int32())})
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, folder / "part-0.parquet")
    return str(folder)


def _hostile_cfg(tmp_path: Path, unit: str = "ms") -> SuiteConfig:
    from tsa_lib.config import SequenceConfig, StorageConfig

    return SuiteConfig(input=InputConfig(transactions=TableSource(path=_hostile(tmp_path / "in"), format="parquet")),
                       columns=ColumnsConfig(**{**COLS.__dict__, "event_time_unit": unit}),
                       storage=StorageConfig(warehouse=str(tmp_path / "wh"), database="hostile_times"),
                       sequences=SequenceConfig(max_len=3, max_history_days=30.0))


def _run(spark, cfg: SuiteConfig, day: int, run_id: str):  # type: ignore[no-untyped-def]
    from tsa_lib.cli import RunContext
    from tsa_lib.spark.build_sequences import run_build_sequences

    return run_build_sequences(spark, cfg, RunContext(job="build_sequences", run_id=run_id,
                                                      dates=(dt.date(2026, 1, day),),
                                                      started_at=dt.datetime(2026, 1, 5, tzinfo=UTC)))


def test_event_times_in_milliseconds_and_implausible_ones_quarantined_once(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    cfg = _hostile_cfg(tmp_path)
    s = _run(spark, cfg, 3, "r3")
    q = {int(r.order_id): r for r in spark.read.format("delta").load(cfg.storage.table_path("quarantine"))
         .filter(F.col("ds") == dt.date(2026, 1, 3)).collect()}
    planted = {i for i, v in HOSTILE_TIMES.items() if v[2]}
    assert set(q) == planted and {r.reason for r in q.values()} == {"bad_event_time"}
    assert q[6].detail.startswith("ts=4070908800000 reads as 2099-01-01 00:00:00 UTC, outside the plausible "
                                  "[2000-01-01, 2026-01-06 00:00]")
    assert "reads as 1969-12-31" in q[7].detail and "reads as 1970-01-21" in q[8].detail
    assert q[5].detail == "ts=null" and q[6].raw is not None and q[6].event_time is None
    # input = the day's two orders + the four undatable rows; every planted row accounted for by id
    assert (s.input_rows, s.clean_targets, s.quarantined_input, s.undatable_seen) == (6, 2, 4, 0)

    s4 = _run(spark, cfg, 4, "r4")       # the next night: the undatable rows are not recorded again
    assert (s4.input_rows, s4.clean_targets, s4.quarantined_input, s4.undatable_seen) == (5, 1, 0, 4)
    again = _run(spark, cfg, 3, "r3b")   # a rerun of 01-03 replaces its rows: recorded there again
    assert (again.quarantined_input, again.undatable_seen) == (4, 0)
    n = spark.read.format("delta").load(cfg.storage.table_path("quarantine")).filter("reason = 'bad_event_time'")
    assert n.count() == 4


def test_an_epoch_unit_mismatch_is_an_error(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.spark.build_sequences import EventTimeUnitError

    cfg = _hostile_cfg(tmp_path, unit="s")
    with pytest.raises(EventTimeUnitError, match=r"columns.event_time: 4 rows of 'ts' read as epoch seconds fall "
                                                 r"outside \[2000-01-01, 2026-01-06\] but are plausible as epoch "
                                                 r"milliseconds, against 1 plausible rows on the run dates \(e.g. .*"
                                                 r"\): is columns.event_time_unit \('s'\) right\?"):
        _run(spark, cfg, 3, "r3")
    assert not Path(cfg.storage.table_path("sequences_customer")).exists()


def test_plausible_time_config_errors() -> None:
    from tsa_lib.config import ConfigError

    with pytest.raises(ConfigError, match=r"quality.min_event_time: '2026-13-01' is not an ISO date"):
        QualityConfig(min_event_time="2026-13-01")
    with pytest.raises(ConfigError, match=r"quality.max_future_days: must be >= 0, got -1"):
        QualityConfig(max_future_days=-1)
    with pytest.raises(ConfigError, match=r"columns.event_time_unit: 'ns' is not one of \['s', 'ms', 'us'\]"):
        load_config(PROJECT_ROOT / "conf" / "local.yaml", overrides={"columns": {"event_time_unit": "ns"}})
