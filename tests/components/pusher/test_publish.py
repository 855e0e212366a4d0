"""Publishing into the TF Serving layout: complete directories only, strictly increasing versions."""

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
