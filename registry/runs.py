"""Pipeline runs: every run with its executions and summary, its status, and who ran it from which code.

A *run* is a `pipeline_run` context in ML Metadata. Nothing here keeps its own copy of it.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ml_metadata.proto import metadata_store_pb2

from pipeline.metadata import MetadataStore
from registry.lineage import (
    Lineage,
    NodeExecution,
    custom_property,
    node_executions,
    open_store,
    pipeline_runs,
    run_executions,
)
from registry.summary import RunSummary, outcome_summary, summarize

PROVENANCE_KEYS = ("user", "git_commit", "git_dirty", "config")
ERROR_KEY = "conveyor_error"


def provenance(context: metadata_store_pb2.Context) -> dict:
    """Who ran a run, from which code, as the local runner records it on the run's context."""
    return {k: custom_property(context, k) for k in PROVENANCE_KEYS if custom_property(context, k) is not None}


# What the pipeline's ModelCardGen records of the run that made a version (registry.card_gen).
CARD_PROVENANCE_KEYS = (*PROVENANCE_KEYS, "started_by", "pipeline_run")


def card_provenance(card_gen: Optional[NodeExecution]) -> dict:
    """The provenance ModelCardGen recorded on its `model_card` output (empty without one); it was made
    inside the pipeline, so a cluster run has it too."""
    card = card_gen.output("model_card") if card_gen is not None else None
    if card is None:
        return {}
    return {k: custom_property(card, k) for k in CARD_PROVENANCE_KEYS if custom_property(card, k)}


def run_provenance(context: metadata_store_pb2.Context, executions: dict[str, NodeExecution]) -> dict:
    """Who ran a run and from which code: the local runner's record on the run's context, else (a run on
    Kubeflow, whose context the pipeline cannot write) what its ModelCardGen recorded."""
    return {**card_provenance(executions.get("ModelCardGen")), **provenance(context)}


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


# The image's build sets these (kubeflow/Dockerfile): a pod has the code but not its git checkout.
IMAGE_COMMIT_ENV = "CONVEYOR_GIT_COMMIT"
IMAGE_DIRTY_ENV = "CONVEYOR_GIT_DIRTY"


def provenance_values(config_source: str) -> dict[str, str]:
    """Who runs this process and which code: the user, the git commit (the image's, when it was built
    with one), whether the checkout had uncommitted changes, and the config file."""
    commit = os.environ.get(IMAGE_COMMIT_ENV, "")
    if commit:
        dirty = os.environ.get(IMAGE_DIRTY_ENV) or "unknown"
    else:
        commit = _git("rev-parse", "HEAD")
        dirty = ("yes" if _git("status", "--porcelain") else "no") if commit else "unknown"
    return {
        "user": getpass.getuser(),
        "git_commit": commit or "unknown (not a git checkout)",
        "git_dirty": dirty,
        "config": config_source or "",
    }


def record_provenance(
    store: str | MetadataStore, pipeline_name: str, config_source: str, error: Optional[tuple[str, str]] = None
) -> None:
    """Writes who ran the latest run, from which code, onto its run context; and a failed
    component's error onto its execution (TFX records only the FAILED state)."""
    try:
        store = open_store(store, readonly=False)
    except FileNotFoundError:
        return
    runs = pipeline_runs(store, pipeline_name)
    if not runs:
        return
    run = runs[-1]
    for key, value in provenance_values(config_source).items():
        run.custom_properties[key].string_value = value
    store.put_contexts([run])
    if error is not None:
        node_id, message = error
        node = run_executions(store, run, pipeline_name).get(node_id)
        if node is not None:
            node.execution.custom_properties[ERROR_KEY].string_value = message[:4000]
            store.put_executions([node.execution])


def runs(
    store: str | MetadataStore, pipeline_name: str
) -> list[tuple[metadata_store_pb2.Context, dict[str, NodeExecution], RunSummary]]:
    """Every run, newest first, with its executions and summary."""
    store = open_store(store)
    found = pipeline_runs(store, pipeline_name)
    lineage = Lineage(store) if found else None  # ML Metadata read once, not once per run
    out = []
    for run in reversed(found):
        executions = run_executions(lineage, run, pipeline_name)
        out.append((run, executions, summarize(run.name, executions, lineage, pipeline_name)))
    return out


# Runs on one page of `conveyor ui`'s /runs.
PER_PAGE = 50


@dataclass
class RunsPage:
    """One page of runs, newest first: `rows` as runs() gives them, of `total` runs (of the outcome asked)."""

    rows: list[tuple[metadata_store_pb2.Context, dict[str, NodeExecution], RunSummary]]
    page: int
    pages: int
    total: int


