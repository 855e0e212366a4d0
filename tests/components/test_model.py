"""The Keras model built from the config, and the warm start's layer-by-layer weight transfer."""

import numpy as np
import tf_keras as keras

from components.model import _remap_rows, build_model, warm_start
from pipeline.config import FeatureConfig, ModelConfig, load_config
from tests.conftest import TAXI_CONFIG


def _batch(features, n=5):
    rng = np.random.default_rng(0)
    batch = {}
    for f in features:
        if f.kind == "numeric":
            batch[f.transformed_name] = rng.normal(size=(n, 1)).astype("float32")
            batch[f"{f.name}_missing"] = np.zeros((n, 1), dtype="float32")
        else:
            batch[f.transformed_name] = rng.integers(0, f.cardinality, size=(n, 1))
    return batch


def test_model_from_the_taxi_config_predicts_one_probability_per_row():
    config = load_config(TAXI_CONFIG)
    net = build_model(config.features, config.model)
    out = net.predict(_batch(config.features, 7), verbose=0)
    assert out.shape == (7, 1)
    assert np.all((out >= 0) & (out <= 1))
    names = {layer.name for layer in net.layers}
    assert {"embedding_company", "dense_0", "dense_1", "output"} <= names


def test_multiclass_head_is_a_softmax_and_regression_predicts_in_the_labels_units():
    features = (FeatureConfig("a", "numeric"), FeatureConfig("city", "hashed", hash_buckets=16))
    batch = _batch(features, 6)
    multi = build_model(features, ModelConfig(hidden_units=(4,)), task="multiclass", num_classes=3)
    probabilities = multi.predict(batch, verbose=0)
    assert probabilities.shape == (6, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    regression = build_model(features, ModelConfig(hidden_units=(4,)), task="regression", label_stats=(1000.0, 50.0))
    values = regression.predict(batch, verbose=0)
    assert values.shape == (6, 1)
    # An untrained network outputs about 0 in z-units, so about the label's mean in its own units.
    assert np.all(np.abs(values - 1000.0) < 5 * 50.0)


def test_label_stats_over_one_pass():
    import tensorflow as tf

    from components.model import label_stats

    ds = tf.data.Dataset.from_tensor_slices(({"x": np.zeros(4)}, np.array([1.0, 3.0, 5.0, 7.0]))).batch(3)
    mean, std = label_stats(ds)
    assert mean == 4.0 and std == np.sqrt(5.0)


def _save(net, path):
    net.save(path, save_format="tf")
    return str(path)


def test_warm_start_copies_compatible_layers_and_explains_the_rest(tmp_path):
    small = (FeatureConfig("a", "numeric"), FeatureConfig("c", "categorical_string", top_k=3))
    base = build_model(small, ModelConfig(hidden_units=(4,), seed=1))
    base_dir = _save(base, tmp_path / "base")

    grown = small + (FeatureConfig("d", "categorical_int", top_k=2),)
    net = build_model(grown, ModelConfig(hidden_units=(4,), seed=2))
    vocab = {"c": ["x", "y", "z"], "d": ["1", "2"]}
    result = warm_start(net, base_dir, grown, vocab)

    fresh = dict(result.fresh)
    assert "embedding_d" in fresh and "not in the base model" in fresh["embedding_d"]
    assert "shape changed" in fresh["dense_0"]  # one more input feature -> wider first layer
    assert "output" in result.loaded
    np.testing.assert_array_equal(net.get_layer("output").get_weights()[0], base.get_layer("output").get_weights()[0])
    # The base model was saved without a vocabulary record, so its embedding cannot be trusted.
    assert "no record of its vocabulary" in fresh["embedding_c"]
    assert result.summary.startswith("warm-started from")


def test_cold_start_without_base_model():
    net = build_model((FeatureConfig("a", "numeric"),), ModelConfig(hidden_units=(2,)))
    result = warm_start(net, None, (), {})
    assert result.summary == "cold start: no blessed model yet"


def test_embedding_rows_follow_their_token_when_the_vocabulary_changes():
    old = np.arange(5 * 2, dtype=float).reshape(5, 2)  # vocab [a, b, c] + 2 OOV rows
    new = np.full((5, 2), -1.0)
    out = _remap_rows(old, new, ["a", "b", "c"], ["c", "a", "d"], oov_buckets=2)
    np.testing.assert_array_equal(out[0], old[2])  # c
    np.testing.assert_array_equal(out[1], old[0])  # a
    np.testing.assert_array_equal(out[2], new[2])  # d is new: fresh row
    np.testing.assert_array_equal(out[3:5], old[3:5])  # OOV buckets keep theirs


def test_keras_is_the_legacy_tf_keras():
    assert keras.__name__ == "tf_keras"


def _dataset(features, rows=12):
    import tensorflow as tf

    batch = _batch(features, rows)
    return tf.data.Dataset.from_tensor_slices((batch, np.zeros((rows, 1), "float32"))).batch(4)


def test_finite_predictions_pass_the_trainers_check():
    from components.model import check_finite_predictions

    config = load_config(TAXI_CONFIG)
    net = build_model(config.features, config.model)
    check_finite_predictions(net, _dataset(config.features), config.model.learning_rate)


def test_a_diverged_model_is_stopped_naming_the_cause():
    import pytest

    from components.model import NonFinitePredictions, check_finite_predictions

    config = load_config(TAXI_CONFIG)
    net = build_model(config.features, config.model)
    dense = net.get_layer("dense_0")
    kernel, bias = dense.get_weights()
    dense.set_weights([np.full_like(kernel, np.nan), bias])  # what an exploded gradient leaves behind
    with pytest.raises(NonFinitePredictions) as err:
        check_finite_predictions(net, _dataset(config.features), 0.5)
    text = str(err.value)
    assert text.startswith("training produced non-finite predictions: 12 of 12 scores")
    assert "model.learning_rate, now 0.5" in text and "unscaled or non-finite inputs" in text
