"""TF Serving's REST API over HTTP: the URL grammar, `:predict`, metadata and model status, its JSON errors."""

from __future__ import annotations

import functools
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Optional

from serving.classify import classify_or_regress
from serving.defaults import DEFAULT_MAX_BODY_BYTES, MAX_BODY_FLAG
from serving.errors import ServingError, invalid, not_found
from serving.inference import Inference
from serving.json_tensors import (
    columnar_inputs,
    columnar_outputs,
    json_text,
    parse_request,
    row_inputs,
    row_outputs,
)
from serving.models import LoadedVersion, ModelRepository

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
# The OpenAPI description of this surface, shipped in the package and served outside /v1/, where TF Serving
# answers 404, so that no URL of TF Serving's grammar changes meaning.
OPENAPI_FILE = "openapi.json"
OPENAPI_PATH = "/openapi.json"

# The URL grammar of TF Serving's http_rest_api_handler.cc: a model, then a version or a version label.
_TARGET = r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
_PREDICT_PATH = re.compile(_TARGET + r":(classify|regress|predict)", re.IGNORECASE)
_METADATA_PATH = re.compile(_TARGET + r"/metadata", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?)?", re.IGNORECASE)
# After a 413: how long, and in what pieces, the rest of a refused body is read and dropped.
_LINGER_SECONDS = 1.0
_LINGER_CHUNK = 64 * 1024


def predict(inference: Inference, find: Callable[[], LoadedVersion], body: bytes) -> dict:
    """Answers `POST /v1/models/<name>[/versions/<version>|/labels/<label>]:predict` with TF Serving's JSON.

    Args:
      inference: runs the signature.
      find: the version the URL names (raises ServingError 404 / 400 when there is none).
      body: the request body: `{"instances": [...]}` (row form) or `{"inputs": ...}` (columnar form),
        optionally with `"signature_name"`.

    Returns:
      `{"predictions": [...]}` for the row form, `{"outputs": ...}` for the columnar form.

    Raises:
      ServingError: 400 for a malformed request or inputs the model refuses, 404 for an unknown model or
        version, 500 when the model fails.
    """
    request = parse_request(body)
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid(
            f"JSON Value: {json_text(request)} not formatted correctly. 'signature_name' key must be a string value."
        )
    servable = find()
    signature_name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(signature_name)
    if signature is None:
        raise invalid(f'Serving signature name: "{signature_name}" not found in signature def')
    specs = signature.structured_input_signature[1]
    if "instances" in request and "inputs" in request:
        raise invalid(
            f"JSON Value: {json_text(request)} Not formatted correctly expecting only one of 'inputs' or 'instances' "
            "keys to exist "
        )
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {json_text(request)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {json_text(request)} No values in 'instances' array")
        return row_outputs(inference.call(servable, signature_name, row_inputs(instances, specs, servable)))
    if "inputs" in request:
        return columnar_outputs(
            inference.call(servable, signature_name, columnar_inputs(request["inputs"], specs, servable))
        )
    raise invalid("Missing 'inputs' or 'instances' key")


def metadata(servable: LoadedVersion) -> dict:
    """Answers `GET /v1/models/<name>[/versions/<version>|/labels/<label>]/metadata` with TF Serving's JSON."""
    return {
        "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": servable.signature_defs},
    }


@functools.lru_cache(maxsize=1)
def openapi() -> dict:
    """The OpenAPI 3 description of the REST API, `serving/openapi.json`."""
    return json.loads(resources.files("serving").joinpath(OPENAPI_FILE).read_text(encoding="utf-8"))


def _version(text: Optional[str]) -> Optional[int]:
    if not text:
        return None
    # TF Serving reads the version into an int64; past that (and Python's 4300 digits) it is no number.
    if len(text) > 19 or int(text) >= 2**63:
        raise invalid(f"Failed to convert version: {text[:40]}{'...' if len(text) > 40 else ''} to numeric.")
    return int(text)


