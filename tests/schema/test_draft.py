"""`conveyor init`: the drafted config and schema for each task, and its refusals."""

import pytest
import tensorflow_data_validation as tfdv

from cli.main import main
from pipeline.config import load_config
from schema.check import DataReadError
from schema.draft import Column, DraftError, _classes, draft, feature_kind, infer_task
from tests.conftest import write_csv
from tests.synthetic import dataset


@pytest.fixture(scope="module")
def drafted(tmp_path_factory):
    """One draft per task, each from its own synthetic data directory."""
    out = {}
    for task in ("binary", "multiclass", "regression"):
        root = tmp_path_factory.mktemp(task)
        write_csv(root / "data" / "rows.csv", *dataset(task))
        out[task] = (draft(root / "data", "label", name=f"syn-{task}", out_dir=root), root)
    return out


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_task_and_feature_kinds_are_inferred_and_the_config_loads(drafted, task):
    result, root = drafted[task]
    assert result.task == task
    config = load_config(result.config_path, output_dir=root / "out")
    assert (config.task, config.name, config.model_name) == (task, f"syn-{task}", f"syn-{task}")
    kinds = {f.name: f.kind for f in config.features}
    assert kinds == {
        "x1": "numeric",
        "x2": "numeric",
        "color": "categorical_string",
        "weekday": "categorical_int",  # 7 integer values: a category, not a quantity
        "city": "hashed",  # 300 values: too many for a vocabulary
    }
    assert config.data_root == str((root / "data").resolve())
    assert config.evaluation.thresholds, "a drafted config gates on something"
    assert config.evaluation.slices == (("color",),)


def test_classes_and_thresholds_follow_the_label(drafted):
    binary = load_config(drafted["binary"][0].config_path)
    assert binary.classes == ("no", "yes")  # 'yes' reads as the positive class
    multi = load_config(drafted["multiclass"][0].config_path)
    assert multi.classes == ("0", "1", "2")
    accuracy = multi.evaluation.thresholds[0]
    assert accuracy.metric == "SparseCategoricalAccuracy" and 0.3 < accuracy.lower_bound < 0.6
    regression = load_config(drafted["regression"][0].config_path)
    rmse = regression.evaluation.thresholds[0]
    assert (rmse.metric, rmse.direction) == ("RootMeanSquaredError", "lower_is_better")
    assert 10 < rmse.upper_bound < 40  # the label's standard deviation: beat always answering the mean


def test_schema_keeps_the_label_out_of_serving_and_compares_features_for_drift(drafted):
    schema = tfdv.load_schema_text(str(drafted["binary"][0].schema_path))
    label = tfdv.get_feature(schema, "label")
    assert list(label.not_in_environment) == ["SERVING"]
    assert set(schema.default_environment) == {"TRAINING", "SERVING"}
    assert tfdv.get_feature(schema, "color").drift_comparator.infinity_norm.threshold > 0
    assert tfdv.get_feature(schema, "x2").drift_comparator.jensen_shannon_divergence.threshold > 0
    assert drafted["binary"][0].schema_path.read_text().startswith("# proto-file: tensorflow_metadata")


def test_column_rules():
    rows = 100
    assert feature_kind(Column("id", "BYTES", {f"u{i}": 1 for i in range(rows)}), rows)[0] is None
    assert feature_kind(Column("k", "INT", {"5": rows}), rows)[0] is None  # one value: nothing to learn
    assert feature_kind(Column("e", "EMPTY"), rows)[0] is None
    assert feature_kind(Column("n", "INT", {str(i): 1 for i in range(50)}), rows)[0]["kind"] == "numeric"
    assert infer_task(Column("y", "FLOAT", {"1.5": 3, "2.0": 1})) == (
        "regression",
        "the label holds fractional numbers",
    )
    assert infer_task(Column("y", "INT", {str(i): 1 for i in range(40)}))[0] == "regression"
    with pytest.raises(DraftError, match="too many classes"):
        infer_task(Column("y", "BYTES", {f"c{i}": 1 for i in range(60)}))
    # Without a yes/true/1, the rarer value is the positive class.
    assert _classes(Column("y", "BYTES", {"fraud": 3, "ok": 90}), "binary") == ["ok", "fraud"]


def test_refusals_name_the_problem(tmp_path, drafted, capsys):
    result, root = drafted["binary"]
    with pytest.raises(DraftError, match="already exists"):
        draft(root / "data", "label", name="syn-binary", out_dir=root)
    with pytest.raises(DataReadError, match="no column 'price'"):
        draft(root / "data", "price", out_dir=tmp_path)
    with pytest.raises(DraftError, match="needs a numeric label"):
        draft(root / "data", "label", task="regression", out_dir=tmp_path)
    assert main(["init", "--data", str(tmp_path / "nowhere"), "--label", "y", "--out-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
