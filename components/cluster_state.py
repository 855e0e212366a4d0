"""What the cluster pipeline resolves without ML Metadata: the latest blessed model and the previous
statistics, kept as small JSON records in the artifact store.

Locally, TFX's resolvers find both in ML Metadata (and keep the cache: an unchanged re-run resolves
the same artifacts). On open-source Kubeflow Pipelines a `resolver` executor cannot run ("resolver
executors not implemented", backend/src/v2/compiler/argocompiler/dag.go), and a pod has no handle on
the ML Metadata store TFX would query. So the compiled pipeline carries ordinary container components
instead, which read and write records under `<pipeline_root>/_conveyor_state/<pipeline>/` through
`tf.io.gfile` (the same store the artifacts live in):

- `PreviousStatistics` runs after StatisticsGen: it hands on the statistics the previous run recorded
  (a copy, since a KFP output lives at a URI the backend chooses) and records this run's.
- `RecordBlessedModel` runs after the pusher: a blessed model becomes the latest blessed model.
- `LatestBlessedModel` runs first: the Trainer's warm-start base and the Evaluator's baseline.

Where nothing is recorded yet, the output is a placeholder (custom property `conveyor_placeholder`),
which the cluster entrypoint (kubeflow/entrypoint.py) removes from the next task's inputs, so the
Trainer starts cold and the Evaluator has no baseline, as on a first local run.
"""

import json
import logging
import os
import time
from typing import Optional

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import ExampleStatistics, Model, ModelBlessing, PushedModel
from tfx.utils import io_utils

log = logging.getLogger(__name__)

STATE_DIR = "_conveyor_state"
PLACEHOLDER = "conveyor_placeholder"
LATEST_BLESSED_MODEL = "latest_blessed_model.json"
LATEST_STATISTICS = "latest_statistics.json"
# The Trainer's SavedModel inside a Model artifact (tfx.utils.path_utils.serving_model_path).
SERVING_MODEL_DIR = "Format-Serving"


def state_dir(pipeline_root: str, pipeline_name: str) -> str:
    """Where a pipeline's records live in the artifact store."""
    return os.path.join(pipeline_root, STATE_DIR, pipeline_name)


def read_record(directory: str, name: str) -> Optional[dict]:
    """A record, or None when none was written yet."""
    import tensorflow as tf

    path = os.path.join(directory, name)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_record(directory: str, name: str, record: dict) -> None:
    """Writes a record whole: to a temporary name, then renamed over the old one, so that a reader
    never sees half of it (a rename is atomic on a file system; object stores replace whole objects)."""
    import tensorflow as tf

    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, name)
    staging = f"{path}.{os.getpid()}.tmp"
    with tf.io.gfile.GFile(staging, "w") as f:
        json.dump({**record, "recorded_at": time.time()}, f, sort_keys=True)
    tf.io.gfile.rename(staging, path, overwrite=True)


def _placeholder(artifact, why: str) -> None:
    artifact.set_int_custom_property(PLACEHOLDER, 1)
    log.info("%s", why)


@component
def LatestBlessedModel(model: OutputArtifact[Model], state_dir: Parameter[str]) -> None:
    """The latest model the Evaluator blessed, as RecordBlessedModel recorded it, copied into `model`;
    a placeholder when no model was blessed yet."""
    record = read_record(state_dir, LATEST_BLESSED_MODEL)
    if record is None:
        _placeholder(model, "no blessed model recorded yet: the Trainer starts cold, the Evaluator has no baseline")
        return
    io_utils.copy_dir(os.path.join(record["model_uri"], SERVING_MODEL_DIR), os.path.join(model.uri, SERVING_MODEL_DIR))
    model.set_string_custom_property("blessed_model_uri", record["model_uri"])
    log.info("latest blessed model: %s", record["model_uri"])


@component
def RecordBlessedModel(
    model: InputArtifact[Model],
    model_blessing: InputArtifact[ModelBlessing],
    pushed_model: InputArtifact[PushedModel],
    state_dir: Parameter[str],
) -> None:
    """Records a blessed model as the latest blessed model (after the push, which it waits for, so
    that a run that fails before its push leaves the record as it was)."""
    if not model_blessing.get_int_custom_property("blessed"):
        log.info("model not blessed: the latest blessed model stays as recorded")
        return
    write_record(
        state_dir,
        LATEST_BLESSED_MODEL,
        {"model_uri": model.uri, "blessing_uri": model_blessing.uri, "pushed_model_uri": pushed_model.uri},
    )


@component
def PreviousStatistics(
    statistics: InputArtifact[ExampleStatistics],
    previous_statistics: OutputArtifact[ExampleStatistics],
    state_dir: Parameter[str],
) -> None:
    """The statistics the previous run recorded, copied into `previous_statistics` (a placeholder on
    the first run); then records this run's. A retried task finds its own statistics recorded and
    hands on the ones recorded before them."""
    record = read_record(state_dir, LATEST_STATISTICS) or {}
    previous = record.get("uri")
    if previous == statistics.uri:
        previous = record.get("previous_uri")
        record = {"uri": previous, "split_names": record.get("previous_split_names")}
    if previous:
        io_utils.copy_dir(previous, previous_statistics.uri)
        previous_statistics.split_names = record["split_names"]
        previous_statistics.set_string_custom_property("recorded_uri", previous)
        log.info("previous statistics: %s", previous)
    else:
        _placeholder(previous_statistics, "no statistics recorded yet: no drift check on this run")
    write_record(
        state_dir,
        LATEST_STATISTICS,
        {
            "uri": statistics.uri,
            "split_names": statistics.split_names,
            "previous_uri": previous,
            "previous_split_names": record.get("split_names"),
        },
    )
