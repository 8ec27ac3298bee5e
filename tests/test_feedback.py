"""Label feedback: past orders' labels as known at the target order's time, through the one
tensorization path.  Exact tensors on a hand-written example, a point-in-time property test
with many ties and label times around the targets' times, and the Spark jobs end to end."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsa_lib.config import ConfigError, load_config
from tsa_lib.config import PROJECT_ROOT
from tsa_lib.features.encoders import FEEDBACK_INPUT, EncoderError, Encoders, Scaler, encoders_from_json
from tsa_lib.features.tensorize import encode_sequence_batch, feedback_codes

UTC = dt.timezone.utc


def _ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)


def _enc(feedback: bool = True, max_len: int = 3) -> Encoders:
    return Encoders(version="enc-fb", config_hash="x", window_start="2026-01-01", window_end="2026-01-09",
                    categorical=("mcc",), numerical=("amount",), engineered=(), vocab={"mcc": ("a", "b")},
                    numeric_scalers={"amount": Scaler(0.0, 100.0)}, engineered_scalers={}, max_len=max_len,
                    max_history_days=None, feedback=feedback)


def _batch(times: list[str], labels: list[Any], known: list[Any], n_context: int) -> pa.Table:
    n = len(times)
    return pa.table({
        "entity_id": ["A"], "n_context": pa.array([n_context], pa.int32()),
        "n_targets": pa.array([n - n_context], pa.int32()), "order_id": [[f"o{i}" for i in range(n)]],
        "event_time": pa.array([[_ts(t) for t in times]], pa.list_(pa.timestamp("us", tz="UTC"))),
        "mcc": [["a"] * n], "amount": [[10.0] * n],
        "label": pa.array([labels], pa.list_(pa.int32())),
        "label_known_at": pa.array([[_ts(k) if k else None for k in known]], pa.list_(pa.timestamp("us", tz="UTC"))),
    })


def test_encoders_layout_and_round_trip() -> None:
    e = _enc()
    assert e.cat_inputs == ("mcc", FEEDBACK_INPUT) and e.feedback_offset == 4 and e.vocab_size == 7
    assert e.sequence_row_columns[-2:] == ("label", "label_known_at")
    assert encoders_from_json(e.to_json()) == e
    off = _enc(feedback=False)
    assert off.vocab_size == 4 and "label" not in off.sequence_row_columns and off.cat_inputs == ("mcc",)


def test_feedback_tensors_exact() -> None:
    # o0 fraud reported 01-02 12:00; o1 legit known 01-03 10:00; o2 fraud reported 01-05;
    # targets o3 (01-03 10:00) and o4 (01-06 09:00), o4 is itself fraud and reported 01-06 08:00
    b = _batch(["2026-01-01 09:00", "2026-01-02 10:00", "2026-01-03 09:00", "2026-01-03 10:00", "2026-01-06 09:00"],
               [1, 0, 1, 0, 1],
               ["2026-01-02 12:00", "2026-01-03 10:00", "2026-01-05 00:00", "2026-01-04 10:00", "2026-01-06 08:00"],
               n_context=3)
    t = encode_sequence_batch(b, _enc())
    assert t.order_id.tolist() == ["o3", "o4"]
    off = 4  # not known, known legit, known fraud = 4, 5, 6
    # o3 at 01-03 10:00: o0 fraud known (01-02 12:00) -> 6; o1 known exactly at 01-03 10:00: not before -> 4;
    # o2 reported later -> 4; o3's own label never -> 4
    assert t.cat[0, :, 1].tolist() == [off + 2, off, off, off]
    # o4 at 01-06 09:00 (window o1, o2, o3 + itself): o1 legit 5, o2 fraud 6, o3 legit (known 01-04) 5,
    # and o4's own label (reported an hour before it? a broken feed) still never visible
    assert t.cat[1, :, 1].tolist() == [off + 1, off + 2, off + 1, off]
    no = encode_sequence_batch(b.drop_columns(["label", "label_known_at"]), _enc(feedback=False))
    assert no.cat.shape[2] == 1 and (no.cat[:, :, 0] == t.cat[:, :, 0]).all()


def test_feedback_codes_padding_and_bad_shapes() -> None:
    mask = np.array([[False, True, True]])
    codes = feedback_codes(np.array([[1, -1, 1]]), np.array([[0, 0, 0]]), np.array([5]), mask)
    assert codes.tolist() == [[-1, 0, 0]]          # padding -1, no label 0, the target 0
    with pytest.raises(ValueError, match=r"expected \[T, L\], \[T, L\], \[T, L\] and \[T\]"):
        feedback_codes(np.zeros((1, 3)), np.zeros((1, 2)), np.zeros(1), mask)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from([None, 0, 1]), st.integers(-3, 6)),
                min_size=2, max_size=9), st.integers(1, 4))
def test_property_no_label_visible_before_it_is_known(rows: list[tuple[int, Any, int]], max_len: int) -> None:
    """Many ties (hours 0..6), label times around the targets' times (order hour + -3..6 hours):
    a past label is visible iff it became known strictly before the target's own time and the
    past order is strictly earlier; the target's own label never is."""
    rows = sorted(rows, key=lambda r: r[0])
    base = dt.datetime(2026, 1, 1, tzinfo=UTC)
    times = [(base + dt.timedelta(hours=h)).isoformat() for h, _, _ in rows]
    known = [(base + dt.timedelta(hours=h + d)).isoformat() if lab is not None else None for h, lab, d in rows]
    labels = [lab for _, lab, _ in rows]
    t = encode_sequence_batch(_batch(times, labels, known, n_context=0), _enc(max_len=max_len),
                              with_history_ids=True)
    off = _enc().feedback_offset
    for i in range(len(t.order_id)):
        me = int(t.order_id[i][1:])
        tgt_time = base + dt.timedelta(hours=rows[me][0])
        assert t.cat[i, -1, 1] == off                     # the target's own label: never
        for slot in range(t.cat.shape[1] - 1):
            oid = t.hist_order_id[i, slot]
            if not oid:
                assert t.cat[i, slot, 1] == 0            # padding
                continue
            h, lab, d = rows[int(oid[1:])]
            assert base + dt.timedelta(hours=h) < tgt_time                     # strictly earlier
            visible = lab is not None and base + dt.timedelta(hours=h + d) < tgt_time
            assert t.cat[i, slot, 1] == (off + 1 + lab if visible else off), (rows, i, slot)


