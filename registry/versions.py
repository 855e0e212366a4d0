"""The model registry view: pushed versions and runs, read from ML Metadata lineage and the artifacts.

A *version* is a PushedModel artifact with `pushed = 1` (from SafePusher, or from a rollback); a
*run* is a `pipeline_run` context. Nothing here keeps its own copy of either.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.pusher.publish import list_versions, publish, write_models_config
from pipeline.lineage import (
    NodeExecution,
    custom_property,
    int_property,
    model_origin,
    open_store,
    pipeline_runs,
    run_executions,
)
from pipeline.summary import RunSummary, summarize

ROLLBACK_TYPE = "conveyor.Rollback"
PROVENANCE_KEYS = ("user", "git_commit", "git_dirty", "config")
ERROR_KEY = "conveyor_error"


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


def provenance(context: metadata_store_pb2.Context) -> dict:
    return {k: custom_property(context, k) for k in PROVENANCE_KEYS if custom_property(context, k) is not None}


# The code a run executes is this project's, wherever `conveyor` was started from.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        result = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=False, timeout=10, cwd=PROJECT_ROOT
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def record_provenance(
    metadata_path: str, pipeline_name: str, config_source: str, error: Optional[tuple[str, str]] = None
) -> None:
    """Writes who ran the latest run, from which code, onto its run context; and a failed
    component's error onto its execution (TFX records only the FAILED state)."""
    try:
        store = open_store(metadata_path, readonly=False)
    except FileNotFoundError:
        return
    runs = pipeline_runs(store, pipeline_name)
    if not runs:
        return
    run = runs[-1]
    commit = _git("rev-parse", "HEAD")
    values = {
        "user": getpass.getuser(),
        "git_commit": commit or "unknown (not a git checkout)",
        "git_dirty": ("yes" if _git("status", "--porcelain") else "no") if commit else "unknown",
        "config": config_source or "",
    }
    for key, value in values.items():
        run.custom_properties[key].string_value = value
    store.put_contexts([run])
    if error is not None:
        node_id, message = error
        node = run_executions(store, run, pipeline_name).get(node_id)
        if node is not None:
            node.execution.custom_properties[ERROR_KEY].string_value = message[:4000]
            store.put_executions([node.execution])


def _pushed_artifacts(store: metadata_store.MetadataStore) -> list[metadata_store_pb2.Artifact]:
    return [a for a in store.get_artifacts_by_type("PushedModel") if custom_property(a, "pushed")]


def _run_of_artifact(store, artifact_id: int, runs_by_id) -> Optional[metadata_store_pb2.Context]:
    for event in store.get_events_by_artifact_ids([artifact_id]):
        for context in store.get_contexts_by_execution(event.execution_id):
            if context.id in runs_by_id:
                return context
    return None


def versions(metadata_path: str, pipeline_name: str, model_dir: str) -> list[VersionRecord]:
    """Every version pushed into `model_dir` (including ones retention removed since), newest first,
    each with the summary of the run that pushed it."""
    store = open_store(metadata_path)
    runs = {c.id: c for c in pipeline_runs(store, pipeline_name)}
    records = []
    for artifact in _pushed_artifacts(store):
        destination = custom_property(artifact, "pushed_destination") or ""
        if Path(destination).parent != Path(model_dir):
            continue
        version = int(custom_property(artifact, "pushed_version"))
        rollback_of = int_property(artifact, "rollback_of")
        run = _run_of_artifact(store, artifact.id, runs)
        record = VersionRecord(version, _time(artifact.create_time_since_epoch), destination, run.name if run else "")
        record.rollback_of = rollback_of
        if run is not None:
            record.executions = run_executions(store, run, pipeline_name)
            record.summary = summarize(run.name, record.executions, store, pipeline_name)
            record.provenance = provenance(run)
            trainer = record.executions.get("Trainer")
            if trainer is not None and trainer.output("model") is not None:
                record.training_spans = model_origin(store, trainer.output("model").id, pipeline_name)[1]
        records.append(record)
    return sorted(records, key=lambda r: r.version, reverse=True)


def runs(
    metadata_path: str, pipeline_name: str
) -> list[tuple[metadata_store_pb2.Context, dict[str, NodeExecution], RunSummary]]:
    """Every run, newest first, with its executions and summary."""
    store = open_store(metadata_path)
    out = []
    for run in reversed(pipeline_runs(store, pipeline_name)):
        executions = run_executions(store, run, pipeline_name)
        out.append((run, executions, summarize(run.name, executions, store, pipeline_name)))
    return out


def run_status(executions: dict[str, NodeExecution]) -> tuple[str, Optional[NodeExecution]]:
    """("succeeded" | "failed" | "incomplete", the failed execution)."""
    # A resolver that finds nothing (no statistics or blessed model yet) is recorded as failed by
    # TFX; that is the normal first run, not a failure of the run.
    failed = next((e for k, e in executions.items() if e.state == "failed" and not k.endswith("_resolver")), None)
    if failed is not None:
        return "failed", failed
    pusher = next((e for k, e in executions.items() if k.endswith("Pusher")), None)
    if pusher is None or pusher.state not in ("complete", "cached"):
        return "incomplete", None
    return "succeeded", None


# ---------------------------------------------------------------------------------------------
# Rollback


def rollback(metadata_path: str, pipeline_name: str, model_dir: str, to: Optional[int] = None) -> tuple[int, int]:
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
    store = open_store(metadata_path, readonly=False)
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
        raise ValueError(
            f"version {to} has no push recorded in {metadata_path}; only blessed pushed versions can be restored"
        )
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
