"""The suite's typed configuration: one ``SuiteConfig`` loaded from YAML.

``load_config(path)`` parses the file, rejects unknown keys, checks every value
and returns frozen dataclasses.  Errors are ``ConfigError`` naming the dotted
key and the value received.  The data contract lives in
``InputConfig`` (where the user's tables are) and ``ColumnsConfig`` (which of
their columns play which role), so pointing the suite at other tables needs no
code change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from tsa_lib.config_base import (
    ConfigError,
    check_identifier,
    check_positive,
    check_qualified_name,
    config_hash,
    from_dict,
    load_yaml,
    to_dict,
)

log = logging.getLogger(__name__)



def _project_root() -> Path:
    """Where relative paths in a config are taken from: ``$TSA_HOME``, else the checkout this
    package sits in, else (an installed wheel) the working directory, never site-packages."""
    if os.environ.get("TSA_HOME"):
        return Path(os.environ["TSA_HOME"]).resolve()
    here = Path(__file__).resolve().parents[1]
    return here if (here / "setup.py").is_file() else Path.cwd().resolve()


PROJECT_ROOT = _project_root()
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:/")   # s3://..., abfss://..., dbfs:/...

__all__ = [
    "ConfigError",
    "PROJECT_ROOT",
    "SparkConfig",
    "TableSource",
    "InputConfig",
    "ColumnsConfig",
    "StorageConfig",
    "LabelsConfig",
    "TrainWindow",
    "PromotionConfig",
    "SequenceConfig",
    "QualityConfig",
    "EncoderConfig",
    "TrainConfig",
    "ScoringConfig",
    "EvaluationConfig",
    "GeneratorConfig",
    "TrackingConfig",
    "SuiteConfig",
    "load_config",
    "config_hash",
    "to_dict",
]


@dataclass(frozen=True)
class SparkConfig:
    """How to get a SparkSession.  ``target: local`` builds an embedded one with Delta jars."""

    target: Literal["local", "cluster"] = "local"
    master: str = "local[2]"
    app_name: str = "tsa"
    shuffle_partitions: int = 4
    driver_memory: str = "4g"
    arrow_max_records_per_batch: int = 100_000
    conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_positive("spark.shuffle_partitions", self.shuffle_partitions)
        check_positive("spark.arrow_max_records_per_batch", self.arrow_max_records_per_batch)
        if not self.master:
            raise ConfigError(f"spark.master: must be non-empty, got {self.master!r}")


@dataclass(frozen=True)
class TableSource:
    """A table given by storage ``path`` (Delta or Parquet) or by metastore ``table`` name."""

    path: Optional[str] = None
    table: Optional[str] = None
    format: Literal["delta", "parquet"] = "delta"

    def __post_init__(self) -> None:
        if (self.path is None) == (self.table is None):
            raise ConfigError(f"exactly one of path/table must be set, got path={self.path!r} table={self.table!r}")
        if self.table is not None:
            check_qualified_name("table", self.table)
        if self.path is not None and not self.path.strip():
            raise ConfigError(f"path: must be non-empty, got {self.path!r}")

    def resolved_path(self, root: Path) -> Optional[str]:
        """Absolute path (relative paths are taken from ``root``), or None for a metastore table."""
        if self.path is None:
            return None
        if "://" in self.path or os.path.isabs(self.path):
            return self.path
        return str((root / self.path).resolve())


@dataclass(frozen=True)
class InputConfig:
    transactions: TableSource
    order_features: Optional[TableSource] = None


@dataclass(frozen=True)
class ColumnsConfig:
    """Which of the user's columns play which role."""

    order_id: str = "order_id"
    customer_id: str = "customer_id"
    card_id: str = "card_id"
    event_time: str = "order_ts"
    # The unit of a numeric event time or label time: epoch seconds, milliseconds or microseconds.
    event_time_unit: Literal["s", "ms", "us"] = "s"
    label: Optional[str] = "is_fraud"
    # When each label became known (a chargeback or report date); null -> order time + labels.delay_days.
    label_time: Optional[str] = None
    categorical: tuple[str, ...] = ()
    numerical: tuple[str, ...] = ()
    engineered: tuple[str, ...] = ()
    # Columns the model sees relative to the target order: "same value as the target?"
    # and "first time in the window?" (tsa_lib.features.tensorize).  A high-cardinality
    # id (device, IP, e-mail hash) listed only here is never embedded by value, so a
    # fraud episode's device id cannot be memorised.  A categorical column may be listed
    # here too: it is then embedded AND gets the relative token ("a country this
    # customer never ordered from").
    relative: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("order_id", "customer_id", "card_id", "event_time"):
            check_identifier(f"columns.{key}", getattr(self, key))
        if self.label is not None:
            check_identifier("columns.label", self.label)
        if self.label_time is not None:
            check_identifier("columns.label_time", self.label_time)
            if self.label is None:
                raise ConfigError(f"columns.label_time: {self.label_time!r} is set but columns.label is not")
        for group in ("categorical", "numerical", "engineered", "relative"):
            for i, c in enumerate(getattr(self, group)):
                check_identifier(f"columns.{group}[{i}]", c)
        if not self.categorical and not self.numerical:
            raise ConfigError("columns: at least one categorical or numerical sequence column is required")
        seen: dict[str, str] = {}
        roles = [("order_id", [self.order_id]), ("customer_id", [self.customer_id]), ("card_id", [self.card_id]),
                 ("event_time", [self.event_time]), ("label", [self.label] if self.label else []),
                 ("label_time", [self.label_time] if self.label_time else []),
                 ("categorical", list(self.categorical)), ("numerical", list(self.numerical)),
                 ("engineered", list(self.engineered)), ("relative", list(self.relative))]
        for role, cols in roles:
            for c in cols:
                if c in seen and not (role == "relative" and seen[c] == "categorical"):
                    raise ConfigError(f"columns.{role}: column {c!r} is already used as {seen[c]}")
                seen[c] = role

    @property
    def relative_only(self) -> tuple[str, ...]:
        """Relative columns that are not also categorical (ids never embedded; nulls stay null)."""
        return tuple(c for c in self.relative if c not in self.categorical)

    @property
    def string_columns(self) -> tuple[str, ...]:
        """Sequence columns carried as strings: categorical, then the relative-only ones."""
        return tuple(self.categorical) + self.relative_only

    @property
    def sequence_columns(self) -> tuple[str, ...]:
        return self.string_columns + tuple(self.numerical)


