"""`conveyor serve`: a local development server speaking TensorFlow Serving's REST API over the pushed models.

Usage: python -m pipeline.serving [--output-dir output] [--port 8501] (the same as `conveyor serve`).

Serves every model under `<output-dir>/serving_model/<model>/<version>/` the way `tensorflow_model_server
--rest_api_port=8501` would: model status, metadata and `:predict` in the row (`instances`) and columnar
(`inputs`) forms, the same JSON and the same HTTP errors. New version directories are loaded and removed ones
unloaded as they come and go; the default version is the highest. Beyond TF Serving, an instance may give
plain feature values (`{"trip_miles": 1.2, ...}`) instead of a serialized tf.Example: they are typed by the
curated schema that travels with each version in `assets.extra/schema.pbtxt`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import math
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tensorflow_metadata.proto.v0 import schema_pb2

from components.pusher.publish import SCHEMA_FILE, list_versions

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = "output"
DEFAULT_HOST = "127.0.0.1"
# TF Serving's REST port, so a client written against this server needs no change to talk to the real one.
DEFAULT_PORT = 8501
DEFAULT_POLL_SECONDS = 1.0
SERVING_SUBDIR = "serving_model"
DEFAULT_SIGNATURE = "serving_default"
SERVING_ENVIRONMENT = "SERVING"
SERVE_TAG = "serve"
BYTES_SUFFIX = "_bytes"

# The URL grammar of TF Serving's http_rest_api_handler.cc.
_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)", re.IGNORECASE)
_METADATA_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?/metadata", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?", re.IGNORECASE)

_AVAILABLE = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
# Lines TensorFlow adds to an op error that say nothing to a client.
_TF_NOISE = re.compile(r"^(Graph execution error:|Detected at node .*|<stack traces unavailable>)$")


class ServingError(Exception):
    """A refused request: the HTTP status and the message TF Serving gives for it."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _invalid(message: str) -> ServingError:
    return ServingError(HTTPStatus.BAD_REQUEST, message)


def _not_found(message: str) -> ServingError:
    return ServingError(HTTPStatus.NOT_FOUND, message)


# ---------------------------------------------------------------------------------------------
# Loaded versions


@dataclass(frozen=True)
class LoadedVersion:
    """One model version in memory: its signatures, TF Serving's description of them, and its schema."""

    name: str
    version: int
    path: Path
    # The restored object: it owns the variables the signatures read, so it lives as long as they do.
    model: Any
    signatures: Mapping[str, Any]
    # TF Serving's SignatureDefMap as JSON, read from saved_model.pb as TF Serving reads it.
    signature_defs: dict
    # The curated schema shipped in assets.extra/, or None: then only serialized tf.Examples are accepted.
    schema: Optional[Any]
    # From the schema, computed once: every feature's type, and the features not sent at serving time.
    feature_types: Mapping[str, int] = field(default_factory=dict)
    excluded: frozenset[str] = frozenset()

    def example_from_features(self, values: Mapping[str, Any]) -> bytes:
        """Serializes one instance given as plain feature values into the tf.Example the signature parses.

        Features the schema keeps out of the SERVING environment (the label) are ignored; a missing or
        null feature is left out of the example.

        Raises:
          ServingError: 400 when the version has no schema, a feature is unknown, or a value does not
            have the JSON type the schema's type needs (the feature is named).
        """
        from components.examples import to_example

        if self.schema is None:
            raise _invalid(
                f"{self.name} version {self.version} has no assets.extra/{SCHEMA_FILE}, so it takes serialized "
                'tf.Examples only ({"b64": "<base64>"}), not plain feature values'
            )
        unknown = sorted(name for name in values if name not in self.feature_types)
        if unknown:
            served = sorted(set(self.feature_types) - self.excluded)
            raise _invalid(
                f"unknown feature(s) {', '.join(repr(n) for n in unknown)}: not in the schema of {self.name} "
                f"version {self.version}, whose serving features are {', '.join(served)}"
            )
        clean = {
            name: _feature_values(name, raw, self.feature_types[name])
            for name, raw in values.items()
            if name not in self.excluded
        }
        try:
            return to_example(clean, self.schema, skip=self.excluded).SerializeToString()
        except ValueError as err:
            raise _invalid(str(err)) from None


