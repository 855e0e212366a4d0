"""Calling a signature for a request, the one path REST and gRPC share: the inputs checked against the
signature, joined with other requests when server-side batching is on, and the answer sampled into the
request log."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Optional

import numpy as np

from serving.batching import Batcher, BatchingParameters
from serving.errors import ServingError, invalid
from serving.request_log import RequestLog
from serving.servable import LoadedVersion

# Lines TensorFlow adds to an op error that say nothing to a client.
_TF_NOISE = re.compile(r"^(Graph execution error:|Detected at node .*|<stack traces unavailable>)$")


def _tf_message(err: Exception) -> str:
    message = getattr(err, "message", None) or str(err)
    lines = [line for line in message.splitlines() if line.strip() and not _TF_NOISE.match(line.strip())]
    return "\n".join(lines) or message


def feeds(signature: Any, signature_name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The signature's inputs as tensors of its dtypes and shapes.

    Args:
      signature: a loaded signature (a concrete function).
      signature_name: its name, for messages.
      values: input name to a numpy array or nested lists.

    Raises:
      ServingError: 400 naming the input when a value does not convert or has the wrong shape, or an input is
        missing or unknown.
    """
    import tensorflow as tf

    specs = signature.structured_input_signature[1]
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise invalid(
            f"input '{unknown[0]}' is not an input of signature '{signature_name}' ({', '.join(sorted(specs))})"
        )
    missing = sorted(set(specs) - set(values))
    if missing:
        raise invalid(f"input '{missing[0]}' of signature '{signature_name}' is missing")
    tensors = {}
    for name, value in values.items():
        spec = specs[name]
        try:
            tensor = value if isinstance(value, tf.Tensor) else tf.constant(value, dtype=spec.dtype)
        except (TypeError, ValueError, OverflowError) as err:
            raise invalid(f"input '{name}': {err}") from None
        if tensor.dtype != spec.dtype:
            raise invalid(
                f"input '{name}' is {tensor.dtype.name}, but signature '{signature_name}' expects {spec.dtype.name}"
            )
        if not spec.shape.is_compatible_with(tensor.shape):
            raise invalid(
                f"input '{name}' has shape {tensor.shape.as_list()}, but signature '{signature_name}' expects "
                f"{spec.shape.as_list()}"
            )
        tensors[name] = tensor
    return tensors


def run(signature: Any, tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Calls the signature on checked inputs.

    Raises:
      ServingError: 400 when the model refuses the inputs (an unparseable example), 500 when it fails.
    """
    import tensorflow as tf

    # No lock: a restored tf.function may be called from several threads at once, as TF Serving's
    # session is, and requests then overlap instead of queueing.
    try:
        outputs = signature(**tensors)
    except tf.errors.InvalidArgumentError as err:
        raise invalid(_tf_message(err)) from None
    except tf.errors.OpError as err:
        raise ServingError(HTTPStatus.INTERNAL_SERVER_ERROR, _tf_message(err)) from None
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def call_signature(signature: Any, signature_name: str, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Checks the inputs and calls the signature once, unbatched and unlogged (warmup, tests)."""
    return run(signature, feeds(signature, signature_name, values))


class Inference:
    """Every request's call of a signature: batched when batching parameters are given, logged when a request
    log is. Thread-safe."""

    def __init__(self, batching: Optional[BatchingParameters] = None, request_log: Optional[RequestLog] = None):
        self.batching = batching
        self.request_log = request_log
        self._batchers: dict[tuple[str, int, str], tuple[LoadedVersion, Batcher]] = {}
        self._lock = threading.Lock()

    def _batcher(self, servable: LoadedVersion, signature_name: str, signature: Any) -> Batcher:
        key = (servable.name, servable.version, signature_name)
        with self._lock:
            held = self._batchers.get(key)
            if held is not None and held[0] is servable:
                return held[1]
            batcher = Batcher(lambda tensors: run(signature, tensors), self.batching)
            self._batchers[key] = (servable, batcher)
        if held is not None:  # the same version loaded again: its old batcher serves no one
            held[1].stop()
        return batcher

    def call(
        self, servable: LoadedVersion, signature_name: str, values: Mapping[str, Any], kind: str = "predict"
    ) -> dict[str, np.ndarray]:
        """Calls a signature of a loaded version for one request.

        Args:
          servable: the version.
          signature_name: the signature.
          values: input name to a numpy array or nested lists.
          kind: "predict", "classify" or "regress": how the request log records it.

        Raises:
          ServingError: 400 for a missing signature or inputs it refuses, 503 when the batch queue is full,
            500 when the model fails.
        """
        signature = servable.signatures.get(signature_name)
        if signature is None:
            raise invalid(f'Serving signature name: "{signature_name}" not found in signature def')
        tensors = feeds(signature, signature_name, values)
        if self.batching is None:
            outputs = run(signature, tensors)
        else:
            outputs = self._batcher(servable, signature_name, signature).call(tensors)
        if self.request_log is not None:
            self.request_log.add(kind, servable, signature_name, values, outputs)
        return outputs

    def forget(self, served: Mapping[str, list[int]]) -> None:
        """Stops the batchers of versions no longer served."""
        with self._lock:
            gone = [key for key in self._batchers if key[1] not in served.get(key[0], ())]
            stopped = [self._batchers.pop(key)[1] for key in gone]
        for batcher in stopped:
            batcher.stop()

    def stop(self) -> None:
        """Stops every batcher and flushes the request log."""
        with self._lock:
            batchers = [batcher for _, batcher in self._batchers.values()]
            self._batchers.clear()
        for batcher in batchers:
            batcher.stop()
        if self.request_log is not None:
            self.request_log.close()
