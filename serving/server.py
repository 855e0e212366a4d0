"""ModelServer: a local server speaking TensorFlow Serving's REST and gRPC APIs over the pushed models
(`conveyor serve`).

Serves every model under `<output-dir>/serving_model/<model>/<version>/` the way `tensorflow_model_server
--rest_api_port=8501` would: model status, metadata, `:classify` / `:regress`, and `:predict` in the row
(`instances`) and columnar (`inputs`) forms, the same JSON and the same HTTP errors. New version
directories are loaded and removed ones unloaded as they come and go; the default version is the
highest. Beyond TF Serving, an instance may give plain feature values (`{"trip_miles": 1.2, ...}`)
instead of a serialized tf.Example: they are typed by the curated schema that travels with each
version in `assets.extra/schema.pbtxt`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from serving.batching import BatchingParameters
from serving.defaults import DEFAULT_HOST, DEFAULT_MAX_BODY_BYTES, DEFAULT_POLL_SECONDS, DEFAULT_PORT
from serving.inference import Inference
from serving.models import ModelRepository
from serving.request_log import RequestLog
from serving.rest import RestServer

log = logging.getLogger(__name__)


class ModelServer:
    """TF Serving's REST API over a serving root, in background threads: one serves HTTP, one polls for versions.

    Usage: `with ModelServer(root, port=0) as server: urlopen(f"{server.url}/v1/models/taxi")`.
    """

    def __init__(
        self,
        serving_root: str | Path,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        grpc_port: Optional[int] = None,
        model_config_file: Optional[str | Path] = None,
        batching: Optional[BatchingParameters] = None,
        request_log: Optional[RequestLog] = None,
    ):
        """Prepares the server; nothing is loaded or bound until `start`.

        Args:
          serving_root: the directory holding `<model>/<version>/` (`<output-dir>/serving_model`).
          host: the address to listen on.
          port: the port; 0 picks a free one (see `port` once started).
          poll_seconds: how often the serving root is scanned for new and removed versions.
          max_body_bytes: the largest request body accepted; a larger one is refused with 413 unread, and
            the largest gRPC message (RESOURCE_EXHAUSTED).
          grpc_port: TF Serving's gRPC API on this port (0 picks a free one); None serves REST only.
          model_config_file: a TF Serving model config; by default `<serving root>/models.config` when present.
          batching: server-side batching; None (the default, as TF Serving) runs every request on its own.
          request_log: where sampled requests are logged; the server closes it when it stops.

        Raises:
          ValueError: poll_seconds or max_body_bytes is not positive.
        """
        if not poll_seconds > 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        if not max_body_bytes > 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self.repository = ModelRepository(serving_root, model_config_file)
        self.inference = Inference(batching, request_log)
        self._requested_grpc_port = grpc_port
        self._grpc: Optional[Any] = None
        self.grpc_port: Optional[int] = None
        self.host = host
        self.poll_seconds = poll_seconds
        self.max_body_bytes = max_body_bytes
        self._requested_port = port
        self._http: Optional[RestServer] = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def start(self) -> ModelServer:
        """Loads the versions present, starts listening and polling; returns at once.

        Raises:
          OSError: the address cannot be bound (e.g. the port is in use).
          RuntimeError: the server was already started.
        """
        if self._http is not None:
            raise RuntimeError("the server is already started")
        # Load before listening, so that the first request already sees every pushed version.
        self.repository.refresh()
        self._http = RestServer((self.host, self._requested_port), self.repository, self.max_body_bytes, self.inference)
        if self._requested_grpc_port is not None:
            from serving.grpc_api import start_grpc

            try:
                self._grpc, self.grpc_port = start_grpc(
                    self.repository, self.inference, self.host, self._requested_grpc_port, self.max_body_bytes
                )
            except OSError:
                self._http.server_close()
                self._http = None
                raise
        self._threads = [
            threading.Thread(target=self._http.serve_forever, name="conveyor-serve-http", daemon=True),
            threading.Thread(target=self._poll, name="conveyor-serve-poll", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._http is None:
            raise RuntimeError("the server is not started")
        return self._http.server_address[1]

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:8501."""
        return f"http://{self.host}:{self.port}"

    @property
    def grpc_address(self) -> str:
        """host:port of the gRPC API, e.g. 127.0.0.1:8500 (for grpc.insecure_channel)."""
        if self.grpc_port is None:
            raise RuntimeError("gRPC is not started")
        return f"{self.host}:{self.grpc_port}"

    def served(self) -> dict[str, list[int]]:
        """Each model's available versions, ascending; the highest is the default."""
        return self.repository.served()

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.repository.refresh()
                self.inference.forget(self.repository.served())
            except OSError as err:
                log.warning("cannot scan %s for versions: %s", self.repository.root, err)

    def wait(self) -> None:
        """Blocks until `stop` is called (from another thread or a signal handler)."""
        while not self._stopping.wait(0.5):
            pass

    def stop(self) -> None:
        """Stops listening and polling; requests in flight finish (gRPC's within a grace period), then the
        batchers stop and the request log is flushed."""
        from serving.grpc_api import stop_grpc

        self._stopping.set()
        stop_grpc(self._grpc)
        self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join()
        self._threads = []
        self.inference.stop()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def describe(served: Mapping[str, list[int]]) -> str:
    """One phrase naming the models and versions served, e.g. "taxi versions 5, 7 (default 7)"."""
    if not served:
        return "no models yet (waiting for `conveyor run` to push one)"
    parts = []
    for name, versions in served.items():
        noun = "version" if len(versions) == 1 else "versions"
        parts.append(f"{name} {noun} {', '.join(map(str, versions))} (default {versions[-1]})")
    return "; ".join(parts)
