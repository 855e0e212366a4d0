"""The Kubeflow compile: the same pipeline as the local run, as a strict KFP v2 spec."""

import os
import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kubeflow.kubeflow_runner import cluster_config, compile_pipeline, kfp_safe_name
from pipeline.config import KubeflowConfig, load_config
from pipeline.pipeline import create_pipeline
from tests.conftest import TAXI_CONFIG

GOLDEN = Path(__file__).resolve().parents[1] / "testdata" / "kubeflow" / "taxi_pipeline.golden.yaml"
IMAGE = "registry.example/conveyor:test"
BEAM_ARGS = ("--runner=SparkRunner", "--spark_master_url=spark://spark-master:7077", "--environment_type=LOOPBACK")
BEAM_COMPONENTS = ("CsvExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "Evaluator")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    local = load_config(TAXI_CONFIG)
    config = cluster_config(
        local,
        KubeflowConfig(
            pipeline_root="gs://bucket/root",
            data_root="gs://bucket/data",
            serving_root="/serving",
            image=IMAGE,
            beam_args=BEAM_ARGS,
        ),
    )
    path = compile_pipeline(config, tmp_path_factory.mktemp("kfp") / "pipeline.yaml")
    # The pipeline spec; with kubeflow.serving_pvc, KFP's platform spec follows as a second document.
    return local, config, path, next(yaml.safe_load_all(path.read_text()))


def test_output_parses_strictly_as_a_kfp_pipeline_spec(compiled):
    _, _, _, spec = compiled
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    assert parsed.pipeline_info.name == "taxi"
    assert parsed.schema_version == "2.1.0", "the open-source KFP backend accepts only 2.1.0 (v2_template.go)"


def test_kfp_sdk_loads_the_pipeline(compiled):
    from kfp import components

    _, _, path, _ = compiled
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == "taxi"
    assert set(loaded.pipeline_spec.root.dag.tasks) >= {"Trainer", "Evaluator", "SafePusher"}


# Where the cluster pipeline differs from the local one, by design (components.cluster_state): the
# local resolvers become container components reading records in the artifact store.
CLUSTER_NODES = {
    "latest_blessed_model_resolver": "latest_blessed_model",
    "previous_statistics_resolver": "PreviousStatistics",
}


def test_every_component_with_the_same_dependencies_as_the_local_pipeline_but_the_resolvers(compiled):
    local, _, _, spec = compiled
    local_pipeline = create_pipeline(local)
    expected = {
        CLUSTER_NODES.get(n.id, n.id): {CLUSTER_NODES.get(u.id, u.id) for u in n.upstream_nodes}
        for n in local_pipeline.components
    }
    actual = {name: set(task.get("dependentTasks", [])) for name, task in spec["root"]["dag"]["tasks"].items()}
    # Locally the warm-start resolver reads this run's Trainer inputs (components.warm_start) and the
    # statistics resolver runs before StatisticsGen; on the cluster the blessed-model record needs no
    # input, previous statistics are read (and this run's recorded) after StatisticsGen, and the
    # record of a newly blessed model follows the push.
    assert expected.pop("latest_blessed_model") == {"Transform", "ImportSchemaGen"}
    assert expected.pop("PreviousStatistics") == set()
    assert actual.pop("latest_blessed_model") == set()
    assert actual.pop("PreviousStatistics") == {"StatisticsGen"}
    assert actual.pop("RecordBlessedModel") == {"Trainer", "Evaluator", "SafePusher"}
    assert actual == expected


def test_only_container_executors_running_the_conveyor_entrypoint(compiled):
    _, _, _, spec = compiled
    from kubeflow import open_source_kfp

    assert open_source_kfp.check(spec) == []
    for label, executor in spec["deploymentSpec"]["executors"].items():
        assert list(executor) == ["container"], label
        container = executor["container"]
        assert container["command"] == ["python", "-m", "kubeflow.entrypoint"]
        assert "lifecycle" not in container, "preCacheCheck is a Vertex AI hook; the entrypoint resolves the span"
        assert "--json_serialized_outputs_spec_args" in container["args"]
    example_gen = spec["deploymentSpec"]["executors"]["CsvExampleGen_executor"]["container"]["args"]
    assert "--resolve_span" in example_gen


def test_tasks_that_read_files_or_records_are_never_served_from_kfps_cache(compiled):
    _, _, _, spec = compiled
    tasks = spec["root"]["dag"]["tasks"]
    uncached = {n for n, t in tasks.items() if not t["cachingOptions"].get("enableCache")}
    assert uncached == {"CsvExampleGen", "latest_blessed_model", "PreviousStatistics", "RecordBlessedModel"}


def test_every_executor_runs_the_configured_image(compiled):
    _, _, _, spec = compiled
    executors = spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values() if "container" in e}
    assert images == {IMAGE}


