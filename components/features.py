"""Feature handling shared by the transform and the model: the config's feature list made concrete."""

from __future__ import annotations

import tensorflow as tf

from pipeline.config import FeatureConfig

LABEL_SUFFIX = "_xf"
# The serving output TFMA evaluates, by task. Classification also returns `scores` and `classes`
# (a row of class names per example): TF Serving's classify convention, which TFMA reads too.
PREDICTION_KEY = {"binary": "probabilities", "multiclass": "scores", "regression": "value"}
# The model's signature from raw examples (label included) to the transformed features.
TRANSFORM_SIGNATURE = "transform_features"
MISSING_SUFFIX = "_missing"


def transformed_label(label: str) -> str:
    return f"{label}{LABEL_SUFFIX}"


def missing_indicator_name(feature: FeatureConfig) -> str:
    return f"{feature.name}{MISSING_SUFFIX}"


def to_dense(x: tf.Tensor | tf.SparseTensor, default: tf.Tensor | float | int | str) -> tuple[tf.Tensor, tf.Tensor]:
    """Turns a raw column into a dense [batch] tensor and a [batch] is-missing mask.

    Columns that may be absent are parsed as SparseTensor (VarLenFeature); required ones as a
    dense [batch, 1] tensor. Both come out the same way here.

    Args:
      x: the raw column.
      default: the value that stands in for a missing one.

    Returns:
      (values, missing): values with the default filled in, and a boolean missing mask.
    """
    if isinstance(x, tf.SparseTensor):
        batch = x.dense_shape[0]
        shape = tf.stack([batch, tf.constant(1, dtype=tf.int64)])
        sparse = tf.SparseTensor(x.indices, x.values, shape)
        present = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, tf.ones_like(x.values, dtype=tf.int32), shape), default_value=0
        )
        default = tf.cast(default, x.dtype) if not isinstance(default, str) else default
        dense = tf.sparse.to_dense(sparse, default_value=default)
        return tf.squeeze(dense, axis=1), tf.equal(tf.squeeze(present, axis=1), 0)
    dense = tf.reshape(x, [-1])
    return dense, tf.zeros_like(dense, dtype=tf.bool)
