"""SafePusher: pushes a blessed model into the TF Serving layout, atomically and at most once."""

import logging
from pathlib import Path

from tfx import v1 as tfx
from tfx.types.standard_artifacts import Model, ModelBlessing, PushedModel
from tfx.utils import path_utils

from components.pusher.publish import list_versions, publish, training_fingerprint

log = logging.getLogger(__name__)

PUSHED = "pushed"
PUSHED_DESTINATION = "pushed_destination"
PUSHED_VERSION = "pushed_version"
NOT_PUSHED_REASON = "not_pushed_reason"


@tfx.dsl.components.component
def SafePusher(
    model: tfx.dsl.components.InputArtifact[Model],
    model_blessing: tfx.dsl.components.InputArtifact[ModelBlessing],
    pushed_model: tfx.dsl.components.OutputArtifact[PushedModel],
    serving_model_dir: tfx.dsl.components.Parameter[str],
) -> None:
    """Publishes the model to `serving_model_dir/<version>` when it is blessed and not already served.

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
    version = publish(saved_model, serving_model_dir)
    destination = str(Path(serving_model_dir) / str(version))
    pushed_model.set_int_custom_property(PUSHED, 1)
    pushed_model.set_string_custom_property(PUSHED_DESTINATION, destination)
    pushed_model.set_string_custom_property(PUSHED_VERSION, str(version))
    log.info("Model pushed to %s", destination)


def _not_pushed(pushed_model: PushedModel, reason: str) -> None:
    pushed_model.set_int_custom_property(PUSHED, 0)
    pushed_model.set_string_custom_property(NOT_PUSHED_REASON, reason)
    log.info("Model not pushed: %s", reason)