def test_feedback_needs_a_label_time_or_a_delay(tmp_path: Path) -> None:
    base = load_config(PROJECT_ROOT / "conf" / "local.yaml")
    with pytest.raises(ConfigError, match="labels.feedback: needs columns.label and when labels become known"):
        load_config(PROJECT_ROOT / "conf" / "local.yaml", overrides={
            "labels": {"feedback": True, "delay_days": 0}, "columns": {"label_time": None}})
    ok = load_config(PROJECT_ROOT / "conf" / "local.yaml", overrides={"labels": {"feedback": True}})
    assert ok.labels.feedback and ok.hash != base.hash


def test_feedback_through_the_jobs(spark, write_orders, warehouse: Path) -> None:  # type: ignore[no-untyped-def]
    """Sequences carry the label facts; the examples (training) and the scoring path cut the same
    point-in-time feedback tokens out of them."""
    from pyspark.sql import functions as F

    from tsa_lib.cli import RunContext
    from tsa_lib.config import (ColumnsConfig, EncoderConfig, InputConfig, LabelsConfig, SequenceConfig,
                                StorageConfig, SuiteConfig, TableSource, TrainConfig)
    from tsa_lib.spark.build_sequences import run_build_sequences
    from tsa_lib.spark.encoders import fit_encoders
    from tsa_lib.spark.examples import build_examples_frame

    T = dt.datetime.fromisoformat
    rows = [  # (oid, cust, card, ts, mcc, amount, y, age); labels known 1 day after the order
        (1, "A", "K1", T("2026-01-01 10:00"), "a", 10.0, 1, 1.0),
        (2, "A", "K1", T("2026-01-02 09:00"), "a", 20.0, 0, 1.0),
        (3, "B", "K1", T("2026-01-02 11:00"), "b", 30.0, 1, 1.0),
        (4, "A", "K1", T("2026-01-03 10:00"), "b", 40.0, 0, 1.0),    # a target
        (5, "B", "K1", T("2026-01-03 10:30"), "a", 50.0, None, 1.0),  # a target
    ]
    src = write_orders(rows, warehouse / "feedback_input")
    cfg = SuiteConfig(input=InputConfig(transactions=TableSource(path=src)),
                      columns=ColumnsConfig(order_id="oid", customer_id="cust", card_id="card", event_time="ts",
                                            label="y", categorical=("mcc",), numerical=("amount",),
                                            engineered=("age",)),
                      storage=StorageConfig(warehouse=str(warehouse), database="feedback"),
                      sequences=SequenceConfig(max_len=3, max_history_days=30.0),
                      labels=LabelsConfig(delay_days=1.0, feedback=True, feedback_reports=2),
                      encoders=EncoderConfig(min_frequency=1, quantile_low=0.0, quantile_high=1.0),
                      training=TrainConfig(model_name="fb"))
    day3 = dt.date(2026, 1, 3)
    ctx = RunContext(job="build_sequences", run_id="f", dates=(day3,), started_at=dt.datetime(2026, 1, 4, tzinfo=UTC))
    run_build_sequences(spark, cfg, ctx)
    seq = spark.read.format("delta").load(cfg.storage.table_path("sequences_card")).filter(F.col("ds") == day3).first()
    assert seq.label == [1, 0, 1, 0, None] and seq.order_id == ["1", "2", "3", "4", "5"]
    assert seq.label_known_at[0] == dt.datetime(2026, 1, 2, 10, 0) and seq.label_known_at[4] is None
    assert seq.report_order_id == ["1", "2"] and seq.report_label == [1, 0]   # known before 10:30
    enc = fit_encoders(spark, cfg, dt.date(2026, 1, 1), day3)
    off = enc.feedback_offset
    ex = {r.order_id: r for r in build_examples_frame(spark, cfg, enc, [day3], "f").examples.collect()}
    nc, length = len(enc.cat_inputs), enc.seq_len

    def fb(arr: list[int]) -> list[int]:
        return np.asarray(arr).reshape(length, nc)[:, -1].tolist()

    rep_legit, rep_fraud = off + 3, off + 4
    # customer A at order 4 (01-03 10:00): reports of 1 (fraud, known since 01-02 10:00) and 2 (legit,
    # since 01-03 09:00), then the orders: 1 known fraud, 2 known legit, its own label never
    assert fb(ex["4"].c_cat) == [0, rep_fraud, rep_legit, off + 2, off + 1, off] and ex["4"].c_len == 4
    # card K1 at order 5 (01-03 10:30): the same two reports, then the last 3 orders: 2 known legit,
    # 3 fraud known only at 01-03 11:00 (after it), 4 known only on 01-04, itself never
    assert fb(ex["5"].k_cat) == [rep_fraud, rep_legit, off + 1, off, off, off]
    assert fb(ex["4"].k_cat) == [rep_fraud, rep_legit, off + 2, off + 1, off, off]   # 1, 2, 3 (11:00: no)