def not_served(schema: Any) -> set[str]:
    """The schema's features absent from the SERVING environment (the label), by TFMD's rule: a feature's
    in_environment wins, then its not_in_environment, then the schema's default_environment."""

    def served(feature: Any) -> bool:
        if feature.in_environment:
            return SERVING_ENVIRONMENT in feature.in_environment
        if SERVING_ENVIRONMENT in feature.not_in_environment:
            return False
        return not schema.default_environment or SERVING_ENVIRONMENT in schema.default_environment

    return {feature.name for feature in schema.feature if not served(feature)}


def _feature_values(name: str, raw: Any, feature_type: int) -> list:
    """The values of one feature, checked against its schema type as TF Serving checks JSON against a dtype."""
    items = raw if isinstance(raw, list) else [raw]
    values = []
    for item in items:
        if item is None:
            continue
        if feature_type == schema_pb2.INT:
            ok, wanted = isinstance(item, int) and not isinstance(item, bool), "an integer"
        elif feature_type == schema_pb2.FLOAT:
            ok, wanted = isinstance(item, (int, float)) and not isinstance(item, bool), "a number"
        else:
            ok, wanted = isinstance(item, str) or _is_b64(item), 'a string or {"b64": ...}'
        if not ok:
            kind = schema_pb2.FeatureType.Name(feature_type)
            raise _invalid(
                f"feature '{name}': JSON Value: {_json_text(item)} Type: {_json_type(item)} is not of expected "
                f"type: {kind} (the schema's type for '{name}'; send {wanted})"
            )
        values.append(_b64decode(item) if _is_b64(item) else item)
    return values


def _signature_def_map(path: Path) -> dict:
    """The SignatureDefs of the `serve` MetaGraph as TF Serving's metadata API prints them."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    graph = next((g for g in saved.meta_graphs if SERVE_TAG in g.meta_info_def.tags), None)
    if graph is None:
        raise ValueError(f"{path}/saved_model.pb has no MetaGraph tagged '{SERVE_TAG}'")
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in graph.signature_def.items():
        signature_map.signature_def[key].CopyFrom(signature)
    # TF Serving prints with always_print_primitive_fields and the proto field names.
    return json_format.MessageToDict(
        signature_map, preserving_proto_field_name=True, including_default_value_fields=True
    )


def load_version(name: str, version: int, path: str | Path) -> LoadedVersion:
    """Loads one version directory (`<model dir>/<version>/`) for serving.

    Raises:
      OSError, ValueError, tf.errors.OpError: the directory is not a loadable SavedModel.
    """
    import tensorflow as tf
    from google.protobuf import text_format

    path = Path(path)
    model = tf.saved_model.load(str(path), tags=[SERVE_TAG])
    schema = None
    schema_file = path / "assets.extra" / SCHEMA_FILE
    if schema_file.is_file():
        schema = text_format.Parse(schema_file.read_text(encoding="utf-8"), schema_pb2.Schema())
    return LoadedVersion(
        name=name,
        version=version,
        path=path,
        model=model,
        signatures=dict(model.signatures),
        signature_defs=_signature_def_map(path),
        schema=schema,
        feature_types={feature.name: feature.type for feature in schema.feature} if schema else {},
        excluded=frozenset(not_served(schema)) if schema else frozenset(),
    )


# ---------------------------------------------------------------------------------------------
# The versions under a serving root


def _dir_stamp(path: Path) -> tuple:
    """Changes when a version directory's contents do, so a failed load is retried only after a change."""
    stamp = []
    for part in (path, path / "variables", path / "saved_model.pb"):
        try:
            stamp.append(part.stat().st_mtime_ns)
        except OSError:
            stamp.append(None)
    return tuple(stamp)


