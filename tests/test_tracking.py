"""MLflow tracking and registry: a tracked training run, the pyfunc round trip without pickle,
the @champion alias following the models table, spark_udf, and clear errors.

Tiny models trained in-process (one CPU rank, no torchrun) on test_training's planted-pattern
examples; every store is a file store under tmp_path.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tsa_lib.config import PROJECT_ROOT, ConfigError, load_config

from test_training import _encoders, _examples  # noqa: E402  (tests/ is on sys.path under pytest)

mlflow = pytest.importorskip("mlflow")

NAME = "t_trk"
EPOCHS = 2


def _config(root: Path, **tracking: Any) -> Path:
    base = yaml.safe_load((PROJECT_ROOT / "conf" / "local.yaml").read_text())
    base["storage"] = {"warehouse": str(root / "wh"), "database": "trk", "artifacts": str(root / "artifacts")}
    base["columns"].update(categorical=["mcc", "channel"], numerical=["amount"], engineered=["age"])
    base["quality"] = {}
    base["encoders"] = {}
    base["training"] = {"model_preset": "tiny", "model_name": NAME, "train_start": "2026-01-01",
                        "train_end": "2026-01-09", "valid_start": "2026-01-10", "valid_end": "2026-01-12",
                        "epochs": EPOCHS, "batch_size": 64, "lr": 0.005, "warmup_steps": 5, "patience": 5,
                        "log_every_steps": 50, "checkpoint_every_steps": 1000}
    base["tracking"] = {"mlflow": True, "mlflow_uri": str(root / "mlruns"), "experiment": "tsa-test", **tracking}
    path = root / f"trk-{abs(hash(json.dumps(tracking, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _train(cfg_path: Path, run_dir: Path) -> Path:
    import torch

    from tsa_lib.training.trainer import Dist, plan_training, train

    cfg = load_config(cfg_path)
    art = train(plan_training(cfg, run_dir=str(run_dir)), d=Dist(rank=0, world=1, local_rank=0,
                                                                   device=torch.device("cpu")))
    assert art is not None
    return art


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Examples, encoders and one tracked training run."""
    import deltalake

    root = tmp_path_factory.mktemp("tracking")
    deltalake.write_deltalake(str(root / "wh" / "trk" / "examples"), _examples(), partition_by=["ds"])
    _encoders().save(root / "artifacts" / "encoders")
    cfg_path = _config(root)
    art = _train(cfg_path, root / "run1")
    return {"root": root, "cfg_path": cfg_path, "cfg": load_config(cfg_path), "artifact": art,
            "uri": (root / "mlruns").resolve().as_uri()}


