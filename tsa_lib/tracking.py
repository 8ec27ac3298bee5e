"""MLflow tracking and registry for the training job (``tracking.mlflow: true``).

The only module that imports ``mlflow`` (lazily: nothing is imported while tracking is off),
besides the pyfunc's code file ``tsa_lib/scoring/mlflow_model.py``.

- ``start_training_run(plan)``: rank 0, before training.  Checks that ``tracking.mlflow_uri``
  can be reached (a file store: its folder can be made and written; a remote URI: one cheap
  call) - if not, ``tracking.on_unreachable: fail`` raises a ``ConfigError`` naming the URI,
  ``warn`` logs one warning and trains without tracking.  Then opens an MLflow run and logs
  the suite config and the model config as (flattened) params.
- ``TrainingRun.log_epoch``: the validation metrics of each epoch (step = epoch).
- ``TrainingRun.finish``: lineage tags (examples table and Delta version, encoders, code
  commit, our model version), the artifact folder, and the model registered as an MLflow
  pyfunc from code (``mlflow_model.py`` + the safetensors folder: no pickle).  After training
  nothing here raises: an MLflow failure is a warning.
- ``set_champion_alias`` / ``mirror_champion``: the registry alias ``@champion`` follows the
  ``models`` table (``tsa_lib.registry.models_table``); ``resolve_alias`` reads an alias.

A file store (a path, or ``file:``) is MLflow's filesystem backend, which MLflow 3 keeps in
maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; this module sets that variable for the
process when the configured URI is a file store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional
from urllib.parse import unquote, urlparse

from tsa_lib.config import SuiteConfig, to_dict
from tsa_lib.errors import ConfigError, UserError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
VERSION_TAG = "tsa.model_version"          # our artifact version, on the run and on the model version
MODEL_CODE = Path(__file__).resolve().parent / "scoring" / "mlflow_model.py"
ARTIFACT_KEY = "tsa_artifact"              # the pyfunc's name of the artifact folder
MAX_KEY, MAX_PARAM_VALUE, MAX_TAG_VALUE, BATCH = 250, 6000, 8000, 100   # MLflow's limits
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


class RegistryError(UserError):
    """A registered model, model version or alias that the caller needs does not exist."""


# ---- URIs and clients ---------------------------------------------------------------------------

def tracking_uri(cfg: SuiteConfig) -> str:
    return cfg.tracking.mlflow_uri_resolved()


def registered_model_name(cfg: SuiteConfig) -> str:
    return cfg.tracking.model_name(cfg.training)


def _file_store(uri: str) -> Optional[Path]:
    """The folder of a ``file:`` URI, else None."""
    if not uri.startswith("file:"):
        return None
    return Path(unquote(urlparse(uri).path))


def _registry_uri(uri: str) -> Optional[str]:
    """A file store registers into itself; elsewhere MLflow's default for the tracking URI
    (``databricks`` -> Unity Catalog)."""
    return uri if _file_store(uri) is not None else None


def _prepare(uri: str) -> None:
    if _file_store(uri) is not None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _client(cfg: SuiteConfig) -> "MlflowClient":
    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    _prepare(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=_registry_uri(uri))


@contextlib.contextmanager
def _global_uris(cfg: SuiteConfig) -> Iterator[None]:
    """MLflow's fluent API (``log_model``) with the configured URIs; the process's are restored afterwards."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    uri = tracking_uri(cfg)
    _prepare(uri)
    prev_t = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    prev_r, prev_r_env = getattr(registry_utils, "_registry_uri", None), os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_tracking_uri(uri)
    registry_utils._registry_uri = None
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    if _registry_uri(uri):
        mlflow.set_registry_uri(uri)          # else MLflow's default for the tracking URI
    try:
        yield
    finally:
        mlflow.set_tracking_uri(prev_t)     # type: ignore[arg-type]  (None: unset)
        registry_utils._registry_uri = prev_r
        if prev_r_env is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        else:
            os.environ["MLFLOW_REGISTRY_URI"] = prev_r_env