class ModelRepository:
    """The models under a serving root, each version loaded when its directory appears and unloaded when it
    goes, as TF Serving's file system source does. Thread-safe."""

    def __init__(self, serving_root: str | Path):
        self.root = Path(serving_root)
        self._lock = threading.Lock()  # guards _loaded and _failed; never held while loading
        self._refresh_lock = threading.Lock()  # one scan at a time, so a version is never loaded twice
        self._loaded: dict[str, dict[int, LoadedVersion]] = {}
        self._failed: dict[tuple[str, int], tuple[tuple, str]] = {}  # (dir stamp, error) of versions that failed

    def _scan(self) -> dict[str, list[int]]:
        if not self.root.is_dir():
            return {}
        return {p.name: list_versions(p) for p in sorted(self.root.iterdir()) if p.is_dir() and p.name[0] != "."}

    def refresh(self) -> None:
        """Loads the versions that appeared since the last call and unloads those whose directory is gone.

        A version that fails to load is reported by `status` and retried when its directory changes.

        Raises:
          OSError: the serving root cannot be listed.
        """
        with self._refresh_lock:
            present = self._scan()
            with self._lock:
                for name, versions in list(self._loaded.items()):
                    for version in [v for v in versions if v not in present.get(name, ())]:
                        del versions[version]
                        log.info("unloaded %s version %d: its directory is gone", name, version)
                    if not versions:
                        del self._loaded[name]
                self._failed = {key: value for key, value in self._failed.items() if key[1] in present.get(key[0], ())}
            for name, versions in present.items():
                # Newest first: it becomes the default version, so it should be ready soonest.
                for version in sorted(versions, reverse=True):
                    self._load(name, version)

    def _load(self, name: str, version: int) -> None:
        path = self.root / name / str(version)
        stamp = _dir_stamp(path)
        with self._lock:
            if version in self._loaded.get(name, {}) or self._failed.get((name, version), (None,))[0] == stamp:
                return
        try:
            loaded = load_version(name, version, path)
        except Exception as err:  # a model can fail to load in many ways; report it and serve the others
            log.exception("cannot load %s version %d from %s", name, version, path)
            with self._lock:
                self._failed[(name, version)] = (stamp, f"{type(err).__name__}: {err}")
            return
        with self._lock:
            self._loaded.setdefault(name, {})[version] = loaded
            self._failed.pop((name, version), None)
        log.info("loaded %s version %d", name, version)

    def served(self) -> dict[str, list[int]]:
        """Each model's available versions, ascending."""
        with self._lock:
            return {name: sorted(versions) for name, versions in sorted(self._loaded.items())}

    def _find(self, name: str, version: Optional[int]) -> LoadedVersion:
        with self._lock:
            versions = self._loaded.get(name, {})
            if version is None and versions:
                return versions[max(versions)]
            if version in versions:
                return versions[version]
        if version is None:
            raise _not_found(f"Servable not found for request: Latest({name})")
        raise _not_found(f"Servable not found for request: Specific({name}, {version})")

    def get(self, name: str, version: Optional[int] = None) -> LoadedVersion:
        """The requested version, or the highest available one when `version` is None.

        On a miss the directory is scanned once more, so a version pushed a moment ago is served rather
        than refused until the next poll.

        Raises:
          ServingError: 404 with TF Serving's message when there is no such model or version.
        """
        try:
            return self._find(name, version)
        except ServingError:
            self.refresh()
        return self._find(name, version)

    def _states(self, name: str) -> dict[int, dict]:
        with self._lock:
            states = {version: _AVAILABLE for version in self._loaded.get(name, {})}
            for (model, version), (_, error) in self._failed.items():
                if model == name:
                    states[version] = {"state": "END", "status": {"error_code": "UNKNOWN", "error_message": error}}
        return states

    def status(self, name: str, version: Optional[int] = None) -> dict:
        """TF Serving's GetModelStatusResponse as JSON: one entry per version, newest first.

        Raises:
          ServingError: 404 when the model or the version is unknown.
        """
        states = self._states(name)
        if not states or (version is not None and version not in states):
            self.refresh()
            states = self._states(name)
        if version is not None:
            if version not in states:
                raise _not_found(f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        elif not states:
            raise _not_found(f"Could not find any versions of model {name}")
        return {"model_version_status": [{"version": str(v), **states[v]} for v in sorted(states, reverse=True)]}


# ---------------------------------------------------------------------------------------------
# The REST API: JSON in, tensors, JSON out, as tensorflow_serving/util/json_tensor.cc does it


def _json_text(value: Any, limit: int = 300) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _b64decode(value: dict) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"Unable to base64 decode {_json_text(value, 80)}") from None


