"""Reads runs, executions and artifacts back from ML Metadata: the one place that defines what a run is."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline.metadata import MetadataStore

PIPELINE_RUN = "pipeline_run"
# Kubeflow Pipelines' own layout (backend/src/v2/metadata/client.go): a run is a `system.PipelineRun`
# context whose parent is the `system.Pipeline` context named after the pipeline, and each task's
# execution names its task in `task_name` (the root DAG's is empty). TFX's entrypoint writes nothing there.
KFP_PIPELINE = "system.Pipeline"
KFP_PIPELINE_RUN = "system.PipelineRun"
KFP_TASK_NAME = "task_name"
# components.cluster_state.PLACEHOLDER, without importing TFX into every registry read (a test checks
# that they agree): what a cluster run hands on when nothing was recorded yet.
PLACEHOLDER = "conveyor_placeholder"

_STATES = {
    metadata_store_pb2.Execution.COMPLETE: "complete",
    metadata_store_pb2.Execution.CACHED: "cached",
    metadata_store_pb2.Execution.FAILED: "failed",
    metadata_store_pb2.Execution.RUNNING: "running",
    metadata_store_pb2.Execution.NEW: "new",
    metadata_store_pb2.Execution.CANCELED: "canceled",
}


@dataclass
class NodeExecution:
    """One component's execution in a run, with its output artifacts by output key."""

    node_id: str
    state: str
    execution: metadata_store_pb2.Execution
    outputs: dict[str, list[metadata_store_pb2.Artifact]] = field(default_factory=dict)
    inputs: dict[str, list[metadata_store_pb2.Artifact]] = field(default_factory=dict)

    def output(self, key: str) -> Optional[metadata_store_pb2.Artifact]:
        artifacts = self.outputs.get(key) or []
        return artifacts[0] if artifacts else None


def open_store(store: str | MetadataStore, readonly: bool = True) -> metadata_store.MetadataStore:
    """ML Metadata: a SQLite file (a path, or a sqlite store), read-only unless asked, or a shared server.

    Raises:
      FileNotFoundError: there is no SQLite metadata database yet (nothing has run).
      MetadataUnavailable: the server cannot be reached, refuses the credentials, or lacks the database;
        the message names the store's URL without its password.
    """
    if isinstance(store, str):
        store = MetadataStore.sqlite(store)
    if not store.shared:
        if not Path(store.path).is_file():
            raise FileNotFoundError(f"no ML Metadata at {store.path}: nothing has run with this output directory yet")
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = store.path
        config.sqlite.connection_mode = (
            metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
            if readonly
            else metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
        )
        return metadata_store.MetadataStore(config)
    return connect(store)


def connect(store: MetadataStore) -> metadata_store.MetadataStore:
    """Opens a store (creating ML Metadata's tables in a new database or SQLite file).

    A server is first reached with its own client library, whose errors say what is wrong
    (ml_metadata's own say only "metadata source error" and log the reason to stderr).

    Raises:
      MetadataUnavailable: naming the URL without its password, the server's reason, and what to do.
    """
    from ml_metadata import errors

    if store.shared:  # the driver's errors say why; ml_metadata's say only "metadata source error"
        store.driver_connection().close()
    try:
        with quiet_stderr(store.shared):
            return metadata_store.MetadataStore(store.connection_config())
    except errors.StatusError as err:
        raise store.unavailable(str(err)) from None


_QUIET_LOCK = threading.Lock()
_quiet = {"depth": 0, "saved": -1}


@contextlib.contextmanager
def quiet_stderr(quiet: bool) -> Iterator[None]:
    """ml_metadata's server clients log every connection on fd 2 (glog); a command's output stays its own.

    fd 2 is the process's, so threads share one swap: the first in points it at /dev/null, the last out
    puts it back (two threads each saving and restoring it could leave it silenced for good).
    """
    if not quiet:
        yield
        return
    with _QUIET_LOCK:
        if _quiet["depth"] == 0:
            sys.stderr.flush()
            _quiet["saved"] = os.dup(2)
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                os.dup2(_quiet["saved"], 2)
                os.close(_quiet["saved"])


