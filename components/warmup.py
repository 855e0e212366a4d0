"""TF Serving's warmup file for a pushed model: `assets.extra/tf_serving_warmup_requests`, a TFRecord of
PredictionLog requests built from raw evaluation examples, which `tensorflow_model_server
--enable_model_warmup` (and `conveyor serve`) replay before the version serves.

Format: https://www.tensorflow.org/tfx/serving/saved_model_warmup, as TFX's InfraValidator writes it
(tfx/components/infra_validator/request_builder.py): a PredictLog per request to `serving_default` (its one
DT_STRING input, a batch of serialized tf.Examples), and a ClassifyLog or RegressLog for the
`classification` / `regression` signature.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from components.examples import record_compression
from components.signatures import CLASSIFY_METHOD, REGRESS_METHOD

WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_PATH = Path("assets.extra") / WARMUP_FILE
# TF Serving's WarmupConsts::kMaxNumRecords: a file with more records makes the version fail to load.
MAX_RECORDS = 1000
DEFAULT_SIGNATURE = "serving_default"
# Small batches of several sizes, so warmup runs what single-row and small-batch clients will; a few dozen
# records are enough, since every record costs load time.
BATCH_SIZES = (1, 2, 4, 8)
PREDICT_RECORDS = 16
METHOD_BATCH = 8


def read_examples(file_pattern: str, count: int) -> list[bytes]:
    """Up to `count` serialized tf.Examples from the files matching `file_pattern`, in file order.

    Raises:
      ValueError: no file matches, or the files hold no example.
    """
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise ValueError(f"no examples match {file_pattern}")
    dataset = tf.data.TFRecordDataset(files, compression_type=record_compression(files))
    records = list(dataset.take(count).as_numpy_iterator())
    if not records:
        raise ValueError(f"the files matching {file_pattern} hold no examples")
    return records


def _signature_defs(saved_model_dir: str) -> dict:
    """The `serve` MetaGraph's SignatureDefs, as TF Serving and TFX's request builder read them."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    with tf.io.gfile.GFile(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved = saved_model_pb2.SavedModel.FromString(f.read())
    graph = next((g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags), None)
    if graph is None:
        raise ValueError(f"{saved_model_dir}/saved_model.pb has no MetaGraph tagged 'serve'")
    return dict(graph.signature_def)


def _serialized_input(signature_def, name: str) -> str:
    """The key of a predict signature's one input of serialized records (DT_STRING, shape [None])."""
    from tensorflow.core.framework import types_pb2

    inputs = dict(signature_def.inputs)
    key = next(iter(inputs), None)
    shape = [d.size for d in inputs[key].tensor_shape.dim] if key else None
    if len(inputs) != 1 or inputs[key].dtype != types_pb2.DT_STRING or shape != [-1]:
        raise ValueError(f"signature '{name}' does not take one batch of serialized tf.Examples (DT_STRING [None])")
    return key


def build_warmup_logs(saved_model_dir: str, examples: list[bytes], model_name: str) -> list:
    """The warmup records for a SavedModel: `PREDICT_RECORDS` predict requests to `serving_default` in
    batches of `BATCH_SIZES` (cycling over `examples`), then one classify or regress request per signature
    with that method.

    Args:
      saved_model_dir: the exported model (its saved_model.pb says which signatures to warm up).
      examples: serialized raw tf.Examples, as clients send them.
      model_name: the name the model is served under, for each request's model_spec.

    Returns:
      PredictionLog messages, at most MAX_RECORDS.

    Raises:
      ValueError: no examples, or the model has no `serving_default` over serialized tf.Examples.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2, regression_pb2

    if not examples:
        raise ValueError("no examples to build warmup requests from")
    signatures = _signature_defs(saved_model_dir)
    if DEFAULT_SIGNATURE not in signatures:
        raise ValueError(f"{saved_model_dir} has no '{DEFAULT_SIGNATURE}' signature to warm up")
    input_key = _serialized_input(signatures[DEFAULT_SIGNATURE], DEFAULT_SIGNATURE)
    rows = itertools.cycle(examples)
    logs = []
    for size in itertools.islice(itertools.cycle(BATCH_SIZES), PREDICT_RECORDS):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = DEFAULT_SIGNATURE
        request.inputs[input_key].CopyFrom(tf.make_tensor_proto(list(itertools.islice(rows, size)), dtype=tf.string))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    methods = {
        CLASSIFY_METHOD: (classification_pb2.ClassificationRequest, prediction_log_pb2.ClassifyLog, "classify_log"),
        REGRESS_METHOD: (regression_pb2.RegressionRequest, prediction_log_pb2.RegressLog, "regress_log"),
    }
    for name, signature_def in sorted(signatures.items()):
        if signature_def.method_name not in methods:
            continue
        request_type, log_type, field = methods[signature_def.method_name]
        request = request_type()
        request.model_spec.name = model_name
        request.model_spec.signature_name = name
        for serialized in itertools.islice(rows, METHOD_BATCH):
            request.input.example_list.examples.add().ParseFromString(serialized)
        logs.append(prediction_log_pb2.PredictionLog(**{field: log_type(request=request)}))
    return logs[:MAX_RECORDS]


def write_warmup_requests(saved_model_dir: str, examples_pattern: str, path: str, model_name: str) -> int:
    """Writes TF Serving's warmup file for a SavedModel from the raw examples matching `examples_pattern`.

    Args:
      saved_model_dir: the exported model.
      examples_pattern: raw (untransformed) tf.Example files, e.g. ExampleGen's `Split-eval/*`.
      path: where to write, usually `<version>/assets.extra/tf_serving_warmup_requests`.
      model_name: the name the model is served under.

    Returns:
      How many records were written.

    Raises:
      ValueError: no examples, or the model cannot take serialized tf.Examples (see build_warmup_logs).
    """
    import tensorflow as tf

    needed = sum(itertools.islice(itertools.cycle(BATCH_SIZES), PREDICT_RECORDS)) + 2 * METHOD_BATCH
    logs = build_warmup_logs(saved_model_dir, read_examples(examples_pattern, needed), model_name)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return len(logs)