# ---- label reports (labels.feedback_reports): the labels known however far back their orders lie ----

def _orders(rows: list[tuple[str, str, str, Any, Any]]) -> pa.Table:
    """(entity, order id, time, label, known at) -> an orders table as the build job sees it."""
    return pa.table({
        "k": [r[0] for r in rows], "oid": [r[1] for r in rows],
        "ts": pa.array([_ts(r[2]) for r in rows], pa.timestamp("us", tz="UTC")),
        "mcc": ["a"] * len(rows), "amount": [10.0] * len(rows),
        "label": pa.array([r[3] for r in rows], pa.int32()),
        "label_known_at": pa.array([_ts(r[4]) if r[4] else None for r in rows], pa.timestamp("us", tz="UTC")),
    })


def _spec(days: list[str], reports: int, max_len: int = 2) -> Any:
    from tsa_lib.features.sequence_rows import RowSpec, days_since_epoch

    return RowSpec(key="k", ts="ts", order_id="oid", features=("mcc", "amount", "label", "label_known_at"),
                   target_days=days_since_epoch([dt.date.fromisoformat(d) for d in days]), max_len=max_len,
                   cap=10, max_age_us=None, reports=reports, label="label", known_at="label_known_at")


def _rows(orders: pa.Table, spec: Any) -> pa.Table:
    from tsa_lib.features.sequence_rows import build_rows, sort_for_build

    return build_rows(sort_for_build(orders, spec), spec)


