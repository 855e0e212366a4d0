"""`conveyor monitor` on real traffic: a ModelServer logging every request (gRPC Predict, REST predict and
plain-JSON classify) over the pushed version, one batch of the taxi rows as they are and one with a feature
never sent, a category shifted and a numeric feature scaled; the check runs through the console script,
with real TFDV on Beam, against the version's training statistics found in ML Metadata."""

import base64
import csv
import json
import shutil
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from cli.main import main
from components.examples import to_example
from serving.request_log import RequestLog, log_files
from serving.server import ModelServer
from tests.conftest import TAXI_CONFIG

pytestmark = pytest.mark.e2e

TIMEOUT = 60
DROPPED, SHIFTED, SCALED = "trip_seconds", "payment_type", "fare"


def _rows(small_taxi_dir, not_served) -> list[dict[str, str]]:
    with open(small_taxi_dir / "data.csv", newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k not in not_served} for row in csv.DictReader(f)]


def _shifted(row: dict[str, str]) -> dict[str, str]:
    """A client that stopped sending one feature, sends one category only and the fare in cents."""
    changed = {k: v for k, v in row.items() if k != DROPPED}
    changed[SHIFTED] = "Cash"
    changed[SCALED] = str(float(row[SCALED] or 0) * 100)
    return changed


def _send(server, name: str, serialized: list[bytes]) -> None:
    """Half over gRPC Predict, half over REST :predict (base64 tf.Examples), in requests of 50."""
    half = len(serialized) // 2
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for i in range(0, half, 50):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.inputs["examples"].CopyFrom(
                tf.make_tensor_proto(serialized[i : min(i + 50, half)], dtype=tf.string)
            )
            stub.Predict(request, timeout=TIMEOUT)
    for i in range(half, len(serialized), 50):
        instances = [{"b64": base64.b64encode(s).decode("ascii")} for s in serialized[i : i + 50]]
        _post(server, f"/v1/models/{name}:predict", {"instances": instances})


def _post(server, path: str, body: dict) -> dict:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def logged(served, schema, not_served, small_taxi_dir, json_rows, tmp_path_factory):
    """Request logs of two server sessions: the training rows as they are, then (past a second boundary)
    the shifted rows; both sessions' files in one log root, as one server's rotated files would be.

    Returns (log root, first request's time, the time between the sessions, the shifted session's log
    directory)."""
    rows = _rows(small_taxi_dir, not_served)
    as_is = rows[len(json_rows) :]
    # An empty CSV cell is an empty feature in training (present, no value): a JSON client sends null.
    pairs = zip(json_rows, rows[: len(json_rows)], strict=True)
    plain = [{name: sent.get(name) for name in row} for sent, row in pairs]
    assert any(value is None for row in plain for value in row.values())
    base = tmp_path_factory.mktemp("monitor")
    start = time.time()
    with ModelServer(served.root, port=0, grpc_port=0, request_log=RequestLog(base / "as_is", 1.0)) as server:
        _post(server, f"/v1/models/{served.name}:classify", {"examples": plain})
        _send(server, served.name, [to_example(r, schema).SerializeToString() for r in as_is])
    time.sleep(1.1)  # log times are whole seconds: the sessions must not share one
    middle = time.time()
    time.sleep(1.1)
    with ModelServer(served.root, port=0, grpc_port=0, request_log=RequestLog(base / "shifted", 1.0)) as server:
        _send(server, served.name, [to_example(_shifted(r), schema).SerializeToString() for r in rows])
    log_root = base / "request_logs"
    for session in ("as_is", "shifted"):
        shutil.copytree(base / session, log_root, dirs_exist_ok=True)
    assert len(log_files(log_root, served.name)) == 2
    return log_root, start, middle, base / "shifted" / served.name


def _monitor(capsys, e2e_config, log_root, *flags) -> tuple[int, str, str]:
    output_dir = Path(e2e_config.output.serving_root).parent
    argv = ["monitor", "--config", str(TAXI_CONFIG), "--output-dir", str(output_dir), "--log-dir", str(log_root)]
    capsys.readouterr()
    code = main([*argv, *flags])
    out, err = capsys.readouterr()
    return code, out, err


