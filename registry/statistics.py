"""Which run made a pipeline run's statistics: the StatisticsGen output a run used, traced back to the run
whose execution wrote it (a cached run reuses an earlier run's), for `conveyor schema approve --run`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from registry.lineage import (
    PIPELINE_RUN,
    example_spans,
    pipeline_runs,
    run_executions,
    string_property,
)

STATISTICS_NODE = "StatisticsGen"
# The split SchemaGen would learn a schema from, and the one the model trains on.
SPLIT = "train"


@dataclass(frozen=True)
class RunStatistics:
    """Where a run's statistics are and which run made them."""

    run: str  # the pipeline_run context name of the run whose StatisticsGen wrote them
    used_by: str  # the run asked for: `run`, or a later run that took them from the cache
    uri: str  # the statistics artifact's directory
    path: str  # its FeatureStats.pb for SPLIT
    spans: tuple[int, ...]


def run_statistics(
    store: metadata_store.MetadataStore, pipeline_name: str, run_name: Optional[str] = None
) -> RunStatistics:
    """The statistics of a run (default: the newest run that has them) and the run that made them.

    Args:
      store: the open ML Metadata store.
      pipeline_name: the pipeline whose runs are searched.
      run_name: a run id as `conveyor runs list` shows it (the TFX pipeline_run context name), or None.

    Returns:
      The statistics' location, their spans, the run that computed them and the run asked for.

    Raises:
      LookupError: no such run, or the run has no statistics (it stopped before StatisticsGen); the
        message says which runs there are.
    """
    runs = pipeline_runs(store, pipeline_name)
    if run_name is not None:
        runs = [r for r in runs if r.name == run_name]
        if not runs:
            raise LookupError(f"pipeline '{pipeline_name}' has no run '{run_name}'; see `conveyor runs list`")
    for run in reversed(runs):
        node = run_executions(store, run, pipeline_name).get(STATISTICS_NODE)
        artifact = node.output("statistics") if node is not None and node.state in ("complete", "cached") else None
        if artifact is None:
            continue
        splits = json.loads(string_property(artifact, "split_names"))
        if SPLIT not in splits:
            continue
        spans = sorted({s for examples in node.inputs.get("examples", []) for s in example_spans(store, examples)})
        return RunStatistics(
            run=_maker(store, artifact.id) or run.name,
            used_by=run.name,
            uri=artifact.uri,
            path=os.path.join(artifact.uri, f"Split-{SPLIT}", "FeatureStats.pb"),
            spans=tuple(spans),
        )
    if run_name is not None:
        raise LookupError(
            f"run '{run_name}' of pipeline '{pipeline_name}' has no {SPLIT} statistics (it stopped before "
            "StatisticsGen finished); see `conveyor runs list`"
        )
    raise LookupError(f"no run of pipeline '{pipeline_name}' has {SPLIT} statistics yet; run it with `conveyor run`")


def _maker(store: metadata_store.MetadataStore, artifact_id: int) -> Optional[str]:
    """The run whose execution wrote the artifact: a cached execution records the same output event."""
    run_type = store.get_context_type(PIPELINE_RUN).id
    writers = [
        ev.execution_id
        for ev in store.get_events_by_artifact_ids([artifact_id])
        if ev.type == metadata_store_pb2.Event.OUTPUT
    ]
    for execution in sorted(store.get_executions_by_id(writers), key=lambda e: e.id) if writers else []:
        if execution.last_known_state != metadata_store_pb2.Execution.COMPLETE:
            continue
        for context in store.get_contexts_by_execution(execution.id):
            if context.type_id == run_type:
                return context.name
    return None
