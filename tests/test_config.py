"""Config loading: the shipped configs load; every kind of bad value is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tsa_lib.config import PROJECT_ROOT, ConfigError, SuiteConfig, TableSource, load_config, to_dict
from tsa_lib.config_base import check_qualified_name, config_hash, from_dict

CONF = PROJECT_ROOT / "conf"


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _local() -> dict[str, Any]:
    return yaml.safe_load((CONF / "local.yaml").read_text())


@pytest.mark.parametrize("name", ["local.yaml", "merchant.yaml", "databricks.yaml", "emr.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(CONF / name)
    assert isinstance(cfg, SuiteConfig)
    assert cfg.columns.order_id and cfg.columns.categorical


@pytest.mark.parametrize("name", ["local.yaml", "merchant.yaml", "databricks.yaml", "emr.yaml"])
def test_shipped_configs_plan_training_and_scoring(name: str) -> None:
    """Each shipped config plans a training night and a scoring night: windows from the run date,
    a shipped model preset, artifacts outside the package, the DAG's commands."""
    import datetime as dt

    from tsa_lib.models.config import load_model_preset
    from tsa_lib.orchestration.airflow_dag import plan
    from tsa_lib.schedule import matured_day, training_windows

    cfg = load_config(CONF / name)
    d = dt.date(2026, 6, 30)
    w = training_windows(cfg, d)
    assert w.train[0] < w.train[1] < w.valid[0] <= w.valid[1] == matured_day(cfg, d) <= d
    assert w.labels_as_of == dt.datetime(2026, 7, 1, tzinfo=dt.timezone.utc)
    assert cfg.training.min_known_labels > 0 and cfg.promotion.metric in ("average_precision", "roc_auc")
    load_model_preset(cfg.training.model_preset)
    art = cfg.storage.artifacts_path("models")
    assert "site-packages" not in str(art) and "/tsa_lib/" not in str(art)
    for t in plan(f"conf/{name}"):
        assert (PROJECT_ROOT / t.job).is_file(), t.job
        assert "2026-06-30" in t.render("2026-06-30") and "{{" not in " ".join(t.render("2026-06-30"))


def test_artifacts_location() -> None:
    from tsa_lib.config import StorageConfig

    assert StorageConfig(warehouse="/data/wh").artifacts_path("models") == Path("/data/wh/artifacts/models")
    assert StorageConfig(warehouse="dbfs:/tsa/wh").artifacts_path() == Path("/dbfs/tsa/wh/artifacts")
    assert StorageConfig(warehouse="s3://b/wh", artifacts="/Volumes/c/s/v").artifacts_path("x") == \
        Path("/Volumes/c/s/v/x")
    with pytest.raises(ConfigError, match="storage.artifacts: set a file-system path for encoders and models; "
                                          "the warehouse 's3://b/wh' is not one"):
        StorageConfig(warehouse="s3://b/wh").artifacts_path()
    with pytest.raises(ConfigError, match="storage.artifacts: 's3://b/a' must be a file-system path"):
        StorageConfig(artifacts="s3://b/a")


def test_local_config_values() -> None:
    cfg = load_config(CONF / "local.yaml")
    assert cfg.spark.master == "local[2]"
    assert cfg.input.transactions == TableSource(path="warehouse/raw/transactions", format="delta")
    assert cfg.columns.numerical == ("amount", "hour_of_day", "items")
    assert cfg.columns.relative == ("device_id", "country") and "device_id" not in cfg.columns.categorical
    assert cfg.encoders.relative_numerical == ("amount",)
    assert cfg.columns.sequence_columns == ("merchant_category", "channel", "country", "entry_mode", "device_id",
                                            "amount", "hour_of_day", "items")
    assert cfg.quality.numeric_ranges["amount"] == (0.0, 1_000_000.0)
    assert cfg.storage.table_path("scores", Path("/x")) == "/x/warehouse/tsa/scores"
    assert cfg.storage.qualified("scores") == "tsa.scores"


