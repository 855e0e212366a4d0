"""Replays a version's TF Serving warmup file (`assets.extra/tf_serving_warmup_requests`) through its signatures
before the version is served, as `tensorflow_model_server --enable_model_warmup` does, so that the first
client request does not pay for TensorFlow's lazy initialisation of the version's functions.

As in TF Serving (saved_model_warmup_util.cc), every record is run once, in order: predict, classify, regress
and multi-inference logs; a record with no log is skipped; a file of more than 1,000 records, a record that is
not a PredictionLog, is of another kind or fails to run makes the version fail to load. Refusing, rather than
serving the version unwarmed with a warning, is TF Serving's behaviour, kept for fidelity: a warmup file that
`tensorflow_model_server` would refuse must not pass here, or a version tried locally would then fail to
load in production. The error names the file and the record number; `ModelRepository.status` reports it
(state END), and the version is retried when its directory changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from components.signatures import CLASSIFY_METHOD, REGRESS_METHOD
from components.warmup import DEFAULT_SIGNATURE, MAX_RECORDS, WARMUP_PATH
from serving.servable import LoadedVersion

log = logging.getLogger(__name__)

_METHODS = {"classify_log": CLASSIFY_METHOD, "regress_log": REGRESS_METHOD}


class WarmupError(ValueError):
    """A warmup file that cannot be replayed; the message names the file and the record."""


class _Refused(Exception):
    """One warmup request that TF Serving would refuse, and why."""


def _call(signature: Any, name: str, values: dict[str, Any]) -> None:
    """Runs a signature on a request's inputs, converted to the signature's dtypes and shapes checked, as
    TF Serving does. Warmup goes straight to the signature: it is neither batched nor logged as requests are."""
    import tensorflow as tf

    specs = signature.structured_input_signature[1]
    if set(values) != set(specs):
        raise _Refused(f"signature '{name}' takes inputs {sorted(specs)}, the request has {sorted(values)}")
    tensors = {}
    for key, value in values.items():
        try:
            tensors[key] = tf.constant(value, dtype=specs[key].dtype)
        except (TypeError, ValueError) as err:
            raise _Refused(f"input '{key}': {err}") from None
        if not specs[key].shape.is_compatible_with(tensors[key].shape):
            shape, expected = tensors[key].shape.as_list(), specs[key].shape.as_list()
            raise _Refused(f"input '{key}' has shape {shape}, but signature '{name}' expects {expected}")
    try:
        signature(**tensors)
    except tf.errors.OpError as err:
        raise _Refused(err.message.strip().splitlines()[0]) from None


def _records(path: Any) -> Iterator[tuple[int, bytes]]:
    """(record number from 1, record) for each TFRecord in the file."""
    import tensorflow as tf

    records = iter(tf.data.TFRecordDataset(str(path)))
    number = 0
    while True:
        number += 1
        try:
            record = next(records)
        except StopIteration:
            return
        except tf.errors.OpError as err:  # DataLossError: truncated or corrupted, as TF Serving's reader says
            reason = err.message.strip().splitlines()[0]
            raise WarmupError(f"{path}, record {number}: not readable as a TFRecord ({reason})") from None
        yield number, record.numpy()


def _signature(version: LoadedVersion, name: str) -> Any:
    signature = version.signatures.get(name)
    if signature is None:
        raise _Refused(f'Serving signature name: "{name}" not found in signature def')
    return signature


def _serialized(model_input: Any) -> list[bytes]:
    """An Input's examples, serialized as TF Serving feeds them; with a context, the context first, so that
    the example's own features win where both have one (a later map entry replaces an earlier one)."""
    if model_input.WhichOneof("kind") == "example_list_with_context":
        context = model_input.example_list_with_context.context.SerializeToString()
        return [context + e.SerializeToString() for e in model_input.example_list_with_context.examples]
    return [e.SerializeToString() for e in model_input.example_list.examples]


def _run_method(version: LoadedVersion, signature_name: str, method: str, model_input: Any) -> None:
    """One classify or regress request: the signature must have that method and one input."""
    name = signature_name or DEFAULT_SIGNATURE
    signature = _signature(version, name)
    actual = version.signature_defs.get("signature_def", {}).get(name, {}).get("method_name", "")
    if actual != method:
        raise _Refused(f"signature '{name}' has method {actual or 'none'}, but the request needs {method}")
    specs = signature.structured_input_signature[1]
    if len(specs) != 1:
        raise _Refused(f"signature '{name}' has {len(specs)} inputs; {method} needs one of serialized examples")
    serialized = _serialized(model_input)
    if not serialized:
        raise _Refused("Input is empty")
    _call(signature, name, {next(iter(specs)): serialized})


def _run(version: LoadedVersion, record: Any) -> None:
    """Runs one PredictionLog's request through the version's signatures.

    Raises:
      _Refused: the request is refused, as the same request from a client would be.
    """
    import tensorflow as tf

    kind = record.WhichOneof("log_type")
    if kind is None:
        return
    if kind == "predict_log":
        request = record.predict_log.request
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = _signature(version, name)
        try:
            inputs = {key: tf.make_ndarray(tensor) for key, tensor in request.inputs.items()}
        except (TypeError, ValueError) as err:
            raise _Refused(f"an input is not a valid TensorProto ({err})") from None
        _call(signature, name, inputs)
    elif kind in _METHODS:
        request = getattr(record, kind).request
        _run_method(version, request.model_spec.signature_name, _METHODS[kind], request.input)
    elif kind == "multi_inference_log":
        request = record.multi_inference_log.request
        for task in request.tasks:
            _run_method(version, task.model_spec.signature_name, task.method_name, request.input)
    else:
        raise _Refused(f"{kind} is not a request TF Serving replays for warmup")


def replay_warmup(version: LoadedVersion) -> int:
    """Replays the version's warmup file, if it has one, every record once, in order.

    Args:
      version: the loaded version, not yet served.

    Returns:
      How many records were replayed (0 without a warmup file).

    Raises:
      WarmupError: the file has more than MAX_RECORDS records, or a record cannot be read, parsed or run;
        the message names the file and the record number.
    """
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    path = version.path / WARMUP_PATH
    if not path.is_file():
        return 0
    started = time.perf_counter()
    count = 0
    for number, raw in _records(path):
        if number > MAX_RECORDS:
            raise WarmupError(f"{path}: more than {MAX_RECORDS} records, TF Serving's maximum")
        try:
            record = prediction_log_pb2.PredictionLog.FromString(raw)
        except DecodeError:
            raise WarmupError(f"{path}, record {number}: not a PredictionLog") from None
        try:
            _run(version, record)
        except _Refused as err:
            raise WarmupError(f"{path}, record {number}: {err}") from None
        count = number
    log.info(
        "warmed up %s version %d: %d requests from %s in %.2f s",
        version.name,
        version.version,
        count,
        path,
        time.perf_counter() - started,
    )
    return count
