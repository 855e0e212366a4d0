"""Config parsing: the good file, and each kind of bad value failing before anything runs."""

import copy

import pytest
import yaml

from pipeline.config import ConfigError, OutputConfig, load_config, parse_config
from tests.conftest import PROJECT_ROOT, TAXI_CONFIG

OUTPUT = OutputConfig.under("/tmp/conveyor-test-output")


@pytest.fixture
def raw():
    return yaml.safe_load(TAXI_CONFIG.read_text())


def parse(raw):
    return parse_config(raw, TAXI_CONFIG.parent, OUTPUT, source="taxi.yaml")


def test_bundled_taxi_config_parses_into_typed_values():
    config = load_config(TAXI_CONFIG, output_dir="/tmp/out")
    assert config.name == "taxi"
    assert config.label == "big_tipper"
    assert config.data_root.endswith("data/taxi")
    kinds = {f.name: f.kind for f in config.features}
    assert kinds["fare"] == "numeric"
    assert kinds["company"] == "categorical_string"
    assert kinds["trip_start_hour"] == "categorical_int"
    assert kinds["pickup_latitude"] == "bucketized"
    assert "tips" not in kinds, "tips gives the label away and must not be a feature"
    assert config.model.hidden_units == (64, 32)
    assert config.training.train_steps == 1000
    assert config.serving_model_dir == "/tmp/out/serving_model/taxi"
    assert config.output.metadata_path == "/tmp/out/metadata.sqlite"
    auc = next(t for t in config.evaluation.thresholds if t.metric == "AUC")
    assert (auc.lower_bound, auc.max_change) == (0.6, 0.01)
    assert ("trip_start_hour",) in config.evaluation.slices


def test_config_is_frozen():
    config = load_config(TAXI_CONFIG)
    with pytest.raises(AttributeError):
        config.label = "other"  # type: ignore[misc]


def test_component_config_round_trips_features():
    from pipeline.config import features_from_component_config

    config = load_config(TAXI_CONFIG)
    label, features = features_from_component_config(config.component_config())
    assert label == config.label
    assert features == config.features


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda r: r.update(colour="blue"), "colour", "unknown key"),
        (lambda r: r["model"].update(dropout=0.5), "model.dropout", "unknown key"),
        (lambda r: r["training"].update(train_steps="many"), "training.train_steps", "must be an integer"),
        (lambda r: r["training"].update(train_steps=0), "training.train_steps", "at least 1"),
        (lambda r: r["model"].update(learning_rate=3.0), "model.learning_rate", "(0, 1]"),
        (lambda r: r["model"].update(hidden_units=[]), "model.hidden_units", "at least one"),
        (lambda r: r["features"][0].update(kind="text"), "features[0].kind", "not one of"),
        (lambda r: r["features"].append({"name": "fare", "kind": "numeric"}), "features[14].name", "twice"),
        (lambda r: r["features"][3].update(buckets=1), "features[3].buckets", "at least 2"),
        (lambda r: r.update(label="fare"), "label", "also listed as a feature"),
        (lambda r: r["data"].update(root="../no/such/dir"), "data.root", "does not exist"),
        (lambda r: r.update(schema="../schema/none.pbtxt"), "schema", "does not exist"),
        (lambda r: r.pop("label"), "label", "required"),
        (lambda r: r.update(name="Taxi Pipeline"), "name", "KFP-safe"),
        (lambda r: r["serving"].update(model_name="../escape"), "serving.model_name", "path separators"),
        (lambda r: r["serving"].update(model_name="a/b"), "serving.model_name", "path separators"),
        (
            lambda r: r["evaluation"]["thresholds"][0].update(direction="up"),
            "evaluation.thresholds[0].direction",
            "one of",
        ),
        (lambda r: r["evaluation"]["thresholds"].append({"metric": "AUC"}), "evaluation.thresholds[2].metric", "needs"),
        (lambda r: r["evaluation"].update(slices=[["no_such_column"]]), "evaluation.slices", "not configured"),
        (lambda r: r["beam"].update(args="--runner=X"), "beam.args", "must be a list"),
        (lambda r: r.update(task="ranking"), "task", "not one of"),
        (lambda r: r.update(task="multiclass"), "classes", "needs the label's values"),
        (lambda r: r.update(classes=["no", "maybe", "yes"]), "classes", "exactly [negative, positive]"),
        (lambda r: r.update(task="regression", classes=["0", "1"]), "classes", "no classes"),
        (lambda r: r.update(task="multiclass", classes=["a", "b", "a"]), "classes", "twice"),
        (lambda r: r["features"][0].update(kind="hashed", hash_buckets=1), "features[0].hash_buckets", "at least 2"),
    ],
)
def test_bad_values_fail_naming_the_key(raw, mutate, key, words):
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(ConfigError) as err:
        parse(bad)
    assert err.value.key == key
    assert words in str(err.value)
    assert str(err.value).startswith("taxi.yaml: ")


