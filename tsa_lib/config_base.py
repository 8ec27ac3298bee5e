"""Shared machinery for typed, validated configuration dataclasses.

Every config in the suite is a (frozen) dataclass.  ``from_dict`` builds one
from a plain mapping (parsed YAML/JSON), recursing into nested dataclasses,
rejecting unknown keys and type mismatches with a ``ConfigError`` that names
the dotted key path and the value received.  Per-field semantic checks live in
each dataclass's ``__post_init__`` and raise ``ConfigError`` too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from tsa_lib.errors import ConfigError  # noqa: F401  (raised here, imported from here by callers)

T = TypeVar("T")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")



def check_identifier(key: str, value: Any) -> str:
    """Return ``value`` if it is a plain SQL identifier, else raise naming ``key``."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ConfigError(f"{key}: {value!r} is not a valid identifier (letters, digits, _; not starting with a digit)")
    return value


def check_qualified_name(key: str, value: Any) -> str:
    """Return ``value`` if it is ``a``, ``a.b`` or ``a.b.c`` made of identifiers."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: {value!r} is not a table name")
    for part in value.split("."):
        if not _IDENTIFIER.match(part):
            raise ConfigError(f"{key}: {value!r} is not a table name: part {part!r} is not an identifier")
    if value.count(".") > 2:
        raise ConfigError(f"{key}: {value!r} has more than three parts (catalog.schema.table)")
    return value


def check_positive(key: str, value: Any, allow_zero: bool = False) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def check_choice(key: str, value: Any, choices: typing.Iterable[Any]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
    return value


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)) and len(args) == 1:
            return True, args[0]
    return False, tp


def _coerce(tp: Any, value: Any, path: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{path}: must not be null")
    tp = inner
    if tp is Any:
        return value
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = get_args(tp)
        elem = args[0] if args else Any
        items = [_coerce(elem, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        args = get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{path}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        return check_choice(path, value, get_args(tp))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown key(s) {[where + k for k in unknown]} (allowed: {sorted(fields)})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if path and not str(e).startswith(path):
            raise ConfigError(f"{path}.{e}") from e
        raise


def to_dict(obj: Any) -> Any:
    """Plain-data (JSON-able) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def config_hash(obj: Any) -> str:
    """Stable short hash of a config's plain-data form."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML (or JSON) file into a mapping, with errors naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at top level, got {type(data).__name__}")
    return data