def use_tracking(cfg: SuiteConfig) -> str:
    """Point this process's MLflow at the configured store (for ``models:/...`` URIs in a notebook or job)."""
    import mlflow

    uri = tracking_uri(cfg)
    _prepare(uri)
    mlflow.set_tracking_uri(uri)
    if _registry_uri(uri):
        mlflow.set_registry_uri(uri)
    return uri


def check_reachable(cfg: SuiteConfig) -> Optional[str]:
    """None when ``tracking.mlflow_uri`` can be used, else why not."""
    uri = tracking_uri(cfg)
    folder = _file_store(uri)
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"cannot create the file store folder {str(folder)!r}: {e.strerror or e}"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"the file store folder {str(folder)!r} is not writable"
        return None
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="15")
    try:
        _client(cfg).search_experiments(max_results=1)
        return None
    except Exception as e:       # any failure: no server, no credentials, a refused request
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- the training run ---------------------------------------------------------------------------

def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists as JSON; keys and values cut to MLflow's limits."""
    out: dict[str, str] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    value = data if isinstance(data, str) else json.dumps(data, default=str)
    out[_BAD_KEY.sub("_", prefix)[:MAX_KEY]] = value[:MAX_PARAM_VALUE]
    return out


def _lineage(manifest: Mapping[str, Any]) -> dict[str, str]:
    data = manifest.get("data") or {}
    tags = {"tsa.model_name": manifest.get("model_name"), VERSION_TAG: manifest.get("version"),
            "tsa.examples_path": data.get("examples_path"), "tsa.examples_version": data.get("examples_version"),
            "tsa.encoders_version": manifest.get("encoders_version"), "tsa.code_commit": manifest.get("code_commit"),
            "tsa.config_hash": manifest.get("config_hash"), "tsa.run_date": manifest.get("run_date"),
            "tsa.train_window": data.get("train"), "tsa.valid_window": data.get("valid"),
            "tsa.labels_as_of": data.get("labels_as_of")}
    out = {k: (v if isinstance(v, str) else json.dumps(v, default=str))[:MAX_TAG_VALUE]
           for k, v in tags.items() if v is not None}
    if out.get("tsa.code_commit", "unknown") != "unknown":
        out["mlflow.source.git.commit"] = out["tsa.code_commit"]
    return out


def start_training_run(plan: Any) -> Optional["TrainingRun"]:
    """Open the MLflow run of a training (rank 0, before training); None when tracking is off or,
    with ``on_unreachable: warn``, cannot be used.  ``plan``: ``tsa_lib.training.trainer.Plan``."""
    cfg: SuiteConfig = plan.cfg
    t = cfg.tracking
    if not t.mlflow:
        return None
    uri = tracking_uri(cfg)
    why = check_reachable(cfg)
    if why is None:
        try:
            return TrainingRun._open(plan)
        except Exception as e:       # reachable but refused: a bad experiment name, no permission
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
    if t.on_unreachable == "fail":
        raise ConfigError(f"tracking.mlflow_uri: MLflow at {uri!r} cannot be used: {why} (tracking.on_unreachable: "
                          f"fail; set tracking.mlflow: false or on_unreachable: warn to train without it)")
    log.warning("MLflow at %r cannot be used (%s): training without MLflow tracking (tracking.on_unreachable: warn)",
                uri, why)
    return None


