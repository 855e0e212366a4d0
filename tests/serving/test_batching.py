"""Server-side batching, the model config and the request log on their own: real TensorFlow calls and files,
no pushed model needed."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.batching import Batcher, BatchingParameters, read_parameters
from serving.errors import ServingError, invalid
from serving.model_config import ConfigFile, ModelConfigError, parse
from serving.models import LoadedVersion
from serving.request_log import RequestLog, log_files


class Doubler:
    """A real TensorFlow computation standing in for a signature: doubles `x`, refuses negative rows, and
    records the batch sizes it was called with."""

    def __init__(self, delay: float = 0.0):
        self.sizes: list[int] = []
        self.delay = delay

    def __call__(self, feeds):
        x = feeds["x"]
        self.sizes.append(int(x.shape[0]))
        time.sleep(self.delay)
        if bool(tf.reduce_any(x < 0)):
            raise invalid("negative input")
        return {"y": (x * 2).numpy()}


def _feeds(*values):
    return {"x": tf.constant(values, dtype=tf.float32)}


def test_concurrent_calls_are_joined_and_each_gets_its_own_rows():
    run = Doubler(delay=0.01)
    batcher = Batcher(run, BatchingParameters(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1))
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: batcher.call(_feeds(float(i), float(i) + 0.5)), range(16)))
    finally:
        batcher.stop()
    for i, answer in enumerate(answers):
        assert np.allclose(answer["y"], [2 * i, 2 * i + 1])
    assert max(run.sizes) <= 8
    assert len(run.sizes) < 16 and sum(run.sizes) == 32


def test_batches_are_padded_to_the_allowed_sizes_and_the_padding_is_dropped():
    run = Doubler()
    parameters = BatchingParameters(max_batch_size=8, batch_timeout_micros=0, allowed_batch_sizes=(4, 8))
    batcher = Batcher(run, parameters)
    try:
        assert np.allclose(batcher.call(_feeds(1.0, 2.0, 3.0))["y"], [2, 4, 6])
        assert np.allclose(batcher.call(_feeds(*range(5)))["y"], [0, 2, 4, 6, 8])
        big = batcher.call(_feeds(*range(11)))  # over max_batch_size: runs on its own
        assert big["y"].shape == (11,)
    finally:
        batcher.stop()
    assert run.sizes == [4, 8, 11]


def test_a_bad_request_fails_alone_and_a_full_queue_is_refused():
    run = Doubler(delay=0.05)
    batcher = Batcher(run, BatchingParameters(max_batch_size=4, batch_timeout_micros=30_000, num_batch_threads=1))
    try:

        def one(i):
            try:
                return batcher.call(_feeds(-1.0 if i == 2 else float(i)))["y"].tolist()
            except ServingError as err:
                return err.status

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(4)))
        assert answers == [[0.0], [2.0], HTTPStatus.BAD_REQUEST, [6.0]]
    finally:
        batcher.stop()

    blocked = threading.Event()
    full = Batcher(lambda feeds: blocked.wait(10) and {"y": feeds["x"].numpy()}, BatchingParameters(
        max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1
    ))  # fmt: skip
    try:
        pool = ThreadPoolExecutor(2)
        running = pool.submit(full.call, _feeds(1.0))  # taken by the batch thread, which blocks
        time.sleep(0.2)
        queued = pool.submit(full.call, _feeds(2.0))  # fills the one-batch queue
        time.sleep(0.2)
        with pytest.raises(ServingError) as err:
            full.call(_feeds(3.0))
        assert err.value.status == HTTPStatus.SERVICE_UNAVAILABLE and "queue" in err.value.message
        blocked.set()
        assert running.result(10)["y"].tolist() == [1.0] and queued.result(10)["y"].tolist() == [2.0]
        pool.shutdown()
    finally:
        blocked.set()
        full.stop()


def test_batching_parameters_file_is_tf_servings_text_proto(tmp_path):
    path = tmp_path / "batching.txt"
    path.write_text(
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\nnum_batch_threads { value: 2 }\n"
        "max_enqueued_batches { value: 10 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 32\n"
        'thread_pool_name { value: "batch_threads" }\n'
    )
    assert read_parameters(path) == BatchingParameters(32, 2000, 10, 2, (8, 32))
    path.write_text("max_batch_size { value: 16 }\nallowed_batch_sizes: 8\n")
    with pytest.raises(ValueError, match=r"batching.txt: allowed_batch_sizes \[8\] .* end with max_batch_size"):
        read_parameters(path)
    path.write_text("max_batch_size: 16\n")
    with pytest.raises(ValueError, match="batching.txt is not a TF Serving BatchingParameters text proto"):
        read_parameters(path)
    with pytest.raises(ValueError, match="cannot read batching parameters file"):
        read_parameters(tmp_path / "missing.txt")


def _versions(root: Path, model: str, *versions: int) -> None:
    for version in versions:
        (root / model / str(version)).mkdir(parents=True)


def test_model_config_policies_labels_and_refusals(tmp_path):
    _versions(tmp_path, "taxi", 1, 2, 3)
    entries = parse(
        'model_config_list { config { name: "taxi" base_path: "/moved/away" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 1 versions: 3 } } "
        'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 } } '
        'config { name: "other" } }',
        "models.config",
        tmp_path,
    )
    taxi = entries["taxi"]
    assert taxi.base_path == tmp_path / "taxi", "a base path that does not exist is looked for in the serving root"
    assert taxi.wanted() == [1, 3] and dict(taxi.labels) == {"stable": 1, "canary": 3}
    assert entries["other"].policy == "latest" and entries["other"].wanted() == []
    latest = parse('model_config_list { config { name: "taxi" } }', "x", tmp_path)["taxi"]
    assert latest.wanted() == [3], "without a policy TF Serving serves the newest version only"
    every = parse('model_config_list { config { name: "taxi" model_version_policy { all {} } } }', "x", tmp_path)
    assert every["taxi"].wanted() == [1, 2, 3]
    for text, fragment in [
        ('model_config_list { config { name: "taxi" } config { name: "taxi" } }', "configured twice"),
        ('model_config_list { config { name: "taxi" model_platform: "pytorch" } }', "pytorch"),
        ("model_config_list { config { } }", "no name"),
        ("custom_model_config { }", "custom_model_config"),
        ("model_config_list { nonsense: 1 }", "is not a TF Serving model config"),
    ]:
        with pytest.raises(ModelConfigError, match=fragment):
            parse(text, "models.config", tmp_path)


def test_a_config_file_that_stops_parsing_keeps_the_previous_one(tmp_path):
    _versions(tmp_path, "taxi", 1, 2)
    config = ConfigFile(tmp_path)
    assert config.changed() and config.entries() is None, "no file yet: every model directory is served"
    config.path.write_text('model_config_list { config { name: "taxi" version_labels { key: "stable" value: 1 } } }')
    assert config.changed() and dict(config.entries()["taxi"].labels) == {"stable": 1}
    assert not config.changed()
    time.sleep(0.01)
    config.path.write_text("model_config_list { broken")
    with pytest.raises(ModelConfigError, match="models.config"):
        config.changed()
    assert dict(config.entries()["taxi"].labels) == {"stable": 1}
    with pytest.raises(ModelConfigError, match="does not exist"):
        ConfigFile(tmp_path, tmp_path / "given.config").changed()


def _servable(name="taxi", version=7) -> LoadedVersion:
    return LoadedVersion(name, version, Path("/nowhere"), None, {}, {}, None)


def _records(path: Path) -> list:
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]


def test_request_log_rotates_by_size_and_finishes_every_file_on_close(tmp_path):
    log = RequestLog(tmp_path, 1.0, max_file_bytes=600)
    examples = [tf.train.Example().SerializeToString()]
    outputs = {"probabilities": np.array([[0.25]], dtype=np.float32)}
    for _ in range(12):
        log.add("predict", _servable(), "serving_default", {"examples": examples}, outputs)
    log.close()
    files = log_files(tmp_path, "taxi")
    assert len(files) > 1, "past max_file_bytes a new file is started"
    assert not list((tmp_path / "taxi").glob("*.inprogress")), "closing renames every file to its final name"
    records = [r for path in files for r in _records(path)]
    assert len(records) == 12 == log.written
    assert records[0].log_metadata.model_spec.version.value == 7
    assert np.allclose(tf.make_ndarray(records[0].predict_log.response.outputs["probabilities"]), [[0.25]])


def test_request_log_samples_at_its_rate_and_refuses_a_rate_outside_0_1(tmp_path):
    log = RequestLog(tmp_path, 0.25)
    for _ in range(2000):
        log.add("regress", _servable(), "regression", {"inputs": [b""]}, {"outputs": np.array([1.0])})
    log.close()
    assert 350 < log.written < 650, log.written
    for rate in (0.0, 1.5, -1):
        with pytest.raises(ValueError, match="rate must be in"):
            RequestLog(tmp_path, rate)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--batching-parameters-file", "{tmp}/missing.txt"], "cannot read batching parameters file"),
        (["--request-log-rate", "1.5"], "--request-log-rate must be between 0 and 1"),
        (["--model-config-file", "{tmp}/none.config"], "--model-config-file"),
        (["--config", "{tmp}/bad.yaml"], "config key 'serving.request_log_rate': must be between 0 and 1, got 1.5"),
        (["--config", "{tmp}/none.yaml"], "config file"),
    ],
)
def test_serve_refuses_bad_flags_in_one_line(flags, fragment, tmp_path, capsys):
    from cli.main import main

    (tmp_path / "bad.yaml").write_text("serving: {model_name: taxi, request_log_rate: 1.5}\n", encoding="utf-8")
    code = main(["serve", "--output-dir", str(tmp_path), "--port", "0", "--grpc-port", "0"] + [
        flag.format(tmp=tmp_path) for flag in flags
    ])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


def test_request_log_flags_win_over_the_config_and_the_config_over_the_defaults(tmp_path):
    from cli.main import build_parser
    from cli.serve import _request_log_settings

    configured, bare = tmp_path / "configured.yaml", tmp_path / "bare.yaml"
    configured.write_text("serving: {model_name: taxi, request_log_rate: 0.5, request_log_dir: logs}\n")
    bare.write_text("name: taxi\nserving: {model_name: taxi}\n")

    def settings(config, *flags):
        args = ["serve", "--output-dir", str(tmp_path / "out"), "--config", str(config), *flags]
        return _request_log_settings(build_parser().parse_args(args))

    assert settings(configured) == (0.5, tmp_path / "logs")
    assert settings(configured, "--request-log-rate", "0", "--request-log-dir", "elsewhere") == (0.0, Path("elsewhere"))
    assert settings(bare) == (0.0, tmp_path / "out" / "request_logs")


def test_conveyor_run_refuses_the_request_log_settings_conveyor_serve_would(tmp_path):
    import yaml

    from pipeline.config import ConfigError, OutputConfig, parse_config
    from pipeline.environment import DEFAULT_CONFIG

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["serving"]["request_log_rate"] = 0.25
    assert parse_config(raw, DEFAULT_CONFIG.parent, OutputConfig.under(tmp_path)).model_name == "taxi"
    raw["serving"]["request_log_rate"] = -0.5
    with pytest.raises(ConfigError, match="'serving.request_log_rate': must be between 0 and 1, got -0.5"):
        parse_config(raw, DEFAULT_CONFIG.parent, OutputConfig.under(tmp_path))


# In a child process (argv[1]: the log directory; argv[2], if given: the largest file it may write, which
# fails a write as a full disk does): 400 records of 8 KiB through the request log; prints what happened.
_LOG_IN_CHILD = """
import json, logging, resource, signal, sys, time
from pathlib import Path
import numpy as np
from serving.request_log import RequestLog
from serving.servable import LoadedVersion
if len(sys.argv) > 2:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("serving.request_log").addHandler(handler)
log = RequestLog(sys.argv[1], 1.0)
servable = LoadedVersion("taxi", 7, Path("/nowhere"), None, {}, {}, None)
outputs = {"probabilities": np.array([[0.5]], dtype=np.float32)}
started = time.monotonic()
for _ in range(400):
    log.add("predict", servable, "serving_default", {"examples": [b"x" * 8192]}, outputs)
added = time.monotonic() - started
deadline = time.monotonic() + 10
while log.failed is None and time.monotonic() < deadline:
    time.sleep(0.05)
log.close()
print(json.dumps({"failed": log.failed, "written": log.written, "added": added, "warnings": warnings}))
"""


def test_a_full_disk_stops_request_logging_with_one_warning(full_disk):
    """A full disk (the shared `full_disk` fixture: a real 1 MiB tmpfs where it may be mounted, as in CI,
    else a file-size limit): the writes fail, logging stops with one warning naming the directory, and
    adding records neither raises nor waits."""
    import json
    import os
    import subprocess
    import sys

    root, limit, reason = full_disk
    child = subprocess.run(
        [sys.executable, "-c", _LOG_IN_CHILD, str(root), *limit],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["failed"] is not None and reason in result["failed"]
    assert 0 < result["written"] < 400
    assert result["added"] < 1.0, "adding records never waits for the disk"
    stopped = [w for w in result["warnings"] if "request logging stopped" in w]
    assert len(stopped) == 1 and str(root) in stopped[0]