def _window(since: float, end: float) -> list[str]:
    return ["--since", f"{since:.3f}", "--window", f"{(end - since) / 3600:.9f}"]


def test_training_like_traffic_is_clean_and_says_how_it_was_sampled(capsys, e2e_config, logged, served):
    log_root, start, middle, _ = logged
    code, out, err = _monitor(capsys, e2e_config, log_root, *_window(int(start) - 1, middle), "--json")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["verdict"] == "clean" and result["findings"] == []
    assert result["version"] == served.version
    assert result["sampling"]["examples"] == 400 and result["sampling"]["rates"] == {
        "1": result["sampling"]["requests"]
    }
    assert result["sampling"]["requests"] == 1 + 4 + 4  # one classify, then 388 rows in requests of 50
    skew = {m["feature"]: m for m in result["measurements"] if m["kind"] == "skew"}
    assert {SHIFTED, SCALED, "company"} <= set(skew)
    assert all(not m["exceeded"] and m["distance"] < m["threshold"] for m in skew.values())
    assert "drift not checked" in " ".join(result["notes"])
    assert "Split-train/FeatureStats.pb" in result["training_statistics"]


def test_shifted_traffic_is_flagged_on_exactly_those_features_never_sent_first(capsys, e2e_config, logged):
    log_root, start, middle, _ = logged
    code, out, err = _monitor(capsys, e2e_config, log_root, *_window(middle, middle + (middle - start) + 5))
    assert code == 1, out + err
    lines = [line.strip() for line in out.splitlines()]
    findings = [f for f in lines if f.split(":")[0] in ("never in serving", "skew", "drift", "anomaly")]
    assert findings[0].startswith(f"never in serving: {DROPPED}: present in all ")
    flagged = {(f.split(": ")[0], f.split(": ")[1]) for f in findings}
    assert flagged == {
        ("never in serving", DROPPED),
        ("skew", SHIFTED),
        ("skew", SCALED),
        ("drift", SHIFTED),
        ("drift", SCALED),
    }
    shifted = next(f for f in findings if f.startswith(f"skew: {SHIFTED}: "))
    assert "L-infinity distance" in shifted and "above the threshold 0.2" in shifted and "most changed: Cash" in shifted
    distance = float(shifted.split("L-infinity distance ")[1].split(" ")[0])
    assert 0.2 < distance <= 1.0
    assert "Jensen-Shannon divergence" in next(f for f in findings if f.startswith(f"drift: {SCALED}: "))

    report = Path(out.split("report: ")[1].split(" ")[0])
    markdown = report.with_name("report.md").read_text(encoding="utf-8")
    page = report.read_text(encoding="utf-8")
    assert markdown.index(f"never in serving: {DROPPED}") < markdown.index(f"skew: {SHIFTED}")
    for name in (DROPPED, SHIFTED, SCALED):
        assert f"<code>{name}</code>" in page and f"`{name}`" in markdown
    assert page.count("<svg") >= 20, "training and serving charts side by side for every feature"
    assert "<script" not in page and "src=" not in page and "href=" not in page, "the page opens offline"
    assert json.loads(report.with_name("result.json").read_text())["verdict"] == "findings"


def test_too_few_examples_get_no_verdict_and_unreadable_files_are_counted(capsys, e2e_config, logged, tmp_path):
    log_root, start, middle, _ = logged
    copy = tmp_path / "request_logs"
    shutil.copytree(log_root, copy)
    (copy / "taxi" / "requests-zz-corrupt.tfrecord").write_bytes(b"\x07" * 40)
    code, out, err = _monitor(capsys, e2e_config, copy, *_window(int(start) - 1, middle), "--min-examples", "1000")
    assert code == 0, out + err
    assert "no verdict: 400 logged examples in the window, fewer than the 1,000 needed" in out
    assert "requests-zz-corrupt.tfrecord: DataLossError" in out
    assert "findings" not in out.splitlines()[0]


