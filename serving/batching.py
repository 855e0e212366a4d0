"""Server-side batching, configured as TF Serving's `--enable_batching --batching_parameters_file`:
concurrent requests to one signature are queued, joined along their first dimension into one call of at
most `max_batch_size` rows, and each gets its own rows of the answer back.

The file is TF Serving's `BatchingParameters` text proto (session_bundle_config.proto), read with the same
field names and numbers, e.g.

    max_batch_size { value: 32 }
    batch_timeout_micros { value: 2000 }
    num_batch_threads { value: 2 }
    max_enqueued_batches { value: 100 }
    allowed_batch_sizes: 8
    allowed_batch_sizes: 32

A batch is padded to the next allowed size by repeating its last row (the padding's answers are dropped).
A request larger than `max_batch_size` runs on its own rather than being refused.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Optional

import numpy as np

from serving.errors import ServingError

# TF Serving's defaults for the fields a file leaves out (BatchingSession's options).
DEFAULTS = {"max_batch_size": 1000, "batch_timeout_micros": 0, "max_enqueued_batches": 100, "num_batch_threads": 4}


@dataclass(frozen=True)
class BatchingParameters:
    """The parts of TF Serving's BatchingParameters this server honours."""

    max_batch_size: int = DEFAULTS["max_batch_size"]
    batch_timeout_micros: int = DEFAULTS["batch_timeout_micros"]
    max_enqueued_batches: int = DEFAULTS["max_enqueued_batches"]
    num_batch_threads: int = DEFAULTS["num_batch_threads"]
    allowed_batch_sizes: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in DEFAULTS:
            if getattr(self, name) < (0 if name == "batch_timeout_micros" else 1):
                raise ValueError(f"batching parameter {name} must be positive, got {getattr(self, name)}")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size or sizes[0] < 1):
            raise ValueError(
                f"allowed_batch_sizes {list(sizes)} must be positive, increasing, and end with max_batch_size "
                f"({self.max_batch_size})"
            )


