"""The model's typed configuration: an architecture preset (``ModelPreset``) combined with the
data's sizes (``DataSizes``) into the ``ModelConfig`` the layers and classifiers take.

Presets live in ``tsa_lib/models/presets/<name>.yaml`` (package data: the wheel that runs
on clusters carries them) and hold the architecture only:

- ``tiny``:  tests (dim 16, every branch on);
- ``small``: the CPU demo (two sequences, dim 32, 3 members);
- ``seed``:  the seed design's values (dim 128, 8 heads, 2 + 2 layers, MoE with 5 experts).

The sizes (categorical/numerical/engineered feature counts, vocabulary size, sequence length)
come from the data: ``model_config(preset, encoders)`` is the one place the two meet.  The
config is stored inside every artifact as ``to_dict(cfg)`` and rebuilt with
``model_config_from_dict``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import yaml

from tsa_lib.config_base import (
    ConfigError,
    check_choice,
    check_positive,
    config_hash,
    from_dict,
    load_yaml,
    to_dict,
)

log = logging.getLogger(__name__)

PRESETS = "tsa_lib.models.presets"   # the package whose *.yaml files are the presets

MODEL_TYPES = ("single_seq", "two_seq")

P = TypeVar("P", bound="ModelPreset")

__all__ = [
    "DataSizes",
    "ModelConfig",
    "ModelPreset",
    "PRESETS",
    "MODEL_TYPES",
    "SIZE_KEYS",
    "available_presets",
    "load_model_preset",
    "model_config",
    "model_config_from_dict",
]


def _check_int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value!r}")
    return value


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    return value


@dataclass(frozen=True)
class DataSizes:
    """What the data decides about the model.

    - ``n_cat_features``: categorical columns per order; their values share ONE index space of
      size ``vocab_size`` (the data side offsets each column), with 0 = padding and 1 = unknown;
    - ``n_num_features``: numerical columns per order;
    - ``n_engineered``: static engineered features of the target order (may be 0);
    - ``vocab_size``: rows of the shared categorical embedding table;
    - ``seq_len``: L = history length + 1 (the target order is the last element).
    """

    n_cat_features: int
    n_num_features: int
    n_engineered: int
    vocab_size: int
    seq_len: int

    def __post_init__(self) -> None:
        _check_int("n_cat_features", self.n_cat_features, 1)
        _check_int("n_num_features", self.n_num_features, 1)
        _check_int("n_engineered", self.n_engineered, 0)
        _check_int("vocab_size", self.vocab_size, 3)
        _check_int("seq_len", self.seq_len, 1)

    def sizes(self) -> "DataSizes":
        """The sizes alone (of a ``ModelConfig`` too)."""
        return DataSizes(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataSizes)})

    @staticmethod
    def of(encoders: Any) -> "DataSizes":
        """The sizes fitted encoders (``tsa_lib.features.encoders.Encoders``) produce."""
        return DataSizes(n_cat_features=len(encoders.cat_inputs), n_num_features=len(encoders.num_inputs),
                         n_engineered=len(encoders.engineered), vocab_size=encoders.vocab_size,
                         seq_len=encoders.seq_len)


SIZE_KEYS = tuple(f.name for f in dataclasses.fields(DataSizes))


@dataclass(frozen=True)
class ModelPreset:
    """The architecture of the TSA classifiers (both variants): what a preset holds.

    ``moe_aux_weight`` scales the Switch load-balancing loss the model reports as
    ``aux_loss`` (already weighted: the trainer adds it to the classification loss).
    """

    model_type: Literal["single_seq", "two_seq"] = "single_seq"
    dim_embed: int = 128
    num_heads: int = 8
    dim_feedforward: int = 512
    n_layers_order: int = 2
    n_layers_feature: int = 2
    dropout: float = 0.1
    use_time: bool = True
    use_position: bool = True
    use_mlp: bool = True
    dim_mlp: int = 128
    use_moe: bool = False
    num_experts: int = 5
    moe_top_k: int = 2
    moe_aux_weight: float = 0.01
    use_fm: bool = True
    num_bias: bool = True
    # Numerical values as the seed's linear embeddings v * W_f + b_f, or as periodic ones
    # (ReLU(Linear(sin/cos of 16 learned frequencies)); not in the seed).
    num_embedding: Literal["linear", "periodic"] = "linear"
    # k >= 2: k independently initialised copies trained side by side, each on its own loss;
    # the output is the mean of their logits (tsa_lib/models/members.py; not in the seed).
    members: int = 1
    n_classes: int = 2
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_choice("model_type", self.model_type, MODEL_TYPES)
        check_choice("num_embedding", self.num_embedding, ("linear", "periodic"))
        _check_int("dim_embed", self.dim_embed, 1)
        _check_int("num_heads", self.num_heads, 1)
        if self.dim_embed % self.num_heads:
            raise ConfigError(
                f"dim_embed: {self.dim_embed} is not divisible by num_heads: {self.num_heads}"
            )
        _check_int("dim_feedforward", self.dim_feedforward, 1)
        _check_int("n_layers_order", self.n_layers_order, 1)
        _check_int("n_layers_feature", self.n_layers_feature, 1)
        check_positive("dropout", self.dropout, allow_zero=True)
        if not self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        for name in ("use_time", "use_position", "use_mlp", "use_moe", "use_fm", "num_bias",
                     "grad_checkpointing"):
            _check_bool(name, getattr(self, name))
        _check_int("dim_mlp", self.dim_mlp, 1)
        _check_int("members", self.members, 1)
        _check_int("num_experts", self.num_experts, 1)
        _check_int("moe_top_k", self.moe_top_k, 1)
        if self.moe_top_k > self.num_experts:
            raise ConfigError(
                f"moe_top_k: {self.moe_top_k} is larger than num_experts: {self.num_experts}"
            )
        check_positive("moe_aux_weight", self.moe_aux_weight, allow_zero=True)
        _check_int("n_classes", self.n_classes, 2)

    @property
    def head_dim(self) -> int:
        return self.dim_embed // self.num_heads

    @property
    def hash(self) -> str:
        return config_hash(self)

    def replace(self: P, **changes: Any) -> P:
        """``dataclasses.replace`` (validation runs again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def preset(self) -> "ModelPreset":
        """The architecture alone."""
        return ModelPreset(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelPreset)})