def test_databricks_uses_metastore_table_and_other_entity() -> None:
    cfg = load_config(CONF / "databricks.yaml")
    assert cfg.input.transactions.table == "main.payments.card_transactions"
    assert cfg.columns.card_id == "pan_token"
    assert cfg.spark.target == "cluster"


def test_hash_is_stable_and_sensitive(tmp_path: Path) -> None:
    a = load_config(CONF / "local.yaml")
    b = load_config(CONF / "local.yaml")
    assert a.hash == b.hash
    c = load_config(CONF / "local.yaml", overrides={"sequences": {"max_len": 7}})
    assert c.sequences.max_len == 7 and c.hash != a.hash
    assert config_hash(to_dict(a)) == a.hash


def test_categorical_column_may_also_be_relative(tmp_path: Path) -> None:
    d = _local()
    d["columns"]["relative"] = ["device_id", "country"]
    cols = load_config(_write(tmp_path, d)).columns
    assert cols.string_columns == ("merchant_category", "channel", "country", "entry_mode", "device_id")


# ---- bad input: each error names the key and the value --------------------------------------------

@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(bogus=1), "bogus"),
    (lambda d: d["spark"].update(shuffle_partitions=0), "spark.shuffle_partitions"),
    (lambda d: d["spark"].update(shuffle_partitions="4"), "spark.shuffle_partitions"),
    (lambda d: d["spark"].update(target="yarn"), "'yarn'"),
    (lambda d: d["columns"].update(order_id="order id"), "columns.order_id"),
    (lambda d: d["columns"].update(categorical=["ok", "1bad"]), "columns.categorical[1]"),
    (lambda d: d["columns"].update(categorical="merchant_category"), "columns.categorical"),
    (lambda d: d["columns"].update(numerical=["amount", "amount"]), "'amount'"),
    (lambda d: d["columns"].update(label="order_id"), "'order_id'"),
    (lambda d: d["columns"].update(relative=["amount"]), "columns.relative: column 'amount' is already used"),
    (lambda d: d["columns"].update(relative=["device_id", "device_id"]), "column 'device_id' is already used"),
    (lambda d: d["encoders"].update(relative_numerical=["items", "items"]), "encoders.relative_numerical: repeated"),
    (lambda d: d["encoders"].update(relative_numerical=["email_risk"]),
     "encoders.relative_numerical[0]: 'email_risk' is not a numerical sequence column"),
    (lambda d: d["columns"].update(relative=["dev ice"]), "columns.relative[0]"),
    (lambda d: d["columns"].update(relative=["customer_id"]), "columns.relative: column 'customer_id' is already"),
    (lambda d: d["columns"].update(relative=["order_id"]), "columns.relative: column 'order_id' is already used"),
    (lambda d: d["storage"].update(database="tsa-prod"), "storage.database"),
    (lambda d: d["input"].update(transactions={"path": "a", "table": "b.c"}), "exactly one of path/table"),
    (lambda d: d["input"].update(transactions={"table": "a.b;drop"}), "'a.b;drop'"),
    (lambda d: d["input"].update(transactions={"path": "x", "format": "csv"}), "'csv'"),
    (lambda d: d["sequences"].update(max_len=-1), "sequences.max_len"),
    (lambda d: d["sequences"].update(build_groups=0), "sequences.build_groups"),
    (lambda d: d["sequences"].update(build_groups="many"), "sequences.build_groups"),
    (lambda d: d["quality"].update(numeric_ranges={"amount": [5, 1]}), "quality.numeric_ranges.amount"),
    (lambda d: d["quality"].update(numeric_ranges={"nope": [0, 1]}), "'nope'"),
    (lambda d: d["generator"].update(fraud_rate=0.9), "generator.fraud_rate"),
    (lambda d: d["generator"].update(start_date="2026-13-01"), "generator.start_date"),
    (lambda d: d["columns"].pop("categorical") and d["columns"].pop("numerical"), "at least one"),
    (lambda d: d.pop("columns"), "columns: required key is missing"),
    (lambda d: d["training"].update(train_start="2026-01-08"),
     "training.window cannot be combined with fixed dates ['training.train_start']"),
    (lambda d: d["training"].update(window={"train_days": 10}), "training.window.valid_days: required key is missing"),
    (lambda d: d["training"].update(min_known_labels=0), "training.min_known_labels: must be > 0, got 0"),
    (lambda d: d["training"].update(host_memory_mb=0), "training.host_memory_mb: must be > 0, got 0"),
    (lambda d: d["training"].update(host_memory_mb="lots"), "training.host_memory_mb"),
    (lambda d: d["labels"].update(delay_days=-2), "labels.delay_days: must be >= 0, got -2"),
    (lambda d: d["labels"].update(mature_after_days=-1), "labels.mature_after_days: must be an integer >= 0"),
    (lambda d: d["columns"].update(label_time="order_ts"), "columns.label_time: column 'order_ts' is already used"),
    (lambda d: d["columns"].update(label=None), "columns.label_time: 'label_ts' is set but columns.label is not"),
    (lambda d: d["promotion"].update(metric="f1"), "'f1' is not one of ['average_precision', 'roc_auc']"),
    (lambda d: d["storage"].update(artifacts="s3://x/a"), "storage.artifacts: 's3://x/a' must be a file-system"),
])
def test_bad_values_are_named(tmp_path: Path, mutate: Any, expected: str) -> None:
    d = _local()
    mutate(d)
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, d))
    assert expected in str(e.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spark: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(bad)


def test_from_dict_rejects_non_mapping_and_bool_for_int() -> None:
    from tsa_lib.config import SparkConfig

    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict(SparkConfig, ["x"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="shuffle_partitions: expected an integer, got True"):
        from_dict(SparkConfig, {"shuffle_partitions": True})


def test_qualified_names() -> None:
    assert check_qualified_name("t", "cat.schema.table") == "cat.schema.table"
    for bad in ("a.b.c.d", "", "a..b", "a b"):
        with pytest.raises(ConfigError):
            check_qualified_name("t", bad)


def test_one_error_root_and_the_job_guard(caplog: pytest.LogCaptureFixture) -> None:
    """User errors (config, data, artifact, encoders) are one line and exit 2; a plain ValueError
    (a bug, e.g. a shape check) keeps its traceback."""
    import inspect
    import pkgutil

    import tsa_lib
    from tsa_lib import errors
    from tsa_lib.cli import main_guard

    def job(exc: BaseException):  # type: ignore[no-untyped-def]
        @main_guard
        def main(argv=None):  # type: ignore[no-untyped-def]
            raise exc
        return main

    for exc in (errors.ConfigError("training.epochs: must be > 0, got 0"), errors.DataError("no orders"),
                errors.ArtifactError("tensor 'w' holds 3 non-finite value(s)"), errors.EncoderError("bad vocab")):
        assert job(exc)() == 2
    assert "ConfigError: training.epochs: must be > 0, got 0" in caplog.text
    with pytest.raises(ValueError, match="shape"):
        job(ValueError("x: expected shape [2, 3], got [3, 2]"))()
    with pytest.raises(errors.InternalError):
        job(errors.InternalError("rows went missing"))()
    # every exception class of the suite roots at TsaError
    skip = {"tsa_lib.orchestration.airflow_dag"}
    for m in pkgutil.walk_packages(tsa_lib.__path__, "tsa_lib."):
        if m.name in skip:
            continue
        mod = __import__(m.name, fromlist=["_"])
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, Exception) and cls.__module__.startswith("tsa_lib"):
                assert issubclass(cls, errors.TsaError), f"{cls.__module__}.{name} does not derive from TsaError"