def handle(repository: ModelRepository, inference: Inference, method: str, path: str, body: bytes) -> dict:
    """Routes one request as TF Serving's REST handler does.

    Raises:
      ServingError: the request is refused; its status and message are the response.
    """
    if method == "POST" and (match := _PREDICT_PATH.fullmatch(path)):
        name, version, label, verb = match.group(1), _version(match.group(2)), match.group(3), match.group(4).lower()

        def find() -> LoadedVersion:
            return repository.get(name, version, label)

        if verb != "predict":
            return classify_or_regress(inference, find, verb, body)
        return predict(inference, find, body)
    if method == "GET" and (match := _METADATA_PATH.fullmatch(path)):
        return metadata(repository.get(match.group(1), _version(match.group(2)), match.group(3)))
    if method == "GET" and (match := _STATUS_PATH.fullmatch(path)):
        if not match.group(1):
            raise invalid("Missing model name in request.")
        return repository.status(match.group(1), _version(match.group(2)), match.group(3))
    if path.lower().startswith("/v1/"):
        raise invalid(f"Malformed request: {method} {path}")
    if method == "GET" and path == OPENAPI_PATH:
        return openapi()
    raise not_found(f"Not found: {method} {path} (conveyor serve answers TF Serving's REST API under /v1/models/)")


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as TF Serving: a client that reuses its connection pays for TCP set-up once.
    protocol_version = "HTTP/1.1"
    server_version = "conveyor-serve"
    # Headers and body go out in two writes; with Nagle's algorithm the body would wait for the client's
    # delayed ACK of the headers, some 40 ms on Linux, on every keep-alive request.
    disable_nagle_algorithm = True
    server: RestServer
    _unread = 0  # the declared size of a body refused unread

    def do_GET(self) -> None:
        self._respond("GET")

    def do_POST(self) -> None:
        self._respond("POST")

    # TF Serving answers every other method under /v1/ with its 400 "Malformed request", not 501.
    def do_other(self) -> None:
        self._respond(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = do_other

    def _declared_size(self) -> int:
        """The body's Content-Length, checked against the limit before a byte of the body is read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ServingError(
                HTTPStatus.LENGTH_REQUIRED, "chunked request bodies are not supported: send Content-Length"
            )
        length = self.headers.get("Content-Length", "0")
        try:
            size = int(length)
            if size < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            raise invalid(f"invalid Content-Length: {length!r}") from None
        limit = self.server.max_body_bytes
        if size > limit:
            # The unread body still sits on the connection, so it cannot carry another request.
            self.close_connection = True
            self._unread = size
            raise ServingError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {size} bytes is over the limit of {limit} bytes (conveyor serve {MAX_BODY_FLAG})",
            )
        return size

    def handle_expect_100(self) -> bool:
        # A client that asks before sending (curl does past 1 MiB) hears the 413 before it sends the body.
        try:
            self._declared_size()
        except ServingError as err:
            self._send(err.status, {"error": err.message})
            return False
        return super().handle_expect_100()

    def _respond(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            body = self.rfile.read(self._declared_size())
            status, payload = HTTPStatus.OK, handle(self.server.repository, self.server.inference, method, path, body)
        except ServingError as err:
            status, payload = err.status, {"error": err.message}
        except Exception as err:  # one broken request must not take the connection down without an answer
            log.exception("%s %s failed", method, path)
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(err).__name__}: {err}"}
        self._send(status, payload)

    def _send(self, status: HTTPStatus, payload: dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        if status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            self._linger(self._unread)

    def _linger(self, unread: int) -> None:
        """Drops, for a moment, what the client is still sending, then lets the connection close.

        Closing a socket with unread data resets the connection, and a client still sending its body would
        see the reset instead of the 413; read and discarded in small pieces, the body is never held.
        """
        self.wfile.flush()
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            self.connection.settimeout(_LINGER_SECONDS)
            while unread > 0 and time.monotonic() < deadline and (chunk := self.rfile.read1(_LINGER_CHUNK)):
                unread -= len(chunk)
        except OSError:  # the client hung up or went quiet: nothing left to protect
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class RestServer(ThreadingHTTPServer):
    daemon_threads = True  # a client holding a keep-alive connection open must not block stop()

    def __init__(
        self,
        address: tuple[str, int],
        repository: ModelRepository,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        inference: Optional[Inference] = None,
    ):
        super().__init__(address, _Handler)
        self.repository = repository
        self.max_body_bytes = max_body_bytes
        self.inference = inference if inference is not None else Inference()