@dataclass(frozen=True)
class ModelConfig(ModelPreset, DataSizes):
    """A preset bound to the data's sizes (``DataSizes``): what the layers and classifiers take."""

    def __post_init__(self) -> None:
        ModelPreset.__post_init__(self)
        DataSizes.__post_init__(self)


def model_config(preset: ModelPreset, data: Any) -> ModelConfig:
    """The model config of ``preset`` for ``data``: ``DataSizes``, or fitted encoders (their sizes)."""
    sizes = data.sizes() if isinstance(data, DataSizes) else DataSizes.of(data)
    return ModelConfig(**to_dict(preset.preset()), **dataclasses.asdict(sizes))


# Experiment options that were removed (no measured gain), with the value that meant "off".
# Configs stored before the removal (an artifact's model_config.json) still list them: at that
# value the key is dropped; any other value needs the code that had the option.
_REMOVED_KEYS: dict[str, Any] = {"time_bias": False, "readout": "dummy", "count_pool": 0, "member_bagging": False}


def model_config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """Build a ``ModelConfig`` from plain data (an artifact's ``model_config.json``); unknown keys,
    missing sizes and bad values raise ``ConfigError``."""
    return from_dict(ModelConfig, _without_removed(data))


def _without_removed(data: Any) -> Any:
    if isinstance(data, Mapping) and any(k in data for k in _REMOVED_KEYS):
        data = dict(data)
        for key, off in _REMOVED_KEYS.items():
            if key in data:
                value = data.pop(key)
                if type(value) is not type(off) or value != off:
                    raise ConfigError(f"{key}: this option was removed (it measured no gain); a stored config "
                                      f"may only hold {key}: {off!r}, got {value!r}")
    return data


def _presets() -> "importlib.resources.abc.Traversable":
    return importlib.resources.files(PRESETS)


def available_presets() -> list[str]:
    """Names of the shipped presets (read through importlib.resources: works from a zipped wheel too)."""
    return sorted(p.name[: -len(".yaml")] for p in _presets().iterdir() if p.name.endswith(".yaml"))


def load_model_preset(path_or_name: str | Path) -> ModelPreset:
    """Load and validate a model preset: a shipped preset's name (``tiny``, ``small``, ``seed``) or a
    YAML/JSON file path.  Data sizes in the file (``n_cat_features`` ...) are ignored with a warning:
    they come from the encoders.

    Errors are ``ConfigError`` naming the file and the offending key(s).
    """
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml", ".json") or p.is_file() or len(p.parts) > 1:
        path: str = str(p)
        data = load_yaml(p)
    else:
        res = _presets() / f"{p.name}.yaml"
        if not res.is_file():
            raise ConfigError(f"model preset {str(path_or_name)!r} not found among the shipped presets "
                              f"(available: {available_presets()})")
        path = f"{PRESETS}/{p.name}.yaml"
        try:
            data = yaml.safe_load(res.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"model preset {path!r} is not valid YAML: {e}") from e
    if isinstance(data, Mapping) and any(k in data for k in SIZE_KEYS):
        data = dict(data)
        dropped = {k: data.pop(k) for k in SIZE_KEYS if k in data}
        log.warning("model preset %s: %s ignored; a preset holds the architecture, the sizes come from the "
                    "encoders", path, dropped)
    try:
        cfg = from_dict(ModelPreset, _without_removed(data))
    except ConfigError as e:
        raise ConfigError(f"model preset {str(path)!r}: {e}") from e
    log.info("loaded model preset %s (hash %s)", path, cfg.hash)
    return cfg