@pytest.fixture
def use_store(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """This process's MLflow pointed at the test store (``models:/`` URIs), restored afterwards."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", store["uri"])
    mlflow.set_tracking_uri(store["uri"])
    mlflow.set_registry_uri(store["uri"])
    yield mlflow.MlflowClient(store["uri"], store["uri"])
    mlflow.set_tracking_uri(None)   # type: ignore[arg-type]


def _version_of(client: Any, artifact_version: str) -> Any:
    (mv,) = [m for m in client.search_model_versions(f"name = '{NAME}'")
             if m.tags.get("tsa.model_version") == artifact_version]
    return mv


def _examples_pdf() -> pd.DataFrame:
    return _examples().slice(1000, 300).to_pandas()


def _direct(artifact: Path, pdf: pd.DataFrame) -> np.ndarray:
    from tsa_lib.scoring.predict import predict
    from tsa_lib.scoring.udf import UDF_COLUMNS, to_model_batch
    from tsa_lib.training.artifact import load_artifact

    loaded = load_artifact(artifact)
    return predict(loaded, to_model_batch(tuple(pdf[c] for c in UDF_COLUMNS), loaded.encoders)).score


def test_training_run_is_tracked_and_registered(store: dict[str, Any], use_store: Any) -> None:
    client = use_store
    art: Path = store["artifact"]
    man = json.loads((art / "manifest.json").read_text())
    mv = _version_of(client, art.name)
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tsa-test"
    p = run.data.params
    assert p["training.model_name"] == NAME and p["training.lr"] == "0.005" and p["training.epochs"] == str(EPOCHS)
    assert p["columns.categorical"] == '["mcc", "channel"]' and p["model.model_type"] == "single_seq"
    assert p["tracking.mlflow"] == "true" and p["model.seq_len"] == "5"
    for key in ("train_loss", "valid_loss", "roc_auc", "average_precision", "recall_at_1pct_fpr"):
        hist = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(EPOCHS)), key
    history = json.loads((art / "metrics.json").read_text())["history"]
    ap = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "average_precision")}
    assert ap == {int(h["epoch"]): pytest.approx(h["average_precision"]) for h in history}
    t = run.data.tags
    assert t["tsa.model_version"] == art.name == man["version"]
    assert t["tsa.examples_path"] == man["data"]["examples_path"]
    assert t["tsa.examples_version"] == "0" and t["tsa.encoders_version"] == "enc-train-test"
    assert t["tsa.code_commit"] == man["code_commit"] and t["tsa.config_hash"] == man["config_hash"]
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "tsa_artifact")}
    assert logged == {f"tsa_artifact/{f}" for f in ("model.safetensors", "model_config.json", "encoders.json",
                                                     "metrics.json", "manifest.json")}
    assert mv.tags["tsa.examples_version"] == "0" and mv.tags["tsa.encoders_version"] == "enc-train-test"
    assert int(mv.version) >= 1 and mv.status == "READY"


def test_pyfunc_round_trip_reads_no_pickle(store: dict[str, Any], use_store: Any,
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import pickle

    import cloudpickle

    mv = _version_of(use_store, store["artifact"].name)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{mv.version}", dst_path=str(tmp_path)))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert "mlflow_model.py" in files
    assert any(f.endswith("/model.safetensors") for f in files), files
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("something was unpickled")

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    for mod in (pickle, cloudpickle):
        monkeypatch.setattr(mod, "load", refuse)
        monkeypatch.setattr(mod, "loads", refuse)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{mv.version}")
    pdf = _examples_pdf()
    got = np.asarray(model.predict(pdf), dtype=np.float64)
    monkeypatch.undo()
    want = _direct(store["artifact"], pdf)
    assert got.shape == (300,) and np.abs(got - want).max() < 1e-6
    # positional columns (no names) and a batch size param give the same scores
    positional = pdf[list(_udf_columns())].set_axis([str(i) for i in range(9)], axis=1)
    assert np.abs(model._model_impl.python_model.predict(None, positional, {"batch_size": 7}) - want).max() < 1e-6


def _udf_columns() -> tuple[str, ...]:
    from tsa_lib.scoring.udf import UDF_COLUMNS

    return UDF_COLUMNS


def test_champion_alias_follows_the_models_table(spark, store: dict[str, Any], use_store: Any,  # type: ignore[no-untyped-def]
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from tsa_lib.cli import RunContext
    from tsa_lib.registry.models_table import champion, run_promote, run_rollback
    from tsa_lib.tracking import resolve_alias

    client, cfg = use_store, store["cfg"]
    first = store["artifact"]
    second = _train(store["cfg_path"], store["root"] / "run2")
    assert second.name != first.name
    ctx = RunContext(job="promote", run_id="p1", dates=(dt.date(2026, 1, 13),),
                     started_at=dt.datetime(2026, 1, 14, tzinfo=dt.timezone.utc))
    run_promote(spark, cfg, ctx, first.name, force=True)
    v1, v2 = _version_of(client, first.name).version, _version_of(client, second.name).version
    assert resolve_alias(f"models:/{NAME}@champion", cfg).version == v1
    run_promote(spark, cfg, ctx, second.name, force=True)
    assert champion(spark, cfg).version == second.name
    assert client.get_model_version_by_alias(NAME, "champion").version == v2
    run_rollback(spark, cfg, ctx)
    assert client.get_model_version_by_alias(NAME, "champion").version == v1
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert model._model_impl.python_model.loaded.version == first.name
    # a champion the registry does not know (trained with tracking off): the decision stands, one warning
    untracked = first.parent / "vuntracked"
    import shutil

    shutil.copytree(first, untracked)
    man = json.loads((untracked / "manifest.json").read_text())
    (untracked / "manifest.json").write_text(json.dumps({**man, "version": "vuntracked"}))
    with caplog.at_level(logging.WARNING, logger="tsa_lib.tracking"):
        run_promote(spark, cfg, ctx, "vuntracked", force=True)
    assert champion(spark, cfg).version == "vuntracked"
    assert any("@champion was not moved" in r.getMessage() and "'vuntracked' is not registered" in r.getMessage()
               for r in caplog.records), caplog.text
    assert client.get_model_version_by_alias(NAME, "champion").version == v1
    run_rollback(spark, cfg, ctx)
    assert client.get_model_version_by_alias(NAME, "champion").version == v1


def test_spark_udf_scores_examples_like_the_model(spark, store: dict[str, Any], use_store: Any) -> None:  # type: ignore[no-untyped-def]
    from tsa_lib.tracking import set_champion_alias

    set_champion_alias(store["cfg"], store["artifact"].name)
    ex = spark.read.format("delta").load(str(store["root"] / "wh" / "trk" / "examples")) \
        .filter("ds >= DATE'2026-01-10'")
    udf = mlflow.pyfunc.spark_udf(spark, f"models:/{NAME}@champion", result_type="double", env_manager="local")
    got = ex.withColumn("score", udf(*_udf_columns())).select("order_id", "score").toPandas()
    got_default = ex.withColumn("score", udf()).select("order_id", "score").toPandas()   # columns from the signature
    pdf = ex.toPandas()
    want = dict(zip(pdf["order_id"], _direct(store["artifact"], pdf)))
    assert len(got) == len(pdf) > 100
    assert max(abs(s - want[o]) for o, s in zip(got["order_id"], got["score"])) < 1e-6
    assert dict(zip(got_default["order_id"], got_default["score"])) == dict(zip(got["order_id"], got["score"]))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_tracking_fails_before_training_or_warns(store: dict[str, Any], tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from tsa_lib.tracking import check_reachable

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad = str(blocker / "mlruns")
    root = store["root"]
    models = root / "artifacts" / "models" / NAME
    before = sorted(p.name for p in models.iterdir())
    with pytest.raises(ConfigError, match=r"tracking.mlflow_uri: MLflow at 'file://.*a_file/mlruns' cannot be "
                                          r"used: cannot create the file store folder"):
        _train(_config(root, mlflow_uri=bad, on_unreachable="fail"), tmp_path / "run_fail")
    assert sorted(p.name for p in models.iterdir()) == before and not (tmp_path / "run_fail").exists()
    remote = load_config(_config(root, mlflow_uri=f"http://127.0.0.1:{_closed_port()}"))
    assert check_reachable(remote) is not None          # a server that does not answer (no retries)
    with caplog.at_level(logging.WARNING, logger="tsa_lib.tracking"):
        art = _train(_config(root, mlflow_uri=bad, on_unreachable="warn"), tmp_path / "run_warn")
    assert (art / "model.safetensors").is_file()
    warnings = [r for r in caplog.records if r.name == "tsa_lib.tracking"]
    assert len(warnings) == 1 and "training without MLflow tracking" in warnings[0].getMessage()


def test_missing_alias_and_model_are_named(store: dict[str, Any], use_store: Any) -> None:
    from tsa_lib.tracking import RegistryError, mirror_champion, resolve_alias, set_champion_alias

    cfg = store["cfg"]
    with pytest.raises(RegistryError, match=rf"models:/{NAME}@nope: alias 'nope' of registered model '{NAME}' "
                                            r"does not exist"):
        resolve_alias(f"models:/{NAME}@nope", cfg)
    with pytest.raises(RegistryError, match="registered model 'no_such_model' does not exist"):
        resolve_alias("models:/no_such_model@champion", cfg)
    with pytest.raises(RegistryError, match="not a models:/<name>@<alias> URI"):
        resolve_alias(f"models:/{NAME}/1", cfg)
    with pytest.raises(RegistryError, match=f"model version 'v19990101T000000' is not registered under '{NAME}'"):
        set_champion_alias(cfg, "v19990101T000000")
    other = cfg.replace(tracking=cfg.tracking.__class__(mlflow=True, mlflow_uri=cfg.tracking.mlflow_uri,
                                                        registered_model="never_registered"))
    with pytest.raises(RegistryError, match="registered model 'never_registered' does not exist"):
        set_champion_alias(other, store["artifact"].name)
    assert mirror_champion(other, store["artifact"].name) is None        # warns, never raises
    # a registry that lists versions without their tags: found through the run's tag
    from tsa_lib.tracking import find_model_version

    art = store["artifact"].name
    mv = find_model_version(cfg, art)
    use_store.delete_model_version_tag(NAME, mv.version, "tsa.model_version")
    try:
        assert find_model_version(cfg, art).version == mv.version
    finally:
        use_store.set_model_version_tag(NAME, mv.version, "tsa.model_version", art)


@pytest.mark.parametrize("tracking, key", [
    ({"mlflow": "yes"}, "tracking.mlflow"),
    ({"mlflow_uri": ""}, "tracking.mlflow_uri"),
    ({"mlflow_uri": 3}, "tracking.mlflow_uri"),
    ({"experiment": " "}, "tracking.experiment"),
    ({"registered_model": "a/b"}, "tracking.registered_model"),
    ({"on_unreachable": "ignore"}, "tracking.on_unreachable"),
    ({"uri": "mlruns"}, "tracking.uri"),
])
def test_bad_tracking_config_is_named(tracking: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(PROJECT_ROOT / "conf" / "local.yaml", overrides={"tracking": tracking})


def test_tracking_defaults() -> None:
    from tsa_lib.config import SuiteConfig, TrackingConfig

    local = load_config(PROJECT_ROOT / "conf" / "local.yaml")
    assert local.tracking.mlflow and local.tracking.mlflow_uri_resolved() == (PROJECT_ROOT / "mlruns").as_uri()
    assert local.tracking.model_name(local.training) == local.training.model_name
    assert SuiteConfig.__dataclass_fields__["tracking"].default_factory().mlflow is False
    assert TrackingConfig(mlflow_uri="databricks").mlflow_uri_resolved() == "databricks"
    assert TrackingConfig(registered_model="main.fraud.tsa").model_name(local.training) == "main.fraud.tsa"
