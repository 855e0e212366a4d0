"""What the open-source Kubeflow Pipelines backend requires of the compiled file, and the changes
that make KubeflowV2DagRunner's output meet it.

The rules, from kubeflow/pipelines (backend at commit 7b70c7b, August 2026):

- `backend/src/apiserver/template/v2_template.go`: schema version 2.1.0 only ("KFP only supports
  schema version 2.1.0"); a pipeline name of lower-case letters, digits and '-'.
- `backend/src/v2/compiler/argocompiler/dag.go` and `visitor.go`: only `container` and `importer`
  executors run ("resolver executors not implemented").
- `backend/src/v2/driver/driver.go`: container lifecycle hooks (`preCacheCheck`) are never run; they
  are Vertex AI's.

The changes (`adapt`): every container runs Conveyor's entrypoint (kubeflow/entrypoint.py) with
TFX's arguments plus the component's output definitions; ExampleGen's preCacheCheck hook becomes
the entrypoint's `--resolve_span`; and the tasks whose answer depends on more than their inputs
(ExampleGen reads the newest span's files; the artifact-store records of components.cluster_state)
are never served from KFP's cache.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kubeflow.entrypoint import OUTPUTS_SPEC, RESOLVE_SPAN

SCHEMA_VERSION = "2.1.0"
RUNNABLE_EXECUTORS = ("container", "importer")
TFX_ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
ENTRYPOINT = ["python", "-m", "kubeflow.entrypoint"]
INPUTS_SPEC = "--json_serialized_inputs_spec_args"
EXECUTOR_CLASS = "--executor_class_path"
# KFP's pipeline and task name grammar (v2_template.go validates the pipeline name; Argo the rest).
NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# Executors whose result depends on more than their inputs: files (the newest span) or records.
UNCACHED_CLASSES = ("components.cluster_state.",)


class NotRunnable(ValueError):
    """The compiled file breaks a rule of the open-source KFP backend."""


def _executor_class(args: list[str]) -> str:
    return args[args.index(EXECUTOR_CLASS) + 1] if EXECUTOR_CLASS in args else ""


def adapt(spec: dict[str, Any]) -> dict[str, Any]:
    """KubeflowV2DagRunner's PipelineSpec (as a dict), changed in place to run on open-source KFP.

    Executors other than containers are left as they are, for `check` to name.

    Raises:
      NotRunnable: a container runs something other than TFX's entrypoint.
    """
    executors = spec["deploymentSpec"]["executors"]
    component_of = {c["executorLabel"]: c for c in spec["components"].values() if "executorLabel" in c}
    uncached = set()
    for label, executor in executors.items():
        container = executor.get("container")
        if container is None:
            continue
        if container.get("command", [])[-1:] != [TFX_ENTRYPOINT]:
            raise NotRunnable(f"executor {label} does not run TFX's container entrypoint: {container.get('command')}")
        args = list(container["args"])
        outputs = component_of[label].get("outputDefinitions", {})
        at = args.index(INPUTS_SPEC) + 2 if INPUTS_SPEC in args else len(args)
        args[at:at] = [OUTPUTS_SPEC, json.dumps(outputs, indent=2, sort_keys=True)]
        if container.pop("lifecycle", None) is not None:
            args.insert(at, RESOLVE_SPAN)
            uncached.add(label)
        if _executor_class(args).startswith(UNCACHED_CLASSES):
            uncached.add(label)
        container["command"] = list(ENTRYPOINT)
        container["args"] = args
    for task in spec["root"]["dag"]["tasks"].values():
        if spec["components"][task["componentRef"]["name"]].get("executorLabel") in uncached:
            task["cachingOptions"] = {}
    return spec


def check(spec: dict[str, Any]) -> list[str]:
    """Every rule above the compiled file breaks, as one line each (empty: none)."""
    problems = []
    if spec.get("schemaVersion") != SCHEMA_VERSION:
        problems.append(f"schemaVersion {spec.get('schemaVersion')!r}: the backend accepts only {SCHEMA_VERSION}")
    name = spec.get("pipelineInfo", {}).get("name", "")
    if not NAME.match(name):
        problems.append(f"pipeline name {name!r} is not lower-case letters, digits and '-' starting with a letter")
    for label, executor in spec["deploymentSpec"]["executors"].items():
        kind = next(iter(executor))
        if kind not in RUNNABLE_EXECUTORS:
            problems.append(f"executor {label} is a {kind} (dag.go: only container and importer executors run)")
        elif kind == "container" and "lifecycle" in executor["container"]:
            problems.append(f"executor {label} relies on a lifecycle hook, which only Vertex AI runs")
    return problems