def runs_page(
    store: str | MetadataStore, pipeline_name: str, kind: Optional[str] = None, page: int = 1, per_page: int = PER_PAGE
) -> RunsPage:
    """The page-th `per_page` runs, newest first, of those whose outcome is `kind` (all when None).

    Reads the executions, artifacts and files of the runs shown only; with a kind, every run's outcome is
    found first from ML Metadata alone (its failed executions, its Evaluator and its pusher).
    """
    store = open_store(store)
    found = list(reversed(pipeline_runs(store, pipeline_name)))
    if kind is not None:
        kinds = _outcome_kinds(store, found, pipeline_name)
        found = [run for run in found if kinds[run.id] == kind]
    pages = max(1, -(-len(found) // per_page))
    page = min(max(page, 1), pages)
    chosen = found[(page - 1) * per_page : page * per_page]
    lineage = Lineage.of_runs(store, [run.id for run in chosen]) if chosen else None
    rows = []
    for run in chosen:
        executions = run_executions(lineage, run, pipeline_name)
        rows.append((run, executions, summarize(run.name, executions, lineage, pipeline_name)))
    return RunsPage(rows, page, pages, len(found))


def _outcome_kinds(store, found: list[metadata_store_pb2.Context], pipeline_name: str) -> dict[int, str]:
    """Run id -> outcome().kind, from the executions the outcome depends on (no file is read)."""
    executions = node_executions(store, pipeline_name, ("%Pusher", "Evaluator"), extra="last_known_state = FAILED")
    lineage = Lineage(store, executions, {run.id for run in found})
    kinds = {}
    for run in found:
        executions = run_executions(lineage, run, pipeline_name)
        kinds[run.id] = outcome(executions, outcome_summary(run.name, executions)).kind
    return kinds


def runs_of_nodes(
    store: str | MetadataStore, pipeline_name: str, nodes: tuple[str, ...]
) -> list[tuple[metadata_store_pb2.Context, dict[str, NodeExecution], RunSummary]]:
    """Every run newest first as runs() gives it, but holding only these components' executions (and the
    summary made of them): a page about one stage (the data page's statistics) reads that stage alone."""
    store = open_store(store)
    found = pipeline_runs(store, pipeline_name)
    if not found:
        return []
    lineage = Lineage(store, node_executions(store, pipeline_name, nodes), {run.id for run in found})
    out = []
    for run in reversed(found):
        executions = {k: v for k, v in run_executions(lineage, run, pipeline_name).items() if k in nodes}
        out.append((run, executions, summarize(run.name, executions, lineage, pipeline_name)))
    return out


def one_run(
    store: str | MetadataStore, pipeline_name: str, name: str
) -> Optional[tuple[metadata_store_pb2.Context, dict[str, NodeExecution], RunSummary]]:
    """The run called `name` as runs() gives it, or None: reads that run's executions and files only."""
    store = open_store(store)
    run = next((r for r in pipeline_runs(store, pipeline_name) if r.name == name), None)
    if run is None:
        return None
    lineage = Lineage.of_runs(store, [run.id])
    executions = run_executions(lineage, run, pipeline_name)
    return run, executions, summarize(run.name, executions, lineage, pipeline_name)


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


# What a run can come to, in the order a person filters by them.
OUTCOMES = ("pushed", "not blessed", "data gate", "failed", "cached", "not pushed", "incomplete")


@dataclass(frozen=True)
class Outcome:
    """What a run came to: its kind (one of OUTCOMES), its status and failed execution as run_status
    gives them, and the words `conveyor runs list` prints."""

    kind: str
    status: str
    failed: Optional[NodeExecution]
    text: str


def outcome(executions: dict[str, NodeExecution], summary: RunSummary) -> Outcome:
    """The one classification of a run's outcome, shared by `conveyor runs list` and `conveyor ui`.

    Args:
      executions: the run's executions, as run_executions returns them.
      summary: the run's summary.

    Returns:
      The outcome; `text` is the CLI's wording (a surface may word the cached case its own way).
    """
    status, failed = run_status(executions)
    if failed is not None:
        kind = "data gate" if failed.node_id == "DataGate" else "failed"
        return Outcome(kind, status, failed, f"failed at {failed.node_id}")
    if summary.pushed_to:
        return Outcome("pushed", status, None, f"pushed version {Path(summary.pushed_to).name}")
    if summary.blessed is False:
        return Outcome("not blessed", status, None, "not blessed")
    text = summary.not_pushed_reason or status
    # The data gate runs every time; a run is "cached" when its push (so its model) came from the cache.
    pusher = next((n for k, n in executions.items() if k.endswith("Pusher")), None)
    if status == "succeeded" and pusher is not None and pusher.state == "cached":
        return Outcome("cached", status, None, text)
    return Outcome("not pushed" if status == "succeeded" else "incomplete", status, None, text)