# ML Metadata sets a node's times itself; a copied node keeps its original ones in these properties.
CREATED_MS, UPDATED_MS = "conveyor_create_time_ms", "conveyor_update_time_ms"


def created_ms(node) -> int:
    """When an artifact, execution or context was recorded, in ms (its source store's time for a copy)."""
    kept = node.custom_properties.get(CREATED_MS)
    return int(kept.string_value) if kept is not None else node.create_time_since_epoch


def updated_ms(node) -> int:
    kept = node.custom_properties.get(UPDATED_MS)
    return int(kept.string_value) if kept is not None else node.last_update_time_since_epoch


def pipeline_runs(store: metadata_store.MetadataStore, pipeline_name: str) -> list[metadata_store_pb2.Context]:
    """This pipeline's runs (those without a parent context, or with one named after it), oldest first.

    A few queries whatever the number of runs: the runs, those with any parent, the children of the
    contexts named after the pipeline.
    """
    runs = _kfp_runs(store, pipeline_name)
    candidates = store.get_contexts_by_type(PIPELINE_RUN)
    if candidates:
        has_parent = metadata_store.ListOptions(filter_query="parent_contexts_a.id > 0")
        with_parent = {c.id for c in store.get_contexts(list_options=has_parent)}
        named = [c for c in store.get_contexts() if c.name == pipeline_name]
        children = {child.id for c in named for child in store.get_children_contexts_by_context(c.id)}
        runs += [c for c in candidates if c.id not in with_parent or c.id in children]
    return sorted(runs, key=lambda c: (created_ms(c), c.id))


def _kfp_runs(store: metadata_store.MetadataStore, pipeline_name: str) -> list[metadata_store_pb2.Context]:
    """The pipeline's runs as Kubeflow Pipelines records them (none in a store KFP never wrote)."""
    pipeline = store.get_context_by_type_and_name(KFP_PIPELINE, pipeline_name)
    if pipeline is None:
        return []
    run_type = store.get_context_type(KFP_PIPELINE_RUN).id
    return [c for c in store.get_children_contexts_by_context(pipeline.id) if c.type_id == run_type]


def node_executions(
    store: metadata_store.MetadataStore, pipeline_name: str, nodes: tuple[str, ...], extra: str = ""
) -> list[metadata_store_pb2.Execution]:
    """The executions of these components in any run (a superset: callers pick their nodes by id), in a
    query or two: by TFX's node context `<pipeline>.<node>` (a node may end in `%`, LIKE's wildcard), and
    in a store Kubeflow wrote by KFP's task name; `extra` (a filter clause) lets more in. Every execution
    when the name cannot be quoted in a filter query."""
    if "'" in pipeline_name or "\\" in pipeline_name:
        return store.get_executions()
    clauses = [f"contexts_a.name {'LIKE' if '%' in n else '='} '{pipeline_name}.{n}'" for n in nodes]
    query = " OR ".join(([extra] if extra else []) + clauses)
    found = {e.id: e for e in store.get_executions(list_options=metadata_store.ListOptions(filter_query=query))}
    if store.get_context_by_type_and_name(KFP_PIPELINE, pipeline_name) is not None:
        # A custom-property clause joined with the others would drop executions lacking it: asked apart.
        tasks = " OR ".join(
            f"custom_properties.{KFP_TASK_NAME}.string_value {'LIKE' if '%' in n else '='} '{n}'" for n in nodes
        )
        options = metadata_store.ListOptions(filter_query=tasks)
        found.update((e.id, e) for e in store.get_executions(list_options=options))
    return [found[i] for i in sorted(found)]


def _node_id(store, execution_id: int, pipeline_name: str, execution=None) -> str:
    """The component an execution ran: TFX's node context `<pipeline>.<node>`, else KFP's task name
    ("" for KFP's DAG executions), else "?"."""
    prefix = f"{pipeline_name}."
    for context in store.get_contexts_by_execution(execution_id):
        if context.name.startswith(prefix):
            return context.name[len(prefix) :]
    if execution is None:
        execution = (
            store.execution(execution_id)
            if isinstance(store, Lineage)
            else next(iter(store.get_executions_by_id([execution_id])), None)
        )
    if execution is not None and KFP_TASK_NAME in execution.custom_properties:
        return execution.custom_properties[KFP_TASK_NAME].string_value
    return "?"


