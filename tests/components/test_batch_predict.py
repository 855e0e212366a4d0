"""The `predict:` config section the BatchPredict stage reads (the stage's end-to-end run is in
tests/test_tasks.py, on the task runs `conveyor predict`'s tests already share)."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.config_predict import PredictConfig
from tests.conftest import TAXI_CONFIG


def _config_with(tmp_path: Path, section) -> Path:
    """The taxi config, its paths made absolute, with `predict: section`, written into tmp_path."""
    raw = yaml.safe_load(TAXI_CONFIG.read_text())
    raw["predict"] = section
    raw["data"]["root"] = str((TAXI_CONFIG.parent / raw["data"]["root"]).resolve())
    raw["schema"] = str((TAXI_CONFIG.parent / raw["schema"]).resolve())
    path = tmp_path / "taxi.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "section,key,problem",
    [
        ({"format": "csv"}, "predict", "data_root"),
        ({"data_root": "nowhere"}, "predict.data_root", "does not exist"),
        ({"data_root": ".", "format": "json"}, "predict.format", "'json' is not one of csv, tfrecord, parquet"),
        ({"data_root": ".", "output": "x"}, "predict", "output"),
        ("data", "predict", "must be"),
    ],
)
def test_a_bad_predict_section_is_refused_naming_the_key(tmp_path, section, key, problem):
    with pytest.raises(ConfigError) as err:
        load_config(_config_with(tmp_path, section))
    assert err.value.key.startswith(key) and problem in str(err.value), (err.value.key, str(err.value))


def test_a_predict_section_is_parsed_relative_to_the_config(tmp_path):
    (tmp_path / "to_score").mkdir()
    config = load_config(_config_with(tmp_path, {"data_root": "to_score", "format": "parquet"}))
    assert config.predict == PredictConfig(str(tmp_path / "to_score"), "parquet")
    assert load_config(_config_with(tmp_path, None)).predict is None
