"""`conveyor serve`: real HTTP requests to the local TF Serving REST API over the model the pipeline pushed."""

import base64
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2

from components.pusher.publish import list_versions, publish
from serving.server import ModelServer

pytestmark = pytest.mark.e2e

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.2
WAIT_SECONDS = 15


@pytest.fixture(scope="module")
def server(served):
    with ModelServer(served.root, "127.0.0.1", 0, poll_seconds=POLL_SECONDS) as running:
        yield running


def _probabilities(answer) -> np.ndarray:
    """The `probabilities` output from a predict answer. The taxi model has several outputs
    (probabilities, scores, classes), so as in TF Serving each row is an object keyed by output
    name (`instances`), or `outputs` is one object of columns (`inputs`)."""
    if "predictions" in answer:
        rows = answer["predictions"]
        assert all(set(row) == {"probabilities", "scores", "classes"} for row in rows), rows[:1]
        return np.array([row["probabilities"] for row in rows])
    assert set(answer["outputs"]) == {"probabilities", "scores", "classes"}
    return np.array(answer["outputs"]["probabilities"])


def _call(server, method, path, body=None):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        server.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _predict(server, body, path="/v1/models/taxi:predict"):
    status, answer = _call(server, "POST", path, body)
    assert status == 200, answer
    return answer


def _versions(server, name) -> list[str]:
    status, answer = _call(server, "GET", f"/v1/models/{name}")
    assert status == 200, answer
    return [entry["version"] for entry in answer["model_version_status"] if entry["state"] == "AVAILABLE"]


