"""TF Serving's Classify and Regress over REST: `examples` (and a shared `context`) of feature values in,
`{"result": ...}` out, through the model's `classification` or `regression` signature.

As in TF Serving's http_rest_api_handler (classification/regression request JSON), each example is an
object of feature values merged over `context`; values are typed by the version's schema, and bytes may
come as `{"b64": ...}`. Unlike TF Serving, a request without `signature_name` uses the signature whose
method fits the verb, since `serving_default` is a predict signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serving.errors import invalid
from serving.inference import Inference
from serving.json_tensors import example_from_features, json_text, parse_request
from serving.servable import LoadedVersion

# TF Serving's method names and the signature each verb uses by default here.
METHODS = {"classify": "tensorflow/serving/classify", "regress": "tensorflow/serving/regress"}
DEFAULT_SIGNATURES = {"classify": "classification", "regress": "regression"}
INPUTS = "inputs"


def _examples(request: dict) -> list[dict]:
    context = request.get("context", {})
    if not isinstance(context, dict):
        raise invalid(f"JSON Value: {json_text(context)} 'context' is not an object")
    examples = request.get("examples")
    if examples is None:
        raise invalid("Missing 'examples' key")
    if not isinstance(examples, list) or not examples:
        raise invalid(f"JSON Value: {json_text(examples)} 'examples' must be a non-empty array")
    merged = []
    for index, example in enumerate(examples):
        if not isinstance(example, dict):
            raise invalid(f"JSON Value: {json_text(example)} example {index} is not an object")
        merged.append({**context, **example})
    return merged


def _result(verb: str, outputs: dict[str, Any]) -> list:
    if verb == "regress":
        return [float(v) for v in outputs["outputs"].reshape(-1)]
    classes, scores = outputs["classes"], outputs["scores"]
    return [
        [[c.decode("utf-8") if isinstance(c, bytes) else str(c), float(s)] for c, s in zip(row_c, row_s, strict=True)]
        for row_c, row_s in zip(classes, scores, strict=True)
    ]


def method_name(servable: LoadedVersion, signature_name: str) -> str:
    """The signature's method name in saved_model.pb (what TF Serving dispatches on), "" when it has none."""
    return servable.signature_defs.get("signature_def", {}).get(signature_name, {}).get("method_name", "")


def check_method(servable: LoadedVersion, signature_name: str, verb: str) -> None:
    """Refuses, as TF Serving does, a classify or regress request on a signature of another method.

    Raises:
      ServingError: 400 when the signature is missing or its method does not fit the verb.
    """
    if signature_name not in servable.signatures:
        raise invalid(f'Serving signature name: "{signature_name}" not found in signature def')
    method = method_name(servable, signature_name)
    if method != METHODS[verb]:
        kind = "classification" if verb == "classify" else "regression"
        raise invalid(f"Expected {kind} signature method_name to be {METHODS[verb]}. Was: {method}")


def classify_or_regress(inference: Inference, find: Callable[[], LoadedVersion], verb: str, body: bytes) -> dict:
    """Answers `POST /v1/models/<name>[/versions/<v>|/labels/<l>]:classify` or `:regress` with TF Serving's JSON.

    Args:
      inference: runs the signature.
      find: the version the URL names (raises ServingError 404 / 400 when there is none).
      verb: "classify" or "regress".
      body: the request body.

    Returns:
      `{"result": [[[class, score], ...], ...]}` for classify, `{"result": [value, ...]}` for regress.

    Raises:
      ServingError: 400 for a malformed request, a missing signature or one of another method, 404 for an
        unknown model or version.
    """
    request = parse_request(body)
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid(f"JSON Value: {json_text(request)} 'signature_name' key must be a string value.")
    signature_name = signature_name or DEFAULT_SIGNATURES[verb]
    servable = find()
    check_method(servable, signature_name, verb)
    serialized = [example_from_features(servable, values) for values in _examples(request)]
    return {"result": _result(verb, inference.call(servable, signature_name, {INPUTS: serialized}, kind=verb))}