def _is_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _parse_request(body: bytes) -> dict:
    if not body.strip():
        raise _invalid("JSON Parse error: The document is empty")
    try:
        request = json.loads(body)
    except json.JSONDecodeError as err:
        raise _invalid(f"JSON Parse error: {err.msg} at offset: {err.pos}") from None
    except ValueError as err:
        raise _invalid(f"JSON Parse error: {err}") from None
    if not isinstance(request, dict):
        raise _invalid(f"JSON Value: {_json_text(request)} Is not object")
    return request


def _dtype_name(dtype: Any) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype.as_datatype_enum)


def _tensor_json(value: Any, spec: Any, servable: LoadedVersion, examples: bool) -> Any:
    """A JSON tensor (a value or nested lists) as nested Python lists of values of the input's dtype.

    For the tf.Example input, a plain object is one instance's feature values and becomes its example.
    """
    if isinstance(value, list):
        return [_tensor_json(item, spec, servable, examples) for item in value]
    if spec.dtype.name == "string":
        if _is_b64(value):
            return _b64decode(value)
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict) and examples:
            return servable.example_from_features(value)
    elif spec.dtype.is_bool:
        if isinstance(value, bool):
            return value
    elif spec.dtype.is_integer:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif spec.dtype.is_floating and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise _invalid(
        f"JSON Value: {_json_text(value)} Type: {_json_type(value)} is not of expected type: {_dtype_name(spec.dtype)}"
    )


def _examples_input(specs: Mapping[str, Any]) -> Optional[str]:
    """The name of the signature's only input when it takes a batch of serialized tf.Examples."""
    if len(specs) != 1:
        return None
    name, spec = next(iter(specs.items()))
    return name if spec.dtype.name == "string" and spec.shape.rank == 1 else None


def _row_inputs(instances: list, specs: Mapping[str, Any], servable: LoadedVersion) -> dict[str, list]:
    """The `instances` list as one list of per-row values for each input."""
    examples = _examples_input(specs)
    names = set(specs)
    objects = _is_object(instances[0])
    if not objects and len(names) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )
    columns: dict[str, list] = {name: [] for name in specs}
    for index, instance in enumerate(instances):
        if objects != _is_object(instance):
            got, wanted = ("list", "object") if objects else ("object", "value/list")
            raise _invalid(f"Expecting {wanted} but got {got} at item {index} of input list")
        if not objects:
            (name,) = names
            columns[name].append(_tensor_json(instance, specs[name], servable, name == examples))
        elif set(instance) == names:
            for name, value in instance.items():
                columns[name].append(_tensor_json(value, specs[name], servable, name == examples))
        elif examples is not None:
            columns[examples].append(servable.example_from_features(instance))
        else:
            raise _invalid(
                f"Failed to process element: {index} of 'instances' list. JSON object: {_json_text(instance)} "
                f"keys must be equal to: {','.join(sorted(names))}"
            )
    return columns


