"""Publishing into the TF Serving layout: complete directories only, strictly increasing versions."""

import subprocess
import sys
from pathlib import Path

import pytest

from components.pusher.publish import list_versions, publish


def _model(path, marker="m"):
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_text(marker)
    (path / "variables").mkdir()
    (path / "variables" / "variables.index").write_text(marker)
    return path


def test_versions_strictly_increase_within_one_second(tmp_path):
    src = _model(tmp_path / "model")
    serving = tmp_path / "serving" / "taxi"
    versions = [publish(src, serving, now=1_700_000_000) for _ in range(3)]
    assert versions == [1_700_000_000, 1_700_000_001, 1_700_000_002]
    assert list_versions(serving) == versions
    for v in versions:
        assert (serving / str(v) / "saved_model.pb").read_text() == "m"
        assert (serving / str(v) / "variables" / "variables.index").is_file()
    assert [p.name for p in serving.iterdir() if not p.name.isdigit()] == [], "no staging leftovers"


def test_a_later_clock_wins_and_existing_versions_are_untouched(tmp_path):
    serving = tmp_path / "taxi"
    first = publish(_model(tmp_path / "a", "a"), serving, now=100)
    second = publish(_model(tmp_path / "b", "b"), serving, now=50)
    assert (first, second) == (100, 101)
    assert (serving / "100" / "saved_model.pb").read_text() == "a"
    assert (serving / "101" / "saved_model.pb").read_text() == "b"


def test_refuses_a_directory_that_is_not_a_saved_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        publish(tmp_path / "empty", tmp_path / "serving")
    assert list_versions(tmp_path / "serving") == []


def test_retention_keeps_the_newest_and_the_pinned(tmp_path):
    from components.pusher.publish import apply_retention, pinned_versions, write_models_config

    serving = tmp_path / "serving" / "taxi"
    versions = [publish(_model(tmp_path / f"m{i}", str(i)), serving, now=10) for i in range(6)]
    assert versions == [10, 11, 12, 13, 14, 15]
    write_models_config(serving, stable=11, canary=15)
    assert pinned_versions(serving) == {11, 15}
    removed = apply_retention(serving, keep=2)
    assert removed == [10, 12, 13]
    assert list_versions(serving) == [11, 14, 15]
    assert (serving / "11" / "saved_model.pb").read_text() == "1"
    assert [p.name for p in serving.iterdir() if not p.name.isdigit()] == []


def test_models_config_is_a_tf_serving_model_server_config(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from components.pusher.publish import write_models_config

    serving = tmp_path / "serving"
    write_models_config(serving / "other", stable=1)
    path = write_models_config(serving / "taxi", stable=100, canary=101)
    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    entries = {e.name: e for e in config.model_config_list.config}
    assert set(entries) == {"other", "taxi"}
    taxi = entries["taxi"]
    assert taxi.base_path == str(serving / "taxi")
    assert dict(taxi.version_labels) == {"stable": 100, "canary": 101}
    assert list(taxi.model_version_policy.specific.versions) == [100, 101]


def test_extra_files_are_in_place_before_the_version_appears(tmp_path):
    schema = tmp_path / "schema.pbtxt"
    schema.write_text("feature {}")
    version = publish(_model(tmp_path / "m"), tmp_path / "taxi", now=5, extra_files={"schema.pbtxt": schema})
    assert (tmp_path / "taxi" / str(version) / "assets.extra" / "schema.pbtxt").read_text() == "feature {}"


def test_a_persons_pins_survive_later_pushes_and_retention(tmp_path):
    from components.pusher.publish import apply_retention, pinned_versions, write_models_config

    serving = tmp_path / "serving" / "taxi"
    versions = [publish(_model(tmp_path / f"m{i}", str(i)), serving, now=10) for i in range(3)]
    path = write_models_config(serving, stable=11, canary=12)
    # A person pins version 10 with a label of their own, and lists it among the loaded versions.
    path.write_text(
        path.read_text()
        .replace("versions: 11", "versions: 10\n        versions: 11")
        .replace('key: "canary"', 'key: "audit"\n      value: 10\n    }\n    version_labels {\n      key: "canary"')
    )
    assert pinned_versions(serving) == {10, 11, 12}
    for i in range(3, 8):  # five more pushes, each rewriting the config as SafePusher does
        new = publish(_model(tmp_path / f"m{i}", str(i)), serving, now=10)
        write_models_config(serving, stable=versions[-1], canary=new)
        versions.append(new)
        apply_retention(serving, keep=2)
    assert 10 in list_versions(serving), "the pinned version must never be deleted"
    assert (serving / "10" / "saved_model.pb").read_text() == "0"
    assert list_versions(serving) == [10, 16, 17]
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert dict(entry.version_labels) == {"audit": 10, "stable": 16, "canary": 17}
    assert list(entry.model_version_policy.specific.versions) == [10, 16, 17]


# Publishes argv[2] into argv[1] in a child process; with argv[3], the child may not write files
# larger than that many bytes (RLIMIT_FSIZE), which fails a copy midway as a full disk does.
_PUBLISH_IN_CHILD = """
import resource, signal, sys
from components.pusher.publish import publish
if len(sys.argv) > 3:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
try:
    publish(sys.argv[2], sys.argv[1], now=8)
except OSError as err:
    print(err)
    sys.exit(3)
"""


def test_a_full_disk_fails_the_push_with_the_reason_and_leaves_nothing_half_written(tmp_path, full_disk):
    root, limit, reason = full_disk
    serving = root / "taxi"
    first = publish(_model(tmp_path / "small", "served"), serving, now=7)
    big = _model(tmp_path / "big", "b")
    (big / "variables" / "variables.data-00000-of-00001").write_bytes(b"\0" * (2 * 2**20))
    child = subprocess.run(
        [sys.executable, "-c", _PUBLISH_IN_CHILD, str(serving), str(big), *limit],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert child.returncode == 3, child.stderr
    assert reason in child.stdout
    assert list_versions(serving) == [first]
    assert (serving / str(first) / "saved_model.pb").read_text() == "served"
    assert [p.name for p in serving.iterdir()] == [str(first)], "the staging copy must be gone"
