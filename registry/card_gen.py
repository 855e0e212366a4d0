"""ModelCardGen: the pipeline's own record of a version it pushed (the model card and the provenance),
written by a component after SafePusher, so that a run on any orchestrator, Kubeflow Pipelines too, has
them.

The card is the one registry.model_card draws. The record it holds is built from the component's inputs
(the artifacts the run made) rather than from ML Metadata, which TFX's container entrypoint does not
reach inside a Kubeflow pod; a component's start and end times are therefore ML Metadata's alone
(`conveyor models show`). The output, a `registry.ModelCard` artifact, carries the provenance as custom
properties (who or what started the run, the code version, the pipeline run, the card's path), and the
registry reads it from ML Metadata (registry.versions).
"""

import datetime as dt
import json
import logging
import os

from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.artifact import Artifact
from tfx.types.standard_artifacts import (
    Examples,
    ExampleStatistics,
    Model,
    ModelBlessing,
    ModelEvaluation,
    PushedModel,
    Schema,
)

from registry.lineage import NodeExecution

log = logging.getLogger(__name__)


def tf_io_copy(source: str, destination: str) -> None:
    """Copies one file through tf.io.gfile, as TFX writes artifacts (a mounted path, gs:// or s3://)."""
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(destination))
    tf.io.gfile.copy(source, destination, overwrite=True)


NODE_ID = "ModelCardGen"
# Custom properties of the ModelCard artifact besides the provenance (registry.runs.provenance_values).
CARD_PATH = "card_html"
CARD_ERROR = "card_error"
VERSION = "version"
STARTED_BY = "started_by"
PIPELINE_RUN = "pipeline_run"
# What Kubeflow Pipelines' driver replaces in a parameter (backend/src/v2/driver/resolve.go): the run's
# display name and id. conveyor compile passes them; a local run passes TFX's pipeline run id.
KFP_RUN_NAME = "{{$.pipeline_job_name}}"
KFP_RUN_ID = "{{$.pipeline_job_uuid}}"


class ModelCard(Artifact):
    """A pushed version's model card and provenance. The type's name is also its import path
    (`registry.ModelCard`), which is how TFX's Kubeflow entrypoint finds a custom artifact class."""

    TYPE_NAME = "registry.ModelCard"


def _node(node_id: str, properties: dict, inputs: dict, outputs: dict) -> NodeExecution:
    """A completed execution as the record's readers see it, from the artifacts this component was given."""
    execution = metadata_store_pb2.Execution(last_known_state=metadata_store_pb2.Execution.COMPLETE)
    for key, value in properties.items():
        execution.custom_properties[key].string_value = value

    def protos(artifacts: dict) -> dict:
        return {k: [a.mlmd_artifact for a in v if a is not None] for k, v in artifacts.items()}

    return NodeExecution(node_id, "complete", execution, protos(outputs), protos(inputs))


def version_record(run: dict, trainer: dict, eval_config: str, schema_file: str, provenance: dict, run_id: str):
    """The registry.versions.VersionRecord of the version run["pushed_model"] holds, from the run's artifacts.

    Args:
      run: ModelCardGen's input artifacts by name (TFX artifacts; `base_model` may be None, and
        `training_examples` and `transformed_examples` are lists: one per span in a window).
      trainer: the Trainer's exec properties as TFX records them (custom_config, train_args, eval_args).
      eval_config: the Evaluator's eval_config as TFX records it (JSON).
      schema_file: the curated schema ImportSchemaGen imported.
      provenance: who and what made the version.
      run_id: the pipeline run.

    Returns:
      The record registry.record.describe and registry.model_card read.
    """
    from registry.summary import summarize
    from registry.versions import VersionRecord

    examples, model, base_model = run["examples"], run["model"], run.get("base_model")
    baseline = {"baseline_model": [base_model]} if base_model is not None else {}
    started_from = {"base_model": [base_model]} if base_model is not None else {}
    executions = {
        "CsvExampleGen": _node("CsvExampleGen", {}, {}, {"examples": [examples]}),
        "StatisticsGen": _node("StatisticsGen", {}, {"examples": [examples]}, {"statistics": [run["statistics"]]}),
        "ImportSchemaGen": _node("ImportSchemaGen", {"schema_file": schema_file}, {}, {"schema": [run["schema"]]}),
        "Transform": _node("Transform", {}, {"examples": run["training_examples"]}, {}),
        "Trainer": _node(
            "Trainer",
            trainer,
            {"examples": run["transformed_examples"], **started_from},
            {"model": [model]},
        ),
        "Evaluator": _node(
            "Evaluator",
            {"eval_config": eval_config},
            {"examples": [examples], "model": [model], **baseline},
            {"evaluation": [run["evaluation"]], "blessing": [run["model_blessing"]]},
        ),
        "SafePusher": _node("SafePusher", {}, {"model": [model]}, {"pushed_model": [run["pushed_model"]]}),
    }
    pushed = run["pushed_model"]
    record = VersionRecord(
        version=int(pushed.get_string_custom_property("pushed_version")),
        pushed_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        destination=pushed.get_string_custom_property("pushed_destination"),
        run_id=run_id,
        provenance=provenance,
        executions=executions,
    )
    record.summary = summarize(run_id, executions)
    record.training_spans = sorted({e.span for e in run["training_examples"] if e.has_property("span")})
    return record


