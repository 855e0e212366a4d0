"""Any tabular dataset from a config file: binary, multiclass and regression, end to end.

For each task a synthetic dataset is generated here, `conveyor init` drafts its config and schema,
the step budget is cut for test speed (the one edit a reviewer might make), and `conveyor run`
trains, evaluates and pushes. The pushed model is then called the way clients call it: through
`serving_default` with raw tf.Examples, and through the TF Serving REST API with plain JSON.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from cli.main import main
from components.examples import to_example
from components.pusher.publish import list_versions
from pipeline.config import load_config
from schema.review import read_schema
from serving.errors import ServingError
from serving.inference import Inference
from serving.models import ModelRepository
from serving.rest import handle
from serving.server import ModelServer
from tests.conftest import write_csv
from tests.synthetic import dataset

pytestmark = pytest.mark.e2e
TASKS = ("binary", "multiclass", "regression")


@pytest.fixture(scope="session")
def task_runs(tmp_path_factory):
    """task -> (config, exit code of `conveyor init`, exit code of `conveyor run`, its stdout)."""
    results = {}
    for task in TASKS:
        root = tmp_path_factory.mktemp(f"task_{task}")
        header, rows = dataset(task)
        write_csv(root / task / "rows.csv", header, rows)
        init_code = main(["init", "--data", str(root / task), "--label", "label", "--out-dir", str(root)])
        config_path = root / "configs" / f"{task}.yaml"
        raw = yaml.safe_load(config_path.read_text())
        raw["training"] = {"train_steps": 150, "eval_steps": 5}
        config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        stdout_path = root / "run.out"
        import contextlib

        # stdout holds the summary, stderr the progress lines; a terminal shows both.
        with open(stdout_path, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            run_code = main(["run", "--config", str(config_path), "--output-dir", str(root / "out")])
        config = load_config(config_path, output_dir=root / "out")
        results[task] = (config, init_code, run_code, stdout_path.read_text())
    return results


def _eval_rows(config, n=6):
    header, rows = dataset(config.task, n=n, seed=99)
    _, schema = read_schema(config.schema_path)
    return [dict(zip(header, r, strict=True)) for r in rows], schema


@pytest.mark.parametrize("task", TASKS)
def test_init_then_run_pushes_a_blessed_model(task_runs, task):
    config, init_code, run_code, out = task_runs[task]
    assert (init_code, run_code) == (0, 0), out
    assert config.task == task
    assert "blessed: yes" in out
    # One progress line per component with its wall time; the library logs went to the log file.
    for node in ("CsvExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator", "SafePusher"):
        assert re.search(rf"^  {node} +\d+\.\ds +\[ *\d+\.\ds\]$", out, re.M), out
    assert " INFO " not in out and "WARNING" not in out and "Traceback" not in out
    versions = list_versions(config.serving_model_dir)
    assert len(versions) == 1
    card = f"{config.serving_model_dir}/{versions[0]}/assets.extra/model_card.html"
    assert tf.io.gfile.exists(card)


@pytest.mark.parametrize("task", TASKS)
def test_predictions_have_the_tasks_shape_and_type(task_runs, task):
    config, *_ = task_runs[task]
    version = list_versions(config.serving_model_dir)[-1]
    model = tf.saved_model.load(f"{config.serving_model_dir}/{version}")
    rows, schema = _eval_rows(config)
    examples = tf.constant([to_example(r, schema, skip=[config.label]).SerializeToString() for r in rows])
    out = {k: v.numpy() for k, v in model.signatures["serving_default"](examples=examples).items()}
    n = len(rows)
    if task == "regression":
        assert set(out) == {"value"}
        assert out["value"].shape == (n, 1) and out["value"].dtype == np.float32
        assert np.all(np.abs(out["value"] - 100) < 100), "predictions are in the label's units"
        return
    k = len(config.classes)
    assert out["scores"].shape == (n, k) and out["scores"].dtype == np.float32
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, rtol=1e-5)
    assert out["classes"].shape == (n, k)
    assert [c.decode() for c in out["classes"][0]] == list(config.classes)
    if task == "binary":
        assert config.classes == ("no", "yes")
        np.testing.assert_allclose(out["probabilities"][:, 0], out["scores"][:, 1], rtol=1e-6)


@pytest.mark.parametrize("task, metric", [("multiclass", "sparse_categorical_accuracy"), ("regression", "root_mean")])
def test_models_list_shows_the_tasks_headline_metric(task_runs, task, metric, capsys):
    config, *_ = task_runs[task]
    config_path = str(config.source)
    output_dir = str(Path(config.output.metadata_path).parent)
    assert main(["models", "list", "--config", config_path, "--output-dir", output_dir]) == 0
    assert metric in capsys.readouterr().out


def test_evaluation_reports_the_tasks_metrics(task_runs):
    binary, multi, regression = (task_runs[t][3] for t in TASKS)
    for metric in ("auc", "binary_accuracy", "calibration"):
        assert f"\n    {metric} " in binary
    for name in ("0", "1", "2"):
        assert f"recall [{name}]" in multi, multi
    assert "sparse_categorical_accuracy" in multi
    assert "root_mean_squared_error" in regression and "mean_absolute_error" in regression


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_rest_api_answers_with_plain_json(task_runs, task):
    config, *_ = task_runs[task]
    repository = ModelRepository(config.output.serving_root)
    rows, _ = _eval_rows(config, n=2)
    typed = {"x1": float, "x2": float, "weekday": int, "color": str, "city": str}
    instances = [{k: typed[k](v) for k, v in r.items() if k in typed and v != ""} for r in rows]
    body = json.dumps({"instances": instances})
    answer = handle(repository, Inference(), "POST", f"/v1/models/{config.model_name}:predict", body.encode())
    predictions = answer["predictions"]
    assert len(predictions) == 2
    if task == "multiclass":
        assert predictions[0]["classes"] == ["0", "1", "2"]
        assert len(predictions[0]["scores"]) == 3
    else:
        assert isinstance(predictions[0][0], float)


@pytest.mark.parametrize("task", TASKS)
def test_classify_or_regress_answers_as_tf_serving_and_matches_serving_default(task_runs, task):
    """The export's classification/regression signature carries TF Serving's method name (TF2 writes
    predict everywhere), and :classify / :regress give serving_default's numbers."""
    from tensorflow.core.protobuf import saved_model_pb2

    config, *_ = task_runs[task]
    version = list_versions(config.serving_model_dir)[-1]
    version_dir = Path(config.serving_model_dir) / str(version)
    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    methods = {k: v.method_name for k, v in saved.meta_graphs[0].signature_def.items()}
    name, verb = ("regression", "regress") if task == "regression" else ("classification", "classify")
    assert methods[name] == f"tensorflow/serving/{verb}"
    assert methods["serving_default"] == "tensorflow/serving/predict"

    repository = ModelRepository(config.output.serving_root)
    rows, _ = _eval_rows(config, n=3)
    typed = {"x1": float, "x2": float, "weekday": int, "color": str, "city": str}
    examples = [{k: typed[k](v) for k, v in r.items() if k in typed and v != "" and k != "color"} for r in rows]
    body = json.dumps({"context": {"color": rows[0]["color"]}, "examples": examples}).encode()
    answer = handle(repository, Inference(), "POST", f"/v1/models/{config.model_name}:{verb}", body)["result"]
    same = [{**e, "color": rows[0]["color"]} for e in examples]
    instances = json.dumps({"instances": same}).encode()
    predicted = handle(repository, Inference(), "POST", f"/v1/models/{config.model_name}:predict", instances)
    predicted = predicted["predictions"]
    assert len(answer) == 3
    for got, want in zip(answer, predicted, strict=True):
        if task == "regression":
            assert got == pytest.approx(want[0], abs=1e-5)
        else:
            assert [c for c, _ in got] == want["classes"]
            assert [s for _, s in got] == pytest.approx(want["scores"], abs=1e-5)
    wrong = "regress" if verb == "classify" else "classify"
    with pytest.raises(ServingError) as err:
        handle(repository, Inference(), "POST", f"/v1/models/{config.model_name}:{wrong}", body)
    assert "not found in signature def" in err.value.message