@dataclass(frozen=True)
class StorageConfig:
    """Where the suite's own tables and artifacts live.  Local: Delta folders under ``warehouse``.

    ``artifacts`` (encoders, models, reports) is a file-system path: on Databricks a Unity
    Catalog volume (``/Volumes/...``) or ``/dbfs/...``, on EMR a mounted or local path.  When
    unset it is ``<warehouse>/artifacts`` if the warehouse is a path (``dbfs:/x`` counts as
    ``/dbfs/x``); an object-store warehouse (``s3://``, ``abfss://``) needs it set.
    """

    warehouse: str = "warehouse"
    database: str = "tsa"
    sequences_customer: str = "sequences_customer"
    sequences_card: str = "sequences_card"
    examples: str = "examples"
    scores: str = "scores"
    quarantine: str = "quarantine"
    metrics: str = "metrics"
    models: str = "models"
    artifacts: Optional[str] = None

    def __post_init__(self) -> None:
        check_identifier("storage.database", self.database)
        for key in ("sequences_customer", "sequences_card", "examples", "scores", "quarantine", "metrics",
                    "models"):
            check_identifier(f"storage.{key}", getattr(self, key))
        if self.artifacts is not None and ("://" in self.artifacts or not self.artifacts.strip()):
            raise ConfigError(f"storage.artifacts: {self.artifacts!r} must be a file-system path (a local folder, "
                              f"/dbfs/... or /Volumes/...), not an object-store URI")

    def warehouse_path(self, root: Path = PROJECT_ROOT) -> str:
        if _URI.match(self.warehouse) or os.path.isabs(self.warehouse):
            return self.warehouse
        return str((root / self.warehouse).resolve())

    def table_path(self, name: str, root: Path = PROJECT_ROOT) -> str:
        """Storage location of one of the suite's tables: ``<warehouse>/<database>/<table>``."""
        table = getattr(self, name) if hasattr(self, name) else check_identifier("table", name)
        return f"{self.warehouse_path(root).rstrip('/')}/{self.database}/{table}"

    def artifacts_path(self, sub: str = "", root: Path = PROJECT_ROOT) -> Path:
        """Folder of versioned artifacts (encoders, models, reports); see the class docstring."""
        if self.artifacts is not None:
            base = Path(self.artifacts) if os.path.isabs(self.artifacts) else root / self.artifacts
        else:
            wh = self.warehouse_path(root)
            if wh.startswith("dbfs:/"):
                wh = "/dbfs/" + wh[len("dbfs:/"):].lstrip("/")
            if _URI.match(wh):
                raise ConfigError(f"storage.artifacts: set a file-system path for encoders and models; the "
                                  f"warehouse {self.warehouse!r} is not one")
            base = Path(wh) / "artifacts"
        return base / sub if sub else base

    def qualified(self, name: str) -> str:
        return f"{self.database}.{getattr(self, name)}"