# get_lineage_subgraph starts from at most this many nodes per call.
_SUBGRAPH_LIMIT = 100


def execution_contexts(store: metadata_store.MetadataStore, execution_ids: list[int]) -> dict[int, list[int]]:
    """Execution id -> the ids of its contexts, ascending (as get_contexts_by_execution orders them);
    one query per hundred executions instead of one per execution."""
    ids = sorted(set(execution_ids))
    out: dict[int, list[int]] = {i: [] for i in ids}
    for start in range(0, len(ids), _SUBGRAPH_LIMIT):
        chosen = ", ".join(str(i) for i in ids[start : start + _SUBGRAPH_LIMIT])
        options = metadata_store_pb2.LineageSubgraphQueryOptions(max_num_hops=0)
        # By id, not a range of ids: a range over sparse ids (a partial Lineage) holds more than the limit.
        options.starting_executions.filter_query = f"id IN ({chosen})"
        for association in store.get_lineage_subgraph(options, ["associations"]).associations:
            if association.execution_id in out:
                out[association.execution_id].append(association.context_id)
    return {i: sorted(set(c)) for i, c in out.items()}


class Lineage:
    """A read-only view of ML Metadata's executions, events, artifacts and contexts, read in a few
    queries and grouped in memory, for reading many runs at once (a page listing 300 runs).

    It answers the store's read calls that this module's functions make (so `example_spans`,
    `model_origin` and `run_executions` take it in place of the store) with what the store would
    return, in the same order.
    """

    def __init__(
        self,
        store: metadata_store.MetadataStore,
        executions: Optional[list] = None,
        contexts: Optional[set[int]] = None,
    ):
        """Reads every execution (or those given) with their events, artifacts and contexts.

        With `executions`, the view is partial: `contexts` are the contexts whose executions it answers
        from memory (those given, in the store's order); everything else it is asked about that lies
        outside what it read (another context's executions, an artifact's events, an execution not
        given) is asked of the store, once.
        """
        self.store = store
        self.complete = executions is None
        self._full = set(contexts or ())
        self._asked: dict[tuple, list] = {}
        executions = store.get_executions() if executions is None else executions
        self._executions = {e.id: e for e in executions}
        ids = sorted(self._executions)
        self._contexts_of = execution_contexts(store, ids) if ids else {}
        context_ids = sorted({c for cs in self._contexts_of.values() for c in cs})
        self._contexts = {c.id: c for c in store.get_contexts_by_id(context_ids)} if context_ids else {}
        self._by_context: dict[int, list[metadata_store_pb2.Execution]] = {}
        for execution_id in reversed(ids):  # get_executions_by_context returns the newest first
            for context_id in self._contexts_of[execution_id]:
                self._by_context.setdefault(context_id, []).append(self._executions[execution_id])
        self._events = list(store.get_events_by_execution_ids(ids)) if ids else []
        self._events_of: dict[int, list[metadata_store_pb2.Event]] = {}
        self._events_on: dict[int, list[metadata_store_pb2.Event]] = {}
        for ev in self._events:
            self._events_of.setdefault(ev.execution_id, []).append(ev)
            self._events_on.setdefault(ev.artifact_id, []).append(ev)
        artifact_ids = sorted(self._events_on)
        self._artifacts = {a.id: a for a in store.get_artifacts_by_id(artifact_ids)} if artifact_ids else {}

    @classmethod
    def of_runs(cls, store: metadata_store.MetadataStore, run_ids: list[int]) -> Lineage:
        """A partial view holding every execution of these runs (a page of them): a few queries."""
        executions = []
        ids = sorted(set(run_ids))
        for start in range(0, len(ids), _SUBGRAPH_LIMIT):
            chosen = ", ".join(str(i) for i in ids[start : start + _SUBGRAPH_LIMIT])
            options = metadata_store.ListOptions(filter_query=f"contexts_a.id IN ({chosen})")
            executions.extend(store.get_executions(list_options=options))
        unique = list({e.id: e for e in executions}.values())
        return cls(store, unique, set(ids))

    def _ask(self, name: str, key) -> list:
        """The store's answer to get_<name>(key), asked once."""
        if (name, key) not in self._asked:
            self._asked[(name, key)] = list(getattr(self.store, name)(list(key) if isinstance(key, tuple) else key))
        return list(self._asked[(name, key)])

    def execution(self, execution_id: int) -> Optional[metadata_store_pb2.Execution]:
        """One execution, from memory when it was read, else from the store."""
        if execution_id in self._executions:
            return self._executions[execution_id]
        return next(iter(self._ask("get_executions_by_id", (execution_id,))), None)

    def get_executions_by_context(self, context_id: int) -> list[metadata_store_pb2.Execution]:
        if not self.complete and context_id not in self._full:
            return self._ask("get_executions_by_context", context_id)
        return list(self._by_context.get(context_id, []))

    def get_contexts_by_execution(self, execution_id: int) -> list[metadata_store_pb2.Context]:
        if not self.complete and execution_id not in self._executions:
            return self._ask("get_contexts_by_execution", execution_id)
        return [self._contexts[c] for c in self._contexts_of.get(execution_id, []) if c in self._contexts]

    def get_events_by_execution_ids(self, execution_ids) -> list[metadata_store_pb2.Event]:
        wanted = set(execution_ids)
        unread = tuple(sorted(i for i in wanted if i not in self._executions)) if not self.complete else ()
        if unread:
            read = [ev for i in sorted(wanted - set(unread)) for ev in self._events_of.get(i, [])]
            return self._ask("get_events_by_execution_ids", unread) + read
        return [ev for i in sorted(wanted) for ev in self._events_of.get(i, [])]

    def get_events_by_artifact_ids(self, artifact_ids) -> list[metadata_store_pb2.Event]:
        wanted = set(artifact_ids)
        if not self.complete:  # other executions may have used these artifacts
            return self._ask("get_events_by_artifact_ids", tuple(sorted(wanted)))
        if len(wanted) == 1:
            return list(self._events_on.get(next(iter(wanted)), []))
        return [ev for ev in self._events if ev.artifact_id in wanted]

    def get_artifacts_by_id(self, artifact_ids) -> list[metadata_store_pb2.Artifact]:
        missing = [i for i in set(artifact_ids) if i not in self._artifacts]
        if missing:  # an artifact no execution read touched: ask the store
            self._artifacts.update((a.id, a) for a in self.store.get_artifacts_by_id(missing))
        return [self._artifacts[i] for i in sorted(set(artifact_ids)) if i in self._artifacts]


