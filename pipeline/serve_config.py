"""The `serving:` settings `conveyor serve` reads from a dataset config, without the rest of it: a server
runs where the training data and the curated schema are absent, so this reads no data root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from pipeline.config import _TOP_KEYS, SERVING_KEYS, ConfigError, _check_keys, _serve_settings


@dataclass(frozen=True)
class ServeConfig:
    """What `conveyor serve` takes from the config when its flag is absent (a flag always wins)."""

    # The share of requests written to the request log, in [0, 1]; None: not configured.
    request_log_rate: Optional[float] = None
    # Where the request logs go (a relative path is relative to the config's folder); None: not configured.
    request_log_dir: Optional[str] = None


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
        rate, directory = _serve_settings(serving, path.parent)
    except ConfigError as err:
        raise ConfigError(err.key, err.problem, str(path)) from None
    return ServeConfig(request_log_rate=rate, request_log_dir=str(Path(directory).resolve()) if directory else None)
