"""DataGate: stops the run when the data violates the curated schema or drifts from the previous span.

ExampleValidator only records anomalies; this component fails when there are any, and Transform
depends on it, so Transform, Trainer, Evaluator and the pusher never run on bad data. It is a plain
TFX component, so it stops a Kubeflow run exactly as it stops a local one.
"""

import json
import os

import tensorflow_data_validation as tfdv
from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import ExampleAnomalies, ExampleStatistics, Schema

from components.data_gate.anomalies import DataGateError, count_non_finite, drift, message, read_artifact, skew
from components.request_logs import directory_statistics

TRAINING_SPLIT = "train"
SERVING_SPLIT = "serving"


def _split_stats(artifact: ExampleStatistics, split: str):
    path = os.path.join(artifact.uri, f"Split-{split}", "FeatureStats.pb")
    return tfdv.load_stats_binary(path) if os.path.exists(path) else None


@component
def DataGate(
    anomalies: InputArtifact[ExampleAnomalies],
    statistics: InputArtifact[ExampleStatistics],
    schema: InputArtifact[Schema],
    previous_statistics: InputArtifact[ExampleStatistics] = None,
    serving_statistics: InputArtifact[ExampleStatistics] = None,
    serving_request_logs: Parameter[str] = "",
) -> None:
    """Raises DataGateError listing every anomaly: ExampleValidator's, drift of the training split
    against the previous run's statistics under the schema's drift comparators, and, when serving
    data is given (CSV statistics, or `conveyor serve`'s request-log directory read here, so every run
    sees the newest logs), training/serving skew under its skew comparators."""
    found = count_non_finite(read_artifact(anomalies.uri, anomalies.split_names), lambda s: _split_stats(statistics, s))
    curated = tfdv.load_schema_text(os.path.join(schema.uri, "schema.pbtxt"))
    served = _split_stats(serving_statistics, SERVING_SPLIT) if serving_statistics is not None else None
    if serving_request_logs:
        served, read = directory_statistics(serving_request_logs)
        print(json.dumps({"data_gate": "serving request logs", "read": read}))
    if served is not None:
        current = _split_stats(statistics, TRAINING_SPLIT)
        if current is not None:
            found += count_non_finite(skew(current, served, curated, f"{TRAINING_SPLIT} vs serving"), lambda _: served)
    if previous_statistics is not None and previous_statistics.uri != statistics.uri:
        current, previous = _split_stats(statistics, TRAINING_SPLIT), _split_stats(previous_statistics, TRAINING_SPLIT)
        if current is not None and previous is not None:
            found += drift(current, previous, curated, f"{TRAINING_SPLIT} vs previous run")
    if found:
        raise DataGateError(message(found, "Data gate"))
    print(json.dumps({"data_gate": "passed"}))
