"""Executes a compiled pipeline file as open-source Kubeflow Pipelines does, task by task, without a
cluster: what the backend's driver and launcher do around each container, and nothing else.

Mirrored from kubeflow/pipelines (backend at commit 7b70c7b, August 2026):

- Order: tasks in dependency order (`dependentTasks`), as Argo runs the DAG that
  `backend/src/v2/compiler/argocompiler/dag.go` builds; every task is a container (importer and
  resolver tasks are refused: there are none in our file, and KFP runs no resolver).
- Inputs, as `backend/src/v2/driver/resolve.go` resolves them: parameters from the task's
  `runtimeValue.constant`; artifacts from the producer's recorded outputs, converted by
  `backend/src/v2/metadata/converter.go` `toRuntimeArtifact` and `client.go` `OutputArtifact.
  ToRuntimeArtifact`: name = the ML Metadata id, the URI, metadata = the recorded properties and
  custom properties, and type = an EMPTY instance schema.
- Outputs, as `backend/src/v2/driver/driver.go` `provisionOutputs` builds them: one artifact per
  declared output under `<pipeline root>/<task>/<salt>/<name>`, typed as the file declares, plus
  the `executor-logs` output typed `system.Artifact` that log publishing adds; the output file
  `output_metadata.json` in the task root.
- The command: the container's own `command` and `args` from the file, `{{$}}` replaced by the
  ExecutorInput as JSON, as `backend/src/v2/component/launcher_v2.go` does. Lifecycle hooks are not
  run (only Vertex AI runs them). The container's `python -m <module>` runs in this process
  (`main(args)`, as TFX's kubeflow_v2_run_executor_test does), or with `subprocess=True` as a real
  process of the project's environment, which is what the image installs.
- After the task, as the launcher records outputs: the executor output's artifact metadata
  replaces the provisioned metadata, and each output gets a new id; with an ML Metadata store, the
  run is recorded there as KFP records it (kfp_metadata.py).

The image's project root (/conveyor) is this checkout: parameters naming a path under it are read
from here.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Optional

import yaml

from tests.kubeflow.kfp_metadata import KfpMetadata

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTAINER_ROOT = "/conveyor"
_ids = itertools.count(1000)


def load_spec(path: Path) -> dict[str, Any]:
    return next(yaml.safe_load_all(Path(path).read_text(encoding="utf-8")))


def task_order(spec: dict[str, Any]) -> list[str]:
    tasks = spec["root"]["dag"]["tasks"]
    done: list[str] = []
    while len(done) < len(tasks):
        ready = sorted(n for n, t in tasks.items() if n not in done and set(t.get("dependentTasks", [])) <= set(done))
        if not ready:
            raise ValueError("the DAG has a cycle")
        done.extend(ready)
    return done


def _constant(value: Any, run: dict[str, str]) -> Any:
    """A parameter's constant as the driver resolves it: a whole-value run placeholder such as
    `{{$.pipeline_job_uuid}}` becomes the run's value (resolve.go, `InputParameterSpec_RuntimeValue`)."""
    if isinstance(value, str) and value in run:
        return run[value]
    if isinstance(value, str) and value.startswith(CONTAINER_ROOT + "/"):
        return str(PROJECT_ROOT / value[len(CONTAINER_ROOT) + 1 :])
    return value


def executor_input(
    spec: dict[str, Any],
    name: str,
    recorded: dict[str, dict[str, list[dict]]],
    pipeline_root: str,
    run: Optional[dict[str, str]] = None,
) -> dict[str, Any]:
    """The ExecutorInput KFP's driver builds for task `name`, given the outputs recorded so far and the
    run's placeholders (`{{$.pipeline_job_name}}` -> display name, `{{$.pipeline_job_uuid}}` -> id)."""
    task = spec["root"]["dag"]["tasks"][name]
    component = spec["components"][task["componentRef"]["name"]]
    parameters = {}
    for key, value in task.get("inputs", {}).get("parameters", {}).items():
        if "runtimeValue" not in value:
            raise ValueError(f"task {name} parameter {key}: only constants are resolved here, not {value}")
        parameters[key] = _constant(value["runtimeValue"]["constant"], run or {})
    artifacts = {}
    for key, value in task.get("inputs", {}).get("artifacts", {}).items():
        source = value["taskOutputArtifact"]
        upstream = recorded[source["producerTask"]][source["outputArtifactKey"]]
        artifacts[key] = {
            "artifacts": [
                {"name": a["name"], "uri": a["uri"], "metadata": a["metadata"], "type": {"instanceSchema": ""}}
                for a in upstream
            ]
        }
    task_root = f"{pipeline_root}/{name}/{uuid.uuid4().hex[:8]}"
    declared = component.get("outputDefinitions", {}).get("artifacts", {})
    outputs = {
        key: {
            "artifacts": [
                {
                    "name": key,
                    "uri": f"{task_root}/{key}",
                    "type": out["artifactType"],
                    "metadata": out.get("metadata", {}),
                }
            ]
        }
        for key, out in declared.items()
    }
    outputs["executor-logs"] = {
        "artifacts": [
            {"name": "executor-logs", "uri": f"{task_root}/executor-logs", "type": {"schemaTitle": "system.Artifact"}}
        ]
    }
    return {
        "inputs": {"parameterValues": parameters, "artifacts": artifacts},
        "outputs": {"artifacts": outputs, "outputFile": f"{task_root}/output_metadata.json"},
    }


