"""TF Serving's protos built from what a signature was given and answered: model specs, tensors, and the
Predict, Classify and Regress responses. The gRPC API answers with them and the request log writes them,
so a logged response is the response a client got."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from serving.servable import LoadedVersion


def model_spec(servable: LoadedVersion, signature_name: str, spec: Any = None) -> Any:
    """TF Serving's ModelSpec naming the version that answered (filled into `spec` when given)."""
    from tensorflow_serving.apis import model_pb2

    spec = spec if spec is not None else model_pb2.ModelSpec()
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name
    return spec


def tensor_proto(value: Any) -> Any:
    """A TensorProto of a numpy array or nested lists (bytes for strings), as tf.make_tensor_proto writes it
    (strings in string_val, numbers packed in tensor_content) without its per-call overhead, which the
    request log would otherwise pay on every logged request."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, types_pb2

    array = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=_dtype(value))
    proto = tensor_pb2.TensorProto()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.reshape(-1))
        return proto
    if array.dtype == bool:
        return tf.make_tensor_proto(array)
    proto.dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    proto.tensor_content = np.ascontiguousarray(array).tobytes()
    return proto


def ndarray(proto: Any) -> np.ndarray:
    """The numpy array of a TensorProto, as tf.make_ndarray returns it. Strings and numbers packed in
    tensor_content (what clients and tf.make_tensor_proto send) are read with numpy directly, which costs a
    gRPC request a tenth of tf.make_ndarray's time; any other layout goes through tf.make_ndarray.

    Raises:
      TypeError, ValueError: the proto's values do not fit its dtype or shape.
    """
    shape = [dim.size for dim in proto.tensor_shape.dim]
    count = math.prod(shape)
    if proto.dtype == _DT_STRING and len(proto.string_val) == count:
        array = np.empty(count, dtype=object)
        array[:] = proto.string_val
        return array.reshape(shape)
    numeric = _NUMERIC.get(proto.dtype)
    if numeric is not None and proto.tensor_content and len(proto.tensor_content) == count * numeric.itemsize:
        return np.frombuffer(proto.tensor_content, dtype=numeric).reshape(shape)
    import tensorflow as tf

    return tf.make_ndarray(proto)


_DT_STRING = 7
# The numeric dtypes whose tensor_content is the array's bytes, little-endian as TensorFlow writes them.
_NUMERIC = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    9: np.dtype("<i8"),  # DT_INT64
}


def _dtype(value: Any) -> Any:
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return object if isinstance(value, (bytes, str)) else None


def predict_request(servable: LoadedVersion, signature_name: str, inputs: Mapping[str, Any]) -> Any:
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    model_spec(servable, signature_name, request.model_spec)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tensor_proto(value))
    return request


def predict_response(servable: LoadedVersion, signature_name: str, outputs: Mapping[str, np.ndarray]) -> Any:
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    model_spec(servable, signature_name, response.model_spec)
    for name, array in outputs.items():
        response.outputs[name].CopyFrom(tensor_proto(array))
    return response


def classification_result(outputs: Mapping[str, np.ndarray], result: Any = None) -> Any:
    """A ClassificationResult: per example, each class's label and score (from `classes` and `scores`)."""
    from tensorflow_serving.apis import classification_pb2

    result = result if result is not None else classification_pb2.ClassificationResult()
    scores = outputs["scores"]
    classes = outputs.get("classes")
    for row, row_scores in enumerate(scores):
        classifications = result.classifications.add()
        for column, score in enumerate(row_scores):
            label = classes[row][column] if classes is not None else None
            entry = classifications.classes.add(score=float(score))
            if label is not None:
                entry.label = label.decode("utf-8") if isinstance(label, bytes) else str(label)
    return result


def regression_result(outputs: Mapping[str, np.ndarray], result: Any = None) -> Any:
    """A RegressionResult: one value per example (from `outputs`)."""
    from tensorflow_serving.apis import regression_pb2

    result = result if result is not None else regression_pb2.RegressionResult()
    for value in np.asarray(outputs["outputs"]).reshape(-1):
        result.regressions.add(value=float(value))
    return result


def example_input(serialized: list[bytes], input_proto: Any = None) -> Any:
    """TF Serving's Input (an ExampleList) holding serialized tf.Examples."""
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import input_pb2

    input_proto = input_proto if input_proto is not None else input_pb2.Input()
    for data in serialized:
        input_proto.example_list.examples.add().CopyFrom(example_pb2.Example.FromString(data))
    return input_proto


def serialized_examples(input_proto: Any) -> list[bytes]:
    """The serialized tf.Examples of TF Serving's Input; with a context, each example merged over it, as TF
    Serving merges them (the example's own features win).

    Raises:
      ValueError: the Input holds neither an example list nor an example list with context, or no examples.
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = list(input_proto.example_list.examples)
        context = None
    elif kind == "example_list_with_context":
        examples = list(input_proto.example_list_with_context.examples)
        context = input_proto.example_list_with_context.context
    else:
        raise ValueError("Input is empty: it needs an example_list or an example_list_with_context")
    if not examples:
        raise ValueError("Input is empty: no examples")
    if context is None or not context.features.feature:
        return [example.SerializeToString() for example in examples]
    merged = []
    for example in examples:
        combined = type(context)()
        combined.CopyFrom(context)
        for name, feature in example.features.feature.items():
            combined.features.feature[name].CopyFrom(feature)
        merged.append(combined.SerializeToString())
    return merged
