"""The command every task of the compiled pipeline runs: TFX 1.16's v2 container entrypoint, with the
compatibility layer it needs on open-source Kubeflow Pipelines.

`conveyor compile` points each container executor here (kubeflow_runner.adapt_for_open_source_kfp)
with TFX's own arguments plus the component's output definitions. Before TFX's entrypoint
(tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor) parses the ExecutorInput, this:

- Restores artifact types. KFP's driver hands upstream artifacts on with an empty instance schema
  (backend/src/v2/metadata/client.go: `Schema: "" // TODO(Bobgy): figure out how to get schema`),
  and TFX then cannot find the artifact class (tensorflow/tfx#7768). The compiled file names each
  input's and output's type; they are put back by name.
- Drops outputs the component does not declare: with log publishing on, KFP's driver adds an
  `executor-logs` output typed `system.Artifact` (backend/src/v2/driver/driver.go), a class TFX cannot
  import. KFP's launcher uploads it; TFX never sees it.
- Drops placeholder inputs (components.cluster_state): no blessed model or previous statistics yet.
- Resolves ExampleGen's span, version and fingerprint in the pod, as TFX's
  `file_based_example_gen.driver` does in `lifecycle.preCacheCheck`, a hook only Vertex AI runs.
- Leaves at once after the executor output is written, without the interpreter's shutdown (where
  TensorFlow's and Beam's threads have crashed the process on exit after a successful task, failing it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from absl import flags as absl_flags
from google.protobuf import json_format

from components.cluster_state import PLACEHOLDER

log = logging.getLogger(__name__)

RESOLVE_SPAN = "--resolve_span"
OUTPUTS_SPEC = "--json_serialized_outputs_spec_args"


def _spec_types(spec_json: str) -> dict:
    """Artifact name -> ArtifactTypeSchema from a ComponentInputsSpec/ComponentOutputsSpec JSON."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    if not spec_json:
        return {}
    spec = json.loads(spec_json)
    types = {}
    for name, artifact in (spec.get("artifacts") or {}).items():
        kind = pipeline_spec_pb2.ArtifactTypeSchema()
        json_format.ParseDict(artifact["artifactType"], kind)
        types[name] = kind
    return types


def _is_placeholder(artifact) -> bool:
    value = artifact.metadata.fields.get(PLACEHOLDER)
    return value is not None and bool(value.number_value)


def _untyped(kind) -> bool:
    which = kind.WhichOneof("kind")
    if which is None:
        return True
    if which == "instance_schema":
        return not kind.instance_schema.strip()
    return which == "schema_title" and kind.schema_title.startswith("system.")


def adapt_executor_input(executor_input, inputs_spec_json: str, outputs_spec_json: str) -> list[str]:
    """Rewrites an ExecutorInput as KFP's open-source driver builds it into what TFX's entrypoint reads.

    Args:
      executor_input: a pipeline_spec_pb2.ExecutorInput, changed in place.
      inputs_spec_json: the component's inputs spec, as the compiled file passes it to TFX.
      outputs_spec_json: the component's outputs spec.

    Returns:
      One line per change made, for the task's log.

    Raises:
      ValueError: an artifact's type is missing and the compiled file does not name it.
    """
    changes = []
    for side, artifacts, types in (
        ("input", executor_input.inputs.artifacts, _spec_types(inputs_spec_json)),
        ("output", executor_input.outputs.artifacts, _spec_types(outputs_spec_json)),
    ):
        for name in list(artifacts):
            if side == "output" and outputs_spec_json and name not in types:
                del artifacts[name]
                changes.append(f"output {name}: not declared by the component; left to KFP's launcher")
                continue
            if side == "input" and all(_is_placeholder(a) for a in artifacts[name].artifacts):
                del artifacts[name]
                changes.append(f"input {name}: a placeholder (nothing recorded yet); not passed on")
                continue
            for artifact in artifacts[name].artifacts:
                if _untyped(artifact.type):
                    if name not in types:
                        raise ValueError(f"{side} artifact {name!r} has no type and the compiled file names none")
                    artifact.type.CopyFrom(types[name])
                    changes.append(f"{side} {name}: type restored from the compiled file")
    return changes


