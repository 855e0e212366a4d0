"""`conveyor serve`'s gRPC API on loopback, through the official tensorflow-serving-api stubs and TFX's own
InfraValidator client: the numbers REST gives, TF Serving's status codes, version labels from models.config,
a push under load, server-side batching and the request log."""

import json
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from components.pusher.publish import MODELS_CONFIG, publish, write_models_config
from serving.batching import BatchingParameters
from serving.request_log import RequestLog, log_files
from serving.server import ModelServer

pytestmark = pytest.mark.e2e

POLL_SECONDS = 0.2
TIMEOUT = 60


@pytest.fixture(scope="module")
def server(served):
    with ModelServer(served.root, port=0, grpc_port=0, poll_seconds=POLL_SECONDS) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _predict_request(serialized, name="taxi", **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(serialized, dtype=tf.string))
    return request


def _probabilities(response) -> np.ndarray:
    return tf.make_ndarray(response.outputs["probabilities"])


def _rest(server, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(server.url + path, data=data), timeout=TIMEOUT) as response:
        return json.loads(response.read())


def test_predict_through_the_official_stub_gives_the_saved_models_and_rests_numbers(
    server, stub, served, serialized, b64, expected
):
    response = stub.Predict(_predict_request(serialized), timeout=TIMEOUT)
    assert response.model_spec.name == served.name
    assert response.model_spec.version.value == served.version
    assert response.model_spec.signature_name == "serving_default"
    assert set(response.outputs) == {"probabilities", "scores", "classes"}
    assert np.allclose(_probabilities(response), expected, atol=1e-6)
    rest = _rest(server, f"/v1/models/{served.name}:predict", {"instances": b64})
    assert np.allclose([row["probabilities"] for row in rest["predictions"]], _probabilities(response), atol=1e-7)

    only = _predict_request(serialized[:2], version=served.version)
    only.output_filter.append("probabilities")
    filtered = stub.Predict(only, timeout=TIMEOUT)
    assert set(filtered.outputs) == {"probabilities"}
    assert np.allclose(_probabilities(filtered), expected[:2], atol=1e-6)


def test_metadata_status_and_multi_inference_as_tf_serving_answers_them(server, stub, served, serialized, expected):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = served.name
    response = stub.GetModelMetadata(request, timeout=TIMEOUT)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "classification"} <= set(signatures.signature_def)
    assert signatures.signature_def["classification"].method_name == "tensorflow/serving/classify"
    assert response.model_spec.version.value == served.version

    with grpc.insecure_channel(server.grpc_address) as channel:
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": served.name}), timeout=TIMEOUT
        )
    (entry,) = status.model_version_status
    assert (entry.version, entry.state) == (served.version, get_model_status_pb2.ModelVersionStatus.AVAILABLE)

    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add(method_name="tensorflow/serving/classify")
    task.model_spec.name, task.model_spec.signature_name = served.name, "classification"
    for data in serialized[:3]:
        multi.input.example_list.examples.add().ParseFromString(data)
    (result,) = stub.MultiInference(multi, timeout=TIMEOUT).results
    scores = [[c.score for c in row.classes] for row in result.classification_result.classifications]
    assert np.allclose(np.array(scores)[:, 1:], expected[:3], atol=1e-6)
    assert [c.label for c in result.classification_result.classifications[0].classes] == ["0", "1"]


