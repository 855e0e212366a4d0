"""The pre-push check: a fresh process loads the SavedModel and scores raw examples; NaN, Inf or a
model that does not load stops the push with the reason."""

import pytest
import tensorflow as tf

from components.pusher.component import PrePushCheckError, pre_push_check


def _examples_artifact(tmp_path, n=4):
    """An Examples-like directory: Split-eval/ with a gzipped TFRecord of raw tf.Examples."""
    split = tmp_path / "examples" / "Split-eval"
    split.mkdir(parents=True)
    path = str(split / "data_tfrecord-00000-of-00001.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for i in range(n):
            example = tf.train.Example()
            example.features.feature["x"].float_list.value.append(float(i))
            writer.write(example.SerializeToString())

    class Artifact:
        uri = str(tmp_path / "examples")

    return Artifact()


def _model(tmp_path, name, fn):
    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            x = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
            return {"probabilities": fn(x)}

    module = Scorer()
    path = str(tmp_path / name)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def test_a_model_with_finite_scores_passes(tmp_path):
    model = _model(tmp_path, "good", lambda x: tf.sigmoid(x))
    assert "scored 4 raw evaluation examples with finite outputs" in pre_push_check(model, _examples_artifact(tmp_path))


@pytest.mark.parametrize("name, fn", [("nan", lambda x: x * float("nan")), ("inf", lambda x: x / 0.0 + 1.0)])
def test_nan_or_inf_stops_the_push_with_the_reason(tmp_path, name, fn):
    model = _model(tmp_path, name, fn)
    with pytest.raises(PrePushCheckError, match="model not pushed: output 'probabilities' holds NaN or Inf"):
        pre_push_check(model, _examples_artifact(tmp_path))


def test_a_model_that_does_not_load_stops_the_push(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a saved model")
    with pytest.raises(PrePushCheckError, match="model not pushed: the model does not load"):
        pre_push_check(str(broken), _examples_artifact(tmp_path))
