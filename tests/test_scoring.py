"""Nightly scoring: Spark job == direct model call, explanations, re-runs, backfill, failures."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tsa_lib.cli import RunContext
from tsa_lib.config import ColumnsConfig, EncoderConfig, InputConfig, QualityConfig, ScoringConfig, \
    SequenceConfig, StorageConfig, SuiteConfig, TableSource, TrainConfig
from tsa_lib.training.artifact import ArtifactError

COLS = ColumnsConfig(order_id="oid", customer_id="cust", card_id="card", event_time="ts", label="y",
                     categorical=("mcc",), numerical=("amount",), engineered=("age",))
D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)


def _rows() -> list[tuple[Any, ...]]:
    T = dt.datetime.fromisoformat
    return [
        (1, "A", "K1", T("2026-01-01 10:00"), "grocery", 10.0, 0, 100.0),
        (2, "A", "K1", T("2026-01-01 11:00"), "grocery", 20.0, 0, 100.0),
        (3, "B", "K1", T("2026-01-02 09:00"), "fuel", 30.0, 0, 5.0),
        (4, "B", None, T("2026-01-02 10:00"), "fuel", 40.0, 0, 6.0),
        (5, "A", "K1", T("2026-01-03 08:00"), "jewelry", 900.0, 1, 101.0),
        (6, "D", "K9", T("2026-01-03 09:00"), "fuel", 35.0, 0, float("nan")),   # quarantined: engineered NaN
        (7, "C", "K2", T("2026-01-03 10:00"), "fuel", 15.0, None, 1.0),          # no history at all
        (8, "A", "K1", T("2026-01-03 11:00"), "grocery", 25.0, 0, 101.0),
    ]


def _ctx(*dates: dt.date, run_id: str = "s1") -> RunContext:
    return RunContext(job="score", run_id=run_id, dates=dates,
                      started_at=dt.datetime(2026, 1, 4, 1, tzinfo=dt.timezone.utc))


@pytest.fixture(scope="module")
def scored(spark, write_orders, warehouse: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from tsa_lib.models.config import load_model_preset, model_config
    from tsa_lib.models.factory import build_model
    from tsa_lib.spark.build_sequences import run_build_sequences
    from tsa_lib.spark.encoders import fit_encoders
    from tsa_lib.training.artifact import save_artifact

    src = write_orders(_rows(), warehouse / "score_input")
    cfg = SuiteConfig(input=InputConfig(transactions=TableSource(path=src)), columns=COLS,
                      storage=StorageConfig(warehouse=str(warehouse), database="scoretest",
                                            artifacts=str(warehouse / "score_artifacts")),
                      sequences=SequenceConfig(max_len=3, max_history_days=30.0),
                      quality=QualityConfig(numeric_ranges={"amount": (0.0, 1e5)}),
                      encoders=EncoderConfig(min_frequency=1, quantile_low=0.0, quantile_high=1.0),
                      training=TrainConfig(model_name="scorer"),
                      scoring=ScoringConfig(batch_size=2, top_k=2))
    run_build_sequences(spark, cfg, _ctx(D2, D3))
    enc = fit_encoders(spark, cfg, D1, D2)
    import torch

    torch.manual_seed(0)
    mcfg = model_config(load_model_preset("tiny").replace(model_type="two_seq"), enc)
    art = save_artifact(cfg.storage.artifacts_path("models/scorer") / "v1", build_model(mcfg), mcfg, enc, {},
                        {"model_name": "scorer", "version": "v1"})
    from tsa_lib.scoring.job import run_scoring

    cfg = cfg.replace(scoring=ScoringConfig(batch_size=2, top_k=2, model_path=str(art)))   # pinned, no champion

    summary = run_scoring(spark, cfg, _ctx(D3))
    return {"cfg": cfg, "enc": enc, "artifact": art, "summary": summary}


def _scores(spark, cfg: SuiteConfig) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {r.order_id: r for r in spark.read.format("delta").load(cfg.storage.table_path("scores")).collect()}


def test_job_equals_direct_call(spark, scored: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.scoring.job import score_arrow
    from tsa_lib.spark.examples import build_examples_frame
    from tsa_lib.training.artifact import load_artifact

    s = scored["summary"]
    assert (s.targets, s.scored, s.quarantined, s.model) == (4, 3, 1, "scorer/v1")
    got = _scores(spark, scored["cfg"])
    assert sorted(got) == ["5", "7", "8"]
    loaded = load_artifact(scored["artifact"])
    ex = build_examples_frame(spark, scored["cfg"], loaded.encoders, [D3], "x", with_history_ids=True)
    direct = score_arrow(loaded, ex.examples.toArrow(), batch_size=4096, top_k=2)
    for oid, score in zip(direct.column("order_id").to_pylist(), direct.column("score").to_pylist()):
        assert got[oid].score == pytest.approx(score, abs=1e-5)
        assert 0.0 < got[oid].score < 1.0
    r = got["5"]
    assert (r.model_name, r.model_version, r.run_id, r.ds) == ("scorer", "v1", "s1", D3)
    from tsa_lib.features.tensorize import examples_to_batch
    from tsa_lib.scoring.predict import predict, predict_scores

    mb = examples_to_batch(ex.examples.toArrow(), loaded.encoders)
    np.testing.assert_allclose(predict_scores(loaded, mb, 2), predict(loaded, mb, 3).score, atol=1e-6)
    for fn in (predict, predict_scores):
        with pytest.raises(ValueError, match="batch_size: must be >= 1, got 0"):
            fn(loaded, mb, 0)
    assert spark.sql("SELECT count(*) AS n FROM scoretest.scores WHERE ds = DATE'2026-01-03'").first().n == 3


def test_pandas_udf_agrees_with_the_job_and_runs_from_sql(spark, scored: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from tsa_lib.scoring.udf import UDF_COLUMNS, score_udf
    from tsa_lib.spark.examples import build_examples_frame

    job = {o: r.score for o, r in _scores(spark, scored["cfg"]).items()}
    ex = build_examples_frame(spark, scored["cfg"], scored["enc"], [D3], "udf", with_labels=False).examples
    tsa_score = score_udf(scored["artifact"], batch_size=2)
    got = {r.order_id: r.score for r in ex.withColumn("score", tsa_score(*UDF_COLUMNS)).collect()}
    assert sorted(got) == sorted(job) == ["5", "7", "8"]
    assert all(abs(got[o] - job[o]) < 1e-5 for o in job), (got, job)
    ex.createOrReplaceTempView("udf_examples")
    spark.udf.register("tsa_score", tsa_score)
    sql = spark.sql(f"SELECT order_id, tsa_score({', '.join(UDF_COLUMNS)}) AS s FROM udf_examples").collect()
    assert {r.order_id: r.s for r in sql} == got
    # a column of the wrong shape is named, with what it should hold
    bad = ex.withColumn("c_dt", F.slice("c_dt", 1, 2))
    with pytest.raises(Exception, match=r"c_dt: expected 4 values per row \(shape \[4\]\), got 2 values in row 0"):
        bad.withColumn("score", tsa_score(*UDF_COLUMNS)).collect()
    with pytest.raises(ArtifactError):      # on the driver, before any task
        score_udf(tmp_path / "no_model")


def test_explanations(spark, scored: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    got = _scores(spark, scored["cfg"])
    for r in got.values():
        assert r.gate_customer + r.gate_card == pytest.approx(1.0, abs=1e-6)
    # order 5: customer A's history is orders 1, 2; card K1's is 1, 2, 3
    assert set(got["5"].top_customer_orders) <= {"1", "2"} and len(got["5"].top_customer_orders) == 2
    assert set(got["5"].top_card_orders) <= {"1", "2", "3"} and len(got["5"].top_card_orders) == 2
    assert got["5"].top_customer_weights == sorted(got["5"].top_customer_weights, reverse=True)
    assert set(got["8"].top_customer_orders) <= {"1", "2", "5"}
    # order 7 has no history: still scored, no attended orders
    assert got["7"].top_customer_orders == [] and got["7"].top_card_orders == []


def test_rerun_and_backfill(spark, scored: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.scoring.job import run_scoring

    cfg = scored["cfg"]
    before = {k: v.score for k, v in _scores(spark, cfg).items()}
    cache = spark._jsparkSession.sharedState().cacheManager()
    run_scoring(spark, cfg, _ctx(D3, run_id="s2"))
    assert cache.isEmpty()             # the engineered rows cached for the run were released
    after = _scores(spark, cfg)
    assert {k: v.score for k, v in after.items()} == before and {v.run_id for v in after.values()} == {"s2"}
    s = run_scoring(spark, cfg, _ctx(D2, D3, run_id="bf"))
    assert (s.targets, s.scored) == (6, 5)
    rows = _scores(spark, cfg)
    assert sorted(rows) == ["3", "4", "5", "7", "8"]
    assert rows["4"].gate_card == 0.0 and rows["4"].card_id is None   # no card: the gate ignores it


def test_failures_before_anything_is_written(spark, scored: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import shutil

    from tsa_lib.scoring.job import run_scoring

    cfg = scored["cfg"]
    n = spark.read.format("delta").load(cfg.storage.table_path("scores")).count()
    with pytest.raises(ArtifactError, match="does not exist"):
        run_scoring(spark, cfg, _ctx(D3, run_id="bad"), model_path=str(tmp_path / "nope"))
    broken = tmp_path / "broken"
    shutil.copytree(scored["artifact"], broken)
    enc = json.loads((broken / "encoders.json").read_text())
    enc["vocab"]["mcc"].append("extra")
    enc.pop("vocab_size")
    (broken / "encoders.json").write_text(json.dumps(enc))
    with pytest.raises(ArtifactError, match="vocab_size model=.* encoders="):
        run_scoring(spark, cfg, _ctx(D3, run_id="bad"), model_path=str(broken))
    (broken / "metrics.json").unlink()
    with pytest.raises(ArtifactError, match=r"missing \['metrics.json'\]"):
        run_scoring(spark, cfg, _ctx(D3, run_id="bad"), model_path=str(broken))
    with pytest.raises(ValueError, match="run jobs/build_sequences.py"):
        run_scoring(spark, cfg, _ctx(dt.date(2026, 5, 1), run_id="bad"))
    assert spark.read.format("delta").load(cfg.storage.table_path("scores")).count() == n
    assert spark.read.format("delta").load(cfg.storage.table_path("scores")).filter("run_id = 'bad'").count() == 0


def test_evaluation_writes_metrics_and_report(spark, scored: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.evaluation.job import run_evaluation

    cfg = scored["cfg"]
    res = run_evaluation(spark, cfg, _ctx(D3, run_id="ev"))
    row = spark.sql("SELECT * FROM scoretest.metrics WHERE ds = DATE'2026-01-03'").collect()
    assert len(row) == 1 and row[0].n == 3.0 and row[0].positives == 1.0   # order 7 is unlabeled
    assert row[0].roc_auc in (0.0, 1.0) and row[0].model_version == "v1" and row[0].run_id == "ev"
    assert res.report is not None and res.report.is_file()
    assert (res.report.parent / "roc_pr.png").is_file() and (res.report.parent / "gates.png").is_file()
    assert "Per day" in res.report.read_text()
    with pytest.raises(ValueError, match="run jobs/score.py first"):
        run_evaluation(spark, cfg, _ctx(dt.date(2026, 6, 1), run_id="ev2"))


def test_member_average_artifact_scores_through_the_job(spark, scored: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A ``members: 2`` artifact goes through the real scoring job: the job's scores equal the direct
    call's, the explanations are still weights (gates sum to one), the version is recorded."""
    import torch

    from tsa_lib.models.factory import build_model
    from tsa_lib.models.members import MemberAverage
    from tsa_lib.scoring.job import run_scoring, score_arrow
    from tsa_lib.spark.examples import build_examples_frame
    from tsa_lib.training.artifact import load_artifact, save_artifact

    cfg, enc = scored["cfg"], scored["enc"]
    mcfg = load_artifact(scored["artifact"]).config.replace(members=2)
    torch.manual_seed(1)
    art = save_artifact(tmp_path / "members" / "v2", build_model(mcfg), mcfg, enc, {},
                        {"model_name": "scorer", "version": "v2"})
    s = run_scoring(spark, cfg, _ctx(D3, run_id="m2"), model_path=str(art))
    assert (s.scored, s.model) == (3, "scorer/v2")
    loaded = load_artifact(art)
    assert isinstance(loaded.model, MemberAverage) and len(loaded.model.members) == 2
    ex = build_examples_frame(spark, cfg, loaded.encoders, [D3], "x", with_history_ids=True)
    direct = score_arrow(loaded, ex.examples.toArrow(), batch_size=4096, top_k=2)
    got = _scores(spark, cfg)
    for oid, score in zip(direct.column("order_id").to_pylist(), direct.column("score").to_pylist()):
        assert got[oid].score == pytest.approx(score, abs=1e-5) and got[oid].model_version == "v2"
        assert got[oid].gate_customer + got[oid].gate_card == pytest.approx(1.0, abs=1e-6)