@dataclass(frozen=True)
class LabelsConfig:
    """When a label is known.  A label is *known at time T* when its label time
    (``columns.label_time``), or, where that is null or not configured, its order time plus
    ``delay_days``, is strictly before T.  Every use of a label goes through that one rule
    (``tsa_lib.spark.labels``): training sees only labels known at its run date, evaluation
    only labels known at its as-of date.

    ``mature_after_days``: a day's labels count as mature (complete enough to train,
    validate and evaluate on) that many days after it; training windows end there.

    ``feedback``: every past order in a customer or card window also shows its label as
    known at the target order's time (known fraud / known legitimate / not known yet); the
    target's own label never.

    ``feedback_reports``: with ``feedback``, every window also holds the entity's last
    ``feedback_reports`` label reports known before the target order (each: the label and the
    age of the order it is about), however far back their orders lie within
    ``sequences.max_history_days``.  Labels often arrive later than a busy entity's last
    ``max_len`` orders reach back; these slots reach the labels that are known.  0: none.
    """

    delay_days: float = 0.0
    mature_after_days: int = 0
    feedback: bool = False
    feedback_reports: int = 0

    def __post_init__(self) -> None:
        check_positive("labels.delay_days", self.delay_days, allow_zero=True)
        if isinstance(self.feedback_reports, bool) or not isinstance(self.feedback_reports, int) \
                or self.feedback_reports < 0:
            raise ConfigError(f"labels.feedback_reports: must be an integer >= 0, got {self.feedback_reports!r}")
        if self.feedback_reports and not self.feedback:
            raise ConfigError(f"labels.feedback_reports: {self.feedback_reports} needs labels.feedback: true")
        if isinstance(self.mature_after_days, bool) or not isinstance(self.mature_after_days, int) \
                or self.mature_after_days < 0:
            raise ConfigError(f"labels.mature_after_days: must be an integer >= 0, got {self.mature_after_days!r}")


@dataclass(frozen=True)
class TrainWindow:
    """Training windows relative to a run date D: validation is the ``valid_days`` days ending at
    D - labels.mature_after_days, training the ``train_days`` days before it."""

    train_days: int
    valid_days: int

    def __post_init__(self) -> None:
        check_positive("training.window.train_days", self.train_days)
        check_positive("training.window.valid_days", self.valid_days)


@dataclass(frozen=True)
class PromotionConfig:
    """Champion / challenger: a newly trained model replaces the champion only if, on its
    validation window, ``metric`` >= the champion's ``metric`` - ``margin`` (both models scored
    on the same orders and labels) and >= ``min_value``."""

    metric: Literal["average_precision", "roc_auc"] = "average_precision"
    margin: float = 0.0
    min_value: float = 0.0

    def __post_init__(self) -> None:
        check_positive("promotion.margin", self.margin, allow_zero=True)
        if not (isinstance(self.min_value, (int, float)) and 0.0 <= self.min_value <= 1.0):
            raise ConfigError(f"promotion.min_value: must be in [0, 1], got {self.min_value!r}")


@dataclass(frozen=True)
class SequenceConfig:
    """Order aggregation: last ``max_len`` past orders of an entity, then the order itself."""

    max_len: int = 50
    max_history_days: Optional[float] = 365.0
    max_orders_per_entity_day: int = 1000
    time_unit_seconds: float = 86400.0
    # Entities are hashed into this many groups; each group's orders (over the lookback) are
    # built whole in one Python call, so orders / build_groups must fit a Python worker.
    build_groups: int = 256

    def __post_init__(self) -> None:
        check_positive("sequences.max_len", self.max_len)
        check_positive("sequences.build_groups", self.build_groups)
        if self.max_history_days is not None:
            check_positive("sequences.max_history_days", self.max_history_days)
        check_positive("sequences.max_orders_per_entity_day", self.max_orders_per_entity_day)
        check_positive("sequences.time_unit_seconds", self.time_unit_seconds)


