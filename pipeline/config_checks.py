"""The ground of config parsing: the one error a bad config gives, and the checks every section's parser
uses (pipeline.config and its section parsers, pipeline.config_predict and pipeline.config_serve)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

# The config file's top-level sections.
TOP_KEYS = {
    "name",
    "task",
    "classes",
    "data",
    "label",
    "schema",
    "features",
    "model",
    "training",
    "evaluation",
    "serving",
    "beam",
    "kubeflow",
    "metadata",
    "predict",
}


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, key: str, problem: str, source: Optional[str] = None):
        where = f"{source}: " if source else ""
        super().__init__(f"{where}config key '{key}': {problem}")
        self.key = key
        self.problem = problem


def check_keys(data: Mapping[str, Any], allowed: set[str], required: set[str], prefix: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(prefix or "<top level>", f"must be a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"{prefix}{key}", f"unknown key (known keys here: {known})")
    for key in sorted(required):
        if key not in data:
            raise ConfigError(f"{prefix}{key}", "is required but missing")


def typed(value: Any, kind: type | tuple[type, ...], key: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(key, f"must be {kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(key, f"must be {kind_name(kind)}, got {type(value).__name__} {value!r}")
    return value


def kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def positive(value: Any, key: str, kind: type = int, minimum: float = 1) -> Any:
    value = typed(value, kind, key)
    if value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {value}")
    return value