def _columnar_inputs(inputs: Any, specs: Mapping[str, Any], servable: LoadedVersion) -> dict[str, Any]:
    """The `inputs` value as one tensor value for each input."""
    examples = _examples_input(specs)
    if not _is_object(inputs):
        if len(specs) > 1:
            raise _invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map"
            )
        (name,) = specs
        return {name: _tensor_json(inputs, specs[name], servable, name == examples)}
    missing = sorted(set(specs) - set(inputs))
    if not missing:
        return {name: _tensor_json(inputs[name], spec, servable, name == examples) for name, spec in specs.items()}
    if examples is None or len(missing) < len(specs) or not inputs:
        raise _invalid(f"Missing named input: {missing[0]} in 'inputs' object.")
    # Columnar plain feature values: one list per feature, one entry per row.
    lengths = set()
    for feature, column in inputs.items():
        if not isinstance(column, list):
            raise _invalid(f"feature '{feature}': columnar 'inputs' needs a list with one value per row")
        lengths.add(len(column))
    if len(lengths) > 1:
        raise _invalid(f"the feature lists in 'inputs' have different lengths: {sorted(lengths)}")
    rows = lengths.pop() if lengths else 0
    return {
        examples: [
            servable.example_from_features({feature: column[row] for feature, column in inputs.items()})
            for row in range(rows)
        ]
    }


def _tf_message(err: Exception) -> str:
    message = getattr(err, "message", None) or str(err)
    lines = [line for line in message.splitlines() if line.strip() and not _TF_NOISE.match(line.strip())]
    return "\n".join(lines) or message


