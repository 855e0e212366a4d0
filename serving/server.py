"""ModelServer: a local server speaking TensorFlow Serving's REST API over the pushed models (`conveyor serve`).

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

from serving.defaults import DEFAULT_HOST, DEFAULT_POLL_SECONDS, DEFAULT_PORT
from serving.models import ModelRepository
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
    ):
        """Prepares the server; nothing is loaded or bound until `start`.

        Args:
          serving_root: the directory holding `<model>/<version>/` (`<output-dir>/serving_model`).
          host: the address to listen on.
          port: the port; 0 picks a free one (see `port` once started).
          poll_seconds: how often the serving root is scanned for new and removed versions.

        Raises:
          ValueError: poll_seconds is not positive.
        """
        if not poll_seconds > 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        self.repository = ModelRepository(serving_root)
        self.host = host
        self.poll_seconds = poll_seconds
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
        self._http = RestServer((self.host, self._requested_port), self.repository)
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

    def served(self) -> dict[str, list[int]]:
        """Each model's available versions, ascending; the highest is the default."""
        return self.repository.served()

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.repository.refresh()
            except OSError as err:
                log.warning("cannot scan %s for versions: %s", self.repository.root, err)

    def wait(self) -> None:
        """Blocks until `stop` is called (from another thread or a signal handler)."""
        while not self._stopping.wait(0.5):
            pass

    def stop(self) -> None:
        """Stops listening and polling; requests in flight finish on their own threads."""
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join()
        self._threads = []

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