class TrainingRun:
    """One training's MLflow run.  Every method after ``_open`` logs a warning instead of raising."""

    def __init__(self, cfg: SuiteConfig, client: "MlflowClient", run_id: str) -> None:
        self.cfg, self.client, self.run_id = cfg, client, run_id
        self.logged_epochs: set[int] = set()
        self.ok = True
        self.model_version: Optional[str] = None    # the registry's version once registered

    @classmethod
    def _open(cls, plan: Any) -> "TrainingRun":
        from mlflow.entities import Param

        cfg: SuiteConfig = plan.cfg
        client = _client(cfg)
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.tracking.experiment)
        w = plan.windows
        tags = _lineage({"model_name": cfg.training.model_name, "encoders_version": plan.enc.version,
                         "config_hash": cfg.hash, "run_date": w.run_date.isoformat() if w.run_date else None,
                         "code_commit": _code_commit(),
                         "data": {"examples_path": plan.examples_path, "train": [str(d) for d in w.train],
                                  "valid": [str(d) for d in w.valid]}})
        run = client.create_run(exp_id, tags=tags, run_name=f"{cfg.training.model_name}"
                                + (f"-{w.run_date.isoformat()}" if w.run_date else ""))
        params = {**flatten(to_dict(cfg)), **flatten(plan.model_cfg.to_dict(), "model")}
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), BATCH):
            client.log_batch(run.info.run_id, params=items[i:i + BATCH])
        log.info("MLflow run %s in experiment %r at %s", run.info.run_id, cfg.tracking.experiment, tracking_uri(cfg))
        return cls(cfg, client, run.info.run_id)

    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.ok:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.ok = False
            log.warning("MLflow: could not %s (run %s): %s: %s; the training result is not affected, MLflow "
                        "tracking stops for this run", what, self.run_id, type(e).__name__, e)
            return None

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """The epoch's metrics (train/valid loss, AUC, AP, recall at 1% FPR, ...), step = epoch."""
        self._safe(f"log the metrics of epoch {epoch}", self._log_epoch, epoch, metrics)

    def _log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.client.log_batch(self.run_id, metrics=_metrics(metrics, epoch))
        self.logged_epochs.add(epoch)

    def finish(self, folder: Path, manifest: Mapping[str, Any], metrics: Mapping[str, Any]) -> Optional[str]:
        """Lineage, epochs not yet logged (a resumed run), the artifact, the registered model; returns
        the model's registry version (None when anything failed: a warning, never an exception)."""
        history = self._safe("read the epochs", lambda: [(int(h["epoch"]), h) for h in metrics.get("history", [])])
        for epoch, h in history or []:
            if epoch not in self.logged_epochs:
                self.log_epoch(epoch, h)
        step = len(history or [])      # after the last epoch: the model's own metrics (best_*)
        self._safe("log the lineage tags and the artifact", self._log_lineage, folder, manifest, metrics, step)
        self.model_version = self._safe("register the model", self._register, folder, manifest, step)
        self.close(failed=not self.ok)
        return self.model_version

    def _log_lineage(self, folder: Path, manifest: Mapping[str, Any], metrics: Mapping[str, Any], step: int
                     ) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in _lineage(manifest).items()])
        items = _metrics(metrics.get("best") or {}, step, prefix="best_")
        if items:
            self.client.log_batch(self.run_id, metrics=items)
        self.client.log_artifacts(self.run_id, str(folder), ARTIFACT_KEY)

    def _register(self, folder: Path, manifest: Mapping[str, Any], step: int) -> str:
        import warnings

        import mlflow

        name = registered_model_name(self.cfg)
        tags = _lineage(manifest)
        with _global_uris(self.cfg), mlflow.start_run(run_id=self.run_id), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(MODEL_CODE), artifacts={ARTIFACT_KEY: str(folder)},
                registered_model_name=name, signature=model_signature(), pip_requirements=_requirements(),
                tags=tags, step=step)     # the logged model gets the run's metrics of ``step``: best_*
        version = str(info.registered_model_version)     # log_model put ``tags`` on the version too
        log.info("MLflow: registered %s version %s (our %s) from run %s", name, version, manifest.get("version"),
                 self.run_id)
        return version

    def close(self, failed: bool = False) -> None:
        """End the run (FINISHED, or FAILED when training or MLflow logging failed); never raises."""
        try:
            run = self.client.get_run(self.run_id)
            if run.info.status == "RUNNING":
                self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
        except Exception as e:
            log.warning("MLflow: could not end run %s: %s: %s", self.run_id, type(e).__name__, e)