def _wait_for(condition, seconds=WAIT_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_model_status_has_tf_servings_shape(server, served):
    one = {"version": str(served.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert _call(server, "GET", f"/v1/models/{served.name}") == (200, {"model_version_status": [one]})
    assert _call(server, "GET", f"/v1/models/{served.name}/versions/{served.version}") == (
        200,
        {"model_version_status": [one]},
    )


def test_metadata_describes_serving_default_as_tf_serving_does(server, served):
    status, answer = _call(server, "GET", f"/v1/models/{served.name}/metadata")
    assert status == 200, answer
    assert answer["model_spec"] == {"name": served.name, "signature_name": "", "version": str(served.version)}
    signature = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    examples = signature["inputs"]["examples"]
    assert examples["dtype"] == "DT_STRING"
    assert examples["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert examples["name"].endswith(":0")
    probabilities = signature["outputs"]["probabilities"]
    assert probabilities["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in probabilities["tensor_shape"]["dim"]] == ["-1", "1"]
    assert _call(server, "GET", f"/v1/models/{served.name}/versions/{served.version}/metadata") == (200, answer)


def test_row_form_with_serialized_examples_matches_the_saved_model(server, b64, expected):
    answer = _predict(server, {"instances": b64})
    assert list(answer) == ["predictions"]
    predictions = _probabilities(answer)
    assert predictions.shape == expected.shape
    assert np.allclose(predictions, expected, atol=1e-6)
    first = answer["predictions"][0]
    assert first["classes"] == ["0", "1"]
    assert np.allclose(first["scores"], [1 - expected[0, 0], expected[0, 0]], atol=1e-6)
    keyed = _predict(server, {"instances": [{"examples": b} for b in b64]})
    assert np.allclose(_probabilities(keyed), expected, atol=1e-6)


def test_columnar_form_with_serialized_examples_matches_the_saved_model(server, b64, expected):
    for body in ({"inputs": {"examples": b64}}, {"inputs": b64}):
        answer = _predict(server, body)
        assert list(answer) == ["outputs"]
        outputs = _probabilities(answer)
        assert outputs.shape == expected.shape
        assert np.allclose(outputs, expected, atol=1e-6)


def test_plain_json_values_score_as_their_tf_examples(server, json_rows, b64, expected, not_served):
    by_b64 = _probabilities(_predict(server, {"instances": b64}))
    rows = _probabilities(_predict(server, {"instances": json_rows}))
    assert np.allclose(rows, by_b64, atol=1e-6)
    assert np.allclose(rows, expected, atol=1e-6)
    # A client may send whole rows: features kept out of serving (the label) are ignored.
    with_label = [{**row, **{name: 1 for name in not_served}} for row in json_rows]
    assert np.allclose(_probabilities(_predict(server, {"instances": with_label})), by_b64, atol=1e-6)


def test_columnar_plain_json_values_with_nulls_score_as_rows(server, json_rows, expected):
    features = sorted({name for row in json_rows for name in row})
    columns = {name: [row.get(name) for row in json_rows] for name in features}
    assert any(None in column for column in columns.values()), "the rows should have a missing value to send as null"
    answer = _predict(server, {"inputs": columns})
    assert list(answer) == ["outputs"]
    assert np.allclose(_probabilities(answer), expected, atol=1e-6)


def test_explicit_version_and_signature_name(server, served, b64, expected):
    path = f"/v1/models/{served.name}/versions/{served.version}:predict"
    answer = _predict(server, {"signature_name": "serving_default", "instances": b64[:2]}, path)
    assert np.allclose(_probabilities(answer), expected[:2], atol=1e-6)
    status, answer = _call(server, "POST", path, {"signature_name": "classify", "instances": b64[:2]})
    assert status == 400
    assert answer == {"error": 'Serving signature name: "classify" not found in signature def'}


def _numeric_feature(json_rows, schema):
    floats = {f.name for f in schema.feature if f.type == schema_pb2.FLOAT}
    return next(name for name in json_rows[0] if name in floats)


PREDICT = "/v1/models/taxi:predict"
ERRORS = [
    pytest.param(
        "POST", "/v1/models/nope:predict", lambda c: {"instances": c["b64"]}, 404,
        "Servable not found for request: Latest(nope)", id="unknown model",
    ),
    pytest.param(
        "GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope", id="status of unknown model"
    ),
    pytest.param(
        "POST", "/v1/models/taxi/versions/123:predict", lambda c: {"instances": c["b64"]}, 404,
        "Servable not found for request: Specific(taxi, 123)", id="unknown version",
    ),
    pytest.param(
        "GET", "/v1/models/taxi/versions/123/metadata", None, 404,
        "Servable not found for request: Specific(taxi, 123)", id="metadata of unknown version",
    ),
    pytest.param(
        "GET", "/v1/models/taxi/versions/123", None, 404, "Could not find version 123 of model taxi",
        id="status of unknown version",
    ),
    pytest.param("POST", PREDICT, lambda c: b'{"instances": [', 400, "JSON Parse error", id="malformed JSON"),
    pytest.param(
        "POST", PREDICT, lambda c: {"rows": c["b64"]}, 400, "Missing 'inputs' or 'instances' key",
        id="no instances or inputs",
    ),
    pytest.param(
        "POST", PREDICT, lambda c: {"instances": []}, 400, "No values in 'instances' array", id="empty instances"
    ),
    pytest.param(
        "POST", PREDICT, lambda c: {"instances": [{**c["row"], c["numeric"]: "twelve"}]}, 400,
        "feature '{numeric}': JSON Value: \"twelve\" Type: String is not of expected type: FLOAT",
        id="string for a numeric feature",
    ),
    pytest.param(
        "POST", PREDICT, lambda c: {"instances": [{**c["row"], "surge_factor": 1.5}]}, 400,
        "unknown feature(s) 'surge_factor'", id="unknown feature",
    ),
    pytest.param(
        "POST", PREDICT, lambda c: {"instances": [{"b64": "not base64!"}]}, 400, "Unable to base64 decode",
        id="bad base64",
    ),
    pytest.param(
        "POST", PREDICT, lambda c: {"instances": [{"b64": base64.b64encode(b"garbage").decode()}]}, 400,
        "Could not parse example input", id="bytes that are no tf.Example",
    ),
]  # fmt: skip


@pytest.mark.parametrize("method, path, body, status, fragment", ERRORS)
def test_errors_as_tf_serving_reports_them(server, b64, json_rows, schema, method, path, body, status, fragment):
    context = {"b64": b64[:2], "row": json_rows[0], "numeric": _numeric_feature(json_rows, schema)}
    got_status, answer = _call(server, method, path, body(context) if body else None)
    assert got_status == status, answer
    assert list(answer) == ["error"]
    assert fragment.format(**context) in answer["error"]


def test_concurrent_requests_get_their_own_answers(server, b64, expected):
    def one(i):
        size = 1 + i % len(b64)
        return size, _probabilities(_predict(server, {"instances": b64[:size]}))

    with ThreadPoolExecutor(8) as pool:
        for size, predictions in pool.map(one, range(24)):
            assert np.allclose(predictions, expected[:size], atol=1e-6)


def test_new_versions_are_picked_up_and_removed_ones_dropped(served, b64, expected, tmp_path):
    root = tmp_path / "serving_model"
    shutil.copytree(served.root, root)
    model_dir, old, new = root / served.name, served.version, served.version + 1
    with ModelServer(root, "127.0.0.1", 0, poll_seconds=POLL_SECONDS) as server:
        assert _versions(server, served.name) == [str(old)]
        staging = model_dir / ".staging-x"
        shutil.copytree(model_dir / str(old), staging)
        time.sleep(5 * POLL_SECONDS)
        assert _versions(server, served.name) == [str(old)], "a staging directory is not a version"
        os.rename(staging, model_dir / str(new))
        assert _wait_for(lambda: _versions(server, served.name) == [str(new), str(old)])
        _, answer = _call(server, "GET", f"/v1/models/{served.name}/metadata")
        assert answer["model_spec"]["version"] == str(new), "the highest version is the default"
        assert np.allclose(_probabilities(_predict(server, {"instances": b64})), expected, atol=1e-6)

        # Removed as retention removes: renamed out of the version namespace, then deleted.
        doomed = model_dir / f".staging-deleting-{new}"
        os.rename(model_dir / str(new), doomed)
        shutil.rmtree(doomed)
        assert _wait_for(lambda: _versions(server, served.name) == [str(old)])
        status, answer = _call(server, "POST", f"/v1/models/{served.name}/versions/{new}:predict", {"instances": b64})
        assert (status, answer) == (404, {"error": f"Servable not found for request: Specific({served.name}, {new})"})
        _, answer = _call(server, "GET", f"/v1/models/{served.name}/metadata")
        assert answer["model_spec"]["version"] == str(old)


def test_a_version_that_does_not_load_is_reported_and_the_others_still_served(served, b64, expected, tmp_path):
    root = tmp_path / "serving_model"
    shutil.copytree(served.root, root)
    broken = root / served.name / str(served.version + 1)
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    with ModelServer(root, "127.0.0.1", 0, poll_seconds=POLL_SECONDS) as server:
        status, answer = _call(server, "GET", f"/v1/models/{served.name}")
        assert status == 200, answer
        states = {entry["version"]: entry for entry in answer["model_version_status"]}
        assert states[str(served.version)]["state"] == "AVAILABLE"
        assert states[str(served.version + 1)]["state"] == "END"
        assert states[str(served.version + 1)]["status"]["error_code"] != "OK"
        assert np.allclose(_probabilities(_predict(server, {"instances": b64})), expected, atol=1e-6)


def test_a_reader_never_sees_a_partial_or_repeated_version_during_rapid_pushes(served, tmp_path):
    model_dir = tmp_path / "serving_model" / served.name
    pushes = 20
    seen: list[int] = []
    partial_states = 0
    with ThreadPoolExecutor(1) as pool:
        pushing = pool.submit(lambda: [publish(served.version_dir, model_dir) for _ in range(pushes)])
        while True:
            finished = pushing.done()
            names = [p.name for p in model_dir.iterdir()] if model_dir.is_dir() else []
            listing = sorted(int(n) for n in names if n.isdigit())
            for version in listing:
                assert (model_dir / str(version) / "saved_model.pb").is_file(), f"version {version} is partial"
                assert (model_dir / str(version) / "variables" / "variables.index").is_file()
            assert len(set(listing)) == len(listing)
            assert set(seen) <= set(listing), "a version disappeared"
            partial_states += 0 < len(listing) < pushes
            seen = listing
            if finished:
                break
        published = pushing.result()
    assert len(set(published)) == pushes and published == sorted(published)
    assert list_versions(model_dir) == published == seen
    assert partial_states > 0, "the reader never looked while pushes were under way"


def _sigint_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT neither ignored nor blocked, whatever this process inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _start_serve(served, log_path: Path, flags: list[str]) -> tuple[subprocess.Popen, queue.Queue]:
    """`conveyor serve` over the served root in a child process, stderr to `log_path`; its stdout lines arrive
    on the queue."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    # faulthandler: if the server ever fails to stop, SIGABRT dumps every thread's stack to the log.
    command = [sys.executable, "-X", "faulthandler", "-m", "cli", "serve", "--output-dir", str(served.root.parent)]
    command += ["--port", "0", "--grpc-port", "0", *flags]
    with open(log_path, "w") as log:
        # As from a terminal: a shell without job control starts background commands with SIGINT
        # ignored, and a child inherits that (a CI rehearsal started that way hung here).
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=PROJECT_ROOT,
            env=env,
            preexec_fn=_sigint_as_in_a_terminal,
        )
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return process, lines


# Ctrl-C in a terminal sends SIGINT; a service manager, `docker stop` and Kubernetes send SIGTERM.
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_serve_command_prints_its_url_and_serves_until_interrupted(served, tmp_path, stop):
    log_path = tmp_path / "serve.log"
    process, lines = _start_serve(served, log_path, ["--max-body-bytes", "64"])
    try:
        line = lines.get(timeout=180)
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, f"no URL in {line!r}; log: {log_path.read_text()[-2000:]}"
        assert f"{served.name} version {served.version}" in line
        with urllib.request.urlopen(f"{match.group(0)}/v1/models/{served.name}", timeout=60) as response:
            assert json.loads(response.read())["model_version_status"][0]["version"] == str(served.version)
        too_big = urllib.request.Request(f"{match.group(0)}/v1/models/{served.name}:predict", data=b" " * 65)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(too_big, timeout=60)
        assert refused.value.code == 413
        assert "limit of 64 bytes (conveyor serve --max-body-bytes)" in json.loads(refused.value.read())["error"]
        process.send_signal(stop)
        try:
            assert process.wait(timeout=60) == 0
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=30)
            threads = log_path.read_text()[-6000:]
            pytest.fail(f"conveyor serve did not stop within 60 s of {stop.name}; its threads: {threads}")
        log_text = log_path.read_text()
        assert "conveyor serve: stopped" in log_text
        assert "Traceback" not in log_text, log_text[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_takes_the_request_log_rate_from_the_config_without_its_data(served, b64, expected, tmp_path):
    """`serving.request_log_rate` and `serving.request_log_dir` in the config, no flag: the real server logs
    every request there, though the config's data root and schema are absent from this machine."""
    from tensorflow_serving.apis import prediction_log_pb2

    config = tmp_path / "configs" / "taxi.yaml"
    config.parent.mkdir()
    config.write_text(
        "name: taxi\ndata: {root: ../no-such-data}\nlabel: big_tipper\nschema: ../no-such-schema.pbtxt\n"
        "features: [{name: trip_miles, kind: numeric}]\n"
        f"serving: {{model_name: {served.name}, request_log_rate: 1.0, request_log_dir: ../logs}}\n",
        encoding="utf-8",
    )
    log_path = tmp_path / "serve.log"
    process, lines = _start_serve(served, log_path, ["--config", str(config)])
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+", lines.get(timeout=180))
        assert url, log_path.read_text()[-2000:]
        assert lines.get(timeout=30).strip() == f"conveyor serve: logging 1 of requests to {tmp_path / 'logs'}"
        body = json.dumps({"instances": b64[:3]}).encode("utf-8")
        request = urllib.request.Request(f"{url.group(0)}/v1/models/{served.name}:predict", data=body)
        with urllib.request.urlopen(request, timeout=60) as response:
            assert np.allclose(_probabilities(json.loads(response.read())), expected[:3], atol=1e-6)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    files = sorted((tmp_path / "logs" / served.name).glob("*.tfrecord"))
    assert len(files) == 1, "closing on SIGTERM finishes the one log file"
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(files[0]))]
    assert len(records) == 1 and records[0].log_metadata.sampling_config.sampling_rate == 1.0
    assert len(records[0].predict_log.request.inputs["examples"].string_val) == 3


def _raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[bytes, bytes]:
    """Sends one request as written; returns the response's head and everything after it up to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head + body)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    response_head, _, rest = received.partition(b"\r\n\r\n")
    return response_head, rest


def test_a_body_over_the_limit_gets_413_unread_and_the_server_keeps_serving(served, b64):
    body = json.dumps({"instances": b64[:1]}).encode("utf-8")
    path = f"/v1/models/{served.name}:predict"
    with ModelServer(served.root, "127.0.0.1", 0, poll_seconds=POLL_SECONDS, max_body_bytes=len(body)) as server:
        assert _call(server, "POST", path, body)[0] == 200, "a body at the limit is served"
        over = body + b" "
        status, answer = _call(server, "POST", path, over)
        assert status == 413
        assert answer == {
            "error": f"request body of {len(over)} bytes is over the limit of {len(body)} bytes "
            "(conveyor serve --max-body-bytes)"
        }
        # The connection is closed after the answer, and a client that asks first never sends the body.
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(over)}\r\n".encode()
        response_head, rest = _raw_request(server.port, head + b"\r\n", over)
        assert response_head.startswith(b"HTTP/1.1 413") and b"Connection: close" in response_head
        assert json.loads(rest)["error"].startswith(f"request body of {len(over)} bytes")
        response_head, rest = _raw_request(server.port, head + b"Expect: 100-continue\r\n\r\n")
        assert response_head.startswith(b"HTTP/1.1 413"), response_head
        assert b"100 Continue" not in response_head
        assert _call(server, "POST", path, body)[0] == 200


LIMITS = [
    pytest.param(
        "GET", "/v1/models/taxi/versions/" + "9" * 5000, None, "Failed to convert version: 9999",
        id="version past int64",
    ),
    pytest.param(
        "POST", PREDICT, b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper than 256 levels",
        id="JSON nested past Python's limit",
    ),
    pytest.param(
        "POST", PREDICT, b'{"instances": ["\ud800"]}', "Invalid encoding in string.", id="lone surrogate"
    ),
]  # fmt: skip


@pytest.mark.parametrize("method, path, body, fragment", LIMITS)
def test_input_past_pythons_limits_gets_400_not_500(server, method, path, body, fragment):
    status, answer = _call(server, method, path, body)
    assert status == 400, answer
    assert fragment in answer["error"]