def test_user_code_is_referenced_by_dotted_paths_into_components(compiled):
    _, _, _, spec = compiled
    tasks = spec["root"]["dag"]["tasks"]

    def param(task, key):
        return tasks[task]["inputs"]["parameters"][key]["runtimeValue"]["constant"]

    assert param("Trainer", "run_fn") == "components.model.run_fn"
    assert param("Transform", "preprocessing_fn") == "components.preprocessing.preprocessing_fn"
    pusher = spec["deploymentSpec"]["executors"]["SafePusher_executor"]["container"]["args"]
    assert pusher[pusher.index("--executor_class_path") + 1] == "components.pusher.component.SafePusher_Executor"
    assert "module_file" not in yaml.safe_dump(spec)
    assert param("ImportSchemaGen", "schema_file") == "/conveyor/schema/taxi/schema.pbtxt"
    assert param("SafePusher", "serving_model_dir") == "/serving/taxi"


def test_latest_blessed_model_feeds_trainer_and_evaluator(compiled):
    _, _, _, spec = compiled
    tasks = spec["root"]["dag"]["tasks"]
    producer = tasks["Trainer"]["inputs"]["artifacts"]["base_model"]["taskOutputArtifact"]["producerTask"]
    assert producer == "latest_blessed_model"
    baseline = tasks["Evaluator"]["inputs"]["artifacts"]["baseline_model"]["taskOutputArtifact"]["producerTask"]
    assert baseline == "latest_blessed_model"
    state = tasks["latest_blessed_model"]["inputs"]["parameters"]["state_dir"]["runtimeValue"]["constant"]
    assert state == "gs://bucket/root/_conveyor_state/taxi"


def test_data_gate_runs_before_transform_and_reads_the_validator(compiled):
    _, _, _, spec = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert "DataGate" in tasks
    assert "DataGate" in tasks["Transform"]["dependentTasks"]
    gate_inputs = tasks["DataGate"]["inputs"]["artifacts"]
    assert gate_inputs["anomalies"]["taskOutputArtifact"]["producerTask"] == "ExampleValidator"
    assert gate_inputs["previous_statistics"]["taskOutputArtifact"]["producerTask"] == "PreviousStatistics"
    gate = spec["deploymentSpec"]["executors"]["DataGate_executor"]["container"]["args"]
    assert gate[gate.index("--executor_class_path") + 1] == "components.data_gate.component.DataGate_Executor"


def test_example_gen_reads_the_newest_span(compiled):
    _, _, _, spec = compiled
    params = spec["root"]["dag"]["tasks"]["CsvExampleGen"]["inputs"]["parameters"]
    assert "span-{SPAN}/*.csv" in params["input_config"]["runtimeValue"]["constant"]


def test_cluster_beam_args_reach_every_beam_component_unchanged(compiled):
    _, config, _, spec = compiled
    assert config.beam_args == BEAM_ARGS
    executors = spec["deploymentSpec"]["executors"]
    for component in BEAM_COMPONENTS:
        args = executors[f"{component}_executor"]["container"]["args"]
        for flag in BEAM_ARGS:
            assert flag in args, f"{flag} missing from {component}"


def test_local_facts_do_not_leak_into_the_cluster_spec(compiled):
    _, _, _, spec = compiled
    text = yaml.safe_dump(spec)
    assert str(Path(__file__).resolve().parents[2]) not in text
    assert "metadata.sqlite" not in text
    assert "gs://bucket/data" in text


def _stable(spec: dict) -> dict:
    """The spec without fields that change with the TFX version."""
    spec = dict(spec)
    spec.pop("sdkVersion", None)
    return spec


def test_matches_the_golden_spec(compiled):
    _, _, _, spec = compiled
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(yaml.safe_dump(_stable(spec), sort_keys=True))
    golden = yaml.safe_load(GOLDEN.read_text())
    assert _stable(spec) == golden, (
        "the compiled Kubeflow pipeline changed; if that is intended, review the diff and regenerate with "
        "UPDATE_GOLDEN=1 pytest tests/kubeflow"
    )


def test_a_rolling_window_is_refused_for_kubeflow_with_the_reason():
    local = load_config(TAXI_CONFIG).replace(window=2)
    with pytest.raises(ValueError, match="data.window > 1 needs a span-range resolver"):
        cluster_config(local)


def test_missing_cluster_facts_are_named(tmp_path):
    local = load_config(TAXI_CONFIG).replace(kubeflow=KubeflowConfig())
    with pytest.raises(ValueError, match=r"pipeline_root, data_root, serving_root, image not set.*--pipeline-root"):
        cluster_config(local)


@pytest.mark.parametrize(
    "name, safe", [("taxi", "taxi"), ("Taxi_Pipeline v2", "taxi-pipeline-v2"), ("9lives", "p-9lives")]
)
def test_kfp_safe_names(name, safe):
    assert kfp_safe_name(name) == safe
    assert re.match(r"^[a-z][a-z0-9-]*$", kfp_safe_name(name))


