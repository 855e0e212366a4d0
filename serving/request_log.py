"""The request log: a sampled share of the requests `conveyor serve` answers, written as TF Serving's
`PredictionLog` records (request, response, and `LogMetadata` naming the model, version, signature and
time) in size-rotated TFRecord files under `<output>/request_logs/<model>/`.

Open-source TF Serving cannot write these (tensorflow/serving#408, #2677); they are what `conveyor
monitor` reads. A request thread only samples and queues: the protos are built and written by one
background thread, so logging never blocks a request nor fails it. A full queue drops records (counted);
a write error (a full disk) stops logging with one warning and serving goes on.

A file is written as `<name>.tfrecord.inprogress` and renamed to `<name>.tfrecord` when it is rotated or
the server stops, so a reader never sees a half-written record.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from serving.servable import SERVE_TAG, LoadedVersion

log = logging.getLogger(__name__)

LOG_SUFFIX = ".tfrecord"
IN_PROGRESS_SUFFIX = ".inprogress"
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
# A file is also closed (and so becomes readable) after this long, so a quiet server's logs reach monitoring.
DEFAULT_MAX_FILE_SECONDS = 300.0
DEFAULT_QUEUE_SIZE = 10_000
DRAIN_SECONDS = 0.2
# While draining, the writer gives the interpreter lock away for YIELD_SECONDS after each YIELD_AFTER_SECONDS
# of work (about 10 records), which caps it near 13,000 records a second.
YIELD_AFTER_SECONDS = 0.0005
YIELD_SECONDS = 0.0002
KINDS = ("predict", "classify", "regress")


@dataclass(frozen=True)
class _Entry:
    kind: str
    servable: LoadedVersion
    signature_name: str
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    timestamp: float


def prediction_log(entry: _Entry, rate: float) -> Any:
    """The PredictionLog for one answered request, as TF Serving's server request logger writes it."""
    from tensorflow_serving.apis import prediction_log_pb2

    from serving import protos

    record = prediction_log_pb2.PredictionLog()
    metadata = record.log_metadata
    protos.model_spec(entry.servable, entry.signature_name, metadata.model_spec)
    metadata.sampling_config.sampling_rate = rate
    metadata.saved_model_tags.append(SERVE_TAG)
    metadata.timestamp_secs = int(entry.timestamp)
    if entry.kind == "predict":
        record.predict_log.request.CopyFrom(protos.predict_request(entry.servable, entry.signature_name, entry.inputs))
        record.predict_log.response.CopyFrom(
            protos.predict_response(entry.servable, entry.signature_name, entry.outputs)
        )
        return record
    part = record.classify_log if entry.kind == "classify" else record.regress_log
    protos.model_spec(entry.servable, entry.signature_name, part.request.model_spec)
    protos.example_input(list(entry.inputs["inputs"]), part.request.input)
    protos.model_spec(entry.servable, entry.signature_name, part.response.model_spec)
    if entry.kind == "classify":
        protos.classification_result(entry.outputs, part.response.result)
    else:
        protos.regression_result(entry.outputs, part.response.result)
    return record


class _File:
    """One TFRecord file being written, renamed to its final name when closed."""

    def __init__(self, directory: Path):
        import tensorflow as tf

        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"requests-{stamp}-{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns() % 10**9:09d}"
        self.final = directory / f"{name}{LOG_SUFFIX}"
        self.path = directory / f"{name}{LOG_SUFFIX}{IN_PROGRESS_SUFFIX}"
        self.writer = tf.io.TFRecordWriter(str(self.path))
        self.opened = time.monotonic()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.writer.write(data)
        self.bytes += len(data) + 16  # a TFRecord's length, CRCs and payload

    def close(self) -> None:
        self.writer.close()
        os.replace(self.path, self.final)


