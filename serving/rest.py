"""TF Serving's REST API over HTTP: the URL grammar, `:predict`, metadata and model status, its JSON errors."""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from serving.classify import classify_or_regress
from serving.errors import ServingError, invalid, not_found
from serving.json_tensors import (
    call_signature,
    columnar_inputs,
    columnar_outputs,
    json_text,
    parse_request,
    row_inputs,
    row_outputs,
)
from serving.models import ModelRepository

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"

# The URL grammar of TF Serving's http_rest_api_handler.cc.
_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)", re.IGNORECASE)
_METADATA_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?/metadata", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?", re.IGNORECASE)


def predict(repository: ModelRepository, name: str, version: Optional[int], body: bytes) -> dict:
    """Answers `POST /v1/models/<name>[/versions/<version>]:predict` with TF Serving's JSON.

    Args:
      repository: the loaded models.
      name: the model.
      version: a specific version, or None for the highest.
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
    servable = repository.get(name, version)
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
        return row_outputs(call_signature(signature, signature_name, row_inputs(instances, specs, servable)))
    if "inputs" in request:
        return columnar_outputs(
            call_signature(signature, signature_name, columnar_inputs(request["inputs"], specs, servable))
        )
    raise invalid("Missing 'inputs' or 'instances' key")


def metadata(repository: ModelRepository, name: str, version: Optional[int]) -> dict:
    """Answers `GET /v1/models/<name>[/versions/<version>]/metadata` with TF Serving's JSON.

    Raises:
      ServingError: 404 for an unknown model or version.
    """
    servable = repository.get(name, version)
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": servable.signature_defs},
    }


def _version(text: Optional[str]) -> Optional[int]:
    return int(text) if text else None


def handle(repository: ModelRepository, method: str, path: str, body: bytes) -> dict:
    """Routes one request as TF Serving's REST handler does.

    Raises:
      ServingError: the request is refused; its status and message are the response.
    """
    if method == "POST" and (match := _PREDICT_PATH.fullmatch(path)):
        name, version, verb = match.group(1), _version(match.group(2)), match.group(3).lower()
        if verb != "predict":
            return classify_or_regress(repository, name, version, verb, body)
        return predict(repository, name, version, body)
    if method == "GET" and (match := _METADATA_PATH.fullmatch(path)):
        return metadata(repository, match.group(1), _version(match.group(2)))
    if method == "GET" and (match := _STATUS_PATH.fullmatch(path)):
        if not match.group(1):
            raise invalid("Missing model name in request.")
        return repository.status(match.group(1), _version(match.group(2)))
    if path.lower().startswith("/v1/"):
        raise invalid(f"Malformed request: {method} {path}")
    raise not_found(f"Not found: {method} {path} (conveyor serve answers TF Serving's REST API under /v1/models/)")


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as TF Serving: a client that reuses its connection pays for TCP set-up once.
    protocol_version = "HTTP/1.1"
    server_version = "conveyor-serve"
    # Headers and body go out in two writes; with Nagle's algorithm the body would wait for the client's
    # delayed ACK of the headers, some 40 ms on Linux, on every keep-alive request.
    disable_nagle_algorithm = True
    server: RestServer

    def do_GET(self) -> None:
        self._respond("GET")

    def do_POST(self) -> None:
        self._respond("POST")

    def _body(self) -> bytes:
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
        return self.rfile.read(size)

    def _respond(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            status, payload = HTTPStatus.OK, handle(self.server.repository, method, path, self._body())
        except ServingError as err:
            status, payload = err.status, {"error": err.message}
        except Exception as err:  # one broken request must not take the connection down without an answer
            log.exception("%s %s failed", method, path)
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(err).__name__}: {err}"}
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class RestServer(ThreadingHTTPServer):
    daemon_threads = True  # a client holding a keep-alive connection open must not block stop()

    def __init__(self, address: tuple[str, int], repository: ModelRepository):
        super().__init__(address, _Handler)
        self.repository = repository
