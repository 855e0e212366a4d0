"""What open-source Kubeflow Pipelines writes into its ML Metadata store around each task, for the KFP
harness (kfp_harness.py): the layout `conveyor models list --metadata mysql://.../metadb` reads.

Mirrored from kubeflow/pipelines (backend at commit 7b70c7b, August 2026), `backend/src/v2/metadata/`:

- `client.go` GetPipeline: a `system.Pipeline` context named after the pipeline and a `system.PipelineRun`
  context named by the run's id (custom properties namespace, resource_name, pipeline_root,
  store_session_info), the run's parent being the pipeline.
- CreateExecution (driver): the root DAG as a `system.DAGExecution`, and per task a
  `system.ContainerExecution` with `display_name` and `task_name`, RUNNING, in both contexts, with an
  INPUT event (path: the input's name) per input artifact and the input parameters as the `inputs`
  struct; pod_name, pod_uid, namespace and image for a container.
- RecordArtifact and PublishExecution (launcher): each output a new artifact typed by its instance
  schema's title (SchemaToArtifactType), its metadata as custom properties through
  `converter.go` StructValueToMLMDValue (numbers as doubles, booleans as ints), `display_name` the
  output's name; then the execution COMPLETE with an OUTPUT event per output.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

PIPELINE, PIPELINE_RUN = "system.Pipeline", "system.PipelineRun"
DAG_EXECUTION, CONTAINER_EXECUTION = "system.DAGExecution", "system.ContainerExecution"


def _value(value: Any) -> pb.Value:
    """converter.go StructValueToMLMDValue."""
    if isinstance(value, bool):
        return pb.Value(int_value=int(value))
    if isinstance(value, (int, float)):
        return pb.Value(double_value=float(value))
    if isinstance(value, str):
        return pb.Value(string_value=value)
    out = pb.Value()
    out.struct_value.update({"list" if isinstance(value, list) else "struct": value})
    return out


def _event(kind: int, name: str, artifact_id: int = 0) -> pb.Event:
    event = pb.Event(type=kind, artifact_id=artifact_id) if artifact_id else pb.Event(type=kind)
    event.path.steps.add().key = name
    return event


class KfpMetadata:
    """One run's records, written the way KFP's driver and launcher write them."""

    def __init__(self, store: metadata_store.MetadataStore, pipeline_name: str, run_id: str, pipeline_root: str):
        self.store = store
        self.contexts = [
            self._context(PIPELINE, pipeline_name, {}),
            self._context(
                PIPELINE_RUN,
                run_id,
                {
                    "namespace": "kubeflow",
                    "resource_name": f"run-{run_id}",
                    "pipeline_root": f"{pipeline_root}/{pipeline_name}/{run_id}",
                    "store_session_info": "{}",
                },
            ),
        ]
        store.put_parent_contexts([pb.ParentContext(child_id=self.contexts[1].id, parent_id=self.contexts[0].id)])
        self.dag = self._execution(DAG_EXECUTION, run_id, "", {})

    def _context(self, type_name: str, name: str, properties: dict) -> pb.Context:
        type_id = self.store.put_context_type(pb.ContextType(name=type_name))
        found = self.store.get_context_by_type_and_name(type_name, name)
        if found is not None:
            return found
        context = pb.Context(type_id=type_id, name=name)
        for key, value in properties.items():
            context.custom_properties[key].string_value = value
        context.id = self.store.put_contexts([context])[0]
        return context

    def _execution(self, type_name: str, display_name: str, task_name: str, inputs: dict) -> pb.Execution:
        execution = pb.Execution(
            type_id=self.store.put_execution_type(pb.ExecutionType(name=type_name)),
            last_known_state=pb.Execution.RUNNING,
        )
        execution.custom_properties["display_name"].string_value = display_name
        execution.custom_properties["task_name"].string_value = task_name
        pairs = [
            (self.store.get_artifacts_by_id([int(a["name"])])[0], _event(pb.Event.INPUT, name))
            for name, artifacts in inputs.items()
            for a in artifacts
        ]
        execution_id, _, _ = self.store.put_execution(execution, pairs, self.contexts)
        return self.store.get_executions_by_id([execution_id])[0]

    def start_task(self, task: str, inputs: dict[str, list[dict]], parameters: dict, image: str) -> pb.Execution:
        """The driver's execution for a container task; `inputs` and `parameters` as the ExecutorInput
        lists them (the parameters as the `inputs` struct)."""
        execution = self._execution(CONTAINER_EXECUTION, task, task, inputs)
        for key, value in {"pod_name": f"{task}-pod", "pod_uid": "", "namespace": "kubeflow", "image": image}.items():
            execution.custom_properties[key].string_value = value
        execution.custom_properties["inputs"].struct_value.SetInParent()  # an empty struct is still one
        execution.custom_properties["inputs"].struct_value.update(parameters)
        self.store.put_executions([execution])
        return execution

    def publish(self, execution: pb.Execution, outputs: dict[str, dict], declared: dict[str, Any]) -> dict[str, int]:
        """RecordArtifact for each output, then PublishExecution; returns the outputs' new ids."""
        ids, pairs = {}, []
        for name, output in outputs.items():
            title = yaml.safe_load(declared[name]["artifactType"]["instanceSchema"])["title"]
            artifact = pb.Artifact(
                type_id=self.store.put_artifact_type(pb.ArtifactType(name=title)),
                uri=output["uri"],
                state=pb.Artifact.LIVE,
            )
            for key, value in output["metadata"].items():
                artifact.custom_properties[key].CopyFrom(_value(value))
            artifact.custom_properties["display_name"].string_value = name
            artifact.custom_properties["store_session_info"].string_value = json.dumps({})
            ids[name] = self.store.put_artifacts([artifact])[0]
            pairs.append((self.store.get_artifacts_by_id([ids[name]])[0], _event(pb.Event.OUTPUT, name)))
        execution.last_known_state = pb.Execution.COMPLETE
        self.store.put_execution(execution, pairs, self.contexts)
        return ids

    def finish(self) -> None:
        """The root DAG COMPLETE once its tasks are (UpdateDAGExecutionsState)."""
        self.dag.last_known_state = pb.Execution.COMPLETE
        self.store.put_executions([self.dag])