@pytest.mark.parametrize("task", TASKS)
def test_grpc_classify_and_regress_give_the_rest_answers(task_runs, task):
    """TF Serving's gRPC Classify / Regress through the official stub, on tf.Examples with a shared context,
    answer with the numbers REST's :classify / :regress give for the same examples."""
    import grpc
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc, regression_pb2

    config, *_ = task_runs[task]
    rows, schema = _eval_rows(config, n=3)
    typed = {"x1": float, "x2": float, "weekday": int, "color": str, "city": str}
    examples = [{k: typed[k](v) for k, v in r.items() if k in typed and v != "" and k != "color"} for r in rows]
    verb = "regress" if task == "regression" else "classify"
    body = json.dumps({"context": {"color": rows[0]["color"]}, "examples": examples}).encode()
    with ModelServer(config.output.serving_root, port=0, grpc_port=0) as server:
        rest = handle(server.repository, server.inference, "POST", f"/v1/models/{config.model_name}:{verb}", body)
        kind = regression_pb2.RegressionRequest if verb == "regress" else classification_pb2.ClassificationRequest
        request = kind()
        request.model_spec.name = config.model_name
        request.model_spec.signature_name = "regression" if verb == "regress" else "classification"
        context = request.input.example_list_with_context.context
        context.features.feature["color"].bytes_list.value.append(rows[0]["color"].encode())
        for values in examples:
            example = request.input.example_list_with_context.examples.add()
            for name, value in values.items():
                feature = example.features.feature[name]
                if isinstance(value, str):
                    feature.bytes_list.value.append(value.encode())
                elif isinstance(value, int):
                    feature.int64_list.value.append(value)
                else:
                    feature.float_list.value.append(value)
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = (stub.Regress if verb == "regress" else stub.Classify)(request, timeout=60)
    assert response.model_spec.version.value == list_versions(config.serving_model_dir)[-1]
    if verb == "regress":
        assert [r.value for r in response.result.regressions] == pytest.approx(rest["result"], abs=1e-6)
    else:
        got = [[[c.label, c.score] for c in row.classes] for row in response.result.classifications]
        assert [[c for c, _ in row] for row in got] == [[c for c, _ in row] for row in rest["result"]]
        for mine, theirs in zip(got, rest["result"], strict=True):
            assert [score for _, score in mine] == pytest.approx([score for _, score in theirs], abs=1e-6)


