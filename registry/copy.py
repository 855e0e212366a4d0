"""`conveyor metadata copy`: one ML Metadata store's history into another (a local SQLite registry into
the team's server), so nothing one engineer built is lost when the team moves to a shared store.

Types, contexts (with their parents), artifacts, executions, events, attributions and associations are
copied; ids are remapped. Every copied artifact and execution carries `conveyor_copied_from` (the source
store and its id), and contexts are matched by type and name, so copying again copies nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from ml_metadata import errors
from ml_metadata.proto import metadata_store_pb2

from pipeline.metadata import MetadataStore
from registry.lineage import CREATED_MS, UPDATED_MS, open_store, quiet_stderr

COPIED_FROM = "conveyor_copied_from"


@dataclass(frozen=True)
class CopyCounts:
    types: int
    contexts: int
    artifacts: int
    executions: int
    events: int

    def line(self) -> str:
        return (
            f"{self.types} type(s), {self.contexts} context(s), {self.artifacts} artifact(s), "
            f"{self.executions} execution(s), {self.events} event(s)"
        )


def _types(source, target) -> tuple[dict, int]:
    """{(kind, source type id): target type id}, adding the types the target lacks."""
    mapping, added = {}, 0
    for kind in ("artifact", "execution", "context"):
        get, put = f"get_{kind}_types", getattr(target, f"put_{kind}_type")
        existing = {t.name for t in getattr(target, get)()}
        for t in getattr(source, get)():
            clean = type(t)()
            clean.CopyFrom(t)
            clean.ClearField("id")
            mapping[(kind, t.id)] = put(clean, can_add_fields=True)
            added += t.name not in existing
    return mapping, added


def _copied(target, getter) -> dict[str, int]:
    """{source marker: target id} of what an earlier copy brought."""
    return {n.custom_properties[COPIED_FROM].string_value: n.id for n in getter() if COPIED_FROM in n.custom_properties}


def _keep_times(node) -> None:
    """ML Metadata stamps a new node with the time of the copy: the original times travel as properties."""
    if CREATED_MS not in node.custom_properties:
        # As text: the servers' int_value column is 32-bit, too small for milliseconds since 1970.
        node.custom_properties[CREATED_MS].string_value = str(node.create_time_since_epoch)
        node.custom_properties[UPDATED_MS].string_value = str(node.last_update_time_since_epoch)
    node.ClearField("create_time_since_epoch")
    node.ClearField("last_update_time_since_epoch")


def copy_store(source_store: MetadataStore, target_store: MetadataStore) -> CopyCounts:
    """Copies everything in `source_store` that `target_store` does not hold yet.

    Returns:
      What was added.

    Raises:
      FileNotFoundError, MetadataUnavailable: a store cannot be opened.
    """
    source = open_store(source_store)
    target = open_store(target_store, readonly=False)
    origin = source_store.shown
    types, added_types = _types(source, target)

    contexts = {}
    by_name = {(c.type_id, c.name): c.id for c in target.get_contexts()}
    new_contexts = 0
    for c in source.get_contexts():
        type_id = types[("context", c.type_id)]
        if (type_id, c.name) not in by_name:
            copy = metadata_store_pb2.Context()
            copy.CopyFrom(c)
            copy.ClearField("id")
            copy.type_id = type_id
            _keep_times(copy)
            by_name[(type_id, c.name)] = target.put_contexts([copy])[0]
            new_contexts += 1
        contexts[c.id] = by_name[(type_id, c.name)]
    for c in source.get_contexts():
        have = {p.id for p in target.get_parent_contexts_by_context(contexts[c.id])}
        for parent in source.get_parent_contexts_by_context(c.id):
            if contexts[parent.id] in have:
                continue
            link = metadata_store_pb2.ParentContext(child_id=contexts[c.id], parent_id=contexts[parent.id])
            try:
                with quiet_stderr(target_store.shared):
                    target.put_parent_contexts([link])
            except errors.AlreadyExistsError:  # linked already, by the pipeline's own runs on the target
                pass

    def copy_nodes(kind, nodes, done, put):
        ids, fresh = {}, 0
        for node in nodes:
            marker = f"{origin}#{node.id}"
            if marker in done:
                ids[node.id] = done[marker]
                continue
            copy = type(node)()
            copy.CopyFrom(node)
            copy.ClearField("id")
            copy.type_id = types[(kind, node.type_id)]
            copy.ClearField("type")
            _keep_times(copy)
            copy.custom_properties[COPIED_FROM].string_value = marker
            ids[node.id] = put([copy])[0]
            fresh += 1
        return ids, fresh

    artifacts, new_artifacts = copy_nodes(
        "artifact", source.get_artifacts(), _copied(target, target.get_artifacts), target.put_artifacts
    )
    old_executions = _copied(target, target.get_executions)
    executions, new_executions = copy_nodes("execution", source.get_executions(), old_executions, target.put_executions)
    fresh_executions = {i for i, n in executions.items() if f"{origin}#{i}" not in old_executions}

    events = []
    for e in source.get_events_by_execution_ids(sorted(fresh_executions)):
        copy = metadata_store_pb2.Event()
        copy.CopyFrom(e)
        copy.artifact_id, copy.execution_id = artifacts[e.artifact_id], executions[e.execution_id]
        copy.ClearField("milliseconds_since_epoch")
        events.append(copy)
    if events:
        target.put_events(events)

    attributions, associations = [], []
    for artifact_id, target_id in artifacts.items():
        for c in source.get_contexts_by_artifact(artifact_id):
            attributions.append(metadata_store_pb2.Attribution(artifact_id=target_id, context_id=contexts[c.id]))
    for execution_id in fresh_executions:
        for c in source.get_contexts_by_execution(execution_id):
            associations.append(
                metadata_store_pb2.Association(execution_id=executions[execution_id], context_id=contexts[c.id])
            )
    target.put_attributions_and_associations(attributions, associations)
    return CopyCounts(added_types, new_contexts, new_artifacts, new_executions, len(events))
