"""The nightly life through the real Spark jobs: labels as known at a time, examples relabelled
for a training night, the gate and the champion in the models table, scoring by the champion."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tsa_lib.cli import RunContext
from tsa_lib.config import (ColumnsConfig, EncoderConfig, InputConfig, LabelsConfig, PromotionConfig, SequenceConfig,
                            StorageConfig, SuiteConfig, TableSource, TrainConfig, TrainWindow)
from tsa_lib.schedule import as_of, label_known, training_windows

D = dt.date
T = dt.datetime.fromisoformat
UTC = dt.timezone.utc
COLS = ColumnsConfig(order_id="oid", customer_id="cust", card_id="card", event_time="ts", label="y",
                     label_time="rep", categorical=("mcc",), numerical=("amount",), engineered=("age",))

# (oid, cust, card, ts, mcc, amount, y, age, rep): labels.delay_days = 1 for orders without a report time
ROWS = [
    (1, "A", "K1", T("2026-01-01 10:00"), "grocery", 10.0, 0, 1.0, None),
    (2, "A", "K1", T("2026-01-02 10:00"), "grocery", 12.0, 0, 2.0, None),
    (3, "B", "K2", T("2026-01-02 11:00"), "jewelry", 900.0, 1, 1.0, T("2026-01-03 12:00")),
    (4, "A", "K1", T("2026-01-03 09:00"), "fuel", 30.0, 0, 3.0, None),
    (5, "B", "K2", T("2026-01-03 10:00"), "jewelry", 950.0, 1, 2.0, T("2026-01-08 00:00")),  # reported late
    (6, "C", "K3", T("2026-01-04 08:00"), "grocery", 20.0, 0, 9.0, None),
    (7, "B", "K2", T("2026-01-04 09:00"), "jewelry", 990.0, 1, 3.0, T("2026-01-05 09:00")),
    (8, "A", "K1", T("2026-01-05 10:00"), "grocery", 11.0, 0, 5.0, None),
    (9, "C", "K3", T("2026-01-05 11:00"), "jewelry", 800.0, 1, 9.0, T("2026-01-06 23:59:59")),
    (10, "A", "K1", T("2026-01-06 10:00"), "fuel", 25.0, 0, 6.0, None),
    (11, "D", "K4", T("2026-01-06 12:00"), "jewelry", 700.0, 1, 1.0, T("2026-01-07 00:00")),  # exactly at T
]


def _write(spark, rows: list[tuple[Any, ...]], path: Path) -> str:  # type: ignore[no-untyped-def]
    from pyspark.sql.types import (DoubleType, IntegerType, LongType, StringType, StructField, StructType,
                                   TimestampType)

    schema = StructType([StructField("oid", LongType()), StructField("cust", StringType()),
                         StructField("card", StringType()), StructField("ts", TimestampType()),
                         StructField("mcc", StringType()), StructField("amount", DoubleType()),
                         StructField("y", IntegerType()), StructField("age", DoubleType()),
                         StructField("rep", TimestampType())])
    spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite").save(str(path))
    return str(path)


def _ctx(job: str, *dates: dt.date, run_id: str = "n1") -> RunContext:
    return RunContext(job=job, run_id=run_id, dates=dates, started_at=dt.datetime(2026, 1, 9, tzinfo=UTC))


@pytest.fixture(scope="module")
def night(spark, warehouse: Path) -> SuiteConfig:  # type: ignore[no-untyped-def]
    from tsa_lib.spark.build_sequences import run_build_sequences

    src = _write(spark, ROWS, warehouse / "nightly_input")
    cfg = SuiteConfig(input=InputConfig(transactions=TableSource(path=src)), columns=COLS,
                      storage=StorageConfig(warehouse=str(warehouse), database="nightly",
                                            artifacts=str(warehouse / "nightly_artifacts")),
                      sequences=SequenceConfig(max_len=3, max_history_days=30.0),
                      labels=LabelsConfig(delay_days=1.0, mature_after_days=1),
                      encoders=EncoderConfig(min_frequency=1, quantile_low=0.0, quantile_high=1.0),
                      training=TrainConfig(model_name="nightly", window=TrainWindow(train_days=2, valid_days=2)),
                      promotion=PromotionConfig(margin=0.0, min_value=0.0))
    run_build_sequences(spark, cfg, _ctx("build_sequences", *[D(2026, 1, d) for d in range(1, 7)]))
    return cfg


def _labels(spark, cfg: SuiteConfig, dates: list[dt.date], at: dt.datetime) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from tsa_lib.spark.labels import read_labels

    return {r.order_id: (r.label, r.label_pending) for r in read_labels(spark, cfg, dates, at).collect()}


def test_labels_as_known_exact(spark, night: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    days = [D(2026, 1, d) for d in range(1, 7)]
    at6 = _labels(spark, night, days, as_of(D(2026, 1, 6)))     # known before 2026-01-07 00:00
    assert at6 == {"1": (0, False), "2": (0, False), "3": (1, False), "4": (0, False), "5": (None, True),
                   "6": (0, False), "7": (1, False), "8": (0, False), "9": (1, False),
                   "10": (None, True),    # order + 1 day = 01-07 10:00: not yet
                   "11": (None, True)}    # reported exactly at 01-07 00:00: not strictly before
    at7 = _labels(spark, night, days, as_of(D(2026, 1, 7)))
    assert at7["5"] == (None, True) and at7["10"] == (0, False) and at7["11"] == (1, False)
    assert _labels(spark, night, days, as_of(D(2026, 1, 8)))["5"] == (1, False)
    # the Spark rule and the numpy rule agree on every order and instant
    us = np.array([int(r[3].replace(tzinfo=UTC).timestamp() * 1e6) for r in ROWS])
    rep = np.array([int(r[8].replace(tzinfo=UTC).timestamp() * 1e6) if r[8] else -1 for r in ROWS])
    for day in range(3, 10):
        at = as_of(D(2026, 1, day))
        got = _labels(spark, night, days, at)
        known = label_known(us, rep, 1.0, at)
        assert [got[str(r[0])][0] is not None for r in ROWS] == known.tolist(), day


def test_bad_labels_are_quarantined(spark, night: SuiteConfig, warehouse: Path) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.spark.build_sequences import run_build_sequences
    from tsa_lib.spark.labels import read_labels

    bad = [*ROWS[:3], (12, "E", "K5", T("2026-01-02 15:00"), "fuel", 5.0, 1, 1.0, T("2026-01-02 14:00")),
           (13, "F", "K6", T("2026-01-02 16:00"), "fuel", 5.0, 2, 1.0, None)]
    cfg = night.replace(input=InputConfig(transactions=TableSource(path=_write(spark, bad, warehouse / "bad_rep"))),
                        storage=StorageConfig(warehouse=str(warehouse), database="badrep"))
    s = run_build_sequences(spark, cfg, _ctx("build_sequences", D(2026, 1, 2)))
    assert s.reasons == {"bad_label_time": 1, "bad_label": 1} and s.clean_targets == 2
    q = spark.read.format("delta").load(cfg.storage.table_path("quarantine")).orderBy("order_id").collect()
    assert [(r.order_id, r.reason, r.detail) for r in q] == [
        ("12", "bad_label_time", "rep=2026-01-02 14:00:00 is before ts=2026-01-02 15:00:00"),
        ("13", "bad_label", "y=2 is not 0, 1 or null")]
    got = {r.order_id: (r.label, r.label_pending) for r in
           read_labels(spark, cfg, [D(2026, 1, 2)], as_of(D(2026, 1, 5))).collect()}
    assert got["2"] == (0, False) and got["3"] == (1, False) and got["12"] == (None, False)  # never known


def _examples(spark, cfg: SuiteConfig) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {r.order_id: r for r in spark.read.format("delta").load(cfg.storage.table_path("examples")).collect()}


def test_training_night_examples_carry_the_labels_known_at_the_run_date(spark, night: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from tsa_lib.spark.encoders import fit_encoders
    from tsa_lib.spark.examples import run_build_examples

    w = training_windows(night, D(2026, 1, 6))
    assert (w.train, w.valid) == ((D(2026, 1, 2), D(2026, 1, 3)), (D(2026, 1, 4), D(2026, 1, 5)))
    enc = fit_encoders(spark, night, *w.train, version="enc-nightly")
    enc.save(night.storage.artifacts_path("encoders"))
    ctx = dataclasses.replace(_ctx("build_examples"), dates=w.dates)
    s = run_build_examples(spark, night, ctx, enc, w.labels_as_of)
    assert (s.examples, s.labeled, s.positives, s.pending) == (8, 7, 3, 1)
    ex = _examples(spark, night)
    # order 5 (fraud, reported on 01-08) is not known at the end of 01-06: unlabeled, never a negative
    assert {k: v.label for k, v in ex.items()} == {"2": 0, "3": 1, "4": 0, "5": None, "6": 0, "7": 1, "8": 0,
                                                   "9": 1}
    assert {v.labels_as_of for v in ex.values()} == {dt.datetime(2026, 1, 7)}   # read back as naive UTC
    # a week later order 5's report has come in: rebuilt for that night it trains as fraud
    later = run_build_examples(spark, night, ctx, enc, as_of(D(2026, 1, 8)))
    assert later.pending == 0 and _examples(spark, night)["5"].label == 1


def _artifact(cfg: SuiteConfig, enc: Any, version: str, run_date: dt.date, seed: int, constant: bool = False) -> Path:
    import torch

    from tsa_lib.models.config import load_model_preset, model_config
    from tsa_lib.models.factory import build_model
    from tsa_lib.training.artifact import save_artifact

    torch.manual_seed(seed)
    mcfg = model_config(load_model_preset("tiny").replace(model_type="two_seq"), enc)
    model = build_model(mcfg)
    if constant:   # every score 0.5: average precision is the share of fraud
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    return save_artifact(cfg.storage.artifacts_path("models/nightly") / version, model, mcfg, enc, {},
                         {"model_name": "nightly", "version": version, "run_date": run_date.isoformat()})


def _gate_rows(spark, cfg: SuiteConfig) -> list[Any]:  # type: ignore[no-untyped-def]
    return spark.read.format("delta").load(cfg.storage.table_path("models")).orderBy("ds", "decided_at").collect()


def test_gate_champion_promotion_rollback_and_scoring(spark, night: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.features.encoders import load_encoders
    from tsa_lib.registry.champion import PromotionError
    from tsa_lib.registry.models_table import champion, run_gate, run_promote, run_rollback
    from tsa_lib.scoring.job import NoChampionError, run_scoring

    enc = load_encoders(night.storage.artifacts_path("encoders"))
    with pytest.raises(NoChampionError, match="no champion yet for model 'nightly' in nightly.models"):
        run_scoring(spark, night, _ctx("score", D(2026, 1, 6)))
    d6, d7 = D(2026, 1, 6), D(2026, 1, 7)
    _artifact(night, enc, "v1", d6, seed=1)
    r1 = run_gate(spark, night, _ctx("gate", d6))
    assert (r1.model_version, r1.decision, r1.champion_after) == ("v1", "promoted", "v1")
    assert r1.reason.startswith("no champion yet") and (r1.valid_orders, r1.valid_positives) == (4, 2)
    again = run_gate(spark, night, _ctx("gate", d6, run_id="retry"))      # a retried night replaces its row
    assert again.decision == "promoted" and again.champion_version is None
    assert [(r.ds, r.model_version, r.run_id) for r in _gate_rows(spark, night)] == [(d6, "v1", "retry")]

    # a challenger that scores every order alike is below promotion.min_value: it stays a candidate
    _artifact(night, enc, "v2", d7, seed=2, constant=True)
    strict = night.replace(promotion=PromotionConfig(margin=0.0, min_value=0.9))
    r2 = run_gate(spark, strict, _ctx("gate", d7))
    assert (r2.decision, r2.champion_version, r2.champion_after) == ("rejected", "v1", "v1")
    assert r2.model_value == pytest.approx(0.5) and "below promotion.min_value 0.9000" in r2.reason
    assert r2.champion_value is not None and r2.valid == (D(2026, 1, 5), D(2026, 1, 6))
    assert champion(spark, night).version == "v1"
    scored = run_scoring(spark, night, _ctx("score", d6))
    assert scored.model == "nightly/v1"

    with pytest.raises(PromotionError, match=r"v2 is worse than the champion: average_precision 0.5000 is below "
                                             r"promotion.min_value 0.9000 \(gate of 2026-01-07\); .*--force"):
        run_promote(spark, night, _ctx("promote", d7), "v2")
    _artifact(night, enc, "v3", d7, seed=3)
    with pytest.raises(PromotionError, match="v3 was never judged by the gate"):
        run_promote(spark, night, _ctx("promote", d7), "v3")
    with pytest.raises(PromotionError, match="v1 is already the champion"):
        run_promote(spark, night, _ctx("promote", d7), "v1")
    forced = run_promote(spark, night, _ctx("promote", d7), "v2", force=True, reason="incident 42")
    assert (forced["decision"], forced["champion_after"], forced["reason"]) == ("forced", "v2", "incident 42")
    assert run_scoring(spark, night, _ctx("score", d6, run_id="s2")).model == "nightly/v2"
    back = run_rollback(spark, night, _ctx("promote", d7))
    assert (back["model_version"], back["champion_after"], back["reason"]) == ("v1", "v1", "rolled back from v2")
    assert champion(spark, night).version == "v1"
    rows = spark.sql("SELECT action, decision, model_version, champion_after FROM nightly.models "
                     "ORDER BY ds, decided_at").collect()
    assert [tuple(r) for r in rows] == [("gate", "promoted", "v1", "v1"), ("gate", "rejected", "v2", "v1"),
                                        ("promote", "forced", "v2", "v2"), ("rollback", "rolled_back", "v1", "v1")]


def test_gate_needs_labels_of_both_classes(spark, night: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.registry.models_table import GateError, run_gate
    from tsa_lib.spark.encoders import fit_encoders

    art = _artifact(night, fit_encoders(spark, night, D(2026, 1, 1), D(2026, 1, 2)), "v0", D(2026, 1, 2), seed=0)
    # at run date 01-02 the validation window is 12-31..01-01: one legitimate order, no fraud
    with pytest.raises(GateError, match=r"validation window 2025-12-31..2026-01-01 \(2 dates\) has no known labels "
                                        r"of both classes before 2026-01-03 00:00; the gate cannot judge v0"):
        run_gate(spark, night, _ctx("gate", D(2026, 1, 2)), candidate=str(art))
    with pytest.raises(ValueError, match="the gate runs for one date"):
        run_gate(spark, night, _ctx("gate", D(2026, 1, 3), D(2026, 1, 4)))