@dataclass(frozen=True)
class QualityConfig:
    """Data quality rules: allowed numeric ranges and defaults for nulls."""

    numeric_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    categorical_default: str = "__null__"
    numerical_default: float = 0.0
    blank_is_null: bool = True        # an empty or blank category is a null (gets categorical_default)
    # a configured column missing from an input file: "fail" the run, or read it as nulls
    # ("default": the defaults above, with a logged count)
    missing_columns: Literal["fail", "default"] = "fail"
    # Plausible event times: not before min_event_time (an ISO date, UTC) and not more than
    # max_future_days after the job started.  Others are quarantined (bad_event_time).
    min_event_time: str = "2000-01-01"
    max_future_days: float = 1.0

    def __post_init__(self) -> None:
        try:
            dt.date.fromisoformat(str(self.min_event_time))
        except ValueError:
            raise ConfigError(f"quality.min_event_time: {self.min_event_time!r} is not an ISO date (YYYY-MM-DD)") \
                from None
        check_positive("quality.max_future_days", self.max_future_days, allow_zero=True)
        for col, rng in self.numeric_ranges.items():
            if len(rng) != 2 or not rng[0] <= rng[1]:
                raise ConfigError(f"quality.numeric_ranges.{col}: expected [low, high] with low <= high, got {list(rng)!r}")


@dataclass(frozen=True)
class EncoderConfig:
    """How encoders are fit: vocabularies for categoricals, robust min-max for numericals."""

    min_frequency: int = 5
    max_vocab_per_column: int = 5000
    quantile_low: float = 0.001
    quantile_high: float = 0.999
    log1p: tuple[str, ...] = ()
    # Numerical sequence columns that get one more input per order: the order's scaled
    # value minus the target order's (0 for the target; in [-1, 1]).  For a ``log1p`` column
    # that is the log of the amount ratio: "this order is three times what the customer
    # usually spends" is one number per past order instead of something to learn.
    relative_numerical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_positive("encoders.min_frequency", self.min_frequency)
        for i, c in enumerate(self.relative_numerical):
            check_identifier(f"encoders.relative_numerical[{i}]", c)
        if len(set(self.relative_numerical)) != len(self.relative_numerical):
            raise ConfigError(f"encoders.relative_numerical: repeated column in {list(self.relative_numerical)}")
        check_positive("encoders.max_vocab_per_column", self.max_vocab_per_column)
        if not 0.0 <= self.quantile_low < self.quantile_high <= 1.0:
            raise ConfigError(f"encoders.quantile_low/quantile_high: need 0 <= low < high <= 1, got "
                              f"{self.quantile_low!r}, {self.quantile_high!r}")