@pytest.mark.parametrize(
    "change, code, fragment",
    [
        (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND, "Latest(nope)"),
        (lambda r: r.model_spec.version.__setattr__("value", 1), grpc.StatusCode.NOT_FOUND, "Specific(taxi, 1)"),
        (lambda r: setattr(r.model_spec, "version_label", "nope"), grpc.StatusCode.INVALID_ARGUMENT, "label: nope"),
        (lambda r: setattr(r.model_spec, "signature_name", "x"), grpc.StatusCode.INVALID_ARGUMENT, '"x" not found'),
        (
            lambda r: r.inputs["examples"].CopyFrom(tf.make_tensor_proto([1.0])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be string but float is provided",
        ),
        (
            lambda r: r.inputs["other"].CopyFrom(tf.make_tensor_proto([b"x"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Sent extra: {other}",
        ),
        (
            lambda r: r.inputs["examples"].CopyFrom(tf.make_tensor_proto([b"not a tf.Example"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Could not parse example input",
        ),
        (lambda r: r.output_filter.append("nope"), grpc.StatusCode.INVALID_ARGUMENT, "alias not found"),
    ],
)
def test_bad_requests_get_tf_servings_status_and_the_server_keeps_serving(stub, serialized, change, code, fragment):
    request = _predict_request(serialized[:1])
    change(request)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=TIMEOUT)
    assert err.value.code() == code
    assert fragment in err.value.details()
    assert stub.Predict(_predict_request(serialized[:1]), timeout=TIMEOUT).outputs["probabilities"]


def test_a_message_over_the_size_limit_is_refused_with_resource_exhausted(served, serialized):
    with ModelServer(served.root, port=0, grpc_port=0, max_body_bytes=4096) as small:
        with grpc.insecure_channel(small.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(_predict_request(serialized * 40), timeout=TIMEOUT)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.Predict(_predict_request(serialized[:1]), timeout=TIMEOUT).outputs["probabilities"]


def test_tfx_infra_validators_client_waits_for_the_model_and_sends_its_request_builders_requests(
    server, served, e2e_config, tmp_path
):
    """TFX's own TF Serving client and request builder, unchanged, as InfraValidator runs them."""
    from tfx.components.infra_validator import request_builder
    from tfx.components.infra_validator.model_server_clients.tensorflow_serving_client import (
        TensorFlowServingClient,
    )
    from tfx.proto import infra_validator_pb2
    from tfx.types import standard_artifacts

    model = standard_artifacts.Model()
    model.uri = str(tmp_path)
    (tmp_path / "Format-Serving").symlink_to(served.version_dir)
    examples = standard_artifacts.Examples()
    examples.uri = str(sorted((Path(e2e_config.output.pipeline_root) / "CsvExampleGen" / "examples").iterdir())[-1])
    examples.split_names = '["train", "eval"]'
    spec = infra_validator_pb2.RequestSpec(
        tensorflow_serving=infra_validator_pb2.TensorFlowServingRequestSpec(
            signature_names=["serving_default", "classification"]
        ),
        split_name="eval",
        num_examples=3,
    )
    requests = request_builder.build_requests(served.name, model, examples, spec)
    assert [type(r).__name__ for r in requests] == ["PredictRequest"] * 3 + ["ClassificationRequest"] * 3
    client = TensorFlowServingClient(server.grpc_address, served.name)
    client.WaitUntilModelLoaded(deadline=time.time() + TIMEOUT, polling_interval_sec=1)
    client.SendRequests(requests)  # raises on any refused request


def _labelled_root(served, tmp_path) -> tuple[Path, int, int]:
    """A serving root with two versions of the model (the pushed one twice) and no models.config yet."""
    root = tmp_path / "serving_model"
    shutil.copytree(served.root, root)
    newer = served.version + 1
    shutil.copytree(root / served.name / str(served.version), root / served.name / str(newer))
    return root, served.version, newer


def _version_of(stub, serialized, **spec) -> int:
    return stub.Predict(_predict_request(serialized[:1], **spec), timeout=TIMEOUT).model_spec.version.value


def test_version_labels_follow_models_config_and_its_edits_without_a_restart(served, serialized, tmp_path):
    root, old, new = _labelled_root(served, tmp_path)
    write_models_config(root / served.name, stable=old, canary=new)
    with ModelServer(root, port=0, grpc_port=0, poll_seconds=POLL_SECONDS) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert _version_of(stub, serialized, version_label="stable") == old
            assert _version_of(stub, serialized, version_label="canary") == new
            assert _version_of(stub, serialized) == new, "without a label, the highest loaded version answers"
            rest = _rest(server, f"/v1/models/{served.name}/labels/stable/metadata")
            assert rest["model_spec"]["version"] == str(old)
            status = _rest(server, f"/v1/models/{served.name}/labels/canary")
            assert [entry["version"] for entry in status["model_version_status"]] == [str(new)]

            # Promote the canary by editing the file, as a person or `conveyor models rollback` would.
            write_models_config(root / served.name, stable=new, canary=new)
            deadline = time.monotonic() + 15
            while _version_of(stub, serialized, version_label="stable") != new and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            assert _version_of(stub, serialized, version_label="stable") == new
            # The config now names only the new version: the old one is unloaded, as TF Serving does.
            deadline = time.monotonic() + 15
            while server.served()[served.name] != [new] and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            assert server.served()[served.name] == [new]

            # HandleReloadConfigRequest takes effect at once: back to both versions, stable on the old one.
            config = model_server_config_pb2.ModelServerConfig()
            entry = config.model_config_list.config.add(name=served.name, base_path=str(root / served.name))
            entry.model_platform = "tensorflow"
            entry.model_version_policy.specific.versions.extend([old, new])
            entry.version_labels["stable"] = old
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=TIMEOUT)
            assert server.served()[served.name] == [old, new]
            assert _version_of(stub, serialized, version_label="stable") == old
            with pytest.raises(grpc.RpcError) as err:
                _version_of(stub, serialized, version_label="canary")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            bad = model_server_config_pb2.ModelServerConfig()
            bad.model_config_list.config.add(name=served.name, model_platform="pytorch")
            with pytest.raises(grpc.RpcError) as err:
                models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=bad), timeout=TIMEOUT)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pytorch" in err.value.details()
            assert _version_of(stub, serialized, version_label="stable") == old, "a refused config changes nothing"


def test_a_push_under_load_fails_no_request_and_each_answer_comes_from_a_whole_version(served, serialized, tmp_path):
    root = tmp_path / "serving_model"
    shutil.copytree(served.root, root)
    old = served.version
    write_models_config(root / served.name, stable=old)
    answers: list[tuple[int, list[int]]] = []
    failures: list[str] = []
    stop = threading.Event()
    with ModelServer(root, port=0, grpc_port=0, poll_seconds=POLL_SECONDS) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            def client(index: int) -> None:
                seen = []
                while not stop.is_set():
                    try:
                        response = stub.Predict(_predict_request(serialized[:2]), timeout=TIMEOUT)
                    except grpc.RpcError as err:
                        failures.append(f"{err.code()}: {err.details()}")
                        continue
                    if tf.make_ndarray(response.outputs["probabilities"]).shape != (2, 1):
                        failures.append(f"a partial answer: {response}")
                    seen.append(response.model_spec.version.value)
                answers.append((index, seen))

            with ThreadPoolExecutor(4) as pool:
                for i in range(4):
                    pool.submit(client, i)
                time.sleep(1.0)
                new = publish(served.version_dir, root / served.name)
                write_models_config(root / served.name, stable=old, canary=new)
                deadline = time.monotonic() + 30
                while server.served().get(served.name, [])[-1:] != [new] and time.monotonic() < deadline:
                    time.sleep(POLL_SECONDS)
                time.sleep(1.0)
                stop.set()
    assert not failures, failures[:3]
    assert len(answers) == 4
    for _, seen in answers:
        assert seen and set(seen) <= {old, new}
        assert seen[-1] == new, "every client reaches the new version"
        assert seen == sorted(seen), "once the new version answers, the old one never answers again"


def test_batching_joins_concurrent_requests_and_keeps_each_answer_its_own(served, serialized, expected):
    batching = BatchingParameters(max_batch_size=8, batch_timeout_micros=20_000, num_batch_threads=1)
    with ModelServer(served.root, port=0, grpc_port=0, batching=batching) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            def one(i: int):
                if i == 5:  # one bad request among them fails alone
                    try:
                        stub.Predict(_predict_request([b"not a tf.Example"]), timeout=TIMEOUT)
                    except grpc.RpcError as err:
                        return i, err.code()
                    return i, None
                row = i % len(serialized)
                return i, _probabilities(stub.Predict(_predict_request([serialized[row]]), timeout=TIMEOUT))

            with ThreadPoolExecutor(16) as pool:
                results = dict(pool.map(one, range(32)))
        ((_, batcher),) = server.inference._batchers.values()
        assert batcher.batches < 31, "concurrent requests were joined into batches"
    assert results.pop(5) == grpc.StatusCode.INVALID_ARGUMENT
    for i, probabilities in results.items():
        assert np.allclose(probabilities, expected[i % len(serialized)], atol=1e-6)


def _read_logs(root: Path, model: str) -> list:
    records = []
    for path in log_files(root, model):
        for data in tf.data.TFRecordDataset(str(path)):
            records.append(prediction_log_pb2.PredictionLog.FromString(data.numpy()))
    return records


def test_request_log_writes_tf_servings_prediction_logs_for_both_protocols(
    served, serialized, b64, json_rows, expected, tmp_path
):
    log_root = tmp_path / "request_logs"
    with ModelServer(served.root, port=0, grpc_port=0, request_log=RequestLog(log_root, 1.0)) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(_predict_request(serialized[:3]), timeout=TIMEOUT)
        _rest(server, f"/v1/models/{served.name}:predict", {"instances": b64[3:5]})
        _rest(server, f"/v1/models/{served.name}:classify", {"examples": json_rows[:1]})
    records = _read_logs(log_root, served.name)
    assert [r.WhichOneof("log_type") for r in records] == ["predict_log", "predict_log", "classify_log"]
    for record in records:
        meta = record.log_metadata
        assert (meta.model_spec.name, meta.model_spec.version.value) == (served.name, served.version)
        assert meta.sampling_config.sampling_rate == 1.0
        assert abs(meta.timestamp_secs - time.time()) < 600
        assert list(meta.saved_model_tags) == ["serve"]
    first, second, third = records
    assert first.log_metadata.model_spec.signature_name == "serving_default"
    assert list(tf.make_ndarray(first.predict_log.request.inputs["examples"])) == serialized[:3]
    assert np.allclose(tf.make_ndarray(first.predict_log.response.outputs["probabilities"]), expected[:3], atol=1e-6)
    assert list(tf.make_ndarray(second.predict_log.request.inputs["examples"])) == serialized[3:5]
    assert third.log_metadata.model_spec.signature_name == "classification"
    (example,) = third.classify_log.request.input.example_list.examples
    assert list(example.features.feature["trip_miles"].float_list.value) == pytest.approx([json_rows[0]["trip_miles"]])
    assert len(third.classify_log.response.result.classifications[0].classes) == 2


def test_a_request_log_that_cannot_be_written_stops_logging_not_serving(served, serialized, tmp_path, caplog):
    log_root = tmp_path / "request_logs"
    log_root.mkdir()
    (log_root / served.name).write_text("a file where the model's log directory should be")
    request_log = RequestLog(log_root, 1.0)
    with ModelServer(served.root, port=0, grpc_port=0, request_log=request_log) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(5):
                stub.Predict(_predict_request(serialized[:1]), timeout=TIMEOUT)
                time.sleep(0.05)
            deadline = time.monotonic() + 10
            while request_log.failed is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stub.Predict(_predict_request(serialized[:1]), timeout=TIMEOUT).outputs["probabilities"]
    assert request_log.failed is not None and request_log.written == 0
    warnings = [r.getMessage() for r in caplog.records if "request logging stopped" in r.getMessage()]
    assert len(warnings) == 1 and str(log_root) in warnings[0]


def test_models_config_file_given_by_flag_is_honoured(served, serialized, tmp_path):
    root, old, new = _labelled_root(served, tmp_path)
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add(name=served.name, base_path=str(root / served.name))
    entry.model_version_policy.specific.versions.append(old)
    path = tmp_path / "elsewhere.config"
    path.write_text(text_format.MessageToString(config))
    assert not (root / MODELS_CONFIG).exists()
    with ModelServer(root, port=0, grpc_port=0, model_config_file=path) as server:
        assert server.served() == {served.name: [old]}, "the config's specific policy loads only the listed version"