def _metrics(values: Mapping[str, Any], step: int, prefix: str = "") -> list[Any]:
    """MLflow metrics of the finite numbers in ``values`` (the epoch counter left out)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(prefix + k, float(v), now, step) for k, v in sorted(values.items())
            if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)]


def _code_commit() -> str:
    from tsa_lib.training.artifact import code_commit

    return code_commit()


def model_signature() -> Any:
    """Inputs: the examples columns ``UDF_COLUMNS``; output: P(fraud); param: batch_size."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    from tsa_lib.scoring.udf import UDF_COLUMNS

    def spec(c: str) -> Any:
        if c.endswith("_len"):
            return ColSpec(DataType.integer, c)
        return ColSpec(Array(DataType.integer if c.endswith("_cat") else DataType.float), c)

    return ModelSignature(inputs=Schema([spec(c) for c in UDF_COLUMNS]),
                          outputs=Schema([ColSpec(DataType.double, "score")]),
                          params=ParamSchema([ParamSpec("batch_size", DataType.long, 1024)]))


def _requirements() -> list[str]:
    """The pyfunc's requirements, pinned to this environment (the code is the installed tsa_lib)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("tsa_lib", "mlflow-skinny", "torch", "safetensors", "numpy", "pandas", "pyarrow"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


# ---- the champion alias -------------------------------------------------------------------------

def _registered_model(client: "MlflowClient", name: str, where: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"registered model {name!r} does not exist in {where}: train with "
                                f"tracking.mlflow: true first") from None
        raise


def find_model_version(cfg: SuiteConfig, version: str) -> "ModelVersion":
    """The registry's version of our artifact ``version`` (its ``tsa.model_version`` tag)."""
    client, name = _client(cfg), registered_model_name(cfg)
    _registered_model(client, name, tracking_uri(cfg))
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=200, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            break
    for mv in versions:
        if (mv.tags or {}).get(VERSION_TAG) == version:
            return mv
    exp = client.get_experiment_by_name(cfg.tracking.experiment)     # registries that list versions without tags
    runs = {r.info.run_id for r in client.search_runs([exp.experiment_id], f"tags.`{VERSION_TAG}` = '{version}'")} \
        if exp is not None else set()
    for mv in versions:
        if mv.run_id in runs:
            return mv
    raise RegistryError(f"model version {version!r} is not registered under {name!r} in {tracking_uri(cfg)} "
                        f"(was it trained with tracking.mlflow off?)")


def set_champion_alias(cfg: SuiteConfig, version: str) -> str:
    """Point ``<registered model>@champion`` at the registry version of our artifact ``version``;
    returns the registry version.  A missing model or version raises before anything is written."""
    mv = find_model_version(cfg, version)
    _client(cfg).set_registered_model_alias(mv.name, CHAMPION_ALIAS, mv.version)
    log.info("MLflow: %s@%s -> version %s (%s)", mv.name, CHAMPION_ALIAS, mv.version, version)
    return str(mv.version)


def mirror_champion(cfg: SuiteConfig, version: str) -> Optional[str]:
    """``set_champion_alias`` when tracking is on; a failure is a warning (the decision is already recorded)."""
    if not cfg.tracking.mlflow:
        return None
    try:
        return set_champion_alias(cfg, version)
    except Exception as e:
        log.warning("MLflow: the champion %s of %s is recorded in the models table but the registry alias "
                    "@%s was not moved: %s: %s", version, cfg.training.model_name, CHAMPION_ALIAS,
                    type(e).__name__, e)
        return None


def resolve_alias(uri: str, cfg: Optional[SuiteConfig] = None) -> "ModelVersion":
    """The model version behind ``models:/<name>@<alias>``; a missing model or alias is a ``RegistryError``
    naming it.  With ``cfg`` the configured store is asked, else MLflow's current one."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    m = re.fullmatch(r"models:/([^@/]+)@([^@/]+)", uri)
    if not m:
        raise RegistryError(f"{uri!r} is not a models:/<name>@<alias> URI")
    name, alias = m.groups()
    client = _client(cfg) if cfg is not None else MlflowClient()
    where = tracking_uri(cfg) if cfg is not None else "the MLflow registry"
    reg = _registered_model(client, name, where)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            known = sorted(getattr(reg, "aliases", {}) or {})
            raise RegistryError(f"{uri}: alias {alias!r} of registered model {name!r} does not exist "
                                f"(aliases: {known})") from None
        raise