def _call(signature: Any, signature_name: str, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    specs = signature.structured_input_signature[1]
    feeds = {}
    for name, value in values.items():
        spec = specs[name]
        try:
            tensor = tf.constant(value, dtype=spec.dtype)
        except (TypeError, ValueError, OverflowError) as err:
            raise _invalid(f"input '{name}': {err}") from None
        if not spec.shape.is_compatible_with(tensor.shape):
            raise _invalid(
                f"input '{name}' has shape {tensor.shape.as_list()}, but signature '{signature_name}' expects "
                f"{spec.shape.as_list()}"
            )
        feeds[name] = tensor
    # No lock: a restored tf.function may be called from several threads at once, as TF Serving's
    # session is, and requests then overlap instead of queueing.
    try:
        outputs = signature(**feeds)
    except tf.errors.InvalidArgumentError as err:
        raise _invalid(_tf_message(err)) from None
    except tf.errors.OpError as err:
        raise ServingError(HTTPStatus.INTERNAL_SERVER_ERROR, _tf_message(err)) from None
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def _decimal(value: float, kind: type) -> float:
    """A float as TF Serving writes it: six significant digits when they round-trip, else full precision."""
    if not math.isfinite(value):
        return value
    text = f"{value:g}"
    if kind(text) != kind(value):
        text = f"{value:.{9 if np.dtype(kind).itemsize <= 4 else 17}g}"
    return float(text)


def _map_leaves(value: Any, leaf: Any) -> Any:
    return [_map_leaves(item, leaf) for item in value] if isinstance(value, list) else leaf(value)


def _output_json(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind == "f":
        return _map_leaves(array.tolist(), lambda v: _decimal(v, array.dtype.type))
    if array.dtype.kind in "OSU":
        if name.endswith(BYTES_SUFFIX):
            return _map_leaves(array.tolist(), lambda v: {"b64": base64.b64encode(v).decode("ascii")})
        return _map_leaves(array.tolist(), lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
    return array.tolist()


def _row_outputs(outputs: Mapping[str, np.ndarray]) -> dict:
    batch = {name: array.shape[0] if array.ndim else None for name, array in outputs.items()}
    for name, size in batch.items():
        if size is None:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        if size != next(iter(batch.values())):
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {size}")
    columns = {name: _output_json(name, outputs[name]) for name in sorted(outputs)}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    rows = next(iter(batch.values()))
    return {"predictions": [{name: column[row] for name, column in columns.items()} for row in range(rows)]}


def _columnar_outputs(outputs: Mapping[str, np.ndarray]) -> dict:
    columns = {name: _output_json(name, outputs[name]) for name in sorted(outputs)}
    return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}


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
    request = _parse_request(body)
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _invalid(
            f"JSON Value: {_json_text(request)} not formatted correctly. 'signature_name' key must be a string value."
        )
    servable = repository.get(name, version)
    signature_name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(signature_name)
    if signature is None:
        raise _invalid(f'Serving signature name: "{signature_name}" not found in signature def')
    specs = signature.structured_input_signature[1]
    if "instances" in request and "inputs" in request:
        raise _invalid(
            f"JSON Value: {_json_text(request)} Not formatted correctly expecting only one of 'inputs' or 'instances' "
            "keys to exist "
        )
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list):
            raise _invalid(f"JSON Value: {_json_text(request)} Excepting 'instances' to be an list/array")
        if not instances:
            raise _invalid(f"JSON Value: {_json_text(request)} No values in 'instances' array")
        return _row_outputs(_call(signature, signature_name, _row_inputs(instances, specs, servable)))
    if "inputs" in request:
        return _columnar_outputs(_call(signature, signature_name, _columnar_inputs(request["inputs"], specs, servable)))
    raise _invalid("Missing 'inputs' or 'instances' key")


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
            raise _invalid(f"conveyor serve answers :predict only (pushed models have predict signatures), not :{verb}")
        return predict(repository, name, version, body)
    if method == "GET" and (match := _METADATA_PATH.fullmatch(path)):
        return metadata(repository, match.group(1), _version(match.group(2)))
    if method == "GET" and (match := _STATUS_PATH.fullmatch(path)):
        if not match.group(1):
            raise _invalid("Missing model name in request.")
        return repository.status(match.group(1), _version(match.group(2)))
    if path.lower().startswith("/v1/"):
        raise _invalid(f"Malformed request: {method} {path}")
    raise _not_found(f"Not found: {method} {path} (conveyor serve answers TF Serving's REST API under /v1/models/)")


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as TF Serving: a client that reuses its connection pays for TCP set-up once.
    protocol_version = "HTTP/1.1"
    server_version = "conveyor-serve"
    # Headers and body go out in two writes; with Nagle's algorithm the body would wait for the client's
    # delayed ACK of the headers, some 40 ms on Linux, on every keep-alive request.
    disable_nagle_algorithm = True
    server: _HTTPServer

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
            raise _invalid(f"invalid Content-Length: {length!r}") from None
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


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a client holding a keep-alive connection open must not block stop()

    def __init__(self, address: tuple[str, int], repository: ModelRepository):
        super().__init__(address, _Handler)
        self.repository = repository


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
        self._http: Optional[_HTTPServer] = None
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
        self._http = _HTTPServer((self.host, self._requested_port), self.repository)
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


# ---------------------------------------------------------------------------------------------
# The command


def describe(served: Mapping[str, list[int]]) -> str:
    """One phrase naming the models and versions served, e.g. "taxi versions 5, 7 (default 7)"."""
    if not served:
        return "no models yet (waiting for `conveyor run` to push one)"
    parts = []
    for name, versions in served.items():
        noun = "version" if len(versions) == 1 else "versions"
        parts.append(f"{name} {noun} {', '.join(map(str, versions))} (default {versions[-1]})")
    return "; ".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `conveyor serve`'s flags to `parser`."""
    parser.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        help=f"where `conveyor run` pushed models: serves <output-dir>/{SERVING_SUBDIR}/<model>/<version>/",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"REST port (default: {DEFAULT_PORT}, as TF Serving)"
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST}, this machine only)"
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        help=f"how often to look for new and removed versions (default: {DEFAULT_POLL_SECONDS})",
    )


def main(args: argparse.Namespace) -> int:
    """Runs `conveyor serve` until interrupted; returns the exit code."""
    if not args.poll_seconds > 0:
        print(f"error: --poll-seconds must be positive, got {args.poll_seconds}", file=sys.stderr)
        return 2
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("conveyor serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    serving_root = Path(args.output_dir) / SERVING_SUBDIR
    server = ModelServer(serving_root, args.host, args.port, args.poll_seconds)
    try:
        server.start()
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    print(f"conveyor serve: {server.url} serving {describe(server.served())} from {serving_root}", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    from pipeline.cli import prepare_environment

    prepare_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
