"""Encoders and the one tensorization path: exact encodings, artifact round trip, Spark parity."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tsa_lib.cli import RunContext
from tsa_lib.config import ColumnsConfig, EncoderConfig, InputConfig, QualityConfig, SequenceConfig, \
    StorageConfig, SuiteConfig, TableSource
from tsa_lib.features.encoders import EncoderError, Encoders, Scaler, encoders_from_json, load_encoders
from tsa_lib.features.tensorize import encode_engineered, encode_sequence_batch, examples_to_batch, \
    relative_codes, seq_tensors_to_arrow


def _enc(**over: Any) -> Encoders:
    kw: dict[str, Any] = dict(
        version="enc-test", config_hash="abc", window_start="2026-01-01", window_end="2026-01-02",
        categorical=("mcc", "channel"), numerical=("amount",), engineered=("age",),
        vocab={"mcc": ("grocery", "fuel"), "channel": ("web",)},
        numeric_scalers={"amount": Scaler(lo=0.0, hi=100.0)},
        engineered_scalers={"age": Scaler(lo=0.0, hi=float(np.log1p(9.0)), log1p=True)},
        max_len=2, max_history_days=30.0)
    kw.update(over)
    return Encoders(**kw)


def test_categorical_offsets_unknown_and_null() -> None:
    e = _enc()
    assert e.offsets == {"mcc": 2, "channel": 4} and e.vocab_size == 5
    got = e.encode_categorical("mcc", pa.array(["fuel", "grocery", "jewelry", None, "__null__"]))
    assert got.tolist() == [3, 2, 1, 1, 1]
    assert e.encode_categorical("channel", pa.array(["web", "pos"])).tolist() == [4, 1]


def test_scalers_clip_and_log1p() -> None:
    e = _enc()
    assert e.encode_numeric("amount", np.array([-5.0, 0.0, 25.0, 100.0, 1e9, np.nan])).tolist() == \
        [0.0, 0.0, 0.25, 1.0, 1.0, 0.0]  # NaN (a null) -> numerical default 0 -> 0
    np.testing.assert_allclose(e.encode_numeric("age", np.array([0.0, 9.0, 99.0])), [0.0, 1.0, 1.0], rtol=1e-6)
    assert Scaler(lo=3.0, hi=3.0).apply(np.array([1.0, 5.0])).tolist() == [0.0, 0.0]


def test_artifact_round_trip(tmp_path: Path) -> None:
    e = _enc()
    path = e.save(tmp_path / "encoders")
    assert (tmp_path / "encoders" / "LATEST").read_text().strip() == path.name
    back = load_encoders(tmp_path / "encoders")
    assert back == e and back.vocab_size == 5
    assert load_encoders(path) == e


def test_artifacts_from_before_the_removed_options() -> None:
    """Encoders written when gap_feature and standardised scaling existed: off, they load as today's;
    on, they are refused naming the key (this code cannot build those inputs)."""
    old = json.loads(json.dumps(_enc().to_json()))
    old["gap_feature"] = False
    for s in (*old["numeric_scalers"].values(), *old["engineered_scalers"].values()):
        s.update(mean=0.0, std=0.0)
    assert encoders_from_json(old) == _enc()
    with pytest.raises(EncoderError, match="gap_feature: True"):
        encoders_from_json({**old, "gap_feature": True})
    old["numeric_scalers"]["amount"].update(mean=20.0, std=10.0)
    with pytest.raises(EncoderError, match="numeric_scalers.amount: std 10.0"):
        encoders_from_json(old)


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.pop("vocab"), "missing key(s) ['vocab']"),
    (lambda d: d.update(format_version=99), "format_version 99"),
    (lambda d: d["vocab"].update(mcc=["a", "a"]), "repeated values"),
    (lambda d: d["numeric_scalers"].update(amount={"lo": 5, "hi": 1}), "lo=5.0 hi=1.0"),
    (lambda d: d["numeric_scalers"].update(amount={"hi": 1}), "numeric_scalers.amount"),
    (lambda d: d["vocab"].pop("channel"), "'channel' has no vocabulary"),
    (lambda d: d.update(vocab_size=7), "vocab_size 7"),
    (lambda d: d.update(max_len=0), "max_len must be >= 1"),
    (lambda d: d.update(relative="dev"), "relative: expected a list"),
    (lambda d: d.update(relative=["amount"]), "relative column 'amount' is also used"),
    (lambda d: d.update(relative=["dev", "dev"]), "relative column 'dev' is also used"),
    (lambda d: d.update(relative_numerical="amount"), "relative_numerical: expected a list"),
    (lambda d: d.update(relative_numerical=["age"]), "relative_numerical column 'age' is not a numerical"),
    (lambda d: d.update(relative=["dev"]), "vocab_size 5"),   # 4 relative tokens make it 9
])
def test_bad_artifacts_are_named(tmp_path: Path, mutate: Any, words: str) -> None:
    d = json.loads(json.dumps(_enc().to_json()))
    mutate(d)
    with pytest.raises(EncoderError) as e:
        encoders_from_json(d)
    assert words in str(e.value)


def test_missing_or_broken_files(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="has no LATEST"):
        load_encoders(tmp_path)
    with pytest.raises(EncoderError, match="does not exist"):
        load_encoders(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EncoderError, match="not valid JSON"):
        load_encoders(tmp_path / "bad.json")
    with pytest.raises(EncoderError, match="'nope' is not a categorical column"):
        _enc().encode_categorical("nope", pa.array(["x"]))


def _seq_batch() -> pa.Table:
    ts = lambda s: dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc)  # noqa: E731
    # one entity row: context (1 order) + 2 targets at the same time (ties are not history)
    return pa.table({
        "entity_id": ["A"], "n_context": pa.array([1], pa.int32()), "n_targets": pa.array([2], pa.int32()),
        "order_id": [["o1", "o2", "o3"]],
        "event_time": pa.array([[ts("2026-01-01 00:00"), ts("2026-01-03 12:00"), ts("2026-01-03 12:00")]],
                               pa.list_(pa.timestamp("us", tz="UTC"))),
        "mcc": [["fuel", "grocery", "jewelry"]], "channel": [["web", "web", "pos"]],
        "amount": [[50.0, 200.0, 10.0]],
    })


def test_encode_sequence_batch_exact() -> None:
    t = encode_sequence_batch(_seq_batch(), _enc(), with_history_ids=True)
    assert t.order_id.tolist() == ["o2", "o3"] and t.entity_id.tolist() == ["A", "A"]
    # L = 3 slots, left-padded, target last
    assert t.mask.tolist() == [[False, True, True], [False, True, True]]
    assert t.hist_len.tolist() == [1, 1]
    assert t.cat[:, :, 0].tolist() == [[0, 3, 2], [0, 3, 1]]     # mcc: pad, fuel, grocery | jewelry unknown
    assert t.cat[:, :, 1].tolist() == [[0, 4, 4], [0, 4, 1]]     # channel: web=4, pos unknown
    np.testing.assert_allclose(t.num[:, :, 0], [[0, 0.5, 1.0], [0, 0.5, 0.1]], rtol=1e-6)
    np.testing.assert_allclose(t.dt, [[0, 2.5, 0], [0, 2.5, 0]], rtol=1e-6)
    assert t.hist_order_id.tolist() == [["", "o1", "o2"], ["", "o1", "o3"]]
    rb = seq_tensors_to_arrow(t, "customer", with_history_ids=True)
    assert rb.column("c_cat").to_pylist()[1] == [0, 0, 3, 4, 1, 1]
    assert rb.column("c_len").to_pylist() == [1, 1]


def test_relative_codes_exact() -> None:
    # 2 * (same value as the target, the last slot) + (first time in the window); -1: padding / null
    v = np.array([[-1, 5, 5, 7, 5],       # target seen before: 2
                  [-1, -1, 3, -1, 4],     # a null never matches; target new: 3
                  [1, 2, 3, 4, 5],        # all different
                  [9, 9, 9, 9, 9]])
    assert relative_codes(v).tolist() == [[-1, 3, 2, 1, 2], [-1, -1, 1, -1, 3], [1, 1, 1, 1, 3],
                                          [3, 2, 2, 2, 2]]
    assert relative_codes(np.zeros((0, 3), np.int64)).shape == (0, 3)
    with pytest.raises(ValueError, match=r"values: expected a \[T, L\] array, got shape \(3,\)"):
        relative_codes(np.arange(3))


def test_encode_sequence_batch_relative_column() -> None:
    e = _enc(relative=("dev",))
    assert e.relative_offsets == {"dev": 5} and e.vocab_size == 9 and e.cat_inputs == ("mcc", "channel", "dev")
    b = _seq_batch().append_column("dev", pa.array([["d1", "d1", None]], pa.list_(pa.string())))
    t = encode_sequence_batch(b, e)
    assert t.cat.shape == (2, 3, 3)
    # o2 on device d1 seen at o1: o1 = same/first (5+3), o2 = same/repeat (5+2); o3's device is null -> unknown
    assert t.cat[:, :, 2].tolist() == [[0, 8, 7], [0, 6, 1]]
    assert t.cat[:, :, :2].tolist() == encode_sequence_batch(_seq_batch(), _enc()).cat.tolist()
    with pytest.raises(EncoderError, match=r"lacks column\(s\) \['dev'\]"):
        encode_sequence_batch(_seq_batch(), e)


def test_categorical_column_also_relative() -> None:
    # mcc embedded (inputs 0) AND relative to the target (input 2, tokens from offset 5)
    e = _enc(relative=("mcc",))
    assert e.cat_inputs == ("mcc", "channel", "mcc~relative") and e.relative_offsets == {"mcc": 5}
    assert e.sequence_row_columns.count("mcc") == 1
    t = encode_sequence_batch(_seq_batch(), e)
    assert t.cat[:, :, :2].tolist() == encode_sequence_batch(_seq_batch(), _enc()).cat.tolist()
    # target o2 (grocery): o1 fuel is other/first (5+1), o2 new to the window (5+3); o3 (jewelry) likewise
    assert t.cat[:, :, 2].tolist() == [[0, 6, 8], [0, 6, 8]]
    assert encoders_from_json(json.loads(json.dumps(e.to_json()))) == e


def test_relative_numerical_exact(tmp_path: Path) -> None:
    e = _enc(relative_numerical=("amount",))
    assert e.num_inputs == ("amount", "amount~relative")
    t = encode_sequence_batch(_seq_batch(), e)
    # scaled amounts: o1 0.5, o2 1.0 (200 clipped), o3 0.1; each minus the target's, 0 at padding
    np.testing.assert_allclose(t.num[:, :, 1], [[0, -0.5, 0.0], [0, 0.4, 0.0]], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(t.num[:, :, 0], encode_sequence_batch(_seq_batch(), _enc()).num[:, :, 0])
    assert load_encoders(e.save(tmp_path)) == e


def test_encode_engineered_and_bad_input() -> None:
    e = _enc()
    got = encode_engineered(pa.table({"age": pa.array([0.0, 9.0, None], pa.float64())}), e)
    np.testing.assert_allclose(got[:, 0], [0.0, 1.0, 0.0], atol=1e-6)
    with pytest.raises(EncoderError, match="engineered column 'age' missing"):
        encode_engineered(pa.table({"x": [1.0]}), e)
    with pytest.raises(EncoderError, match=r"lacks column\(s\) \['mcc'\]"):
        encode_sequence_batch(_seq_batch().drop(["mcc"]), e)


# ---- Spark: fit on a window only; the job and a direct call give identical tensors -----------------------

COLS = ColumnsConfig(order_id="oid", customer_id="cust", card_id="card", event_time="ts", label="y",
                     categorical=("mcc",), numerical=("amount",), engineered=("age",))


def _rows() -> list[tuple[Any, ...]]:
    T = dt.datetime.fromisoformat
    return [
        (1, "A", "K1", T("2026-01-01 10:00"), "grocery", 10.0, 0, 100.0),
        (2, "A", "K1", T("2026-01-01 11:00"), "grocery", 20.0, 0, 100.0),
        (3, "B", "K1", T("2026-01-02 09:00"), "fuel", 30.0, 0, 5.0),
        (4, "B", None, T("2026-01-02 10:00"), "rare", 40.0, 0, None),
        (5, "A", "K1", T("2026-01-03 08:00"), "jewelry", 900.0, 1, 101.0),   # jewelry appears after the window
        (6, "B", None, T("2026-01-03 09:00"), "fuel", 35.0, 0, float("nan")),
        (7, "C", "K2", T("2026-01-03 10:00"), "fuel", 15.0, None, 1.0),
        (8, "A", "K1", T("2026-01-03 11:00"), "grocery", 25.0, 0, 101.0),
    ]


@pytest.fixture(scope="module")
def featcfg(write_orders, warehouse: Path) -> SuiteConfig:  # type: ignore[no-untyped-def]
    src = write_orders(_rows(), warehouse / "feat_input")
    return SuiteConfig(input=InputConfig(transactions=TableSource(path=src)), columns=COLS,
                       storage=StorageConfig(warehouse=str(warehouse), database="feattest",
                                             artifacts=str(warehouse / "artifacts")),
                       sequences=SequenceConfig(max_len=3, max_history_days=30.0),
                       quality=QualityConfig(numeric_ranges={"amount": (0.0, 1e5)}),
                       encoders=EncoderConfig(min_frequency=2, quantile_low=0.0, quantile_high=1.0,
                                              log1p=("age",)))


D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)


def test_fit_uses_the_window_only(spark, featcfg: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.spark.encoders import fit_encoders

    enc = fit_encoders(spark, featcfg, D1, D2)
    assert enc.vocab == {"mcc": ("grocery",)}   # fuel and rare seen once (< 2); jewelry only after the window
    assert enc.numeric_scalers["amount"] == Scaler(lo=10.0, hi=40.0)
    assert enc.engineered_scalers["age"].hi == pytest.approx(float(np.log1p(100.0)))
    assert (enc.window_start, enc.window_end, enc.max_len) == ("2026-01-01", "2026-01-02", 3)
    with pytest.raises(ValueError, match="no usable orders"):
        fit_encoders(spark, featcfg, dt.date(2027, 1, 1), dt.date(2027, 1, 2))
    with pytest.raises(ValueError, match="before start"):
        fit_encoders(spark, featcfg, D2, D1)


def test_examples_job_matches_direct_call(spark, featcfg: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.spark.build_sequences import run_build_sequences
    from tsa_lib.spark.encoders import fit_encoders
    from tsa_lib.spark.examples import run_build_examples

    ctx = RunContext(job="t", run_id="r1", dates=(D3,), started_at=dt.datetime(2026, 1, 4, tzinfo=dt.timezone.utc))
    run_build_sequences(spark, featcfg, ctx)
    enc = fit_encoders(spark, featcfg, D1, D2)
    s = run_build_examples(spark, featcfg, ctx, enc)
    assert (s.targets, s.examples, s.quarantined, s.labeled, s.positives) == (4, 3, 1, 2, 1)
    q = spark.sql("SELECT order_id, reason, detail FROM feattest.quarantine WHERE job = 'build_examples'").collect()
    assert [(r.order_id, r.reason, r.detail) for r in q] == [("6", "non_finite", "engineered age=NaN")]

    tbl = spark.read.format("delta").load(featcfg.storage.table_path("examples")).orderBy("order_id").toArrow()
    job = examples_to_batch(tbl, enc)
    assert job.order_id.tolist() == ["5", "7", "8"]
    assert job.label.tolist() == [1, -1, 0]          # order 7 is unlabeled
    # direct call on the same sequence rows
    seqs = {e: spark.read.format("delta").load(featcfg.storage.table_path(f"sequences_{e}")).toArrow()
            for e in ("customer", "card")}
    direct = {e: encode_sequence_batch(seqs[e], enc) for e in seqs}
    for e, (cat, num, dtt, mask) in {"customer": (job.c_cat, job.c_num, job.c_dt, job.c_mask),
                                     "card": (job.k_cat, job.k_num, job.k_dt, job.k_mask)}.items():
        pos = {o: i for i, o in enumerate(direct[e].order_id)}
        for i, o in enumerate(job.order_id):
            j = pos[o]
            np.testing.assert_array_equal(cat[i], direct[e].cat[j])
            np.testing.assert_array_equal(num[i], direct[e].num[j])
            np.testing.assert_array_equal(dtt[i], direct[e].dt[j])
            np.testing.assert_array_equal(mask[i], direct[e].mask[j])
    # exact values for order 5 (customer A: history 1, 2; jewelry unknown -> 1; grocery -> 2)
    assert job.c_cat[0, :, 0].tolist() == [0, 2, 2, 1]
    np.testing.assert_allclose(job.c_num[0, :, 0], [0, 0, 1 / 3, 1.0], rtol=1e-6)
    assert job.c_mask[0].tolist() == [False, True, True, True]
    eng_direct = encode_engineered(pa.table({"age": pa.array([101.0, 1.0, 101.0])}), enc)
    np.testing.assert_array_equal(job.eng, eng_direct)
    # idempotent: a re-run replaces the partition
    run_build_examples(spark, featcfg, RunContext(job="t", run_id="r2", dates=(D3,), started_at=ctx.started_at), enc)
    again = spark.read.format("delta").load(featcfg.storage.table_path("examples"))
    assert again.count() == 3 and {r.run_id for r in again.select("run_id").collect()} == {"r2"}


def test_order_features_repeats_and_gaps_are_recorded(spark, featcfg: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    """input.order_features with two rows for order 5 and none for order 7: one row of 5 is kept
    (deterministically), the other recorded in quarantine without dropping the order; order 7 is
    counted and gets the defaults.  Every target still reconciles."""
    import dataclasses

    from pyspark.sql import functions as F

    from tsa_lib.spark.build_sequences import run_build_sequences
    from tsa_lib.spark.encoders import fit_encoders
    from tsa_lib.spark.examples import run_build_examples
    from tsa_lib.spark.inputs import orphan_feature_rows

    wh = Path(featcfg.storage.warehouse) / "of"
    feats = spark.createDataFrame([(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (5, 7.0), (5, 9.0), (6, 2.0), (8, 3.0),
                                   (99, 1.0)], "oid long, age double")     # 99: no such transaction
    feats.write.format("delta").mode("overwrite").save(str(wh / "order_features"))
    cfg = dataclasses.replace(
        featcfg, input=dataclasses.replace(featcfg.input, order_features=TableSource(path=str(wh / "order_features"))),
        storage=dataclasses.replace(featcfg.storage, database="feattest_of", warehouse=str(wh)))
    ctx = RunContext(job="t", run_id="r1", dates=(D3,), started_at=dt.datetime(2026, 1, 4, tzinfo=dt.timezone.utc))
    run_build_sequences(spark, cfg, ctx)
    enc = fit_encoders(spark, cfg, D1, D2)
    s = run_build_examples(spark, cfg, ctx, enc)
    assert (s.targets, s.examples, s.quarantined, s.without_features) == (4, 4, 0, 1)
    assert orphan_feature_rows(spark, cfg) == 1 and orphan_feature_rows(spark, featcfg) == 0
    q = spark.read.format("delta").load(cfg.storage.table_path("quarantine")).filter(F.col("job") == "build_examples")
    rows = [(r.order_id, r.reason, r.detail) for r in q.collect()]
    assert rows == [("5", "duplicate_order_features",
                     "input.order_features has 2 rows for this order; kept one chosen by a hash of its values")]
    kept = {r.order_id: r.eng for r in spark.read.format("delta").load(cfg.storage.table_path("examples")).collect()}
    other = 7.0 if q.first().raw == '{"age":9.0}' else 9.0
    assert kept["5"] == pytest.approx(encode_engineered(pa.table({"age": [other]}), enc)[0].tolist())
    assert kept["7"] == pytest.approx(encode_engineered(pa.table({"age": pa.array([None], pa.float64())}),
                                                        enc)[0].tolist())


def test_relative_column_through_the_jobs(spark, featcfg: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    """A relative column travels quality -> sequences -> encoders -> examples and is tokenized exactly."""
    import dataclasses

    from tsa_lib.spark.build_sequences import run_build_sequences
    from tsa_lib.spark.encoders import fit_encoders
    from tsa_lib.spark.examples import run_build_examples

    cfg = dataclasses.replace(
        featcfg, columns=dataclasses.replace(COLS, categorical=(), relative=("mcc",)),
        storage=dataclasses.replace(featcfg.storage, database="feattest_rel",
                                    warehouse=str(Path(featcfg.storage.warehouse) / "rel")))
    ctx = RunContext(job="t", run_id="r1", dates=(D3,), started_at=dt.datetime(2026, 1, 4, tzinfo=dt.timezone.utc))
    run_build_sequences(spark, cfg, ctx)
    enc = fit_encoders(spark, cfg, D1, D2)
    assert enc.relative == ("mcc",) and enc.vocab == {} and enc.relative_offsets == {"mcc": 2}
    run_build_examples(spark, cfg, ctx, enc)
    tbl = spark.read.format("delta").load(cfg.storage.table_path("examples")).orderBy("order_id").toArrow()
    job = examples_to_batch(tbl, enc)
    assert job.order_id.tolist() == ["5", "7", "8"] and job.c_cat.shape == (3, 4, 1)
    # customer A: o1 grocery, o2 grocery | o5 jewelry (new: 2+3); o8 grocery (seen: 2+2)
    assert job.c_cat[0, :, 0].tolist() == [0, 2 + 1, 2 + 0, 2 + 3]
    assert job.c_cat[2, :, 0].tolist() == [2 + 3, 2 + 2, 2 + 1, 2 + 2]
    # card K1 for o5: o1, o2 (A, grocery), o3 (B, fuel), then o5
    assert job.k_cat[0, :, 0].tolist() == [2 + 1, 2 + 0, 2 + 1, 2 + 3]


def test_categorical_relative_and_relative_numerical_through_the_jobs(spark, featcfg: SuiteConfig) -> None:  # type: ignore[no-untyped-def]
    """mcc embedded AND relative, amount also relative to the target: exact tensors from the real jobs."""
    import dataclasses

    from tsa_lib.spark.build_sequences import run_build_sequences
    from tsa_lib.spark.encoders import fit_encoders
    from tsa_lib.spark.examples import run_build_examples

    cfg = dataclasses.replace(
        featcfg, columns=dataclasses.replace(COLS, relative=("mcc",)),
        encoders=dataclasses.replace(featcfg.encoders, relative_numerical=("amount",)),
        storage=dataclasses.replace(featcfg.storage, database="feattest_dual",
                                    warehouse=str(Path(featcfg.storage.warehouse) / "dual")))
    ctx = RunContext(job="t", run_id="r1", dates=(D3,), started_at=dt.datetime(2026, 1, 4, tzinfo=dt.timezone.utc))
    run_build_sequences(spark, cfg, ctx)
    seq_cols = spark.read.format("delta").load(cfg.storage.table_path("sequences_customer")).columns
    assert seq_cols.count("mcc") == 1
    enc = fit_encoders(spark, cfg, D1, D2)
    assert enc.cat_inputs == ("mcc", "mcc~relative") and enc.num_inputs == ("amount", "amount~relative")
    assert enc.offsets == {"mcc": 2} and enc.relative_offsets == {"mcc": 3}
    run_build_examples(spark, cfg, ctx, enc)
    tbl = spark.read.format("delta").load(cfg.storage.table_path("examples")).orderBy("order_id").toArrow()
    job = examples_to_batch(tbl, enc)
    assert job.order_id.tolist() == ["5", "7", "8"]
    # order 5 (customer A: o1, o2 grocery, then jewelry): embedded as before, relative: other/first,
    # other/repeat, target/first; amounts 10, 20, 900 scale to 0, 1/3, 1 and relative to the target's 1
    assert job.c_cat[0, :, 0].tolist() == [0, 2, 2, 1]
    assert job.c_cat[0, :, 1].tolist() == [0, 3 + 1, 3 + 0, 3 + 3]
    np.testing.assert_allclose(job.c_num[0, :, 0], [0, 0, 1 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(job.c_num[0, :, 1], [0, -1.0, -2 / 3, 0], rtol=1e-6)
