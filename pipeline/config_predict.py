"""The config's `predict:` section: data the pipeline's BatchPredict stage scores with each newly pushed version.

At the ground beside pipeline.config (which parses it through `parse_predict`), importing only pipeline.config_checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pipeline.config_checks import ConfigError
from pipeline.config_checks import check_keys as _check_keys
from pipeline.config_checks import typed as _typed

PREDICT_FORMATS = ("csv", "tfrecord", "parquet")


@dataclass(frozen=True)
class PredictConfig:
    """`predict: {data_root, format}`: what BatchPredict scores, and the scored files' format."""

    # A CSV file, a directory of CSVs, or a data root of span-<N>/ (the newest span is scored).
    data_root: str
    format: str = "csv"


def parse_predict(raw: Any, base: Path) -> Optional[PredictConfig]:
    """The `predict:` section, paths relative to `base`; None when absent.

    Raises:
      ConfigError: an unknown or missing key, data that does not exist, or an unknown format.
    """
    if raw is None:
        return None
    _check_keys(_typed(raw, dict, "predict"), {"data_root", "format"}, {"data_root"}, "predict.")
    root = base / _typed(raw["data_root"], str, "predict.data_root")
    if not root.exists():
        raise ConfigError("predict.data_root", f"data to score {root} does not exist")
    fmt = _typed(raw.get("format", "csv"), str, "predict.format")
    if fmt not in PREDICT_FORMATS:
        raise ConfigError("predict.format", f"'{fmt}' is not one of {', '.join(PREDICT_FORMATS)}")
    return PredictConfig(str(root.resolve()), fmt)