def _message_class() -> Any:
    """TF Serving's BatchingParameters message, built from its field numbers (the proto is not in the pip API)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="conveyor/session_bundle_config.proto",
        package="tensorflow.serving",
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    message = proto.message_type.add(name="BatchingParameters")
    fields = descriptor_pb2.FieldDescriptorProto
    for number, name in enumerate(
        ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"), start=1
    ):
        message.field.add(
            name=name, number=number, type=fields.TYPE_MESSAGE, label=fields.LABEL_OPTIONAL,
            type_name=".google.protobuf.Int64Value",
        )  # fmt: skip
    message.field.add(
        name="thread_pool_name", number=5, type=fields.TYPE_MESSAGE, label=fields.LABEL_OPTIONAL,
        type_name=".google.protobuf.StringValue",
    )  # fmt: skip
    message.field.add(name="allowed_batch_sizes", number=6, type=fields.TYPE_INT64, label=fields.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=fields.TYPE_BOOL, label=fields.LABEL_OPTIONAL)
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)  # protobuf 3.20, as TensorFlow 2.16 pins


def read_parameters(path: str | Path) -> BatchingParameters:
    """Reads a TF Serving batching parameters file.

    Raises:
      ValueError: the file cannot be read, does not parse, or holds values TF Serving would refuse; the
        message names the file.
    """
    from google.protobuf import text_format

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read batching parameters file {path}: {err}") from None
    message = _message_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise ValueError(f"{path} is not a TF Serving BatchingParameters text proto: {err}") from None
    if message.pad_variable_length_inputs:
        raise ValueError(f"{path}: pad_variable_length_inputs is not supported (every input here has a fixed shape)")
    values = {name: getattr(message, name).value for name in DEFAULTS if message.HasField(name)}
    try:
        return BatchingParameters(**values, allowed_batch_sizes=tuple(message.allowed_batch_sizes))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def rows(feeds: Mapping[str, Any]) -> int:
    """The first dimension every input shares.

    Raises:
      ServingError: 400 when inputs differ in their first dimension (TF Serving's message).
    """
    sizes = {int(tensor.shape[0]) if tensor.shape.rank else -1 for tensor in feeds.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise ServingError(HTTPStatus.BAD_REQUEST, "Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


@dataclass
class _Task:
    feeds: Mapping[str, Any]
    size: int
    enqueued: float
    done: threading.Event = field(default_factory=threading.Event)
    outputs: Optional[dict[str, np.ndarray]] = None
    error: Optional[BaseException] = None


class Batcher:
    """Joins concurrent calls of one signature into batches run by `num_batch_threads` threads."""

    def __init__(self, run: Callable[[Mapping[str, Any]], dict[str, np.ndarray]], parameters: BatchingParameters):
        """Args:
        run: calls the signature on feeds (input name: tensor) and returns its outputs as numpy arrays.
        parameters: the batching parameters.
        """
        self._run = run
        self.parameters = parameters
        self._queue: deque[_Task] = deque()
        self._queued_rows = 0
        self._ready = threading.Condition()
        self._stopped = False
        self.batches = 0
        self.batched_requests = 0  # with `batches`, how full batches are: what a benchmark reports
        self._threads = [
            threading.Thread(target=self._loop, name=f"conveyor-serve-batch-{i}", daemon=True)
            for i in range(parameters.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def call(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Runs `feeds` as part of a batch and returns their rows of the outputs.

        Raises:
          ServingError: 503 when the queue is full (as TF Serving's UNAVAILABLE), or what the run raised.
        """
        size = rows(feeds)
        if size > self.parameters.max_batch_size:
            return self._run(feeds)
        task = _Task(feeds, size, time.monotonic())
        with self._ready:
            capacity = self.parameters.max_enqueued_batches * self.parameters.max_batch_size
            if self._stopped or self._queued_rows + size > capacity:
                raise ServingError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full",
                )
            self._queue.append(task)
            self._queued_rows += size
            self._ready.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def _take(self) -> Optional[list[_Task]]:
        """The next batch: as soon as it is full, or when its oldest task has waited the timeout."""
        limit = self.parameters.max_batch_size
        timeout = self.parameters.batch_timeout_micros / 1e6
        with self._ready:
            while True:
                if self._stopped:
                    return None
                if self._queue:
                    wait = self._queue[0].enqueued + timeout - time.monotonic()
                    if self._queued_rows >= limit or wait <= 0:
                        break
                    self._ready.wait(wait)
                else:
                    self._ready.wait()
            batch, total = [], 0
            while self._queue and total + self._queue[0].size <= limit:
                task = self._queue.popleft()
                batch.append(task)
                total += task.size
            self._queued_rows -= total
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            self._run_batch(batch)

    def _padded_size(self, total: int) -> int:
        return next((size for size in self.parameters.allowed_batch_sizes if size >= total), total)

    def _run_batch(self, batch: list[_Task]) -> None:
        import tensorflow as tf

        try:
            total = sum(task.size for task in batch)
            padded = self._padded_size(total)
            joined = {}
            for name in batch[0].feeds:
                parts = [task.feeds[name] for task in batch]
                if padded > total:
                    last = parts[-1][-1:]
                    parts.append(tf.repeat(last, padded - total, axis=0))
                joined[name] = tf.concat(parts, axis=0) if len(parts) > 1 else parts[0]
            try:
                outputs = self._run(joined)
            except ServingError as err:
                if len(batch) == 1 or err.status != HTTPStatus.BAD_REQUEST:
                    raise
                # One request's bad input (an unparseable example) must not fail the others joined with it.
                self._run_alone(batch)
                return
            self.batches += 1
            self.batched_requests += len(batch)
            start = 0
            for task in batch:
                task.outputs = {name: array[start : start + task.size] for name, array in outputs.items()}
                start += task.size
        except Exception as err:  # noqa: BLE001 - each waiting request re-raises it; none waits forever
            for task in batch:
                task.error = err
        finally:
            for task in batch:
                task.done.set()

    def _run_alone(self, batch: list[_Task]) -> None:
        for task in batch:
            try:
                task.outputs = self._run(task.feeds)
            except ServingError as err:
                task.error = err

    def stop(self) -> None:
        """Refuses new calls, fails the queued ones and ends the threads."""
        with self._ready:
            self._stopped = True
            waiting = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            self._ready.notify_all()
        for task in waiting:
            task.error = ServingError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is stopping")
            task.done.set()
        for thread in self._threads:
            thread.join(timeout=5)