def _record(executor_input_: dict[str, Any], declared: dict[str, Any]) -> dict[str, list[dict]]:
    """The outputs as the launcher records them: the executor output's metadata, a new id each."""
    output_file = Path(executor_input_["outputs"]["outputFile"])
    written = json.loads(output_file.read_text()) if output_file.exists() else {}
    recorded = {}
    for key in declared:
        provisioned = executor_input_["outputs"]["artifacts"][key]["artifacts"][0]
        from_executor = (written.get("artifacts", {}).get(key, {}).get("artifacts") or [{}])[0]
        recorded[key] = [
            {
                "name": str(next(_ids)),
                "uri": from_executor.get("uri") or provisioned["uri"],
                "metadata": {**provisioned.get("metadata", {}), **from_executor.get("metadata", {})},
            }
        ]
    return recorded


def run_task(container: dict[str, Any], executor_input_: dict[str, Any], use_subprocess: bool, env: dict) -> None:
    args = [json.dumps(executor_input_) if a == "{{$}}" else a for a in container["args"]]
    command = container["command"]
    if command[:2] != ["python", "-m"]:
        raise ValueError(f"only `python -m <module>` containers are run here, not {command}")
    if use_subprocess:
        result = subprocess.run(
            [sys.executable, *command[1:], *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command} exited {result.returncode}:\n{result.stderr[-4000:]}")
        return
    module = importlib.import_module(command[2])
    code = module.main(args)
    if code:
        raise RuntimeError(f"{command} returned {code}")


def execute(
    spec_path: Path,
    pipeline_root: str,
    subprocess_tasks: tuple[str, ...] = (),
    env: Optional[dict] = None,
    metadata=None,
) -> dict[str, dict[str, list[dict]]]:
    """Runs every task of the compiled file in order; returns each task's recorded outputs.

    Args:
      spec_path: the compiled pipeline file.
      pipeline_root: this run's root for output artifacts (KFP: `<pipeline root>/<run id>`).
      subprocess_tasks: tasks run as a real `python -m ...` process instead of in this process.
      env: the environment of those processes.
      metadata: an ML Metadata store to record the run in as KFP's driver and launcher do
        (kfp_metadata.py); artifacts are then named by their ids there.
    """
    spec = load_spec(spec_path)
    # KFP names a run's root after the run's id; the display name is what a person typed.
    run_id = str(uuid.uuid4())
    run = {"{{$.pipeline_job_name}}": Path(pipeline_root).name, "{{$.pipeline_job_uuid}}": run_id}
    kfp = KfpMetadata(metadata, spec["pipelineInfo"]["name"], run_id, pipeline_root) if metadata else None
    recorded: dict[str, dict[str, list[dict]]] = {}
    for name in task_order(spec):
        task = spec["root"]["dag"]["tasks"][name]
        component = spec["components"][task["componentRef"]["name"]]
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
        if "container" not in executor:
            raise ValueError(f"task {name}: {next(iter(executor))} executors are not run here (KFP runs no resolver)")
        inputs = executor_input(spec, name, recorded, pipeline_root, run)
        artifacts = {k: v["artifacts"] for k, v in inputs["inputs"]["artifacts"].items()}
        parameters = inputs["inputs"]["parameterValues"]
        execution = kfp.start_task(name, artifacts, parameters, executor["container"]["image"]) if kfp else None
        run_task(executor["container"], inputs, name in subprocess_tasks, env or dict(os.environ))
        declared = component.get("outputDefinitions", {}).get("artifacts", {})
        recorded[name] = _record(inputs, declared)
        if kfp:
            ids = kfp.publish(execution, {k: v[0] for k, v in recorded[name].items()}, declared)
            for key, artifact_id in ids.items():
                recorded[name][key][0]["name"] = str(artifact_id)
    if kfp:
        kfp.finish()
    return recorded