@dataclass(frozen=True)
class TrainConfig:
    """The training job: data windows, optimisation, precision, checkpoints, early stopping."""

    model_preset: str = "small"             # a shipped preset (tiny, small, seed) or a YAML path
    model_name: str = "tsa"
    # Windows relative to the run date (the nightly life) ...
    window: Optional[TrainWindow] = None
    # ... or fixed dates (YYYY-MM-DD, inclusive), an override; the two cannot be mixed.
    train_start: Optional[str] = None
    train_end: Optional[str] = None
    valid_start: Optional[str] = None       # strictly after train_end
    valid_end: Optional[str] = None
    min_known_labels: int = 100             # fewer known labels in the training window is an error
    examples_version: Optional[int] = None  # pin a Delta version of the examples table (default: latest)
    epochs: int = 5
    max_steps_per_epoch: Optional[int] = None  # cap (smoke runs, benchmarks); default: the whole window
    batch_size: int = 256
    eval_batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    grad_clip: float = 1.0
    amp: Literal["none", "bf16", "fp16"] = "none"
    compile: bool = False
    class_weighting: Literal["none", "balanced", "sqrt"] = "sqrt"
    max_pos_weight: float = 50.0
    early_stopping_metric: Literal["average_precision", "roc_auc"] = "average_precision"
    patience: int = 2
    checkpoint_every_steps: int = 200
    log_every_steps: int = 50
    seed: int = 1234
    # Host memory for one rank's examples (validation first, then training).  A window that does
    # not fit is streamed from its Delta files in every epoch.  Default: half the memory available
    # at start, shared by the node's ranks.
    host_memory_mb: Optional[float] = None

    def __post_init__(self) -> None:
        for key in ("train_start", "train_end", "valid_start", "valid_end"):
            v = getattr(self, key)
            if v is not None:
                _check_date(f"training.{key}", v)
        explicit = [k for k in ("train_start", "train_end", "valid_start", "valid_end") if getattr(self, k)]
        if self.window is not None and explicit:
            raise ConfigError(f"training.window cannot be combined with fixed dates {['training.' + k for k in explicit]}:"
                              f" use a window relative to the run date, or four dates")
        for key in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every_steps", "log_every_steps",
                    "min_known_labels"):
            check_positive(f"training.{key}", getattr(self, key))
        if self.max_steps_per_epoch is not None:
            check_positive("training.max_steps_per_epoch", self.max_steps_per_epoch)
        if self.host_memory_mb is not None:
            check_positive("training.host_memory_mb", self.host_memory_mb)
        check_positive("training.lr", self.lr)
        check_positive("training.weight_decay", self.weight_decay, allow_zero=True)
        check_positive("training.warmup_steps", self.warmup_steps, allow_zero=True)
        check_positive("training.grad_clip", self.grad_clip, allow_zero=True)
        check_positive("training.max_pos_weight", self.max_pos_weight)
        check_positive("training.patience", self.patience, allow_zero=True)
        check_identifier("training.model_name", self.model_name)
        if self.train_end and self.valid_start and self.valid_start <= self.train_end:
            raise ConfigError(f"training.valid_start: {self.valid_start!r} must be after training.train_end "
                              f"{self.train_end!r} (validation is strictly later than training)")
        for a, b in (("train_start", "train_end"), ("valid_start", "valid_end")):
            va, vb = getattr(self, a), getattr(self, b)
            if va and vb and vb < va:
                raise ConfigError(f"training.{b}: {vb!r} is before training.{a} {va!r}")


@dataclass(frozen=True)
class ScoringConfig:
    """Nightly bulk scoring: which model, how big the model's batches, threads per Python worker."""

    model_path: Optional[str] = None   # pin an artifact folder; default: the champion recorded in <database>.models
    batch_size: int = 1024             # rows per model call (independent of Arrow's batch size)
    torch_threads: int = 1             # per Python worker: one worker per executor core
    device: Literal["auto", "cpu", "cuda"] = "auto"
    top_k: int = 3                     # most-attended past orders kept as explanation

    def __post_init__(self) -> None:
        check_positive("scoring.batch_size", self.batch_size)
        check_positive("scoring.torch_threads", self.torch_threads, allow_zero=True)
        check_positive("scoring.top_k", self.top_k)


@dataclass(frozen=True)
class EvaluationConfig:
    """Daily evaluation: whose precision@100 (cards: the second entity; or customers)."""

    precision_entity: Literal["card", "customer"] = "card"