def test_models_show_states_change_bounds_in_each_metrics_direction(task_runs, capsys):
    """Regression's RMSE is lower-is-better: a candidate may exceed the baseline by at most the
    tolerance. Binary AUC is higher-is-better: it may fall below it by at most the tolerance."""
    for task, class_name, metric, sign in (
        ("regression", "RootMeanSquaredError", "root_mean_squared_error", "<="),
        ("binary", "AUC", "auc", ">="),
    ):
        config, *_ = task_runs[task]
        tolerance = next(t.max_change for t in config.evaluation.thresholds if t.metric == class_name)
        bound = f"candidate - baseline {sign} {tolerance if sign == '<=' else -tolerance}"
        version = list_versions(config.serving_model_dir)[-1]
        output_dir = str(Path(config.output.metadata_path).parent)
        assert main(["models", "show", str(version), "--config", str(config.source), "--output-dir", output_dir]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if "candidate - baseline" in line]
        assert any(metric in line and bound in line for line in lines), (bound, lines)


# ---------------------------------------------------------------------------------------------
# conveyor predict (issue 19): batch scoring on Beam with the pushed version, checked against serving_default.

PREDICT_ROWS = 200
# Where bad rows go in the scored file (1-based file lines; the header is line 1), and what is wrong with each.
BAD_ROWS = {5: "x2 not a number", 60: "too few fields", 150: "x2 missing"}
# Each task's run also covers one output format and one way of naming the version.
PREDICT_RUNS = {"binary": ("csv", "newest"), "multiclass": ("parquet", "version"), "regression": ("tfrecord", "label")}


def _predict_table(config, path: Path) -> tuple[list[dict], dict[int, str]]:
    """PREDICT_ROWS good rows with a row_id column, and BAD_ROWS interleaved; returns the good rows and the bad
    rows' file lines."""
    header, rows = dataset(config.task, n=PREDICT_ROWS, seed=7)
    good = [{"row_id": f"r{i}", **dict(zip(header, r, strict=True))} for i, r in enumerate(rows)]
    columns = ["row_id", *header]
    lines: list[list[str]] = [[row[c] for c in columns] for row in good]
    bad_lines = {}
    for line, problem in sorted(BAD_ROWS.items()):
        row = dict(good[0], row_id=f"bad{line}")
        if problem == "x2 not a number":
            row["x2"] = "abc"
        elif problem == "x2 missing":
            row["x2"] = ""
        values = [row[c] for c in columns]
        lines.insert(line - 2, values[:3] if problem == "too few fields" else values)
        bad_lines[line] = problem
    write_csv(path, columns, lines)
    return good, bad_lines


