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
from tsa_lib.features.encoders import FEEDBACK_INPUT, Encoders, Scaler, encoders_from_json
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
                      labels=LabelsConfig(delay_days=1.0, feedback=True),
                      encoders=EncoderConfig(min_frequency=1, quantile_low=0.0, quantile_high=1.0),
                      training=TrainConfig(model_name="fb"))
    day3 = dt.date(2026, 1, 3)
    ctx = RunContext(job="build_sequences", run_id="f", dates=(day3,), started_at=dt.datetime(2026, 1, 4, tzinfo=UTC))
    run_build_sequences(spark, cfg, ctx)
    seq = spark.read.format("delta").load(cfg.storage.table_path("sequences_card")).filter(F.col("ds") == day3).first()
    assert seq.label == [1, 0, 1, 0, None] and seq.order_id == ["1", "2", "3", "4", "5"]
    assert seq.label_known_at[0] == dt.datetime(2026, 1, 2, 10, 0) and seq.label_known_at[4] is None
    enc = fit_encoders(spark, cfg, dt.date(2026, 1, 1), day3)
    off = enc.feedback_offset
    ex = {r.order_id: r for r in build_examples_frame(spark, cfg, enc, [day3], "f").examples.collect()}
    nc, length = len(enc.cat_inputs), enc.seq_len

    def fb(arr: list[int]) -> list[int]:
        return np.asarray(arr).reshape(length, nc)[:, -1].tolist()

    # customer A at order 4 (01-03 10:00): 1 known fraud (since 01-02 10:00), 2 known legit (since
    # 01-03 09:00), its own label never
    assert fb(ex["4"].c_cat) == [0, off + 2, off + 1, off]
    # card K1 at order 5 (01-03 10:30), the last 3 orders: 2 known legit, 3 fraud known only at
    # 01-03 11:00 (after it), 4 known only on 01-04, itself never
    assert fb(ex["5"].k_cat) == [off + 1, off, off, off]
    assert fb(ex["4"].k_cat) == [off + 2, off + 1, off, off]   # card K1 at order 4: 1, 2, 3 (01-03 11:00: no)