@dataclass(frozen=True)
class GeneratorConfig:
    """Synthetic data (the embedded default's input)."""

    seed: int = 7
    n_customers: int = 20_000
    start_date: str = "2026-01-01"
    n_days: int = 60
    orders_per_customer_per_day: float = 0.17
    fraud_rate: float = 0.02
    compromised_merchants: int = 0     # merchants whose orders turn mostly fraudulent for a few weeks

    def __post_init__(self) -> None:
        check_positive("generator.n_customers", self.n_customers)
        check_positive("generator.n_days", self.n_days)
        check_positive("generator.orders_per_customer_per_day", self.orders_per_customer_per_day)
        if not 0.0 < self.fraud_rate < 0.5:
            raise ConfigError(f"generator.fraud_rate: must be in (0, 0.5), got {self.fraud_rate!r}")
        _check_date("generator.start_date", self.start_date)
        check_positive("generator.compromised_merchants", self.compromised_merchants, allow_zero=True)


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and registry for the training job (``tsa_lib.tracking``), off unless ``mlflow: true``.

    ``mlflow_uri``: a relative path is a local file store under the project root (like other
    relative paths here), an absolute path a file store there; anything else is an MLflow URI
    (``databricks``, ``databricks://PROFILE``, ``http(s)://...``, ``file:/...``).
    ``registered_model``: the registry name (default: ``training.model_name``; on Unity Catalog
    ``catalog.schema.model``).  ``on_unreachable``: what a tracking URI that cannot be reached
    at the start of training does: ``warn`` (train without tracking) or ``fail`` (before training).
    """

    mlflow: bool = False
    mlflow_uri: str = "mlruns"
    experiment: str = "tsa"
    registered_model: Optional[str] = None
    on_unreachable: Literal["warn", "fail"] = "warn"

    def __post_init__(self) -> None:
        if not self.mlflow_uri.strip() or self.mlflow_uri != self.mlflow_uri.strip():
            raise ConfigError(f"tracking.mlflow_uri: must be a non-empty path or MLflow URI without surrounding "
                              f"blanks, got {self.mlflow_uri!r}")
        if not self.experiment.strip():
            raise ConfigError(f"tracking.experiment: must be non-empty, got {self.experiment!r}")
        if self.registered_model is not None and not _REGISTERED_MODEL.match(self.registered_model):
            raise ConfigError(f"tracking.registered_model: {self.registered_model!r} is not a model name (letters, "
                              f"digits, _ and -, dot-separated parts such as catalog.schema.model)")

    def mlflow_uri_resolved(self, root: Path = PROJECT_ROOT) -> str:
        """The tracking URI: a path (relative ones from ``root``) as a ``file:`` URI, else as given."""
        u = self.mlflow_uri
        if ":" in u or u in ("databricks", "databricks-uc"):
            return u
        return (Path(u) if os.path.isabs(u) else root / u).resolve().as_uri()

    def model_name(self, training: "TrainConfig") -> str:
        return self.registered_model or training.model_name


_REGISTERED_MODEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_][A-Za-z0-9_\-]*){0,2}$")


def _check_date(key: str, value: str) -> str:
    import datetime as _dt

    try:
        _dt.date.fromisoformat(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {value!r} is not a YYYY-MM-DD date") from e
    return value


@dataclass(frozen=True)
class SuiteConfig:
    """Everything a job needs.  Sections not used by a job keep their defaults."""

    input: InputConfig
    columns: ColumnsConfig
    spark: SparkConfig = field(default_factory=SparkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    sequences: SequenceConfig = field(default_factory=SequenceConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.labels.feedback and (self.columns.label is None or
                                     (self.columns.label_time is None and self.labels.delay_days <= 0)):
            raise ConfigError("labels.feedback: needs columns.label and when labels become known: columns.label_time "
                              f"or labels.delay_days > 0 (got label={self.columns.label!r}, label_time="
                              f"{self.columns.label_time!r}, delay_days={self.labels.delay_days!r}); without them "
                              f"an order's label would be visible right after it")
        numeric = set(self.columns.numerical) | set(self.columns.engineered)
        for i, col in enumerate(self.encoders.log1p):
            if col not in numeric:
                raise ConfigError(f"encoders.log1p[{i}]: {col!r} is not a numerical or engineered column")
        for i, col in enumerate(self.encoders.relative_numerical):
            if col not in self.columns.numerical:
                raise ConfigError(f"encoders.relative_numerical[{i}]: {col!r} is not a numerical sequence column "
                                  f"(numerical={list(self.columns.numerical)})")
        for col in self.quality.numeric_ranges:
            if col not in set(self.columns.numerical) | set(self.columns.engineered):
                raise ConfigError(
                    f"quality.numeric_ranges: {col!r} is not a numerical or engineered column "
                    f"(numerical={list(self.columns.numerical)}, engineered={list(self.columns.engineered)})"
                )

    @property
    def hash(self) -> str:
        return config_hash(self)

    def replace(self, **changes: Any) -> "SuiteConfig":
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> SuiteConfig:
    """Load and validate a suite config from YAML; ``overrides`` are merged on top (nested dicts)."""
    data = load_yaml(path)
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        cfg = from_dict(SuiteConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    log.info("loaded config %s (hash %s)", path, cfg.hash)
    return cfg


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