class RequestLog:
    """Samples answered requests and writes them in the background; `close()` flushes and closes the files."""

    def __init__(
        self,
        root: str | Path,
        rate: float,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_file_seconds: float = DEFAULT_MAX_FILE_SECONDS,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ):
        """Args:
        root: the directory of `<model>/` log directories (`<output>/request_logs`).
        rate: the share of requests logged, in (0, 1].
        max_file_bytes: a file is closed and a new one started past this size.
        max_file_seconds: ... or after this long.
        queue_size: records waiting to be written; past it new ones are dropped, never waited for.

        Raises:
          ValueError: rate is not in (0, 1], or a size or time is not positive.
        """
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"the request log rate must be in (0, 1], got {rate}")
        if max_file_bytes <= 0 or max_file_seconds <= 0 or queue_size <= 0:
            raise ValueError("the request log's file size, file age and queue size must be positive")
        self.root = Path(root)
        self.rate = rate
        self.max_file_bytes = max_file_bytes
        self.max_file_seconds = max_file_seconds
        self.written = 0
        self.dropped = 0
        self.failed: Optional[str] = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._files: dict[str, _File] = {}
        self._random = random.Random()
        self._write_errors = _write_errors()  # TensorFlow is loaded by the time a server logs
        self._thread = threading.Thread(target=self._write_loop, name="conveyor-serve-request-log", daemon=True)
        self._thread.start()

    def add(self, kind: str, servable: LoadedVersion, signature_name: str, inputs: Mapping, outputs: Mapping) -> None:
        """Logs one answered request if it is sampled; returns at once, whatever happens to the record."""
        if self.failed is not None or self._random.random() >= self.rate:
            return
        try:
            self._queue.put_nowait(_Entry(kind, servable, signature_name, inputs, outputs, time.time()))
        except queue.Full:
            self.dropped += 1

    def _write_loop(self) -> None:
        # Woken a few times a second to drain the queue, not once per record: a thread that wakes for every
        # request takes the interpreter lock from the request threads every time, which they would feel.
        stopping = False
        while not stopping:
            time.sleep(DRAIN_SECONDS)
            entries = []
            while True:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is _STOP:
                    stopping = True
                    break
                entries.append(entry)
            try:
                worked_since = time.perf_counter()
                for entry in entries:
                    self._write_one(entry)
                    if time.perf_counter() - worked_since > YIELD_AFTER_SECONDS:
                        # Let a request thread waiting for the interpreter lock have it now, rather than after
                        # Python's 5 ms switch interval: that wait is what a burst of records adds to p99.
                        time.sleep(YIELD_SECONDS)
                        worked_since = time.perf_counter()
                self._rotate_old()
            except self._write_errors as err:  # a full disk, a lost directory: stop logging, never serving
                self._fail(err)
                return

    def _write_one(self, entry: _Entry) -> None:
        try:
            data = prediction_log(entry, self.rate).SerializeToString()
        except (TypeError, ValueError):  # a request whose values do not make a proto: skip that one record
            self.dropped += 1
            log.exception("cannot log a %s request to %s", entry.kind, self.root)
            return
        self._write(entry.servable.name, data)

    def _write(self, name: str, data: bytes) -> None:
        if self.failed is not None:
            return
        current = self._files.get(name)
        if current is not None and current.bytes + len(data) > self.max_file_bytes and current.bytes:
            current.close()
            current = None
        if current is None:
            current = self._files[name] = _File(self.root / name)
        current.write(data)
        self.written += 1

    def _rotate_old(self) -> None:
        now = time.monotonic()
        for name, current in list(self._files.items()):
            if now - current.opened >= self.max_file_seconds:
                current.close()
                del self._files[name]

    def _fail(self, err: Exception) -> None:
        self.failed = f"{type(err).__name__}: {err}"
        log.warning("request logging stopped (serving goes on): cannot write under %s: %s", self.root, self.failed)
        for current in self._files.values():
            try:
                current.close()
            except self._write_errors:  # the disk that failed the write may fail the close too; the warning said so
                pass
        self._files.clear()

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued, closes the files (renaming them to their final names) and stops."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        for current in self._files.values():
            try:
                current.close()
            except self._write_errors as err:  # report, and still close the other models' files
                log.warning("cannot close request log %s: %s", current.path, err)
        self._files.clear()


_STOP = object()


def _write_errors() -> tuple:
    import tensorflow as tf

    return (OSError, tf.errors.OpError)


def log_files(root: str | Path, model: str) -> list[Path]:
    """The model's finished request-log files, oldest first."""
    directory = Path(root) / model
    return sorted(directory.glob(f"*{LOG_SUFFIX}")) if directory.is_dir() else []
