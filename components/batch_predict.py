"""BatchPredict: the pipeline stage that scores `predict.data_root` with the version SafePusher just pushed,
as TFX's BulkInferrer would, through the same scoring as `conveyor predict` (components/batch_scoring.py).

A TFX function component on Beam (the pipeline's Beam arguments), so it runs the same locally and in the
compiled Kubeflow pipeline's container. Its InferenceResult artifact holds the scored files, the rejected rows
and `summary.json`; the counts are custom properties. When nothing was pushed it scores nothing and says why.
"""

import logging
import os
from pathlib import Path

import apache_beam as beam
from tfx.dsl.component.experimental.annotations import (
    BeamComponentParameter,
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import InferenceResult, PushedModel, Schema

from components.batch_scoring import SCHEMA_FILE, check_headers, input_files, load_target, predict
from components.pusher.component import PUSHED, PUSHED_DESTINATION, PUSHED_VERSION

log = logging.getLogger(__name__)
# Custom properties of the InferenceResult.
SCORED, REJECTED_ROWS, ROWS_IN, MODEL_VERSION, NOT_SCORED_REASON = (
    "scored",
    "rejected",
    "rows_in",
    "model_version",
    "not_scored_reason",
)
SCORED_DIR = "scored"


@component(use_beam=True)
def BatchPredict(
    pushed_model: InputArtifact[PushedModel],
    schema: InputArtifact[Schema],
    inference_result: OutputArtifact[InferenceResult],
    data_root: Parameter[str],
    output_format: Parameter[str] = "csv",
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Scores `data_root` (a CSV file, a directory of CSVs or the newest span-<N>/) with the pushed version
    into `<inference_result>/scored/`; records scored, rejected and rows_in, and the version, on the artifact.

    Raises:
      ValueError: the data or the pushed version cannot be scored (the message names what).
    """
    if not pushed_model.get_int_custom_property(PUSHED):
        reason = "the model was not pushed, so there is no new version to score with"
        inference_result.set_string_custom_property(NOT_SCORED_REASON, reason)
        inference_result.set_int_custom_property(SCORED, 0)
        log.info("BatchPredict: nothing scored: %s", reason)
        return
    version_dir = Path(pushed_model.get_string_custom_property(PUSHED_DESTINATION))
    version = int(pushed_model.get_string_custom_property(PUSHED_VERSION))
    if not (Path(schema.uri) / SCHEMA_FILE).is_file():
        raise ValueError(f"BatchPredict: the schema artifact {schema.uri} holds no {SCHEMA_FILE}")
    # The version's own copy of the curated schema (assets.extra/) types the rows, as in `conveyor predict`.
    target = load_target(version_dir.parent.name, version, version_dir)
    files = input_files(data_root)
    check_headers(files, target, ())
    summary = predict(
        target, files, os.path.join(inference_result.uri, SCORED_DIR), output_format, pipeline=beam_pipeline
    )
    inference_result.set_int_custom_property(SCORED, summary.scored)
    inference_result.set_int_custom_property(REJECTED_ROWS, summary.rejected)
    inference_result.set_int_custom_property(ROWS_IN, summary.rows_in)
    inference_result.set_string_custom_property(MODEL_VERSION, str(version))
    log.info("BatchPredict: version %d scored %d rows, rejected %d", version, summary.scored, summary.rejected)

    lost = summary.rows_in - summary.scored - summary.rejected
    if lost:
        raise ValueError(f"BatchPredict: {lost} rows were neither scored nor rejected")
