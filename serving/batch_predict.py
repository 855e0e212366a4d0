"""Batch prediction for `conveyor predict`: which version and which CSV files to score, checked before
anything runs; the scoring itself is components/batch_scoring.py's (shared with the pipeline's BatchPredict
stage): Beam's RunInference on the version's `classification` or `regression` signature, chunks of rows
at a time, every row accounted for as scored or rejected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from components.batch_scoring import (  # noqa: F401  (re-exported: the CLI's and the tests' names)
    FORMATS,
    PREDICTIONS,
    REJECTED_HEADER,
    SUMMARY,
    PredictError,
    Summary,
    Target,
    build_pipeline,
    check_headers,
    check_output,
    input_files,
    predict,
)
from components.batch_scoring import load_target as _load_target
from components.batch_scoring_rows import REJECTED  # noqa: F401
from components.pusher.publish import MODELS_CONFIG, list_versions


def _versions_message(model_dir: Path) -> str:
    versions = list_versions(model_dir)
    return ", ".join(map(str, versions)) if versions else "none"


def resolve_version(
    serving_root: str | Path, model: str, version: Optional[int] = None, label: Optional[str] = None
) -> tuple[int, Path]:
    """The version directory to score with: the one named, the one `label` names in models.config, or the newest.

    Raises:
      PredictError: no such model, version or label (the message names it and what exists).
    """
    root = Path(serving_root)
    model_dir = root / model
    if not list_versions(model_dir):
        models = sorted(p.name for p in root.iterdir() if list_versions(p)) if root.is_dir() else []
        have = ", ".join(models) if models else f"none under {root}"
        raise PredictError(f"unknown model '{model}': no pushed versions in {model_dir} (models: {have})")
    if label is not None:
        from serving.model_config import ModelConfigError, parse

        config_file = root / MODELS_CONFIG
        if not config_file.is_file():
            raise PredictError(f"unknown label '{label}': {config_file} does not exist, so no version has a label")
        try:
            entries = parse(config_file.read_text(encoding="utf-8"), str(config_file), root)
        except ModelConfigError as err:
            raise PredictError(str(err)) from None
        labels = dict(entries[model].labels) if model in entries else {}
        if label not in labels:
            have = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
            raise PredictError(f"unknown label '{label}' for model '{model}' in {config_file} (labels: {have})")
        version = labels[label]
    if version is None:
        version = list_versions(model_dir)[-1]
    if version not in list_versions(model_dir):
        raise PredictError(f"unknown version {version} of model '{model}' (versions: {_versions_message(model_dir)})")
    return version, model_dir / str(version)


def load_target(model: str, version: int, path: Path) -> Target:
    """What batch prediction needs of a version directory, read without loading the model.

    Raises:
      PredictError: the version has no classification or regression signature, or no schema.
    """
    from serving.servable import not_served

    return _load_target(model, version, path, lambda schema: {f.name for f in schema.feature} - not_served(schema))