def test_conveyor_compile_from_the_config_alone_mounts_the_serving_volume_in_the_pusher(tmp_path, capsys):
    """The CLI entry point with no flags: every cluster fact from the config's kubeflow: section,
    and the serving claim in KFP's Kubernetes platform spec (a second YAML document), for the pusher
    and for the model card it writes into the pushed version."""
    from kfp import components

    from cli.main import main

    output = tmp_path / "pipeline.yaml"
    assert main(["compile", "--config", str(TAXI_CONFIG), "--output", str(output)]) == 0
    facts = load_config(TAXI_CONFIG).kubeflow
    out = capsys.readouterr().out
    assert f"SafePusher, ModelCardGen mount PersistentVolumeClaim {facts.serving_pvc} at {facts.serving_root}" in out
    pipeline_doc, platform_doc = list(yaml.safe_load_all(output.read_text()))
    json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)
    executors = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)["executors"]
    tasks = pipeline_doc["root"]["dag"]["tasks"]
    pusher_executor, card_executor = (
        pipeline_doc["components"][tasks[node]["componentRef"]["name"]]["executorLabel"]
        for node in ("SafePusher", "ModelCardGen")
    )
    mount = {"pvcMount": [{"constant": facts.serving_pvc, "mountPath": "/serving"}]}
    assert executors == {pusher_executor: mount, card_executor: mount}
    assert pipeline_doc["deploymentSpec"]["executors"][pusher_executor]["container"]["image"] == facts.image
    for flag in facts.beam_args:
        assert flag in pipeline_doc["deploymentSpec"]["executors"]["Transform_executor"]["container"]["args"]
    loaded = components.load_component_from_file(str(output))
    assert loaded.platform_spec.platforms["kubernetes"].deployment_spec.executors[pusher_executor]


def test_compile_with_a_missing_cluster_fact_exits_2_naming_the_flag(tmp_path, capsys):
    import yaml as pyyaml

    from cli.main import main

    raw = pyyaml.safe_load(TAXI_CONFIG.read_text())
    del raw["kubeflow"]["image"]
    raw["data"]["root"] = str(TAXI_CONFIG.parent / raw["data"]["root"])
    raw["schema"] = str(TAXI_CONFIG.parent / raw["schema"])
    config = tmp_path / "config.yaml"
    config.write_text(pyyaml.safe_dump(raw))
    assert main(["compile", "--config", str(config), "--output", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert "kubeflow: image not set" in err and "pass --image" in err


@pytest.mark.parametrize("layout, expect_spans", [("spans", True), ("flat", False), ("", True)])
def test_the_cluster_data_layout_decides_the_span_pattern(tmp_path, layout, expect_spans):
    """The cluster's data root cannot be listed from here: kubeflow.data_layout says whether it holds
    span-<N>/ directories; unset, it is taken to match the local data (the bundled taxi spans)."""
    local = load_config(TAXI_CONFIG)
    config = cluster_config(local, KubeflowConfig(data_layout=layout))
    path = compile_pipeline(config, tmp_path / "pipeline.yaml")
    spec = next(yaml.safe_load_all(path.read_text()))
    example_gen = spec["root"]["dag"]["tasks"]["CsvExampleGen"]["inputs"]["parameters"]
    input_config = example_gen["input_config"]["runtimeValue"]["constant"]
    assert ("span-{SPAN}/*.csv" in input_config) is expect_spans, input_config


def test_an_unknown_data_layout_is_a_config_error(tmp_path):
    from pipeline.config import ConfigError

    raw = yaml.safe_load(TAXI_CONFIG.read_text())
    raw["data"]["root"] = str(TAXI_CONFIG.parent / raw["data"]["root"])
    raw["schema"] = str(TAXI_CONFIG.parent / raw["schema"])
    raw["kubeflow"]["data_layout"] = "daily"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="kubeflow.data_layout.*'spans' or 'flat'"):
        load_config(path)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"serving_data_root": "/home/me/serving.csv"}, "data.serving_root"),
        ({"serving_request_logs": "/logs"}, "data.serving_root"),
    ],
)
def test_local_only_paths_are_refused_for_kubeflow_naming_the_key(changes, key):
    config = load_config(TAXI_CONFIG).replace(**changes)
    facts = KubeflowConfig(pipeline_root="gs://b/r", data_root="gs://b/d", serving_root="/serving", image=IMAGE)
    with pytest.raises(ValueError, match=f"^{key} is .* the cluster's pods cannot read"):
        cluster_config(config, facts)


def test_the_backend_rules_name_what_open_source_kfp_would_refuse(compiled):
    """The check is live: a resolver executor, a lifecycle hook, another schema version and a bad name."""
    import copy

    from kubeflow import open_source_kfp

    _, _, _, spec = compiled
    broken = copy.deepcopy(spec)
    broken["schemaVersion"] = "2.0.0"
    broken["pipelineInfo"]["name"] = "Taxi_Pipeline"
    executors = broken["deploymentSpec"]["executors"]
    executors["a_resolver_executor"] = {"resolver": {"outputArtifactQueries": {}}}
    executors["CsvExampleGen_executor"]["container"]["lifecycle"] = {"preCacheCheck": {"command": ["python"]}}
    problems = open_source_kfp.check(broken)
    assert len(problems) == 4, problems
    assert any("a_resolver_executor is a resolver" in p for p in problems)
    assert any("CsvExampleGen_executor relies on a lifecycle hook" in p for p in problems)
    assert any("accepts only 2.1.0" in p for p in problems)
    assert any("'Taxi_Pipeline'" in p for p in problems)
