"""What an exported model answers, as TF Serving and tfx_bsl call it: `serving_default` (predict),
`classification` or `regression` (classify / regress on serialized tf.Examples) and
`transform_features` (for TFMA).

TF2's SavedModel export writes the predict method name on every signature (tensorflow/tensorflow#38081);
TF Serving's :classify / :regress and tfx_bsl's RunInference dispatch on the method name, so
`set_method_names` writes the right ones into saved_model.pb after the export.
"""

from __future__ import annotations

import os

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from components.features import PREDICTION_KEY, TRANSFORM_SIGNATURE

SERVING_INPUT = "examples"
SERVING_OUTPUT = PREDICTION_KEY["binary"]
# TF Serving's signature constants (tensorflow_serving/apis: signature_constants).
CLASSIFY_SIGNATURE, REGRESS_SIGNATURE = "classification", "regression"
CLASSIFY_METHOD, REGRESS_METHOD = "tensorflow/serving/classify", "tensorflow/serving/regress"
METHOD_INPUTS = "inputs"
METHOD_NAMES = {CLASSIFY_SIGNATURE: CLASSIFY_METHOD, REGRESS_SIGNATURE: REGRESS_METHOD}


def _serving_signature(
    net: keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    names: list[str],
    task: str,
    classes: tuple[str, ...],
):
    """serving_default: serialized raw tf.Examples in, the task's outputs out (see PREDICTION_KEY)."""
    net.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    spec = {name: raw_spec[name] for name in names}
    class_names = tf.constant(list(classes), dtype=tf.string)

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name=SERVING_INPUT)], autograph=False)
    def serve(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(examples, spec)
        predicted = net(net.tft_layer(parsed))
        if task == "regression":
            return {PREDICTION_KEY["regression"]: predicted}
        scores = tf.concat([1.0 - predicted, predicted], axis=1) if task == "binary" else predicted
        out = {"scores": scores, "classes": tf.tile(class_names[tf.newaxis, :], [tf.shape(scores)[0], 1])}
        if task == "binary":
            out[SERVING_OUTPUT] = predicted
        return out

    return serve


def _transform_signature(net: keras.Model, tf_transform_output: tft.TFTransformOutput):
    """transform_features: serialized raw examples (label included) to the transformed features.

    TFMA runs it (ModelSpec.preprocessing_function_names) to read the transformed label, the class
    index for classification, whatever the raw label's type."""
    raw_spec = tf_transform_output.raw_feature_spec()

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name=SERVING_INPUT)], autograph=False)
    def transform_features(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return net.tft_layer(tf.io.parse_example(examples, raw_spec))

    return transform_features


def _method_signature(
    net: keras.Model, tf_transform_output: tft.TFTransformOutput, names: list[str], task: str, classes
):
    """classification (binary, multiclass) or regression: TF Serving's classify / regress contract, serialized
    tf.Examples under `inputs`; out `classes` and `scores` [N, K], or `outputs` [N]."""
    raw_spec = tf_transform_output.raw_feature_spec()
    spec = {name: raw_spec[name] for name in names}
    class_names = tf.constant(list(classes), dtype=tf.string)

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name=METHOD_INPUTS)], autograph=False)
    def answer(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        predicted = net(net.tft_layer(tf.io.parse_example(inputs, spec)))
        if task == "regression":
            return {"outputs": tf.reshape(predicted, [-1])}
        scores = tf.concat([1.0 - predicted, predicted], axis=1) if task == "binary" else predicted
        return {"scores": scores, "classes": tf.tile(class_names[tf.newaxis, :], [tf.shape(scores)[0], 1])}

    return answer


def export_signatures(
    net: keras.Model, tf_transform_output: tft.TFTransformOutput, names: list[str], task: str, classes
) -> dict:
    """Every signature the exported model carries, by name."""
    method = REGRESS_SIGNATURE if task == "regression" else CLASSIFY_SIGNATURE
    return {
        "serving_default": _serving_signature(net, tf_transform_output, names, task, classes),
        method: _method_signature(net, tf_transform_output, names, task, classes),
        TRANSFORM_SIGNATURE: _transform_signature(net, tf_transform_output),
    }


def set_method_names(saved_model_dir: str) -> None:
    """Writes TF Serving's classify / regress method names into saved_model.pb, where TF2 wrote predict."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(saved_model_dir, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved.ParseFromString(f.read())
    for graph in saved.meta_graphs:
        for name, method in METHOD_NAMES.items():
            if name in graph.signature_def:
                graph.signature_def[name].method_name = method
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved.SerializeToString())
