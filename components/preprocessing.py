"""tf.Transform preprocessing_fn built from the config's feature list (runs inside Transform)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from components.features import missing_indicator_name, to_dense, transformed_label
from pipeline.config import FeatureConfig, features_from_component_config, task_from_component_config


def _numeric(x: Any) -> tuple[tf.Tensor, tf.Tensor]:
    values = x.values if isinstance(x, tf.SparseTensor) else x
    mean = tft.mean(tf.cast(values, tf.float32))
    if isinstance(x, tf.SparseTensor):
        x = tf.SparseTensor(x.indices, tf.cast(x.values, tf.float32), x.dense_shape)
    else:
        x = tf.cast(x, tf.float32)
    return to_dense(x, mean)


def transform_feature(feature: FeatureConfig, x: Any) -> dict[str, tf.Tensor]:
    """The transformed tensors for one raw column, keyed by their model input names."""
    if feature.kind == "numeric":
        value, missing = _numeric(x)
        return {
            feature.transformed_name: tft.scale_to_z_score(value),
            missing_indicator_name(feature): tf.cast(missing, tf.float32),
        }
    if feature.kind == "bucketized":
        value, _ = _numeric(x)
        return {feature.transformed_name: tft.bucketize(value, num_buckets=feature.buckets)}
    if feature.kind == "hashed":
        value, _ = to_dense(x if x.dtype == tf.string else _as_string(x), "")
        return {feature.transformed_name: tf.strings.to_hash_bucket_fast(value, feature.hash_buckets)}
    # Integers go through their text, so that a missing value, like a missing string, is the empty
    # token: tf.Transform never puts "" in a vocabulary, so it lands in an out-of-vocabulary bucket
    # instead of taking one of the top_k places from a real value.
    value, _ = to_dense(x if x.dtype == tf.string else _as_string(x), "")
    index = tft.compute_and_apply_vocabulary(
        value,
        top_k=feature.top_k,
        num_oov_buckets=feature.oov_buckets,
        vocab_filename=feature.name,
    )
    return {feature.transformed_name: index}


def _as_string(x: Any) -> Any:
    if isinstance(x, tf.SparseTensor):
        return tf.SparseTensor(x.indices, tf.strings.as_string(x.values), x.dense_shape)
    return tf.strings.as_string(x)


def transform_label(x: Any, task: str, classes: tuple[str, ...]) -> tf.Tensor:
    """Regression: the value as float. Classification: the index of the value in `classes`
    (labels may be strings or integers; they are compared as text), -1 for a value not listed."""
    if task == "regression":
        value, _ = to_dense(tf.cast(x, tf.float32), 0.0)
        return value
    text = x if x.dtype == tf.string else _as_string(x if x.dtype != tf.float32 else tf.cast(x, tf.int64))
    value, _ = to_dense(text, "")
    matches = tf.equal(tf.expand_dims(value, 1), tf.constant(list(classes))[tf.newaxis, :])
    index = tf.argmax(tf.cast(matches, tf.int32), axis=1)
    return tf.where(tf.reduce_any(matches, axis=1), index, tf.constant(-1, tf.int64))


def preprocessing_fn(inputs: Mapping[str, Any], custom_config: Mapping[str, Any]) -> dict[str, tf.Tensor]:
    """Transforms every configured feature and the label.

    Args:
      inputs: raw columns as parsed by the schema (dense, or sparse where a value may be absent).
      custom_config: `PipelineConfig.component_config()`.

    Returns:
      The transformed features (names from `FeatureConfig.transformed_name`) and the label.
    """
    label, features = features_from_component_config(custom_config)
    task, classes = task_from_component_config(custom_config)
    outputs: dict[str, tf.Tensor] = {}
    for feature in features:
        outputs.update(transform_feature(feature, inputs[feature.name]))
    if label in inputs:
        outputs[transformed_label(label)] = transform_label(inputs[label], task, classes)
    return outputs