def test_broken_weights_are_refused_before_scoring(spark, scored: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A NaN tensor (a valid safetensors file) or a truncated weights file: an ArtifactError naming
    the tensor or the file, and no score is written."""
    import shutil

    import pyarrow as pa
    from safetensors.torch import load_file, save_file

    from tsa_lib.scoring.job import ScoringError, run_scoring, score_arrow
    from tsa_lib.spark.examples import build_examples_frame
    from tsa_lib.training.artifact import load_artifact

    cfg = scored["cfg"]
    n = spark.read.format("delta").load(cfg.storage.table_path("scores")).count()
    nan = tmp_path / "nan"
    shutil.copytree(scored["artifact"], nan)
    w = load_file(str(nan / "model.safetensors"))
    name = sorted(w)[0]
    w[name][...] = float("nan")
    save_file(w, str(nan / "model.safetensors"))
    with pytest.raises(ArtifactError, match=f"tensor '{name}' holds \\d+ non-finite value"):
        run_scoring(spark, cfg, _ctx(D3, run_id="nan"), model_path=str(nan))
    cut = tmp_path / "cut"
    shutil.copytree(scored["artifact"], cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="model.safetensors' is not a readable safetensors file"):
        load_artifact(cut)
    assert spark.read.format("delta").load(cfg.storage.table_path("scores")).count() == n
    # finite weights, non-finite inputs: the batch is refused, naming an order
    loaded = load_artifact(scored["artifact"])
    ex = build_examples_frame(spark, cfg, loaded.encoders, [D3], "x", with_history_ids=True).examples.toArrow()
    eng = pa.array([[float("inf")] * len(loaded.encoders.engineered)] * ex.num_rows, pa.list_(pa.float32()))
    bad = ex.set_column(ex.schema.get_field_index("eng"), "eng", eng)
    with pytest.raises(ScoringError, match=r"gave \d+ non-finite score\(s\) in a batch of \d+ \(first: order"):
        score_arrow(loaded, bad, batch_size=8, top_k=2)
