"""JSON in, tensors, JSON out, as TF Serving's tensorflow_serving/util/json_tensor.cc does it.

Rows (`instances`) and columns (`inputs`), `{"b64": ...}` bytes, plain feature values typed by the
schema, and the same error texts.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
from tensorflow_metadata.proto.v0 import schema_pb2

from components.pusher.publish import SCHEMA_FILE
from serving.errors import invalid
from serving.servable import LoadedVersion

BYTES_SUFFIX = "_bytes"
# Levels of lists and objects a request may nest: a tensor of TensorFlow's highest rank fits in it.
MAX_JSON_DEPTH = 256


def json_text(value: Any, limit: int = 300) -> str:
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
        raise invalid(f"Unable to base64 decode {json_text(value, 80)}") from None


def _is_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def parse_request(body: bytes) -> dict:
    if not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        request = json.loads(body)
    except json.JSONDecodeError as err:
        raise invalid(f"JSON Parse error: {err.msg} at offset: {err.pos}") from None
    except ValueError as err:
        raise invalid(f"JSON Parse error: {err}") from None
    except RecursionError:
        request = None  # nested past Python's own limit: refused below as too deep
    # Deeper than any tensor, and the recursive walks below (and Python's own) would overflow on it.
    if request is None and body.strip() != b"null" or _too_deep(request):
        raise invalid(f"JSON Parse error: nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(request, dict):
        raise invalid(f"JSON Value: {json_text(request)} Is not object")
    return request


def _too_deep(value: Any) -> bool:
    """Whether lists and objects nest deeper than MAX_JSON_DEPTH, walked without recursion."""
    level = [value]
    for _ in range(MAX_JSON_DEPTH):
        level = [
            item
            for node in level
            if isinstance(node, (list, dict))
            for item in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return False
    return any(isinstance(node, (list, dict)) for node in level)


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
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate escape, "\ud800": no UTF-8 text
                raise invalid(f"JSON Value: {json_text(value)} Invalid encoding in string.") from None
        if isinstance(value, dict) and examples:
            return example_from_features(servable, value)
    elif spec.dtype.is_bool:
        if isinstance(value, bool):
            return value
    elif spec.dtype.is_integer:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif spec.dtype.is_floating and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise invalid(
        f"JSON Value: {json_text(value)} Type: {_json_type(value)} is not of expected type: {_dtype_name(spec.dtype)}"
    )


def _examples_input(specs: Mapping[str, Any]) -> Optional[str]:
    """The name of the signature's only input when it takes a batch of serialized tf.Examples."""
    if len(specs) != 1:
        return None
    name, spec = next(iter(specs.items()))
    return name if spec.dtype.name == "string" and spec.shape.rank == 1 else None


def row_inputs(instances: list, specs: Mapping[str, Any], servable: LoadedVersion) -> dict[str, list]:
    """The `instances` list as one list of per-row values for each input."""
    examples = _examples_input(specs)
    names = set(specs)
    objects = _is_object(instances[0])
    if not objects and len(names) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )
    columns: dict[str, list] = {name: [] for name in specs}
    for index, instance in enumerate(instances):
        if objects != _is_object(instance):
            got, wanted = ("list", "object") if objects else ("object", "value/list")
            raise invalid(f"Expecting {wanted} but got {got} at item {index} of input list")
        if not objects:
            (name,) = names
            columns[name].append(_tensor_json(instance, specs[name], servable, name == examples))
        elif set(instance) == names:
            for name, value in instance.items():
                columns[name].append(_tensor_json(value, specs[name], servable, name == examples))
        elif examples is not None:
            columns[examples].append(example_from_features(servable, instance))
        else:
            raise invalid(
                f"Failed to process element: {index} of 'instances' list. JSON object: {json_text(instance)} "
                f"keys must be equal to: {','.join(sorted(names))}"
            )
    return columns


def columnar_inputs(inputs: Any, specs: Mapping[str, Any], servable: LoadedVersion) -> dict[str, Any]:
    """The `inputs` value as one tensor value for each input."""
    examples = _examples_input(specs)
    if not _is_object(inputs):
        if len(specs) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map"
            )
        (name,) = specs
        return {name: _tensor_json(inputs, specs[name], servable, name == examples)}
    missing = sorted(set(specs) - set(inputs))
    if not missing:
        return {name: _tensor_json(inputs[name], spec, servable, name == examples) for name, spec in specs.items()}
    if examples is None or len(missing) < len(specs) or not inputs:
        raise invalid(f"Missing named input: {missing[0]} in 'inputs' object.")
    # Columnar plain feature values: one list per feature, one entry per row.
    lengths = set()
    for feature, column in inputs.items():
        if not isinstance(column, list):
            raise invalid(f"feature '{feature}': columnar 'inputs' needs a list with one value per row")
        lengths.add(len(column))
    if len(lengths) > 1:
        raise invalid(f"the feature lists in 'inputs' have different lengths: {sorted(lengths)}")
    rows = lengths.pop() if lengths else 0
    return {
        examples: [
            example_from_features(servable, {feature: column[row] for feature, column in inputs.items()})
            for row in range(rows)
        ]
    }


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


def row_outputs(outputs: Mapping[str, np.ndarray]) -> dict:
    batch = {name: array.shape[0] if array.ndim else None for name, array in outputs.items()}
    for name, size in batch.items():
        if size is None:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if size != next(iter(batch.values())):
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {size}")
    columns = {name: _output_json(name, outputs[name]) for name in sorted(outputs)}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    rows = next(iter(batch.values()))
    return {"predictions": [{name: column[row] for name, column in columns.items()} for row in range(rows)]}


def columnar_outputs(outputs: Mapping[str, np.ndarray]) -> dict:
    columns = {name: _output_json(name, outputs[name]) for name in sorted(outputs)}
    return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}


def example_from_features(servable: LoadedVersion, values: Mapping[str, Any]) -> bytes:
    """Serializes one instance given as plain feature values into the tf.Example the signature parses.

    Features the schema keeps out of the SERVING environment (the label) are ignored; a missing or
    null feature is left out of the example.

    Raises:
      ServingError: 400 when the version has no schema, a feature is unknown, or a value does not
        have the JSON type the schema's type needs (the feature is named).
    """
    from components.examples import to_example

    if servable.schema is None:
        raise invalid(
            f"{servable.name} version {servable.version} has no assets.extra/{SCHEMA_FILE}, so it takes serialized "
            'tf.Examples only ({"b64": "<base64>"}), not plain feature values'
        )
    unknown = sorted(name for name in values if name not in servable.feature_types)
    if unknown:
        served = sorted(set(servable.feature_types) - servable.excluded)
        raise invalid(
            f"unknown feature(s) {', '.join(repr(n) for n in unknown)}: not in the schema of {servable.name} "
            f"version {servable.version}, whose serving features are {', '.join(served)}"
        )
    clean = {
        name: _feature_values(name, raw, servable.feature_types[name])
        for name, raw in values.items()
        if name not in servable.excluded
    }
    try:
        return to_example(clean, servable.schema, skip=servable.excluded).SerializeToString()
    except ValueError as err:
        raise invalid(str(err)) from None


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
            raise invalid(
                f"feature '{name}': JSON Value: {json_text(item)} Type: {_json_type(item)} is not of expected "
                f"type: {kind} (the schema's type for '{name}'; send {wanted})"
            )
        values.append(_b64decode(item) if _is_b64(item) else item)
    return values