def run_executions(
    store: metadata_store.MetadataStore | Lineage, run: metadata_store_pb2.Context, pipeline_name: str
) -> dict[str, NodeExecution]:
    """Every execution of one run keyed by node id, with inputs and outputs resolved.

    With a store, a few queries for this run; with a Lineage, none.
    """
    if not isinstance(store, Lineage):
        store = Lineage(store, store.get_executions_by_context(run.id), {run.id})
    executions = store.get_executions_by_context(run.id)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    artifact_ids = sorted({ev.artifact_id for ev in events})
    artifacts = {a.id: a for a in store.get_artifacts_by_id(artifact_ids)} if artifact_ids else {}
    by_execution: dict[int, list[metadata_store_pb2.Event]] = {}
    for ev in events:
        by_execution.setdefault(ev.execution_id, []).append(ev)
    result: dict[str, NodeExecution] = {}
    for execution in sorted(executions, key=lambda e: e.id):
        node_id = _node_id(store, execution.id, pipeline_name, execution)
        if not node_id:  # KFP's DAG execution: the run itself, not a component
            continue
        node = NodeExecution(node_id, _STATES.get(execution.last_known_state, "unknown"), execution)
        for ev in by_execution.get(execution.id, []):
            if ev.artifact_id not in artifacts:
                continue
            key = ev.path.steps[0].key if ev.path.steps else ""
            if ev.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT):
                node.outputs.setdefault(key, []).append(artifacts[ev.artifact_id])
            elif ev.type in (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT):
                if custom_property(artifacts[ev.artifact_id], PLACEHOLDER):
                    continue  # KFP records it as an input; the task never saw it (kubeflow/entrypoint.py)
                node.inputs.setdefault(key, []).append(artifacts[ev.artifact_id])
        result[node_id] = node
    return result


