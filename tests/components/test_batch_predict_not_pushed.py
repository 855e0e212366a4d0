"""The BatchPredict stage's not-pushed path, run through the component's own TFX executor (no pipeline)."""

from __future__ import annotations

from tfx.types.standard_artifacts import InferenceResult, PushedModel, Schema

from components.batch_predict import NOT_SCORED_REASON, SCORED, BatchPredict
from components.pusher.component import PUSHED


def test_nothing_pushed_scores_nothing_and_says_why(tmp_path):
    pushed, schema, result = PushedModel(), Schema(), InferenceResult()
    pushed.uri, schema.uri, result.uri = str(tmp_path / "pushed"), str(tmp_path / "schema"), str(tmp_path / "out")
    pushed.set_int_custom_property(PUSHED, 0)
    executor = BatchPredict.EXECUTOR_SPEC.executor_class()
    # A data root that does not exist: scoring it would raise, so passing means nothing was read.
    params = {"data_root": str(tmp_path / "no-such-data"), "output_format": "csv"}
    executor.Do({"pushed_model": [pushed], "schema": [schema]}, {"inference_result": [result]}, params)
    assert "not pushed" in result.get_string_custom_property(NOT_SCORED_REASON)
    assert result.get_int_custom_property(SCORED) == 0
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
