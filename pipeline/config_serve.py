"""The config's `serving:` settings for `conveyor serve`, readable without the rest of the config: a server
runs where the training data and the curated schema are absent, so this reads no data root.

At the ground beside pipeline.config (which checks the same keys through `serve_settings`), importing only
pipeline.config_checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from pipeline.config_checks import TOP_KEYS as _TOP_KEYS
from pipeline.config_checks import ConfigError
from pipeline.config_checks import check_keys as _check_keys
from pipeline.config_checks import typed as _typed

SERVING_KEYS = {"model_name", "keep_versions", "request_log_rate", "request_log_dir"}


@dataclass(frozen=True)
class ServeConfig:
    """What `conveyor serve` takes from the config when its flag is absent (a flag always wins)."""

    # The share of requests written to the request log, in [0, 1]; None: not configured.
    request_log_rate: Optional[float] = None
    # Where the request logs go (a relative path is relative to the config's folder); None: not configured.
    request_log_dir: Optional[str] = None


def serve_settings(raw: Mapping[str, Any], base: Path) -> tuple[Optional[float], Optional[str]]:
    """The `serving:` section's request-log settings.

    Args:
      raw: the section.
      base: the config's folder, which a relative `request_log_dir` is relative to.

    Returns:
      `request_log_rate` (in [0, 1]) and `request_log_dir`; None for either when absent.

    Raises:
      ConfigError: a value of the wrong type, or a rate outside [0, 1] (the key is named).
    """
    rate, directory = raw.get("request_log_rate"), raw.get("request_log_dir")
    if rate is not None and not 0.0 <= (rate := _typed(rate, float, "serving.request_log_rate")) <= 1.0:
        raise ConfigError("serving.request_log_rate", f"must be between 0 and 1, got {rate}")
    return rate, None if directory is None else str(base / _typed(directory, str, "serving.request_log_dir"))


def load_serve_config(path: str | Path) -> ServeConfig:
    """Reads the `serving:` section of a dataset config, checked by the same rules as `load_config`'s.

    Args:
      path: the YAML file.

    Returns:
      The serving settings; those the section leaves out are None.

    Raises:
      ConfigError: the file is missing or not YAML, or a key is unknown or out of range (the key is named).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError("<file>", f"{path} is not valid YAML: {err}") from None
    try:
        _check_keys(raw, _TOP_KEYS, set(), "")
        serving = raw.get("serving") or {}
        _check_keys(serving, SERVING_KEYS, set(), "serving.")
        rate, directory = serve_settings(serving, path.parent)
    except ConfigError as err:
        raise ConfigError(err.key, err.problem, str(path)) from None
    return ServeConfig(request_log_rate=rate, request_log_dir=str(Path(directory).resolve()) if directory else None)