REPORT_ORDERS = [  # merchant M: labels arrive days late; N: another entity in the same group
    ("M", "m1", "2026-01-01 10:00", 1, "2026-01-03 12:00"),
    ("M", "m2", "2026-01-02 10:00", 0, "2026-01-04 10:00"),
    ("M", "m3", "2026-01-03 10:00", 1, "2026-01-05 09:00"),
    ("M", "m4", "2026-01-04 10:00", None, None),
    ("M", "m5", "2026-01-05 08:00", 0, "2026-01-05 08:30"),    # known within the target day
    ("M", "m6", "2026-01-05 09:00", 1, "2026-01-06 00:00"),    # target
    ("M", "m7", "2026-01-05 10:00", 0, "2026-01-09 00:00"),    # target
    ("N", "n1", "2026-01-01 10:00", 1, "2026-01-02 00:00"),
    ("N", "n2", "2026-01-05 11:00", 0, "2026-01-08 00:00"),    # target
]


def test_report_rows_exact() -> None:
    """A row carries, per target, the last 2 reports known strictly before it, as a union sorted by
    known time: m5 (08:00) needs m1, m2; m6 (09:00) m2, m5; m7 (10:00) m5, m3 (known 09:00)."""
    rows = _rows(_orders(REPORT_ORDERS), _spec(["2026-01-05"], reports=2)).to_pylist()
    by = {r["entity_id"]: r for r in rows}
    assert by["M"]["order_id"] == ["m3", "m4", "m5", "m6", "m7"]          # 2 context + 3 targets
    assert by["M"]["report_order_id"] == ["m1", "m2", "m5", "m3"]
    assert by["M"]["report_label"] == [1, 0, 0, 1]
    assert by["M"]["report_known_at"][0] == _ts("2026-01-03 12:00")
    assert by["M"]["report_time"][3] == _ts("2026-01-03 10:00")
    assert by["N"]["report_order_id"] == ["n1"]
    none = _rows(_orders(REPORT_ORDERS), _spec(["2026-01-05"], reports=0)).column_names
    assert not [c for c in none if c.startswith("report_")]


def _enc_reports(k: int, max_len: int = 2) -> Encoders:
    return Encoders(version="enc-fb", config_hash="x", window_start="2026-01-01", window_end="2026-01-09",
                    categorical=("mcc",), numerical=("amount",), engineered=(), vocab={"mcc": ("a", "b")},
                    numeric_scalers={"amount": Scaler(0.0, 100.0)}, engineered_scalers={}, max_len=max_len,
                    max_history_days=None, feedback=True, feedback_reports=k)


def test_report_tensors_exact() -> None:
    rows = _rows(_orders(REPORT_ORDERS), _spec(["2026-01-05"], reports=2))
    enc = _enc_reports(2)
    assert enc.seq_len == 5 and enc.vocab_size == 9 and enc.sequence_row_columns[-1] == "report_known_at"
    assert encoders_from_json(enc.to_json()) == enc
    t = encode_sequence_batch(rows, enc, with_history_ids=True)
    assert t.order_id.tolist() == ["m5", "m6", "m7", "n2"]
    i = {o: n for n, o in enumerate(t.order_id)}
    off = enc.feedback_offset            # 4..6 order feedback, 7 report legit, 8 report fraud
    # m6 at 01-05 09:00: reports m2 (legit), m5 (legit, known 08:30); then past orders m4, m5, itself
    assert t.hist_order_id[i["m6"]].tolist() == ["m2", "m5", "m4", "m5", "m6"]
    assert t.cat[i["m6"], :, 1].tolist() == [7, 7, off, off + 1, off]
    assert t.cat[i["m6"], :2, 0].tolist() == [0, 0] and t.num[i["m6"], :2].tolist() == [[0.0], [0.0]]
    assert t.dt[i["m6"], :2].tolist() == pytest.approx([3.0 - 1 / 24, 1 / 24])   # ages of m2's and m5's orders
    assert t.hist_len[i["m6"]] == 4 and t.mask[i["m6"]].all()
    # m7 at 10:00: m3's fraud report came at 09:00; m2's is now the third-latest
    assert t.hist_order_id[i["m7"]].tolist() == ["m5", "m3", "m5", "m6", "m7"]
    assert t.cat[i["m7"], :2, 1].tolist() == [7, 8]
    # m5 at 08:00: m1 (fraud) and m2 are known, its own report comes at 08:30, after it
    assert t.hist_order_id[i["m5"]].tolist() == ["m1", "m2", "m3", "m4", "m5"]
    assert t.cat[i["m5"], :2, 1].tolist() == [8, 7] and t.hist_len[i["m5"]] == 4
    # n2: one report and one past order: the real slots stay contiguous, left-padded
    assert t.hist_order_id[i["n2"]].tolist() == ["", "", "n1", "n1", "n2"]
    assert t.mask[i["n2"]].tolist() == [False, False, True, True, True]
    assert t.cat[i["n2"], 2, 1] == 8 and t.hist_len[i["n2"]] == 2