@component
def ModelCardGen(
    pushed_model: InputArtifact[PushedModel],
    model: InputArtifact[Model],
    model_blessing: InputArtifact[ModelBlessing],
    evaluation: InputArtifact[ModelEvaluation],
    examples: InputArtifact[Examples],
    transformed_examples: InputArtifact[list[Examples]],
    statistics: InputArtifact[ExampleStatistics],
    schema: InputArtifact[Schema],
    model_card: OutputArtifact[ModelCard],
    model_name: Parameter[str],
    trainer_config: Parameter[str],
    eval_config: Parameter[str],
    schema_file: Parameter[str],
    slice_features: Parameter[str],
    config_source: Parameter[str] = "",
    pipeline_run: Parameter[str] = "",
    started_by: Parameter[str] = "",
    base_model: InputArtifact[Model] = None,
    training_examples: InputArtifact[list[Examples]] = None,
) -> None:
    """Records who and what made this run's model (always), and, when SafePusher pushed it, writes its
    model card into the version's assets.extra/. A card that fails is recorded as such (`card_error`)
    and never fails the run: the version is pushed and `conveyor models card V` can draw it again.

    Args:
      trainer_config: the Trainer's custom_config, train_args and eval_args, as one JSON object.
      eval_config: the Evaluator's eval_config, as TFX records it.
      slice_features: JSON list of the features the evaluation is sliced by.
      pipeline_run: the pipeline run's id (TFX's locally; Kubeflow's from its driver).
      started_by: what started the run, when it is not this process's user (a Kubeflow run's name).
      training_examples: what Transform read, when not `examples` (a rolling window of spans).
    """
    from registry.model_card import render_card
    from registry.runs import provenance_values

    values = provenance_values(config_source)
    values[STARTED_BY] = f"Kubeflow Pipelines run {started_by}" if started_by else f"{values['user']} (conveyor run)"
    values[PIPELINE_RUN] = pipeline_run
    for key, value in values.items():
        model_card.set_string_custom_property(key, value)
    if not pushed_model.get_int_custom_property("pushed"):
        log.info("nothing pushed: provenance recorded, no card")
        return
    version = pushed_model.get_string_custom_property("pushed_version")
    model_card.set_string_custom_property(VERSION, version)
    trainer = json.loads(trainer_config)
    try:
        run = {
            "pushed_model": pushed_model,
            "model": model,
            "model_blessing": model_blessing,
            "evaluation": evaluation,
            "examples": examples,
            "training_examples": training_examples or [examples],
            "transformed_examples": transformed_examples,
            "statistics": statistics,
            "schema": schema,
            "base_model": base_model,
        }
        exec_properties = {k: v if isinstance(v, str) else json.dumps(v) for k, v in trainer.items()}
        record = version_record(run, exec_properties, eval_config, schema_file, values, pipeline_run)
        custom = trainer["custom_config"]
        from pipeline.config import features_from_component_config, task_from_component_config

        trained_with = (*features_from_component_config(custom), *task_from_component_config(custom))
        html_path, _ = render_card(record, model_name, tuple(json.loads(slice_features)), trained_with)
    except Exception as err:  # noqa: BLE001 - the model is pushed; the card is reported as missing, never fails it
        log.exception("model card failed")
        model_card.set_string_custom_property(CARD_ERROR, f"{type(err).__name__}: {err}"[:2000])
        return
    # A copy beside the record (the page is self-contained), so the artifact holds what it describes
    # wherever the serving root is mounted.
    tf_io_copy(str(html_path), os.path.join(model_card.uri, html_path.name))
    model_card.set_string_custom_property(CARD_PATH, str(html_path))
    log.info("model card of version %s: %s", version, html_path)
