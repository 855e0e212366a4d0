"""Warmup: every pushed version carries TF Serving's warmup file of raw evaluation requests, and `conveyor serve`
replays it before the version is available; a file TF Serving would refuse makes the version fail to load."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from components.examples import record_compression
from components.warmup import MAX_RECORDS, WARMUP_PATH
from serving.models import ModelRepository

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pushed(two_runs, e2e_config) -> Path:
    """The version directory the first end-to-end run pushed."""
    return Path(e2e_config.serving_model_dir) / str(two_runs[1][0])


@pytest.fixture(scope="module")
def records(pushed) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(str(pushed / WARMUP_PATH))]


@pytest.fixture(scope="module")
def logs(records) -> list:
    return [prediction_log_pb2.PredictionLog.FromString(r) for r in records]


@pytest.fixture(scope="module")
def eval_examples(e2e_config) -> set[bytes]:
    """The raw evaluation split ExampleGen wrote, as serialized tf.Examples."""
    files = sorted(Path(e2e_config.output.pipeline_root).glob("CsvExampleGen/examples/*/Split-eval/*"))
    assert files, "the run should have written raw evaluation examples"
    names = [str(f) for f in files]
    return {r.numpy() for r in tf.data.TFRecordDataset(names, compression_type=record_compression(names))}


def _predict_examples(log) -> list[bytes]:
    return list(tf.make_ndarray(log.predict_log.request.inputs["examples"]))


def test_the_pushed_version_carries_tf_servings_warmup_file_of_raw_evaluation_requests(
    pushed, logs, eval_examples, e2e_config
):
    assert 1 <= len(logs) <= MAX_RECORDS
    kinds = [log.WhichOneof("log_type") for log in logs]
    assert set(kinds) == {"predict_log", "classify_log"} and kinds.count("classify_log") == 1, kinds
    for log in logs:
        request = getattr(log, log.WhichOneof("log_type")).request
        assert request.model_spec.name == e2e_config.model_name
    predict = [log for log in logs if log.HasField("predict_log")]
    assert {log.predict_log.request.model_spec.signature_name for log in predict} == {"serving_default"}
    for log in predict:
        tensor = log.predict_log.request.inputs["examples"]
        assert list(log.predict_log.request.inputs) == ["examples"]
        assert tensor.dtype == tf.string.as_datatype_enum and len(tensor.tensor_shape.dim) == 1
        assert 1 <= tensor.tensor_shape.dim[0].size <= 8
    sent = [e for log in predict for e in _predict_examples(log)]
    assert set(sent) <= eval_examples, "requests are the raw evaluation examples, as ExampleGen wrote them"
    example = tf.train.Example.FromString(sent[0])
    # Raw values: the categorical feature as its text, not as a vocabulary index.
    assert example.features.feature["payment_type"].bytes_list.value


def test_warmup_requests_run_on_the_real_signatures_and_agree_with_serving_default(pushed, logs):
    model = tf.saved_model.load(str(pushed))
    serve = model.signatures["serving_default"]
    for log in logs:
        if log.HasField("predict_log"):
            examples = _predict_examples(log)
            probabilities = serve(examples=tf.constant(examples))["probabilities"].numpy()
            assert probabilities.shape == (len(examples), 1) and np.all(np.isfinite(probabilities))
        else:
            request = log.classify_log.request
            serialized = [e.SerializeToString() for e in request.input.example_list.examples]
            assert len(serialized) >= 1
            scores = model.signatures[request.model_spec.signature_name](inputs=tf.constant(serialized))["scores"]
            expected = serve(examples=tf.constant(serialized))["probabilities"].numpy()[:, 0]
            assert np.allclose(scores.numpy()[:, 1], expected, atol=1e-6)


@pytest.fixture
def root_with_old_version(pushed, tmp_path) -> tuple[Path, str, int]:
    """A private serving root holding a copy of the pushed version."""
    name = pushed.parent.name
    root = tmp_path / "serving_model"
    shutil.copytree(pushed, root / name / pushed.name)
    return root, name, int(pushed.name)


class _Observer(logging.Handler):
    """At serving.warmup's 'warmed up' record, which is logged once the last request has run, notes what the
    repository serves then: the version just warmed up must not be among them yet."""

    def __init__(self, repository: ModelRepository, name: str):
        super().__init__(logging.INFO)
        self.repository, self.name, self.seen = repository, name, []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("warmed up"):
            served = self.repository.served().get(self.name, [])
            default = self.repository.get(self.name).version if served else None
            self.seen.append((record.args[1], record.args[2], served, default))


def test_a_new_version_is_available_only_after_its_warmup_replayed(root_with_old_version, records):
    root, name, old = root_with_old_version
    repository = ModelRepository(root)
    warmup_log = logging.getLogger("serving.warmup")
    observer = _Observer(repository, name)
    warmup_log.addHandler(observer)
    level = warmup_log.level
    warmup_log.setLevel(logging.INFO)
    try:
        repository.refresh()
        shutil.copytree(root / name / str(old), root / name / str(old + 1))
        repository.refresh()
    finally:
        warmup_log.removeHandler(observer)
        warmup_log.setLevel(level)
    # (version warmed up, records replayed, versions served then, default then)
    assert observer.seen == [(old, len(records), [], None), (old + 1, len(records), [old], old)]
    assert repository.served() == {name: [old, old + 1]}
    assert repository.status(name, old + 1)["model_version_status"][0]["state"] == "AVAILABLE"


def _write(path: Path, records: list[bytes]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def _unknown_signature(records: list[bytes]) -> list[bytes]:
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    log.predict_log.request.model_spec.signature_name = "no_such_signature"
    return [records[0], log.SerializeToString()]


BROKEN = {
    "truncated": (lambda path, records: path.write_bytes(path.read_bytes()[:-7]), "not readable as a TFRecord"),
    "not a PredictionLog": (
        lambda path, records: _write(path, [records[0], b"malformed_record"]),
        "not a PredictionLog",
    ),
    "unknown signature": (
        lambda path, records: _write(path, _unknown_signature(records)),
        'record 2: Serving signature name: "no_such_signature" not found',
    ),
    "too many records": (
        lambda path, records: _write(path, [records[0]] * (MAX_RECORDS + 1)),
        f"more than {MAX_RECORDS} records",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_warmup_file_tf_serving_would_refuse_fails_the_version_naming_the_file(root_with_old_version, records, case):
    root, name, old = root_with_old_version
    new = root / name / str(old + 1)
    shutil.copytree(root / name / str(old), new)
    breaks, message = BROKEN[case]
    breaks(new / WARMUP_PATH, records)
    repository = ModelRepository(root)
    repository.refresh()
    assert repository.served() == {name: [old]}, "the other version still serves"
    [status] = repository.status(name, old + 1)["model_version_status"]
    assert status["state"] == "END"
    error = status["status"]["error_message"]
    assert str(new / WARMUP_PATH) in error and message in error, error
    if case == "truncated":
        assert f"record {len(records)}" in error, "the last record is the one cut short"
        _write(new / WARMUP_PATH, records)
        repository.refresh()
        assert repository.served() == {name: [old, old + 1]}, "a mended warmup file is loaded on the next scan"