def resolve_span(executor_input, inputs_spec_json: str) -> str:
    """ExampleGen's span, version and fingerprint, resolved as TFX's file-based ExampleGen driver
    does, written into the ExecutorInput (exec properties, and the Examples output's metadata)."""
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.components.example_gen import input_processor, utils
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entrypoint_utils
    from tfx.proto import example_gen_pb2, range_config_pb2
    from tfx.types import standard_component_specs as specs
    from tfx.utils import proto_utils

    inputs_spec = None
    if inputs_spec_json:
        inputs_spec = pipeline_spec_pb2.ComponentInputsSpec()
        json_format.Parse(inputs_spec_json, inputs_spec, ignore_unknown_fields=True)
    exec_properties = entrypoint_utils.parse_execution_properties(
        executor_input.inputs.parameter_values, executor_input.inputs.parameters, inputs_spec
    )
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[specs.INPUT_CONFIG_KEY], input_config)
    range_config = None
    if exec_properties.get(specs.RANGE_CONFIG_KEY):
        range_config = range_config_pb2.RangeConfig()
        proto_utils.json_to_proto(exec_properties[specs.RANGE_CONFIG_KEY], range_config)
    processor = input_processor.FileBasedInputProcessor(
        exec_properties[specs.INPUT_BASE_KEY], input_config.splits, range_config
    )
    span, version = processor.resolve_span_and_version()
    fingerprint = processor.get_input_fingerprint(span, version)
    for split in input_config.splits:
        split.pattern = processor.get_pattern_for_span_version(split.pattern, span, version)
    values = executor_input.inputs.parameter_values
    values[specs.INPUT_CONFIG_KEY].string_value = proto_utils.proto_to_json(input_config)
    values[utils.SPAN_PROPERTY_NAME].number_value = span
    values[utils.FINGERPRINT_PROPERTY_NAME].string_value = fingerprint
    if version is not None:
        values[utils.VERSION_PROPERTY_NAME].number_value = version
    # The Examples output carries them as TFX's driver.update_output_artifact records them.
    for artifact in executor_input.outputs.artifacts[specs.EXAMPLES_KEY].artifacts:
        fields = artifact.metadata.fields
        fields[utils.SPAN_PROPERTY_NAME].number_value = span
        fields[utils.FINGERPRINT_PROPERTY_NAME].string_value = fingerprint
        if version is not None:
            fields[utils.VERSION_PROPERTY_NAME].number_value = version
    return f"span {span}, version {version}, pattern {[s.pattern for s in input_config.splits]}"


def _split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--executor_class_path", required=True)
    parser.add_argument("--json_serialized_invocation_args", required=True)
    parser.add_argument("--json_serialized_inputs_spec_args", default="")
    parser.add_argument(OUTPUTS_SPEC, dest="outputs_spec", default="")
    parser.add_argument(RESOLVE_SPAN, dest="resolve_span", action="store_true")
    return parser.parse_known_args(argv)


def run(argv: list[str]) -> None:
    """Adapts the ExecutorInput, then runs TFX's entrypoint on it with the remaining (Beam) arguments."""
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor

    args, beam_args = _split_args(argv)
    executor_input = pipeline_spec_pb2.ExecutorInput()
    json_format.Parse(args.json_serialized_invocation_args, executor_input, ignore_unknown_fields=True)
    for change in adapt_executor_input(executor_input, args.json_serialized_inputs_spec_args, args.outputs_spec):
        log.info("conveyor entrypoint: %s", change)
    if args.resolve_span:
        log.info(
            "conveyor entrypoint: resolved %s", resolve_span(executor_input, args.json_serialized_inputs_spec_args)
        )
    tfx_args = argparse.Namespace(
        executor_class_path=args.executor_class_path,
        json_serialized_invocation_args=json_format.MessageToJson(executor_input),
        json_serialized_inputs_spec_args=args.json_serialized_inputs_spec_args,
    )
    kubeflow_v2_run_executor._run_executor(tfx_args, beam_args)


def main(argv: list[str]) -> int:
    from pipeline.environment import prepare_environment

    prepare_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TFX's executors read absl flags (Beam's pipeline options among them) only once they are parsed.
    absl_flags.FLAGS(sys.argv[:1], known_only=True)
    run(argv)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
