"""Process-wide facts every entry point shares: the project root, the default config, and the settings
TensorFlow needs before it is first imported. Ground level: imports nothing of the project."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "taxi.yaml"


def prepare_environment() -> None:
    """Process-wide settings every entry point needs before TensorFlow is first imported."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # numpy's note when TFDV or TFMA reduce over NaN: the NaN itself is reported as a data error.
    warnings.filterwarnings("ignore", category=RuntimeWarning, message="invalid value encountered")
