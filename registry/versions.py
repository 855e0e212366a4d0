"""Pushed versions: what each one is and what made it, read from ML Metadata lineage; rollback.

A *version* is a PushedModel artifact with `pushed = 1` (from SafePusher, or from a rollback). Nothing
here keeps its own copy of it; the runs that push versions are read through `registry.runs`.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.pusher.publish import list_versions, publish, write_models_config
from pipeline.metadata import MetadataStore
from registry.lineage import (
    Lineage,
    NodeExecution,
    created_ms,
    custom_property,
    execution_contexts,
    int_property,
    model_origin,
    open_store,
    pipeline_runs,
    run_executions,
)
from registry.runs import card_provenance, provenance
from registry.summary import RunSummary, summarize

ROLLBACK_TYPE = "conveyor.Rollback"


@dataclass
class VersionRecord:
    """One pushed version and what made it."""

    version: int
    pushed_at: str
    destination: str
    run_id: str
    rollback_of: Optional[int] = None
    summary: Optional[RunSummary] = None
    provenance: dict = field(default_factory=dict)
    executions: dict[str, NodeExecution] = field(default_factory=dict)
    # The spans the model was trained on (several with a rolling window), from lineage.
    training_spans: list[int] = field(default_factory=list)


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds") if ms else ""


# TFX's type name, and the title KFP records a TFX type under (its instance schema's title).
PUSHED_MODEL_TYPES = ("PushedModel", "tfx.PushedModel")


def _pushed_artifacts(store: metadata_store.MetadataStore) -> list[metadata_store_pb2.Artifact]:
    found = [a for name in PUSHED_MODEL_TYPES for a in store.get_artifacts_by_type(name)]
    return [a for a in found if custom_property(a, "pushed")]


def _runs_of_artifacts(store, artifact_ids: list[int], runs_by_id) -> dict[int, metadata_store_pb2.Context]:
    """Artifact id -> the run of the execution that wrote it (else of the first that read it), if in a run.

    Two queries and one per hundred executions, whatever the number of artifacts: their events, then the
    contexts of the executions those name.
    """
    events = store.get_events_by_artifact_ids(artifact_ids) if artifact_ids else []
    contexts_of = execution_contexts(store, [ev.execution_id for ev in events]) if events else {}
    # The push that wrote it first: its OUTPUT event of the lowest execution id (a later run whose pusher was
    # cached records an OUTPUT on the same artifact; servers return events in no promised order), then any.
    outputs = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    events = sorted(events, key=lambda ev: (ev.type not in outputs, ev.execution_id))
    found: dict[int, metadata_store_pb2.Context] = {}
    for ev in events:
        if ev.artifact_id in found:
            continue
        run_id = next((c for c in contexts_of.get(ev.execution_id, []) if c in runs_by_id), None)
        if run_id is not None:
            found[ev.artifact_id] = runs_by_id[run_id]
    return found


def cluster_model_dir(config, model: Optional[str] = None) -> Optional[str]:
    """Where Kubeflow runs push a model (the config's kubeflow.serving_root), if the config names one."""
    root = config.kubeflow.serving_root
    return str(Path(root) / (model or config.model_name)) if root else None


def versions(
    store: str | MetadataStore, pipeline_name: str, model_dir: str, cluster_model_dir: Optional[str] = None
) -> list[VersionRecord]:
    """Every version pushed into `model_dir` (including ones retention removed since), newest first,
    each with the summary of the run that pushed it; with `cluster_model_dir`, also those a Kubeflow run
    pushed there (the serving directory as the cluster's pods mount it)."""
    store = open_store(store)
    runs = {c.id: c for c in pipeline_runs(store, pipeline_name)}
    roots = (Path(model_dir), Path(cluster_model_dir or model_dir))
    pushed = [
        a for a in _pushed_artifacts(store) if Path(custom_property(a, "pushed_destination") or "").parent in roots
    ]
    run_of = _runs_of_artifacts(store, [a.id for a in pushed], runs)
    # Only the runs that pushed a version are read (a few queries for all of them), not the whole history.
    lineage = Lineage.of_runs(store, sorted({r.id for r in run_of.values()})) if run_of else None
    records = []
    for artifact in pushed:
        destination = custom_property(artifact, "pushed_destination")
        version = int(custom_property(artifact, "pushed_version"))
        rollback_of = int_property(artifact, "rollback_of")
        run = run_of.get(artifact.id)
        record = VersionRecord(version, _time(created_ms(artifact)), destination, run.name if run else "")
        record.rollback_of = rollback_of
        if run is not None:
            record.executions = run_executions(lineage, run, pipeline_name)
            record.summary = summarize(run.name, record.executions, lineage, pipeline_name)
            record.provenance = {**provenance(run), **card_provenance(record.executions.get("ModelCardGen"))}
            trainer = record.executions.get("Trainer")
            if trainer is not None and trainer.output("model") is not None:
                record.training_spans = model_origin(lineage, trainer.output("model").id, pipeline_name)[1]
        records.append(record)
    return sorted(records, key=lambda r: r.version, reverse=True)


# ---------------------------------------------------------------------------------------------
# Rollback


def rollback(
    store: str | MetadataStore, pipeline_name: str, model_dir: str, to: Optional[int] = None
) -> tuple[int, int]:
    """Makes an earlier version the one TF Serving's default policy serves again: its files are
    published as a new highest version, and ML Metadata records a `conveyor.Rollback` execution
    from the old version's PushedModel to the new one (`rollback_of`).

    Args:
      to: the version to restore; default: the newest version older than the served one.

    Returns:
      (restored version, new version).

    Raises:
      ValueError: no such version, or nothing older to roll back to.
    """
    present = list_versions(model_dir)
    if not present:
        raise ValueError(f"{model_dir} holds no versions")
    served = present[-1]
    if to is None:
        older = [v for v in present if v < served]
        if not older:
            raise ValueError(f"only version {served} is in {model_dir}; nothing to roll back to")
        to = older[-1]
    if to not in present:
        raise ValueError(f"version {to} is not in {model_dir} (versions: {', '.join(map(str, present))})")
    if to == served:
        raise ValueError(f"version {to} is already the served version")
    where = store if isinstance(store, str) else store.shown
    store = open_store(store, readonly=False)
    source = next(
        (
            a
            for a in _pushed_artifacts(store)
            if custom_property(a, "pushed_version") == str(to)
            and Path(custom_property(a, "pushed_destination")).parent == Path(model_dir)
        ),
        None,
    )
    if source is None:
        raise ValueError(f"version {to} has no push recorded in {where}; only blessed pushed versions can be restored")
    marker = {"rollback_of": to, "by": getpass.getuser(), "at": dt.datetime.now(dt.timezone.utc).isoformat()}
    with tempfile.TemporaryDirectory() as scratch:
        # The marker travels inside the staging copy, so it is there the moment the version appears.
        marker_path = Path(scratch) / "rollback.json"
        marker_path.write_text(json.dumps(marker), encoding="utf-8")
        new_version = publish(Path(model_dir) / str(to), model_dir, extra_files={"rollback.json": marker_path})
    destination = str(Path(model_dir) / str(new_version))
    _record_rollback(store, pipeline_name, source, to, new_version, destination)
    write_models_config(model_dir, stable=new_version, canary=new_version)
    return to, new_version


def _type_id(store, kind: str, name: str) -> int:
    if kind == "execution":
        return store.put_execution_type(metadata_store_pb2.ExecutionType(name=name))
    return store.get_artifact_type(name).id


def _record_rollback(store, pipeline_name, source, to, new_version, destination) -> None:
    artifact = metadata_store_pb2.Artifact(type_id=_type_id(store, "artifact", "PushedModel"), uri=destination)
    artifact.state = metadata_store_pb2.Artifact.LIVE
    artifact.custom_properties["pushed"].int_value = 1
    artifact.custom_properties["pushed_version"].string_value = str(new_version)
    artifact.custom_properties["pushed_destination"].string_value = destination
    artifact.custom_properties["rollback_of"].int_value = to
    execution = metadata_store_pb2.Execution(type_id=_type_id(store, "execution", ROLLBACK_TYPE))
    execution.last_known_state = metadata_store_pb2.Execution.COMPLETE
    execution.custom_properties["user"].string_value = getpass.getuser()
    execution.custom_properties["rollback_of"].int_value = to
    inp = metadata_store_pb2.Event(type=metadata_store_pb2.Event.INPUT)
    inp.path.steps.add().key = "pushed_model"
    out = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
    out.path.steps.add().key = "pushed_model"
    pipeline_context = next((c for c in store.get_contexts_by_type("pipeline") if c.name == pipeline_name), None)
    contexts = [pipeline_context] if pipeline_context is not None else []
    store.put_execution(execution, [(source, inp), (artifact, out)], contexts)


def served_version(model_dir: str) -> Optional[int]:
    present = list_versions(model_dir)
    return present[-1] if present else None


# The metrics `models list` shows, whichever the task computed (binary, multiclass, regression).
HEADLINE_METRICS = ("auc", "binary_accuracy", "sparse_categorical_accuracy", "root_mean_squared_error")


def headline(summary: Optional[RunSummary], names=HEADLINE_METRICS) -> str:
    if summary is None:
        return ""
    parts = []
    for m in summary.metrics:
        if m.name in names and m.candidate is not None:
            change = f" ({m.candidate - m.baseline:+.4f})" if m.baseline is not None else ""
            parts.append(f"{m.name} {m.candidate:.4f}{change}")
    return ", ".join(parts)