def test_absent_empty_or_unreadable_logs_exit_2_with_one_line(capsys, e2e_config, tmp_path):
    code, out, err = _monitor(capsys, e2e_config, tmp_path / "absent")
    assert (code, out) == (2, "") and len(err.strip().splitlines()) == 1 and "no request logs for model 'taxi'" in err
    (tmp_path / "empty" / "taxi").mkdir(parents=True)
    code, out, err = _monitor(capsys, e2e_config, tmp_path / "empty", "--json")
    assert code == 2 and json.loads(out) == {
        "verdict": "unavailable",
        "reason": f"no finished request-log files in {tmp_path / 'empty' / 'taxi'}",
    }
    (tmp_path / "bad" / "taxi").mkdir(parents=True)
    (tmp_path / "bad" / "taxi" / "requests-1.tfrecord").write_bytes(b"not a tfrecord at all")
    code, out, err = _monitor(capsys, e2e_config, tmp_path / "bad")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "none of the 1 request-log files" in err


def test_models_show_says_what_the_version_served_and_its_last_check(capsys, e2e_config, logged, served):
    log_root, start, middle, _ = logged
    output_dir = Path(e2e_config.output.serving_root).parent
    code, out, _ = _monitor(capsys, e2e_config, log_root, *_window(middle, middle + (middle - start) + 5), "--json")
    assert code == 1 and json.loads(out)["verdict"] == "findings"
    shutil.copytree(log_root, output_dir / "request_logs", dirs_exist_ok=True)  # where conveyor serve logs by default
    argv = ["models", "show", str(served.version), "--config", str(TAXI_CONFIG), "--output-dir", str(output_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "logged requests (800 examples), standing for about 17 served" in out
    assert f"{1 + 4 + 4 + 4 + 4:,} logged requests" in out
    check = next(line for line in out.splitlines() if "last monitoring check" in line)
    assert f"findings (5: {SCALED}, {SHIFTED}, {DROPPED})" in check and "report.html" in check


def test_the_data_gate_stops_a_run_whose_logged_traffic_skews(e2e_config, logged, tmp_path):
    import io

    import yaml

    from pipeline.config import OutputConfig, load_config
    from pipeline.runner import ComponentFailed, run_local

    _, _, _, shifted = logged
    raw = yaml.safe_load(TAXI_CONFIG.read_text())
    raw["data"].update(root=e2e_config.data_root, serving_root=str(shifted.parent))  # the log root: taxi/ in it
    raw["schema"] = e2e_config.schema_path
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    parsed = load_config(tmp_path / "config.yaml", output_dir=tmp_path / "out")
    assert (parsed.serving_request_logs, parsed.serving_data_root) == (str(shifted), None)
    config = e2e_config.replace(
        serving_request_logs=parsed.serving_request_logs, output=OutputConfig.under(tmp_path / "out")
    )
    with pytest.raises(ComponentFailed) as err:
        run_local(config, io.StringIO(), tmp_path / "logs")
    assert err.value.node_id == "DataGate"
    text = str(err.value.error)
    assert f"{SHIFTED}: High Linfty distance between training and serving" in text
    assert f"{DROPPED}: Column dropped" in text and "serving data" in text
    assert not (tmp_path / "out" / "serving_model").exists()


def test_schema_diff_reads_served_traffic_from_the_request_logs(capsys, e2e_config, logged, tmp_path):
    """`conveyor schema diff --data-root <request-log directory>`: the curated schema against what serving
    really sent, here the shifted session (a feature never sent, every payment type made Cash)."""
    _, _, _, shifted = logged
    capsys.readouterr()
    argv = ["schema", "diff", "--config", str(TAXI_CONFIG), "--data-root", str(shifted), "--report-dir", str(tmp_path)]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    assert "served traffic: 8 logged requests (400 examples) in 1 file(s)" in out, out
    lines = [line.strip() for line in out.splitlines()]
    assert f"{DROPPED}: feature removed: the data has no such column" in lines
    assert any(line.startswith(f"{SHIFTED}: ") and "'Credit Card'" in line and "gone" in line for line in lines)
    assert (tmp_path / "schema_diff.md").is_file()
