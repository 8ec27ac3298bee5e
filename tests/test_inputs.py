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


# ---- a hostile input: every planted row accounted for by id, through the sequence and examples jobs ----

def _ms(s: str) -> int:
    return int(dt.datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp() * 1000)


N = None
HOSTILE = [  # oid, cust, card, ts (epoch ms), mcc, amount, y, label time (epoch ms); the run date is 01-03
    (1, "A", "K1", _ms("2026-01-01 10:00"), "fuel", 10.0, 0, N),
    (2, "A", "K1", _ms("2026-01-02 09:00"), "grocery", 20.0, 0, N),
    (3, "B", "K2", _ms("2026-01-02 10:00"), "fuel", 30.0, 1, _ms("2026-01-02 20:00")),
    (4, "B", "K2", _ms("2026-01-02 11:00"), "grocery", 40.0, 0, N),
    (10, "A", "K1", _ms("2026-01-03 09:00"), "fuel", 15.0, 0, N),
    (11, "B", "K2", _ms("2026-01-03 10:00"), "  ", 25.0, N, N),          # a blank category: a null, kept
    (12, "C", "K1", _ms("2026-01-03 11:00"), "grocery", 35.0, 1, _ms("2026-01-03 12:00")),  # no features row
    (13, "A", "K1", _ms("2026-01-03 12:00"), "fuel", 45.0, 0, N),         # two features rows
    (14, "B", "K2", _ms("2026-01-04 11:00"), "fuel", 5.0, 0, N),          # the next night
    (20, N, "K1", _ms("2026-01-03 13:00"), "fuel", 1.0, 0, N),            # null_key
    (21, "A", "K1", _ms("2026-01-03 13:00"), "fuel", float("nan"), 0, N),  # non_finite
    (22, "A", "K1", _ms("2026-01-03 13:00"), "fuel", 5e6, 0, N),          # out_of_range
    (23, "B", "K2", _ms("2026-01-03 13:00"), "fuel", 1.0, 2, N),          # bad_label
    (24, "B", "K2", _ms("2026-01-03 13:00"), "fuel", 1.0, 1, _ms("2026-01-03 12:00")),  # bad_label_time
    (25, "C", "K1", _ms("2026-01-03 14:00"), "fuel", 1.0, 0, N),
    (25, "C", "K1", _ms("2026-01-03 14:00"), "fuel", 2.0, 0, N),          # duplicate_order_id
    (5, "A", "K1", N, "fuel", 1.0, 0, N),                                 # undatable: no time
    (6, "B", "K2", _ms("2099-01-01 00:00"), "fuel", 1.0, 0, N),          # undatable: the future
    (7, "A", "K1", -86_400_000, "fuel", 1.0, 0, N),                       # undatable: a negative epoch
    (8, "B", "K2", _ms("2026-01-03 12:00") // 1000, "fuel", 1.0, 0, N),  # undatable: seconds among ms
]
PLANTED = {20: "null_key", 21: "non_finite", 22: "out_of_range", 23: "bad_label", 24: "bad_label_time",
           25: "duplicate_order_id", 5: "bad_event_time", 6: "bad_event_time", 7: "bad_event_time",
           8: "bad_event_time"}


def _hostile(folder: Path) -> tuple[str, str]:
    cols = list(zip(*HOSTILE))
    t = pa.table({"oid": pa.array(cols[0], pa.int64()), "cust": pa.array(cols[1], pa.string()),
                  "card": cols[2], "ts": pa.array(cols[3], pa.int64()), "mcc": cols[4],
                  "amount": pa.array(cols[5], pa.float64()), "y": pa.array(cols[6], pa.int32()),
                  "yt": pa.array(cols[7], pa.int64())})
    feats = pa.table({"oid": pa.array([1, 2, 3, 4, 10, 11, 13, 13, 14, 20, 21, 22, 23, 24, 25], pa.int64()),
                      "age": pa.array([5.0, 5.0, 6.0, 6.0, 5.0, 6.0, 7.0, 9.0, 6.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])})
    for name, tbl in (("transactions", t), ("order_features", feats)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(tbl, folder / name / "part-0.parquet")
    return str(folder / "transactions"), str(folder / "order_features")


def _hostile_cfg(tmp_path: Path, unit: str = "ms") -> SuiteConfig:
    from tsa_lib.config import EncoderConfig, SequenceConfig, StorageConfig

    tx, feats = _hostile(tmp_path / "in")
    return SuiteConfig(input=InputConfig(transactions=TableSource(path=tx, format="parquet"),
                                         order_features=TableSource(path=feats, format="parquet")),
                       columns=ColumnsConfig(**{**COLS.__dict__, "event_time_unit": unit, "label_time": "yt",
                                                "engineered": ("age",)}),
                       quality=QualityConfig(numeric_ranges={"amount": (0.0, 1e6)}),
                       storage=StorageConfig(warehouse=str(tmp_path / "wh"), database="hostile"),
                       sequences=SequenceConfig(max_len=3, max_history_days=30.0),
                       encoders=EncoderConfig(min_frequency=1, quantile_low=0.0, quantile_high=1.0))


def _ctx(day: int, run_id: str):  # type: ignore[no-untyped-def]
    from tsa_lib.cli import RunContext

    return RunContext(job="t", run_id=run_id, dates=(dt.date(2026, 1, day),),
                      started_at=dt.datetime(2026, 1, 5, tzinfo=UTC))


def _run(spark, cfg: SuiteConfig, day: int, run_id: str):  # type: ignore[no-untyped-def]
    from tsa_lib.spark.build_sequences import run_build_sequences

    return run_build_sequences(spark, cfg, _ctx(day, run_id))


def test_a_hostile_input_every_planted_row_accounted_for(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from tsa_lib.spark.encoders import fit_encoders
    from tsa_lib.spark.examples import run_build_examples

    cfg = _hostile_cfg(tmp_path)
    s = _run(spark, cfg, 3, "r3")
    quarantine = spark.read.format("delta").load(cfg.storage.table_path("quarantine"))
    q = {int(r.order_id): r for r in quarantine.filter(F.col("ds") == dt.date(2026, 1, 3)).collect()}
    assert {i: r.reason for i, r in q.items()} == PLANTED
    assert q[6].detail.startswith("ts=4070908800000 reads as 2099-01-01 00:00:00 UTC, outside the plausible "
                                  "[2000-01-01, 2026-01-06 00:00]")
    assert "reads as 1969-12-31" in q[7].detail and "reads as 1970-01-21" in q[8].detail
    assert q[5].detail == "ts=null" and q[6].raw is not None and q[6].event_time is None
    assert q[23].detail == "y=2 is not 0, 1 or null" and q[22].detail.startswith("amount=5000000.0 not in")
    # input 15 (11 rows dated 01-03 + 4 undatable) = clean 5 (10, 11, 12, 13, 25) + quarantined 10
    assert (s.input_rows, s.clean_targets, s.quarantined_input, s.undatable_seen) == (15, 5, 10, 0)
    seq = spark.read.format("delta").load(cfg.storage.table_path("sequences_customer")).filter(F.col("entity_id") == "B")
    assert seq.first().mcc == ["fuel", "grocery", "__null__"]        # the blank category is a null

    enc = fit_encoders(spark, cfg, dt.date(2026, 1, 1), dt.date(2026, 1, 2))
    e = run_build_examples(spark, cfg, _ctx(3, "r3"), enc)
    assert (e.targets, e.examples, e.quarantined, e.without_features) == (5, 5, 0, 1)
    assert [(r.order_id, r.reason) for r in quarantine.filter(F.col("job") == "build_examples").collect()] == \
        [("13", "duplicate_order_features")]

    s4 = _run(spark, cfg, 4, "r4")       # the next night: the undatable rows are not recorded again
    assert (s4.input_rows, s4.clean_targets, s4.quarantined_input, s4.undatable_seen) == (5, 1, 0, 4)
    again = _run(spark, cfg, 3, "r3b")   # a rerun of 01-03 replaces its rows: recorded there again
    assert (again.quarantined_input, again.undatable_seen) == (10, 0)
    assert quarantine.filter("reason = 'bad_event_time'").count() == 4


def test_an_epoch_unit_mismatch_is_an_error(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.spark.build_sequences import EventTimeUnitError

    cfg = _hostile_cfg(tmp_path, unit="s")
    with pytest.raises(EventTimeUnitError, match=r"columns.event_time: 16 rows of 'ts' read as epoch seconds fall "
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