def custom_property(artifact: metadata_store_pb2.Artifact, name: str):
    """A custom property's value (int, double or string), or None."""
    if name not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[name]
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def string_property(artifact: metadata_store_pb2.Artifact, name: str) -> str:
    """A string TFX declares on the artifact's type (`split_names`), wherever the store keeps it: a
    property in TFX's own layout, a custom property in KFP's (which records no type properties)."""
    value = custom_property(artifact, name)
    return value if isinstance(value, str) and value else artifact.properties[name].string_value


def int_property(artifact: metadata_store_pb2.Artifact, name: str) -> Optional[int]:
    if name in artifact.properties:
        return artifact.properties[name].int_value
    value = custom_property(artifact, name)
    return int(value) if value is not None else None


def example_spans(
    store: metadata_store.MetadataStore, artifact: metadata_store_pb2.Artifact, depth: int = 3
) -> list[int]:
    """The data spans behind an Examples artifact, oldest first.

    ExampleGen records the span on its output; Transform's transformed examples carry none, so
    for those the spans come from the `examples` the producing execution read.
    """
    span = int_property(artifact, "span")
    if span is not None or depth == 0:
        return [span] if span is not None else []
    producers = [
        ev.execution_id
        for ev in store.get_events_by_artifact_ids([artifact.id])
        if ev.type == metadata_store_pb2.Event.OUTPUT
    ]
    spans: set[int] = set()
    for ev in store.get_events_by_execution_ids(producers) if producers else []:
        if ev.type == metadata_store_pb2.Event.INPUT and ev.path.steps and ev.path.steps[0].key == "examples":
            for upstream in store.get_artifacts_by_id([ev.artifact_id]):
                spans.update(example_spans(store, upstream, depth - 1))
    return sorted(spans)


def format_spans(spans: list[int]) -> str:
    """[1] -> "span 1", [1, 2] -> "spans 1-2", [] -> "span ?"."""
    if not spans:
        return "span ?"
    if len(spans) == 1:
        return f"span {spans[0]}"
    if spans == list(range(spans[0], spans[-1] + 1)):
        return f"spans {spans[0]}-{spans[-1]}"
    return "spans " + ", ".join(str(s) for s in spans)


def model_origin(
    store: metadata_store.MetadataStore, model_id: int, pipeline_name: str
) -> tuple[Optional[str], list[int]]:
    """The serving version a Model artifact was pushed as, and the spans it was trained on.

    Returns:
      (version or None when it was never pushed, the training spans, empty when unknown).
    """
    version, spans = None, []
    events = store.get_events_by_artifact_ids([model_id])
    for ev in events:
        execution_id = ev.execution_id
        if ev.type == metadata_store_pb2.Event.INPUT and _node_id(store, execution_id, pipeline_name).endswith(
            "Pusher"
        ):
            out = [
                e
                for e in store.get_events_by_execution_ids([execution_id])
                if e.type == metadata_store_pb2.Event.OUTPUT
            ]
            for pushed in store.get_artifacts_by_id([e.artifact_id for e in out]):
                if custom_property(pushed, "pushed"):
                    version = custom_property(pushed, "pushed_version")
        elif ev.type == metadata_store_pb2.Event.OUTPUT:
            inputs = [
                e
                for e in store.get_events_by_execution_ids([execution_id])
                if e.type == metadata_store_pb2.Event.INPUT and e.path.steps and e.path.steps[0].key == "examples"
            ]
            for examples in store.get_artifacts_by_id([e.artifact_id for e in inputs]):
                spans = sorted(set(spans) | set(example_spans(store, examples)))
    return version, spans
