"""`conveyor serve` fuzzed with schemathesis against serving/openapi.json, on loopback, over the pushed model:
what the description allows and what it does not, each answered with a 200 or TF Serving's 4xx JSON, never
a 5xx, and the server still serving afterwards."""

import base64
import copy
import json
import urllib.request
from collections import defaultdict

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from tensorflow_metadata.proto.v0 import schema_pb2

from components.examples import to_example
from serving.rest import openapi
from serving.server import ModelServer

pytestmark = pytest.mark.e2e

# Requests per operation, derandomized so that CI sends the same ones on every run. The version and label
# forms share the default form's body handling, so their bodies get fewer tries; generating bodies of
# feature values is what costs (some 0.3 s a request for classify and regress).
MAX_EXAMPLES = 12
MAX_EXAMPLES_OTHER_FORMS = 4
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    # What the description forbids (an empty `instances`, a `context` that is no object, ...) gets a 4xx.
    negative_data_rejection,
]
# A plain feature value of each schema type.
PLAIN = {schema_pb2.INT: 1, schema_pb2.FLOAT: 1.5, schema_pb2.BYTES: "Cash"}


@pytest.fixture(scope="module")
def server(served):
    # Scanning rarely: nothing is pushed here, and the fuzzer's requests get both cores.
    with ModelServer(served.root, "127.0.0.1", 0, poll_seconds=30) as running:
        yield running


@pytest.fixture(scope="module")
def valid_bodies(schema, not_served) -> dict[str, dict]:
    """Requests the model answers with 200: a row of plain feature values and its serialized tf.Example."""
    row = {f.name: PLAIN[f.type] for f in schema.feature if f.name not in not_served}
    example = {"b64": base64.b64encode(to_example(row, schema).SerializeToString()).decode("ascii")}
    return {
        "rows": {"instances": [row, row]},
        "examples": {"signature_name": "serving_default", "instances": [example]},
        "columns": {"inputs": {"examples": [example]}},
        "classify": {"context": row, "examples": [{}, row]},
    }


@pytest.fixture(scope="module")
def answers() -> dict[str, list[int]]:
    """The statuses the fuzzed requests got, by operation, for the test that follows the fuzzing."""
    return defaultdict(list)


@pytest.fixture(scope="module")
def api(server, served, valid_bodies):
    """The shipped description, its model and version pinned to the served ones (the fuzzer would hardly
    guess them, and the JSON handling is only reached past them) and valid bodies added as examples."""
    spec = copy.deepcopy(openapi())
    parameters = spec["components"]["parameters"]
    parameters["model"]["schema"] = {"type": "string", "enum": [served.name]}
    parameters["version"]["schema"] = {"type": "string", "enum": [str(served.version)]}
    # Any text as `b64`, not only valid base64, so that decoding is fuzzed too.
    del spec["components"]["schemas"]["Bytes"]["properties"]["b64"]["format"]
    for path, operations in spec["paths"].items():
        verb = path.rpartition(":")[2] if ":" in path else None
        if verb in ("predict", "classify", "regress"):
            names = ("rows", "examples", "columns") if verb == "predict" else ("classify",)
            media = operations["post"]["requestBody"]["content"]["application/json"]
            media["examples"] = {name: {"value": valid_bodies[name]} for name in names}
    config = schemathesis.Config.from_dict(
        {
            "base-url": server.url,
            "request-timeout": 30,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none", "mode": "all"},
            # Coverage (schemathesis's boundary values) would add some 85 s here, mostly generating values
            # of every type but the one asked for; fuzzing, negative mode included, already sends those.
            "phases": {"stateful": {"enabled": False}, "coverage": {"enabled": False}},
            "operations": [
                {"include-path-regex": "/(versions|labels)/", "generation": {"max-examples": MAX_EXAMPLES_OTHER_FORMS}}
            ],
        }
    )
    return schemathesis.openapi.from_dict(spec, config=config)


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
def test_every_request_gets_a_documented_answer_and_never_a_5xx(case, answers):
    response = case.call()
    answers[case.operation.label].append(response.status_code)
    case.validate_response(response, checks=CHECKS)
    if 400 <= response.status_code < 500:
        body = json.loads(response.content)
        assert list(body) == ["error"] and isinstance(body["error"], str), body


def test_the_server_still_serves_after_the_fuzzing(server, served, valid_bodies, answers):
    assert answers, "run the fuzz test above in the same session: this one checks what it did"
    predicted = [s for label, statuses in answers.items() if label.endswith(":predict") for s in statuses]
    # The fuzzer reached the model (200s) and was refused (4xx); each operation was tried many times.
    assert 200 in predicted and 400 in predicted, sorted(set(predicted))
    tried = {label: len(statuses) for label, statuses in answers.items() if "/v1/" in label}
    assert len(tried) == 15 and min(tried.values()) >= MAX_EXAMPLES_OTHER_FORMS, tried
    url = f"{server.url}/v1/models/{served.name}:predict"
    body = json.dumps(valid_bodies["rows"]).encode("utf-8")
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        predictions = json.loads(response.read())["predictions"]
    assert len(predictions) == 2 and 0 <= predictions[0]["probabilities"][0] <= 1