def test_task_decides_default_metrics_classes_and_threshold_direction(raw):
    raw.pop("evaluation")
    binary = parse(raw)
    assert (binary.task, binary.classes) == ("binary", ("0", "1"))
    assert binary.evaluation.metrics == ("AUC", "BinaryAccuracy", "Calibration", "ExampleCount")

    multi = parse({**raw, "task": "multiclass", "classes": ["low", "mid", 3]})
    assert multi.classes == ("low", "mid", "3")
    assert "SparseCategoricalAccuracy" in multi.evaluation.metrics

    regression = parse(
        {
            **raw,
            "task": "regression",
            "evaluation": {"thresholds": [{"metric": "RootMeanSquaredError", "upper_bound": 2}]},
        }
    )
    assert regression.classes == ()
    assert regression.evaluation.metrics == ("MeanAbsoluteError", "RootMeanSquaredError", "ExampleCount")
    assert regression.evaluation.thresholds[0].direction == "lower_is_better"
    assert regression.component_config()["task"] == "regression"


def test_multiclass_evaluation_reads_the_transformed_label_and_adds_recall_per_class(raw):
    from pipeline.pipeline import eval_config

    config = parse({**raw, "task": "multiclass", "classes": ["a", "b", "c"], "evaluation": {}})
    spec = eval_config(config.label, config.evaluation, config.task, config.classes)
    model = spec.model_specs[0]
    assert (model.label_key, model.prediction_key) == ("big_tipper_xf", "scores")
    assert list(model.preprocessing_function_names) == ["transform_features"]
    per_class = [m for m in spec.metrics_specs if m.binarize.class_ids.values]
    assert list(per_class[0].binarize.class_ids.values) == [0, 1, 2]
    assert per_class[0].metrics[0].class_name == "Recall"


def test_threshold_on_unlisted_metric_is_rejected_when_building_the_pipeline(raw):
    from pipeline.pipeline import eval_config

    raw["evaluation"]["thresholds"].append({"metric": "Precision", "lower_bound": 0.1})
    config = parse(raw)
    with pytest.raises(ConfigError, match="Precision"):
        eval_config(config.label, config.evaluation)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(empty)


def test_data_stages_only_ends_at_transform_and_compiles(raw):
    from tfx.dsl.compiler.compiler import Compiler

    from pipeline.pipeline import create_pipeline

    pipeline = create_pipeline(parse(raw), data_stages_only=True)
    ids = [c.id for c in pipeline.components]
    assert ids[-1] == "Transform" and {"Trainer", "Evaluator", "SafePusher"}.isdisjoint(ids)
    assert "DataGate" in ids
    Compiler().compile(pipeline)  # no node refers to one that is not there


def test_the_bundled_penguins_config_loads_builds_and_its_data_matches_its_schema():
    """The second bundled dataset (multiclass, from the palmerpenguins package) as shipped."""
    from pipeline.pipeline import create_pipeline
    from schema.check import EXIT_CLEAN, check

    config = load_config(PROJECT_ROOT / "configs" / "penguins.yaml")
    assert config.task == "multiclass" and config.label == "species"
    assert config.classes == ("Adelie", "Chinstrap", "Gentoo")
    code, message = check(config.data_root, config.schema_path, config.label)
    assert code == EXIT_CLEAN, message
    assert "344 rows" in message
    ids = {c.id for c in create_pipeline(config).components}
    assert {"Transform", "Trainer", "Evaluator", "SafePusher"} <= ids