def test_report_config_and_artifact_errors() -> None:
    with pytest.raises(ConfigError, match="labels.feedback_reports: 4 needs labels.feedback: true"):
        load_config(PROJECT_ROOT / "conf" / "local.yaml", overrides={"labels": {"feedback_reports": 4}})
    with pytest.raises(ConfigError, match=r"labels.feedback_reports: must be an integer >= 0, got -1"):
        load_config(PROJECT_ROOT / "conf" / "local.yaml", overrides={"labels": {"feedback": True,
                                                                                "feedback_reports": -1}})
    with pytest.raises(EncoderError, match="feedback_reports 3 must be >= 0 and needs feedback"):
        Encoders(**{**{f: getattr(_enc_reports(3), f) for f in ("version", "config_hash", "window_start",
                                                                "window_end", "categorical", "numerical",
                                                                "engineered", "vocab", "numeric_scalers",
                                                                "engineered_scalers", "max_len",
                                                                "max_history_days")},
                    "feedback": False, "feedback_reports": 3})
    rows = _rows(_orders(REPORT_ORDERS), _spec(["2026-01-05"], reports=0))
    with pytest.raises(EncoderError, match=r"lacks column\(s\) \['report_order_id'"):
        encode_sequence_batch(rows, _enc_reports(2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["A", "B"]), st.integers(0, 10), st.sampled_from([None, 0, 1]),
                          st.integers(0, 8)), min_size=1, max_size=14),
       st.integers(1, 3), st.integers(1, 3))
def test_property_reports_are_the_last_known_before_the_target(
        rows: list[tuple[str, int, Any, int]], k: int, max_len: int) -> None:
    """Many ties (times in 12-hour steps over 5 days, known 0..4 days later): each target's report
    slots are exactly the last k of its entity's labels known strictly before it (by known time),
    its own never, and its past orders follow them unchanged."""
    base = dt.datetime(2026, 1, 1, tzinfo=UTC)
    at = [base + dt.timedelta(hours=12 * h) for _, h, _, _ in rows]
    known = [at[i] + dt.timedelta(hours=12 * d) if lab is not None else None for i, (_, _, lab, d) in enumerate(rows)]
    tbl = _orders([(e, f"o{i:02d}", at[i].strftime("%Y-%m-%d %H:%M"), lab,
                    known[i].strftime("%Y-%m-%d %H:%M") if known[i] else None)
                   for i, (e, _, lab, _) in enumerate(rows)])
    days = ["2026-01-04", "2026-01-05", "2026-01-06"]
    seq = _rows(tbl, _spec(days, reports=k, max_len=max_len))
    t = encode_sequence_batch(seq, _enc_reports(k, max_len), with_history_ids=True)
    plain = encode_sequence_batch(seq, _enc(max_len=max_len), with_history_ids=True)
    targets = {f"o{i:02d}" for i in range(len(rows)) if at[i].date().isoformat() in days}
    assert set(t.order_id) == targets
    for n, oid in enumerate(t.order_id):
        me = int(oid[1:])
        cand = sorted((known[i], at[i], f"o{i:02d}") for i in range(len(rows))
                      if rows[i][0] == rows[me][0] and known[i] is not None and known[i] < at[me])
        want = [c[2] for c in cand[-k:]]
        n_rep = int(t.hist_len[n] - plain.hist_len[n])
        assert n_rep == len(want)
        real = [x for x in t.hist_order_id[n] if x]
        assert real[:n_rep] == want and oid not in want
        assert real[n_rep:] == [x for x in plain.hist_order_id[n] if x]
        codes = t.cat[n, t.mask[n], 1][:n_rep]
        assert codes.tolist() == [7 + rows[int(w[1:])][2] for w in want]
        assert t.mask[n].tolist() == [False] * (t.mask.shape[1] - int(t.hist_len[n]) - 1) + [True] * (int(t.hist_len[n]) + 1)
