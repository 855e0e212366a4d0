"""Publishing a SavedModel into a TF Serving model directory: atomic, strictly increasing versions."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

TRAINING_RECORD = Path("assets.extra") / "conveyor_training.json"
# The curated schema the model was trained under, so clients and `conveyor serve` can build
# tf.Examples from plain JSON values without the repository.
SCHEMA_FILE = "schema.pbtxt"
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


INPUTS_FILE = "conveyor_inputs.json"


def inputs_identity(span: int, version: int, data_fingerprint: str, schema_file: str, saved_model: str) -> str:
    """What a model was made from, by content: the span, version and ExampleGen's fingerprint of the
    input files, the curated schema's bytes and the training config (as run_fn recorded it). Paths do
    not enter, so a cluster re-run of unchanged data, whose artifacts all have new URIs, has the same
    identity as the run it repeats."""
    import hashlib

    import tensorflow as tf

    with tf.io.gfile.GFile(schema_file, "rb") as f:
        schema = hashlib.sha256(f.read()).hexdigest()
    config = None
    record = os.path.join(saved_model, str(TRAINING_RECORD))
    if tf.io.gfile.exists(record):
        with tf.io.gfile.GFile(record) as f:
            config = json.load(f).get("config_fingerprint")
    identity = {"span": span, "version": version, "data": data_fingerprint, "schema": schema, "config": config}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def served_inputs_identity(version_dir: str | Path) -> Optional[str]:
    """The inputs identity a pushed version was published with, if any."""
    path = Path(version_dir) / "assets.extra" / INPUTS_FILE
    return json.loads(path.read_text()).get("identity") if path.is_file() else None


def remove_stale_staging(model_dir: Path, older_than_seconds: float = 3600.0) -> list[str]:
    """Removes staging directories a killed publisher left behind (TF Serving never loads them).

    Only ones older than an hour go: a publish in flight elsewhere is never that slow.
    """
    removed = []
    cutoff = time.time() - older_than_seconds
    for path in model_dir.iterdir():
        if path.name.startswith(STAGING_PREFIX) and path.is_dir() and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def publish(
    saved_model_dir: str | Path,
    model_dir: str | Path,
    now: Optional[float] = None,
    extra_files: Optional[Mapping[str, str | Path]] = None,
) -> int:
    """Copies a SavedModel into `model_dir/<version>` so that no reader ever sees it half-written.

    The copy is made under a staging name in the same directory (same filesystem) and renamed into
    place when complete. The version is the current second or one more than the newest existing
    version, whichever is higher, so versions strictly increase even within one second; a
    concurrent publisher that took the same number makes this one retry with the next.

    Args:
      saved_model_dir: the SavedModel to publish.
      model_dir: `<serving root>/<model name>`.
      now: the clock, for tests.
      extra_files: files to add under the version's `assets.extra/` (which TF Serving ignores),
        by name; they are in place before the version appears.

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
    remove_stale_staging(target_root)
    staging = target_root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        shutil.copytree(source, staging)
        for name, path in (extra_files or {}).items():
            (staging / "assets.extra").mkdir(exist_ok=True)
            shutil.copyfile(path, staging / "assets.extra" / name)
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


# ---------------------------------------------------------------------------------------------
# Retention and the TF Serving model config

MODELS_CONFIG = "models.config"


def _read_models_config(serving_root: Path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    path = serving_root / MODELS_CONFIG
    if path.is_file():
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    return config


def pinned_versions(model_dir: str | Path) -> set[int]:
    """Versions that `models.config` (beside the model directories) names by label or pins."""
    model_dir = Path(model_dir)
    pinned: set[int] = set()
    for entry in _read_models_config(model_dir.parent).model_config_list.config:
        if entry.name == model_dir.name:
            pinned.update(int(v) for v in entry.version_labels.values())
            pinned.update(int(v) for v in entry.model_version_policy.specific.versions)
    return pinned


def apply_retention(model_dir: str | Path, keep: int) -> list[int]:
    """Deletes all but the newest `keep` versions; never the served (highest) or a pinned one.

    Returns:
      The versions removed.
    """
    versions = list_versions(model_dir)
    protected = set(versions[-max(keep, 1) :]) | pinned_versions(model_dir)
    removed = [v for v in versions if v not in protected]
    for version in removed:
        # Rename first so TF Serving never sees a half-deleted version directory.
        doomed = Path(model_dir) / f"{STAGING_PREFIX}deleting-{version}"
        os.rename(Path(model_dir) / str(version), doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return removed


OWN_LABELS = ("stable", "canary")


def write_models_config(model_dir: str | Path, stable: int, canary: Optional[int] = None) -> Path:
    """Writes `<serving root>/models.config` for this model: labels `stable` and `canary` (canary
    defaults to stable) and the versions they name, loaded. Other models' entries are kept, and so
    are a person's pins on this model (any other label, or a version listed by hand) while their
    version directory exists: retention reads them from here.

    TF Serving: `tensorflow_model_server --model_config_file=<serving root>/models.config
    --allow_version_labels_for_unavailable_models`.
    """
    from google.protobuf import text_format

    model_dir = Path(model_dir).absolute()
    config = _read_models_config(model_dir.parent)
    entries = config.model_config_list.config
    entry = next((e for e in entries if e.name == model_dir.name), None) or entries.add()
    previous_own = {entry.version_labels[label] for label in OWN_LABELS if label in entry.version_labels}
    existing = set(list_versions(model_dir))
    user_labels = {
        label: version
        for label, version in entry.version_labels.items()
        if label not in OWN_LABELS and version in existing
    }
    user_versions = {v for v in entry.model_version_policy.specific.versions if v not in previous_own and v in existing}
    entry.Clear()
    entry.name = model_dir.name
    entry.base_path = str(model_dir)
    entry.model_platform = "tensorflow"
    canary = canary if canary is not None else stable
    versions = {stable, canary} | user_versions | set(user_labels.values())
    entry.model_version_policy.specific.versions.extend(sorted(versions))
    for label, version in sorted(user_labels.items()):
        entry.version_labels[label] = version
    entry.version_labels["stable"] = stable
    entry.version_labels["canary"] = canary
    path = model_dir.parent / MODELS_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{STAGING_PREFIX}{MODELS_CONFIG}")
    staging.write_text(text_format.MessageToString(config), encoding="utf-8")
    os.replace(staging, path)
    return path
