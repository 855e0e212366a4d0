"""End to end: a real LocalDagRunner run on 400 taxi trips, then a second run served from cache."""

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv

from components.examples import to_example
from pipeline.runner import ComponentFailed, run_local
from registry.lineage import open_store, pipeline_runs, run_executions
from tests.conftest import sample_taxi_rows, write_csv

pytestmark = pytest.mark.e2e

NODES = {
    "CsvExampleGen",
    "StatisticsGen",
    "SchemaGen",
    "ImportSchemaGen",
    "ExampleValidator",
    "Transform",
    "latest_blessed_model_resolver",
    "Trainer",
    "Evaluator",
    "SafePusher",
    "ModelCardGen",
    "previous_statistics_resolver",
    "DataGate",
}
UPSTREAM_OF_TRAINER = {
    "CsvExampleGen",
    "StatisticsGen",
    "SchemaGen",
    "ImportSchemaGen",
    "ExampleValidator",
    "Transform",
}


def _raw_examples(data_dir, schema_path, label, n=8):
    schema = tfdv.load_schema_text(schema_path)
    with open(data_dir / "data.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:n]
    return [to_example(r, schema, skip=[label]).SerializeToString() for r in rows]


def test_first_run_pushes_a_model_in_the_tf_serving_layout(two_runs, e2e_config):
    first, versions, _, _ = two_runs
    assert len(versions) == 1
    version_dir = f"{e2e_config.serving_model_dir}/{versions[0]}"
    assert first.summary.pushed_to == version_dir
    assert tf.io.gfile.exists(f"{version_dir}/saved_model.pb")
    assert tf.io.gfile.isdir(f"{version_dir}/variables")
    assert tf.io.gfile.isdir(f"{version_dir}/assets")
    # The curated schema travels with the model (TF Serving ignores assets.extra/).
    shipped = tfdv.load_schema_text(str(Path(version_dir, "assets.extra", "schema.pbtxt")))
    assert shipped == tfdv.load_schema_text(e2e_config.schema_path)
    models_config = Path(e2e_config.output.serving_root, "models.config").read_text()
    assert f'key: "canary"\n      value: {versions[0]}' in models_config


def test_pushed_model_serves_probabilities_from_raw_examples(two_runs, e2e_config, small_taxi_dir):
    _, versions, _, _ = two_runs
    model = tf.saved_model.load(f"{e2e_config.serving_model_dir}/{versions[0]}")
    serve = model.signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["examples"]
    examples = _raw_examples(small_taxi_dir, e2e_config.schema_path, e2e_config.label)
    out = serve(examples=tf.constant(examples))["probabilities"].numpy()
    assert out.shape == (len(examples), 1)
    assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
    assert len(np.unique(out.round(6))) > 1, "different trips should get different scores"


def test_ml_metadata_records_every_component(two_runs, e2e_config):
    store = open_store(e2e_config.output.metadata_path)
    first_run = pipeline_runs(store, e2e_config.name)[0]
    executions = run_executions(store, first_run, e2e_config.name)
    assert set(executions) == NODES
    # Resolvers find nothing on the first run (no statistics or blessed model yet); the rest complete.
    incomplete = {n for n, e in executions.items() if e.state != "complete"}
    assert incomplete <= {"previous_statistics_resolver", "latest_blessed_model_resolver"}
    assert not executions["Trainer"].inputs.get("base_model")


def test_examples_are_uncompressed_tfrecords_recorded_as_tfx_records_them(two_runs, e2e_config):
    """CsvExampleGen writes uncompressed files (components/example_gen.py); every row is there and the
    artifact carries the payload and file format TFX's own executor records."""
    store = open_store(e2e_config.output.metadata_path)
    examples = run_executions(store, pipeline_runs(store, e2e_config.name)[0], e2e_config.name)["CsvExampleGen"]
    artifact = examples.output("examples")
    files = sorted(Path(artifact.uri).glob("Split-*/*"))
    assert files and not [f for f in files if f.suffix == ".gz"]
    rows = sum(1 for _ in tf.data.TFRecordDataset([str(f) for f in files]))
    assert rows == 400
    assert artifact.custom_properties["payload_format"].string_value == "FORMAT_TF_EXAMPLE"
    assert artifact.custom_properties["file_format"].string_value == "tfrecords_gzip"


def test_first_summary_reports_rows_metrics_and_blessing(two_runs):
    first, _, _, _ = two_runs
    summary = first.summary
    assert sum(summary.rows.values()) == 400 and set(summary.rows) == {"train", "eval"}
    assert summary.anomalies == {}
    assert summary.training == "cold start: no blessed model yet"
    assert summary.blessed is True and summary.has_baseline is False
    names = {m.name for m in summary.metrics}
    assert {"auc", "binary_accuracy", "example_count"} <= names
    text = "\n".join(summary.lines())
    assert "blessed: yes, on absolute thresholds alone (first model)" in text
    assert "pushed: " in text


def test_second_run_is_served_from_cache_and_pushes_nothing_new(two_runs, e2e_config):
    first, versions_after_first, second, versions_after_second = two_runs
    from_cache = UPSTREAM_OF_TRAINER | {"Trainer", "Evaluator", "SafePusher"}
    assert from_cache <= set(second.summary.cached)
    assert versions_after_second == versions_after_first
    assert second.summary.pushed_to is None
    reason = f"inputs unchanged; {first.summary.pushed_to} was pushed by an earlier run"
    assert second.summary.not_pushed_reason == reason
    store = open_store(e2e_config.output.metadata_path)
    runs = pipeline_runs(store, e2e_config.name)
    assert len(runs) == 2
    executions = run_executions(store, runs[1], e2e_config.name)
    assert from_cache <= {n for n, e in executions.items() if e.state == "cached"}
    # The warm-start resolver gave the re-run what the first run had (no base model), not the model
    # the first run trained from this very data: that is why the Trainer could be served from cache.
    assert not executions["Trainer"].inputs.get("base_model")


def _variant(tmp_path_factory, name, column, value_for_row):
    """The e2e sample with one column rewritten row by row."""
    header, rows = sample_taxi_rows(400)
    i = header.index(column)
    rows = [r[:i] + [value_for_row(n, r[i])] + r[i + 1 :] for n, r in enumerate(rows)]
    root = tmp_path_factory.mktemp(name)
    write_csv(root / "data.csv", header, rows)
    return root


def _serving_snapshot(config):
    return {
        str(p.relative_to(config.serving_model_dir)): p.read_bytes()
        for p in Path(config.serving_model_dir).rglob("*")
        if p.is_file()
    }


def _with_columns(tmp_path_factory, name, change):
    """The e2e sample with its columns changed by `change(header, rows) -> (header, rows)`."""
    root = tmp_path_factory.mktemp(name)
    write_csv(root / "data.csv", *change(*sample_taxi_rows(400)))
    return root


def _non_finite(header, rows):
    """A drop as a broken upstream job writes it: some trip_miles infinite, some tips NaN."""
    miles, tips = header.index("trip_miles"), header.index("tips")
    out = []
    for n, row in enumerate(rows):
        row = list(row)
        if n % 9 == 0:
            row[miles] = "inf"
        if n % 11 == 0:
            row[tips] = "NaN"
        out.append(row)
    return header, out


def _drop_column(column):
    def change(header, rows):
        i = header.index(column)
        return header[:i] + header[i + 1 :], [r[:i] + r[i + 1 :] for r in rows]

    return change


@pytest.fixture(scope="session")
def gate_runs(two_runs, e2e_config, tmp_path_factory):
    """After the good runs, one run on each kind of bad data: each must stop at the data gate."""
    log_dir = tmp_path_factory.mktemp("gate_logs")
    results = {}
    for name, column, rewrite in (
        ("drifted", "payment_type", lambda n, v: "Cash"),
        ("bad_type", "fare", lambda n, v: "twelve dollars" if n % 7 == 0 else v),
        ("unseen_category", "payment_type", lambda n, v: "Crypto" if n % 5 == 0 else v),
        ("new_column", None, lambda header, rows: (header + ["surge"], [r + ["1.5"] for r in rows])),
        ("missing_column", None, _drop_column("trip_miles")),
        ("non_finite", None, _non_finite),
        ("skewed_serving", "payment_type", lambda n, v: "Cash"),
    ):
        before = _serving_snapshot(e2e_config)
        if name == "skewed_serving":
            # Training data as in the good runs; the serving data given beside it is all cash.
            serving = _variant(tmp_path_factory, name, column, rewrite)
            config = e2e_config.replace(serving_data_root=str(serving))
        elif column is None:
            config = e2e_config.replace(data_root=str(_with_columns(tmp_path_factory, name, rewrite)))
        else:
            config = e2e_config.replace(data_root=str(_variant(tmp_path_factory, name, column, rewrite)))
        with pytest.raises(ComponentFailed) as err:
            run_local(config, io.StringIO(), log_dir)
        store = open_store(e2e_config.output.metadata_path)
        run = pipeline_runs(store, e2e_config.name)[-1]
        results[name] = (err.value, run_executions(store, run, e2e_config.name), before, _serving_snapshot(e2e_config))
    return results


@pytest.mark.parametrize(
    "case, words",
    [
        ("drifted", ["payment_type", "High Linfty distance between current and previous", "vs previous run"]),
        ("bad_type", ["fare", "Expected data of type: FLOAT but got", "twelve dollars"]),
        ("unseen_category", ["payment_type", "Unexpected string values", "Crypto"]),
        ("new_column", ["surge", "New column"]),
        ("missing_column", ["trip_miles", "Column dropped"]),
        ("non_finite", ["trip_miles", "Float feature has Inf values", "tips", "Float feature has NaN values"]),
        ("skewed_serving", ["payment_type", "Linfty distance between training and serving", "vs serving"]),
    ],
)
def test_data_gate_stops_the_run_before_transform_and_keeps_served_models(gate_runs, case, words):
    error, executions, before, after = gate_runs[case]
    assert error.node_id == "DataGate"
    text = str(error.error)
    for word in words:
        assert word in text
    assert "conveyor schema diff" in text
    assert executions["DataGate"].state == "failed"
    assert not {"Transform", "Trainer", "Evaluator", "SafePusher"} & set(executions)
    assert after == before, "the serving directory must be byte-for-byte unchanged"


def test_data_gate_counts_nan_and_infinity_per_feature_and_says_what_to_do(gate_runs):
    text = str(gate_runs["non_finite"][0].error)
    counted = {}
    for split, feature, nan, inf in re.findall(
        r"\[(\w+)\] (\w+): [^\n]*\((\d+) NaN and (\d+) infinite of \d+ values\)", text
    ):
        counted.setdefault(feature, []).append((split, int(nan), int(inf)))
    # 400 rows: every 9th trip_miles is inf (45), every 11th tips NaN (37), over the train and eval splits.
    assert {split for split, _, _ in counted["trip_miles"]} == {"train", "eval"}
    assert sum(inf for _, _, inf in counted["trip_miles"]) == 45
    assert sum(nan for _, nan, _ in counted["tips"]) == 37
    assert "NaN and infinity are data errors" in text and "conveyor schema approve --feature" in text


def test_runs_show_names_the_failed_component_and_its_error(gate_runs, e2e_config, capsys):
    from cli.main import main

    store = open_store(e2e_config.output.metadata_path)
    failed_run = pipeline_runs(store, e2e_config.name)[-1]  # the last gate run: skewed serving data
    args = ["--config", e2e_config.source, "--output-dir", str(Path(e2e_config.output.metadata_path).parent)]
    assert main(["runs", "list", *args]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(failed_run.name))
    assert "failed" in listed and "failed at DataGate" in listed
    assert main(["runs", "show", failed_run.name, *args]) == 0
    out = capsys.readouterr().out
    assert "status: failed" in out
    assert "failed component: DataGate" in out
    error = out[out.index("  error: ") :]
    assert error.startswith("  error: Data gate: ")
    assert "payment_type" in error and "Linfty distance between training and serving" in error
    assert "conveyor schema diff" in error


@pytest.fixture(scope="session")
def diverged_run(e2e_config, tmp_path_factory):
    """A run on NaN trip_miles that a data engineer allowed in a copy of the schema: the NaN reaches the
    model, whose predictions are then NaN. Its own output directory, so no other run is disturbed."""
    from pipeline.config import OutputConfig
    from schema.review import read_schema, write_schema

    root = tmp_path_factory.mktemp("diverged")
    header, schema = read_schema(e2e_config.schema_path)
    next(f for f in schema.feature if f.name == "trip_miles").float_domain.disallow_nan = False
    write_schema(root / "schema.pbtxt", header, schema)
    data = _variant(tmp_path_factory, "nan_miles", "trip_miles", lambda n, v: "nan" if n % 3 == 0 else v)
    out = root / "out"
    config = e2e_config.replace(
        data_root=str(data), schema_path=str(root / "schema.pbtxt"), output=OutputConfig.under(out)
    )
    with pytest.raises(ComponentFailed) as err:
        run_local(config, io.StringIO(), root / "logs")
    return config, out, err.value


def test_non_finite_predictions_stop_the_trainer_before_the_evaluator(diverged_run, capsys):
    from cli.main import main

    config, out, error = diverged_run
    assert error.node_id == "Trainer"
    assert str(error.error).startswith("training produced non-finite predictions: ")
    assert "learning rate" in str(error.error) and "unscaled or non-finite inputs" in str(error.error)
    store = open_store(config.output.metadata_path)
    run = pipeline_runs(store, config.name)[-1]
    assert "Evaluator" not in run_executions(store, run, config.name)
    assert not Path(config.serving_model_dir).exists() or not any(Path(config.serving_model_dir).iterdir())
    assert main(["runs", "show", run.name, "--config", config.source, "--output-dir", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "failed component: Trainer" in shown
    assert "error: training produced non-finite predictions" in shown