def _read_predictions(output: Path, fmt: str) -> list[dict]:
    import csv

    files = sorted(output.glob(f"predictions-*.{fmt}"))
    assert files, list(output.iterdir())
    if fmt == "csv":
        return [row for f in files for row in csv.DictReader(f.open(encoding="utf-8"))]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return [row for f in files for row in pq.read_table(f).to_pylist()]
    rows = []
    for record in tf.data.TFRecordDataset([str(f) for f in files]):
        example = tf.train.Example.FromString(record.numpy())
        row = {}
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            value = getattr(feature, kind).value[0]
            row[name] = value.decode() if kind == "bytes_list" else value
        rows.append(row)
    return rows


@pytest.mark.parametrize("task", TASKS)
def test_predict_scores_every_row_as_serving_default_does(task_runs, task, tmp_path, capsys):
    """`conveyor predict` on Beam: rows in = scored + rejected, rejected rows named by line with a reason, and
    each scored row's outputs equal serving_default's answer for it to 1e-6."""
    import csv

    config, *_ = task_runs[task]
    fmt, naming = PREDICT_RUNS[task]
    good, bad_lines = _predict_table(config, tmp_path / "in" / "table.csv")
    version = list_versions(config.serving_model_dir)[-1]
    which = {"newest": [], "version": ["--version", str(version)], "label": ["--label", "stable"]}[naming]
    output = tmp_path / "scored"
    output_dir = str(Path(config.output.metadata_path).parent)
    argv = ["predict", "--data", str(tmp_path / "in"), "--config", str(config.source), "--output-dir", output_dir]
    code = main([*argv, "--output", str(output), "--format", fmt, "--keep", "row_id", *which])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    total = PREDICT_ROWS + len(BAD_ROWS)
    assert re.search(rf"^  scored +{PREDICT_ROWS}$", out, re.M), out
    assert re.search(rf"^  rejected +{len(BAD_ROWS)}$", out, re.M), out
    assert re.search(rf"^  rows in +{total}  \([\d,]+ rows/s\)$", out, re.M), out
    assert f"predictions: {output}/predictions-" in out and f"rejected rows: {output}/rejected-" in out
    assert "Traceback" not in out + err
    assert not list(tmp_path.glob(".scored.partial-*")), "the partial directory was renamed into place"

    rejected = [r for f in sorted(output.glob("rejected-*.csv")) for r in csv.DictReader(f.open(encoding="utf-8"))]
    assert sorted(int(r["line"]) for r in rejected) == sorted(bad_lines)
    reasons = {int(r["line"]): r["reason"] for r in rejected}
    assert "x2" in reasons[5] and "FLOAT" in reasons[5], reasons
    assert "fields where the header has" in reasons[60], reasons
    assert "x2" in reasons[150], reasons

    scored = {r["row_id"]: r for r in _read_predictions(output, fmt)}
    assert sorted(scored) == sorted(r["row_id"] for r in good)
    model = tf.saved_model.load(f"{config.serving_model_dir}/{version}")
    _, schema = read_schema(config.schema_path)
    examples = tf.constant([to_example(r, schema, skip=[config.label, "row_id"]).SerializeToString() for r in good])
    want = {k: v.numpy() for k, v in model.signatures["serving_default"](examples=examples).items()}
    ids = [r["row_id"] for r in good]
    if task == "regression":
        got = np.array([float(scored[i]["value"]) for i in ids])
        np.testing.assert_allclose(got, want["value"][:, 0], rtol=0, atol=1e-6)
        return
    top = [config.classes[k] for k in want["scores"].argmax(axis=1)]
    assert [scored[i]["class"] for i in ids] == top
    if task == "binary":
        got = np.array([float(scored[i]["probability"]) for i in ids])
        np.testing.assert_allclose(got, want["probabilities"][:, 0], rtol=0, atol=1e-6)
    else:
        got = np.array([[float(scored[i][f"score_{c}"]) for c in config.classes] for i in ids])
        np.testing.assert_allclose(got, want["scores"], rtol=0, atol=1e-6)


