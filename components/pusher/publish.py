"""Publishing a SavedModel into a TF Serving model directory: atomic, strictly increasing versions."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional

TRAINING_RECORD = Path("assets.extra") / "conveyor_training.json"
STAGING_PREFIX = ".staging-"


def list_versions(model_dir: str | Path) -> list[int]:
    """The integer versions TF Serving would see, ascending (staging directories are not versions)."""
    root = Path(model_dir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def training_fingerprint(saved_model_dir: str | Path) -> Optional[str]:
    """The fingerprint of the inputs a model was trained from, as run_fn recorded it."""
    record = Path(saved_model_dir) / TRAINING_RECORD
    if not record.is_file():
        return None
    return json.loads(record.read_text()).get("fingerprint")


def publish(saved_model_dir: str | Path, model_dir: str | Path, now: Optional[float] = None) -> int:
    """Copies a SavedModel into `model_dir/<version>` so that no reader ever sees it half-written.

    The copy is made under a staging name in the same directory (same filesystem) and renamed into
    place when complete. The version is the current second or one more than the newest existing
    version, whichever is higher, so versions strictly increase even within one second; a
    concurrent publisher that took the same number makes this one retry with the next.

    Args:
      saved_model_dir: the SavedModel to publish.
      model_dir: `<serving root>/<model name>`.
      now: the clock, for tests.

    Returns:
      The published version.

    Raises:
      FileNotFoundError: `saved_model_dir` holds no saved_model.pb.
      OSError: the serving directory cannot be written (the staging copy is removed).
    """
    source = Path(saved_model_dir)
    if not (source / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{source} holds no saved_model.pb; nothing to publish")
    target_root = Path(model_dir)
    target_root.mkdir(parents=True, exist_ok=True)
    staging = target_root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        shutil.copytree(source, staging)
        version = max(int(now if now is not None else time.time()), max(list_versions(target_root), default=0) + 1)
        while True:
            try:
                os.rename(staging, target_root / str(version))
                return version
            except OSError:
                if not (target_root / str(version)).exists():
                    raise
                version = max(list_versions(target_root)) + 1
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
