"""Order aggregation: exact windows on a hand-written example, quarantine, re-runs, backfills,
and a property test (no future data, nothing lost, windows equal a brute-force reference)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsa_lib.cli import RunContext
from tsa_lib.config import ColumnsConfig, InputConfig, QualityConfig, SequenceConfig, StorageConfig, SuiteConfig, \
    TableSource
from tsa_lib.features.windows import window_order_ids
from tsa_lib.spark.build_sequences import ReconciliationError, BuildSummary, reconcile, run_build_sequences
from tsa_lib.spark.quality import check_quality
from tsa_lib.spark.sequences import build_sequences

COLS = ColumnsConfig(order_id="oid", customer_id="cust", card_id="card", event_time="ts", label="y",
                     categorical=("mcc",), numerical=("amount",))
D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)


def T(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


# (oid, cust, card, ts, mcc, amount, label)
ROWS: list[tuple[Any, ...]] = [
    (11, "A", "K2", T("2025-11-01 09:00"), "fuel", 30.0, 0),    # older than max_history_days
    (1, "A", "K1", T("2026-01-01 10:00"), "grocery", 10.0, 0),
    (2, "A", "K2", T("2026-01-01 12:00"), "fuel", 20.0, 0),
    (3, "B", "K1", T("2026-01-02 09:00"), "coffee", 3.0, 0),
    (4, "A", "K1", T("2026-01-03 08:00"), "grocery", 15.0, 0),
    (5, "A", "K1", T("2026-01-03 08:00"), None, 50.0, 1),       # tie with 4; null category -> default
    (6, "B", "K1", T("2026-01-03 09:30"), "coffee", None, 0),   # null amount -> default
    (7, "A", "K2", T("2026-01-03 20:00"), "electronics", 300.0, 1),
    (8, "C", "K3", T("2026-01-03 11:00"), "grocery", 12.0, 0),  # empty history
    (10, "A", "K1", T("2026-01-04 10:00"), "grocery", 11.0, 0),  # the future
    # bad rows on the run date
    (12, None, "K1", T("2026-01-03 10:00"), "grocery", 1.0, 0),
    (13, "A", "K1", T("2026-01-03 10:00"), "grocery", float("nan"), 0),
    (6, "B", "K1", T("2026-01-03 09:45"), "coffee", 4.5, 0),     # duplicate id, later copy
    (15, "A", "K1", None, "grocery", 5.0, 0),
    (16, "A", "K1", T("2026-01-03 10:00"), "grocery", -5.0, 0),
]
EXPECTED_CUSTOMER = {"4": ["1", "2", "4"], "5": ["1", "2", "5"], "7": ["2", "4", "5", "7"], "6": ["3", "6"],
                     "8": ["8"]}
EXPECTED_CARD = {"4": ["1", "3", "4"], "5": ["1", "3", "5"], "6": ["3", "4", "5", "6"], "7": ["2", "7"], "8": ["8"]}
EXPECTED_REASONS = {"12": "null_key", "13": "non_finite", "6": "duplicate_order_id", "15": "bad_event_time",
                    "16": "out_of_range"}


def _schema():  # type: ignore[no-untyped-def]
    from pyspark.sql.types import DoubleType, IntegerType, LongType, StringType, StructField, StructType, \
        TimestampType

    return StructType([StructField("oid", LongType()), StructField("cust", StringType()),
                       StructField("card", StringType()), StructField("ts", TimestampType()),
                       StructField("mcc", StringType()), StructField("amount", DoubleType()),
                       StructField("y", IntegerType())])


def _cfg(warehouse: Path, db: str, src: str, max_len: int = 3) -> SuiteConfig:
    return SuiteConfig(
        input=InputConfig(transactions=TableSource(path=src)),
        columns=COLS,
        storage=StorageConfig(warehouse=str(warehouse), database=db),
        sequences=SequenceConfig(max_len=max_len, max_history_days=30.0, max_orders_per_entity_day=100),
        quality=QualityConfig(numeric_ranges={"amount": (0.0, 1e6)}),
    )


@pytest.fixture(scope="module")
def example(spark, warehouse: Path) -> SuiteConfig:  # type: ignore[no-untyped-def]
    src = str(warehouse / "seq_example_input")
    spark.createDataFrame(ROWS, _schema()).write.format("delta").mode("overwrite").save(src)
    return _cfg(warehouse, "seqtest", src)


def _ctx(*dates: dt.date, run_id: str = "r1") -> RunContext:
    return RunContext(job="build_sequences", run_id=run_id, dates=tuple(dates),
                      started_at=dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc))


def _table(spark, cfg: SuiteConfig, name: str, ds: dt.date | None = None) -> pa.Table:  # type: ignore[no-untyped-def]
    df = spark.read.format("delta").load(cfg.storage.table_path(name))
    if ds is not None:
        df = df.filter(df.ds == ds)
    return df.orderBy("entity_id", "ds").toArrow()


def test_exact_windows_and_quarantine(spark, example: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    s = run_build_sequences(spark, example, _ctx(D3))
    assert (s.input_rows, s.clean_targets, s.quarantined_input) == (10, 5, 5)
    assert s.reasons == {"null_key": 1, "non_finite": 1, "duplicate_order_id": 1, "bad_event_time": 1,
                         "out_of_range": 1}
    cust = _table(spark, example, "sequences_customer")
    assert window_order_ids(cust, 3, 30 * 86400) == EXPECTED_CUSTOMER
    card = _table(spark, example, "sequences_card")
    assert window_order_ids(card, 3, 30 * 86400) == EXPECTED_CARD
    # one row per (entity, ds): context then the day's targets, with defaults for nulls
    a = {r["entity_id"]: r for r in cust.to_pylist()}["A"]
    assert (a["n_context"], a["n_targets"]) == (2, 3)
    assert a["order_id"] == ["1", "2", "4", "5", "7"]
    assert a["mcc"] == ["grocery", "fuel", "grocery", "__null__", "electronics"]
    assert {r["entity_id"]: r for r in cust.to_pylist()}["B"]["amount"] == [3.0, 0.0]
    assert "y" not in cust.column_names and "is_fraud" not in cust.column_names  # labels never stored
    q = spark.sql("SELECT order_id, reason, detail, job, stage FROM seqtest.quarantine").collect()
    assert {r.order_id: r.reason for r in q} == EXPECTED_REASONS
    detail = {r.order_id: r.detail for r in q}
    assert detail["13"] == "amount=NaN" and detail["16"] == "amount=-5.0 not in [0.0, 1000000.0]"
    assert all(r.job == "build_sequences" and r.stage == "input" for r in q)
    # registered for SQL
    assert spark.sql("SELECT sum(n_targets) AS n FROM seqtest.sequences_card WHERE ds = DATE'2026-01-03'"
                     ).first().n == 5


def test_rerun_is_idempotent(spark, example: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    run_build_sequences(spark, example, _ctx(D3, run_id="first"))
    before = _table(spark, example, "sequences_customer").drop(["run_id"])
    run_build_sequences(spark, example, _ctx(D3, run_id="second"))
    after = _table(spark, example, "sequences_customer")
    assert set(after.column("run_id").to_pylist()) == {"second"}
    assert after.drop(["run_id"]).equals(before)
    q = spark.read.format("delta").load(example.storage.table_path("quarantine")).filter("ds = '2026-01-03'")
    assert q.count() == 5


def test_backfill_three_dates(spark, example: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    s = run_build_sequences(spark, example, _ctx(D1, D2, D3, run_id="bf"))
    assert s.clean_targets == 8 and s.entity_targets == {"customer": 8, "card": 8}
    cust = _table(spark, example, "sequences_customer")
    w = window_order_ids(cust, 3, 30 * 86400)
    assert w["1"] == ["1"] and w["2"] == ["1", "2"] and w["3"] == ["3"]
    assert {k: v for k, v in w.items() if k in EXPECTED_CUSTOMER} == EXPECTED_CUSTOMER
    ds = sorted(set(cust.column("ds").to_pylist()))
    assert ds == [D1, D2, D3]
    # a single-date re-run afterwards replaces only that date
    run_build_sequences(spark, example, _ctx(D2, run_id="only-d2"))
    runs = {(r["ds"], r["run_id"]) for r in _table(spark, example, "sequences_customer").to_pylist()}
    assert runs == {(D1, "bf"), (D2, "only-d2"), (D3, "bf")}


def test_daily_cap_quarantines_excess(spark, warehouse: Path, example: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg(warehouse, "seqcap", example.input.transactions.path or "")
    cfg = cfg.replace(sequences=SequenceConfig(max_len=3, max_history_days=30.0, max_orders_per_entity_day=2))
    s = run_build_sequences(spark, cfg, _ctx(D3))
    # card K1 has 3 orders on D3 (4, 5, 6): the last one in (time, id) order is over the cap
    assert s.entity_capped == {"customer": 1, "card": 1}
    q = spark.sql("SELECT order_id, stage, detail FROM seqcap.quarantine WHERE reason = 'entity_daily_cap'").collect()
    assert sorted((r.order_id, r.stage) for r in q) == [("6", "sequences_card"), ("7", "sequences_customer")]
    assert "card K1 has more than 2 orders on 2026-01-03" in {r.detail for r in q}
    raws = spark.sql("SELECT raw FROM seqcap.quarantine WHERE reason = 'entity_daily_cap'").collect()
    assert all(r.raw and '"_order_id":' in r.raw and '"amount":' in r.raw for r in raws)   # the row, as read


def test_the_built_shape_is_recorded_and_enforced(spark, example: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    """The sequences tables record max_len and feedback_reports; a build of another shape into
    them, or encoders cutting longer windows than the rows hold, is an error naming both."""
    import dataclasses

    from tsa_lib.errors import DataError
    from tsa_lib.features.encoders import Encoders, Scaler
    from tsa_lib.spark.delta_io import table_properties
    from tsa_lib.spark.examples import encoded_sequences

    run_build_sequences(spark, example, _ctx(D3))
    path = example.storage.table_path("sequences_customer")
    props = table_properties(spark, path)
    assert (props["tsa.sequences.max_len"], props["tsa.sequences.feedback_reports"]) == ("3", "0")
    longer = dataclasses.replace(example, sequences=dataclasses.replace(example.sequences, max_len=5))
    with pytest.raises(DataError, match=r"was built with max_len=3; this config has max_len=5: rebuild"):
        run_build_sequences(spark, longer, _ctx(D3, run_id="r-longer"))
    assert {r.run_id for r in spark.read.format("delta").load(path).collect()} != {"r-longer"}

    def enc(max_len: int) -> Encoders:
        return Encoders(version="e", config_hash="x", window_start="2026-01-01", window_end="2026-01-02",
                        categorical=("mcc",), numerical=("amount",), engineered=(), vocab={"mcc": ("fuel",)},
                        numeric_scalers={"amount": Scaler(0.0, 1.0)}, engineered_scalers={}, max_len=max_len,
                        max_history_days=30.0)

    encoded_sequences(spark, example, enc(3), [D3], "customer")          # the built length: fine
    with pytest.raises(DataError, match=r"was built with max_len=3 but the encoders e cut windows of 5"):
        encoded_sequences(spark, example, enc(5), [D3], "customer")


def test_bad_arguments(spark, example: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    clean = check_quality(spark.createDataFrame(ROWS, _schema()), COLS, QualityConfig()).clean
    with pytest.raises(ValueError, match="entity: 'merchant'"):
        build_sequences(clean, [D3], "merchant", COLS, SequenceConfig(), "r")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dates"):
        build_sequences(clean, [], "customer", COLS, SequenceConfig(), "r")
    with pytest.raises(ValueError, match="run-date"):
        run_build_sequences(spark, example, _ctx())
    bad_cols = ColumnsConfig(order_id="oid", customer_id="cust", card_id="card", event_time="when",
                             categorical=("mcc",), numerical=("amount",))
    with pytest.raises(ValueError, match="columns.event_time: column 'when'"):
        run_build_sequences(spark, example.replace(columns=bad_cols), _ctx(D3))
    missing = ColumnsConfig(order_id="oid", customer_id="cust", card_id="card", event_time="ts",
                            categorical=("mcc", "country"), numerical=("amount",))
    with pytest.raises(ValueError, match=r"\['country'\] not found"):
        check_quality(spark.createDataFrame(ROWS, _schema()), missing, QualityConfig())


def test_blank_categories_are_nulls_unless_configured(spark) -> None:  # type: ignore[no-untyped-def]
    rows = [(1, "A", "K1", T("2026-01-03 08:00"), "", 1.0, 0), (2, "A", "K1", T("2026-01-03 09:00"), "  ", 1.0, 0),
            (3, "A", "K1", T("2026-01-03 10:00"), "fuel", 1.0, 0)]
    df = spark.createDataFrame(rows, _schema())
    got = {r._order_id: r.mcc for r in check_quality(df, COLS, QualityConfig()).clean.collect()}
    assert got == {1: "__null__", 2: "__null__", 3: "fuel"}
    kept = {r._order_id: r.mcc for r in check_quality(df, COLS, QualityConfig(blank_is_null=False)).clean.collect()}
    assert kept == {1: "", 2: "  ", 3: "fuel"}


def test_a_run_date_without_orders_is_an_error(spark, example: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    from delta.tables import DeltaTable

    from tsa_lib.spark.build_sequences import EmptyRunDateError

    path = example.storage.table_path("sequences_customer")

    def rows() -> int:
        return spark.read.format("delta").load(path).count() if DeltaTable.isDeltaTable(spark, path) else 0

    before = rows()
    empty = dt.date(2026, 1, 20)
    with pytest.raises(EmptyRunDateError, match=r"no input orders for 2026-01-20 in input.transactions: .* "
                                                r"\(--allow-empty .*\); nothing written"):
        run_build_sequences(spark, example, _ctx(D3, empty))
    assert rows() == before
    s = run_build_sequences(spark, example, _ctx(empty, run_id="empty"), allow_empty=True)
    # the undated row: quarantined by the earlier run of D3, not again under this date
    assert (s.input_rows, s.clean_targets, s.reasons, s.undatable_seen) == (1, 0, {}, 1)


def test_reconcile_detects_loss() -> None:
    s = BuildSummary(dates=(D3,), input_rows=10, quarantined_input=5, clean_targets=5,
                     entity_targets={"customer": 4}, entity_capped={"customer": 0})
    with pytest.raises(ReconciliationError, match="customer sequences hold 4 targets, expected 5"):
        reconcile(s)
    s2 = BuildSummary(dates=(D3,), input_rows=11, quarantined_input=5, clean_targets=5)
    with pytest.raises(ReconciliationError, match="input rows 11"):
        reconcile(s2)


# ---- property: no future data, nothing lost, exactly the brute-force windows -------------------------

def _brute_windows(rows: list[tuple[Any, ...]], key: int, targets: set[dt.date], max_len: int,
                   max_age: float) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in rows:
        if r[3].date() not in targets:
            continue
        hist = sorted((x[3], x[0]) for x in rows
                      if x[key] == r[key] and x[3] < r[3] and (r[3] - x[3]).total_seconds() <= max_age)
        out[str(r[0])] = [str(o) for _, o in hist[-max_len:]] + [str(r[0])]
    return out


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.data())
def test_property_point_in_time(spark, data) -> None:  # type: ignore[no-untyped-def]
    n = data.draw(st.integers(20, 60))
    base = dt.datetime(2026, 3, 1)
    # few distinct minutes over 4 days: many ties
    minutes = data.draw(st.lists(st.integers(0, 4 * 24 * 6 - 1), min_size=n, max_size=n))
    custs = data.draw(st.lists(st.sampled_from("PQR"), min_size=n, max_size=n))
    cards = data.draw(st.lists(st.sampled_from(["k1", "k2"]), min_size=n, max_size=n))
    max_len = data.draw(st.integers(1, 5))
    rows = [(i + 1, custs[i], cards[i], base + dt.timedelta(minutes=10 * minutes[i]), "m", float(i), 0)
            for i in range(n)]
    targets = {dt.date(2026, 3, 3), dt.date(2026, 3, 4)}
    seq = SequenceConfig(max_len=max_len, max_history_days=1.5)
    clean = check_quality(spark.createDataFrame(rows, _schema()), COLS, QualityConfig()).clean
    for entity, key in (("customer", 1), ("card", 2)):
        res = build_sequences(clean, sorted(targets), entity, COLS, seq, "p")  # type: ignore[arg-type]
        got = window_order_ids(res.rows.toArrow(), max_len, 1.5 * 86400)
        expect = _brute_windows(rows, key, targets, max_len, 1.5 * 86400)
        assert got == expect  # nothing lost, nothing extra, exact windows
        ts = {str(r[0]): r[3] for r in rows}
        for target, window in got.items():  # no future (or simultaneous) order in any history
            assert all(ts[h] < ts[target] for h in window[:-1])
            assert len(window) <= max_len + 1


def test_cached_multi_partition_input_builds_whole_histories(spark) -> None:  # type: ignore[no-untyped-def]
    """Regression: the job caches its clean orders.  With Spark 4.2's adaptive execution, the
    previous ``repartition(entity)`` + ``mapInArrow`` plan read that repartition with a *local*
    shuffle reader after the broadcast semi-join on active entities, so one entity's orders were
    spread over partitions and each piece was built as if it were the whole history.  Build the
    job's plan on a cached, multi-partition input and check every window against brute force.

    On 200k orders Spark chooses that plan by itself; on this tiny input the settings below make it
    (a sort-merge semi-join planned statically, turned into a broadcast one at run time, shuffle
    partitions not coalesced).  The old plan fails this test: every customer in both partitions."""
    from pyspark import StorageLevel

    conf = {"spark.sql.autoBroadcastJoinThreshold": "-1", "spark.sql.adaptive.autoBroadcastJoinThreshold": "10MB",
            "spark.sql.adaptive.coalescePartitions.enabled": "false"}
    base = dt.datetime(2026, 3, 1)
    rows = [(i + 1, f"c{i % 40}", f"k{i % 55}", base + dt.timedelta(minutes=37 * i), "m", float(i % 97), 0)
            for i in range(900)]                                   # 40 customers, 55 cards over ~23 days
    targets = {dt.date(2026, 3, 20), dt.date(2026, 3, 21), dt.date(2026, 3, 22)}
    max_len = 6
    seq = SequenceConfig(max_len=max_len, max_history_days=30.0, build_groups=3)
    before = {k: spark.conf.get(k, None) for k in conf}
    clean = None
    try:
        for k, v in conf.items():
            spark.conf.set(k, v)
        df = spark.createDataFrame(rows, _schema()).repartition(4)    # several input partitions
        clean = check_quality(df, COLS, QualityConfig()).clean.persist(StorageLevel.MEMORY_AND_DISK)
        assert clean.count() == len(rows)
        for entity, key in (("customer", 1), ("card", 2)):
            res = build_sequences(clean, sorted(targets), entity, COLS, seq, "p")  # type: ignore[arg-type]
            table = res.rows.toArrow()
            assert len(set(zip(table.column("entity_id").to_pylist(), table.column("ds").to_pylist()))) \
                == table.num_rows                                   # one row per (entity, ds)
            got = window_order_ids(table, max_len, 30.0 * 86400)
            assert got == _brute_windows(rows, key, targets, max_len, 30.0 * 86400)
    finally:
        if clean is not None:
            clean.unpersist()
        for k, v in before.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)