def test_predict_refuses_bad_input_in_one_line_and_writes_nothing(task_runs, tmp_path, capsys):
    config, *_ = task_runs["binary"]
    header, rows = dataset("binary", n=5, seed=3)
    table = write_csv(tmp_path / "ok.csv", header, rows)
    without_x2 = write_csv(tmp_path / "no_x2.csv", [h for h in header if h != "x2"], [r[:1] + r[2:] for r in rows])
    output_dir = str(Path(config.output.metadata_path).parent)
    base = ["predict", "--config", str(config.source), "--output-dir", output_dir]
    cases = {
        "missing path": (["--data", str(tmp_path / "nowhere.csv")], "nowhere.csv does not exist"),
        "unknown model": (["--data", str(table), "--model", "nosuch"], "unknown model 'nosuch'"),
        "unknown version": (["--data", str(table), "--version", "12345"], "unknown version 12345"),
        "unknown label": (["--data", str(table), "--label", "golden"], "unknown label 'golden'"),
        "header lacks a feature": (["--data", str(without_x2)], "the header lacks 'x2'"),
        "unknown --keep column": (["--data", str(table), "--keep", "trip_id"], "lacks 'trip_id', named by --keep"),
    }
    for case, (args, message) in cases.items():
        output = tmp_path / "out" / case.replace(" ", "_")
        code = main([*base, *args, "--output", str(output)])
        out, err = capsys.readouterr()
        assert code == 2, (case, out, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, (case, err)
        assert out == "" and not (tmp_path / "out").exists(), case


def test_predict_that_fails_on_beam_says_so_in_one_line_and_leaves_no_partial_output(task_runs, tmp_path, capsys):
    config, *_ = task_runs["binary"]
    header, rows = dataset("binary", n=5, seed=3)
    table = write_csv(tmp_path / "ok.csv", header, rows)
    output = tmp_path / "out" / "scored"
    output_dir = str(Path(config.output.metadata_path).parent)
    argv = ["predict", "--config", str(config.source), "--output-dir", output_dir, "--data", str(table)]
    code = main([*argv, "--output", str(output), "--beam-arg=--runner=NoSuchRunner"])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert err.count("\n") == 1 and err.startswith("error: batch prediction failed, no output written: "), err
    assert "NoSuchRunner" in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == [], "the partial directory is removed"


@pytest.mark.e2e
def test_a_run_with_predict_scores_its_data_with_the_version_it_pushed(task_runs, tmp_path):
    """The BatchPredict stage: a run with `predict:` set scores that data with the pushed version, and its
    rows and counts equal `conveyor predict`'s on the same data with the same version."""
    import dataclasses
    import io
    import shutil

    from ml_metadata.metadata_store import metadata_store

    from components.batch_predict import MODEL_VERSION, REJECTED_ROWS, ROWS_IN, SCORED, SCORED_DIR
    from pipeline.config_predict import PredictConfig
    from pipeline.runner import run_local
    from serving import batch_predict as bp

    config, *_ = task_runs["binary"]
    # A copy of the run's ML Metadata, so the other tests see their own runs only. Everything upstream is
    # served from cache (same pipeline root and serving directory): this run executes BatchPredict alone.
    store = tmp_path / "metadata.sqlite"
    shutil.copy(config.output.metadata_path, store)
    config = config.replace(
        output=dataclasses.replace(config.output, metadata_path=str(store)),
        predict=PredictConfig(data_root=config.data_root, format="csv"),
    )
    run_local(config, io.StringIO(), tmp_path / "logs")

    results = metadata_store.MetadataStore(config.output.store.connection_config()).get_artifacts_by_type(
        "InferenceResult"
    )
    assert len(results) == 1, results
    props = {k: getattr(v, v.WhichOneof("value")) for k, v in results[0].custom_properties.items()}
    version = list_versions(config.serving_model_dir)[-1]
    rows = len(dataset("binary")[1])
    assert props[MODEL_VERSION] == str(version), props
    assert props[ROWS_IN] == rows and props[SCORED] + props[REJECTED_ROWS] == rows, props
    scored_dir = Path(results[0].uri) / SCORED_DIR
    assert (scored_dir / bp.SUMMARY).is_file()

    target = bp.load_target(config.model_name, version, Path(config.serving_model_dir) / str(version))
    args = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    summary = bp.predict(target, bp.input_files(config.data_root), tmp_path / "cli", "csv", (), args)
    assert (summary.scored, summary.rejected) == (props[SCORED], props[REJECTED_ROWS])

    def lines(directory: Path) -> list[str]:
        files = sorted(directory.glob("predictions-*.csv"))
        return sorted(row for f in files for row in f.read_text().splitlines()[1:])

    assert lines(scored_dir) == lines(tmp_path / "cli") and len(lines(scored_dir)) == props[SCORED]
