"""SafePusher: pushes a blessed model into the TF Serving layout, checked, atomically and at most once."""

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model, ModelBlessing, PushedModel, Schema
from tfx.utils import path_utils

from components.pusher.publish import (
    INPUTS_FILE,
    SCHEMA_FILE,
    apply_retention,
    inputs_identity,
    list_versions,
    publish,
    served_inputs_identity,
    training_fingerprint,
    write_models_config,
)
from components.warmup import WARMUP_FILE, write_warmup_requests

log = logging.getLogger(__name__)

PUSHED = "pushed"
PUSHED_DESTINATION = "pushed_destination"
PUSHED_VERSION = "pushed_version"
NOT_PUSHED_REASON = "not_pushed_reason"
SMOKE_TIMEOUT_SECONDS = 600


class PrePushCheckError(RuntimeError):
    """A blessed model failed to load or to score raw examples in a fresh process; nothing was pushed."""


def split_pattern(examples: Examples, split: str = "eval") -> str:
    """The files of one split of an Examples artifact."""
    return os.path.join(examples.uri, f"Split-{split}", "*")


def pre_push_check(saved_model: str, examples: Examples, split: str = "eval") -> str:
    """Runs components.pusher.smoke in a fresh Python process on a few raw examples of `split`.

    Raises:
      PrePushCheckError: with the check's own one-line reason.
    """
    pattern = split_pattern(examples, split)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "components.pusher.smoke", saved_model, pattern],
            capture_output=True,
            text=True,
            timeout=SMOKE_TIMEOUT_SECONDS,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PrePushCheckError(f"pre-push check: loading and scoring took over {SMOKE_TIMEOUT_SECONDS}s") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["the check process crashed"])[-1]
        raise PrePushCheckError(f"pre-push check failed, model not pushed: {reason}")
    return result.stdout.strip()


@component
def SafePusher(
    model: InputArtifact[Model],
    model_blessing: InputArtifact[ModelBlessing],
    examples: InputArtifact[Examples],
    schema: InputArtifact[Schema],
    pushed_model: OutputArtifact[PushedModel],
    serving_model_dir: Parameter[str],
    keep_versions: Parameter[int] = 5,
) -> None:
    """Publishes the model to `serving_model_dir/<version>` when it is blessed, passes the pre-push
    check and is not already served; then keeps the newest `keep_versions` versions. Each pushed version
    carries TF Serving's warmup file (components/warmup.py), built from raw evaluation examples.

    Records on the PushedModel artifact the same properties as TFX's Pusher (pushed,
    pushed_destination, pushed_version) and, when nothing was pushed, why.
    """
    if not model_blessing.get_int_custom_property("blessed"):
        _not_pushed(pushed_model, "the Evaluator did not bless the model")
        return
    saved_model = path_utils.serving_model_path(model.uri)
    versions = list_versions(serving_model_dir)
    fingerprint = training_fingerprint(saved_model)
    if versions and fingerprint and training_fingerprint(Path(serving_model_dir) / str(versions[-1])) == fingerprint:
        _not_pushed(pushed_model, f"version {versions[-1]} already serves a model trained from the same inputs")
        return
    identity = inputs_identity(
        examples.span,
        examples.version,
        examples.get_string_custom_property("input_fingerprint"),
        os.path.join(schema.uri, SCHEMA_FILE),
        saved_model,
    )
    if versions and served_inputs_identity(Path(serving_model_dir) / str(versions[-1])) == identity:
        _not_pushed(
            pushed_model, f"version {versions[-1]} already serves a model trained from the same data, schema and config"
        )
        return
    log.info("%s", pre_push_check(saved_model, examples))
    # Warmup requests come from the raw evaluation examples, which only the pusher has (the Trainer reads
    # transformed ones); they travel in assets.extra/ like the schema, in place before the version appears.
    with tempfile.TemporaryDirectory(prefix="conveyor-warmup-") as scratch:
        extra = {
            SCHEMA_FILE: os.path.join(schema.uri, SCHEMA_FILE),
            WARMUP_FILE: os.path.join(scratch, WARMUP_FILE),
            INPUTS_FILE: os.path.join(scratch, INPUTS_FILE),
        }
        Path(extra[INPUTS_FILE]).write_text(json.dumps({"identity": identity}))
        warmup = write_warmup_requests(
            saved_model, split_pattern(examples), extra[WARMUP_FILE], Path(serving_model_dir).name
        )
        version = publish(saved_model, serving_model_dir, extra_files=extra)
    destination = str(Path(serving_model_dir) / str(version))
    pushed_model.set_int_custom_property(PUSHED, 1)
    pushed_model.set_string_custom_property(PUSHED_DESTINATION, destination)
    pushed_model.set_string_custom_property(PUSHED_VERSION, str(version))
    log.info("Model pushed to %s with %d warmup requests", destination, warmup)
    # The model that was serving stays loadable as `stable`; the new one is `canary`.
    write_models_config(serving_model_dir, stable=versions[-1] if versions else version, canary=version)
    removed = apply_retention(serving_model_dir, keep_versions)
    if removed:
        log.info("Retention: removed versions %s (keeping the newest %d)", removed, keep_versions)


def _not_pushed(pushed_model: PushedModel, reason: str) -> None:
    pushed_model.set_int_custom_property(PUSHED, 0)
    pushed_model.set_string_custom_property(NOT_PUSHED_REASON, reason)
    log.info("Model not pushed: %s", reason)
