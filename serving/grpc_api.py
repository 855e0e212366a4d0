"""TF Serving's gRPC API (port 8500): `PredictionService` (Predict, Classify, Regress, MultiInference,
GetModelMetadata) and `ModelService` (GetModelStatus, HandleReloadConfigRequest), from the official
tensorflow-serving-api protos and servicer bases, so a client written against TF Serving works unchanged.

Requests run through the same `Inference` as REST (batching, request log), so both protocols give the
same numbers for the same request; refusals carry TF Serving's status codes: INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED (a message over the size limit), UNAVAILABLE (a full batch queue).
"""

from __future__ import annotations

import logging
from concurrent import futures
from http import HTTPStatus
from typing import Any, Optional

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import protos
from serving.classify import DEFAULT_SIGNATURES, INPUTS, METHODS, check_method
from serving.errors import ServingError, invalid
from serving.inference import Inference
from serving.model_config import ModelConfigError, from_proto
from serving.models import LoadedVersion, ModelRepository

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"
# Enough threads that 32 concurrent clients can all be queued for one batch.
MAX_WORKERS = 64
_CODES = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.INTERNAL_SERVER_ERROR: grpc.StatusCode.INTERNAL,
}


def grpc_code(error: ServingError) -> grpc.StatusCode:
    """The gRPC status TF Serving answers a refusal with."""
    return _CODES.get(error.status, grpc.StatusCode.UNKNOWN)


def _answer(context: grpc.ServicerContext, work: Any) -> Any:
    try:
        return work()
    except ServingError as err:
        context.abort(grpc_code(err), err.message)
    except Exception as err:  # one broken request gets INTERNAL, and the server goes on serving
        log.exception("gRPC request failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")


def find(repository: ModelRepository, spec: Any) -> LoadedVersion:
    """The version a ModelSpec names: by version, by version_label, or the highest.

    Raises:
      ServingError: 400 without a model name or for an unknown label, 404 for an unknown model or version.
    """
    if not spec.name:
        raise invalid("Missing ModelSpec name")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return repository.get(spec.name, int(spec.version.value))
    if choice == "version_label":
        return repository.get(spec.name, label=spec.version_label)
    return repository.get(spec.name)


def _type_string(dtype: int) -> str:
    """TensorFlow's DataTypeString, as TF Serving's messages use it: "float", "double", "string", "int64"."""
    from tensorflow.core.framework import types_pb2

    name = types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else "DT_INVALID"
    return name.removeprefix("DT_").lower()


def _predict_inputs(servable: LoadedVersion, signature_name: str, request: Any) -> dict[str, Any]:
    signature = servable.signatures.get(signature_name)
    if signature is None:
        raise invalid(f'Serving signature name: "{signature_name}" not found in signature def')
    specs = signature.structured_input_signature[1]
    sent, wanted = set(request.inputs), set(specs)
    if sent != wanted:
        raise invalid(
            f"input size does not match signature: {len(sent)}!={len(wanted)} len({{{','.join(sorted(sent))}}}) != "
            f"len({{{','.join(sorted(wanted))}}}). Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
            f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."
        )
    values = {}
    for index, (name, tensor) in enumerate(sorted(request.inputs.items())):
        expected = specs[name].dtype.as_datatype_enum
        if tensor.dtype != expected:
            raise invalid(
                f"Expects arg[{index}] to be {_type_string(expected)} but {_type_string(tensor.dtype)} is provided"
            )
        try:
            values[name] = protos.ndarray(tensor)
        except (TypeError, ValueError) as err:
            raise invalid(f"input '{name}' is not a valid TensorProto: {err}") from None
    return values


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over the loaded versions."""

    def __init__(self, repository: ModelRepository, inference: Inference):
        self.repository = repository
        self.inference = inference

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> Any:
        def work() -> Any:
            servable = find(self.repository, request.model_spec)
            signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            values = _predict_inputs(servable, signature_name, request)
            outputs = self.inference.call(servable, signature_name, values)
            if request.output_filter:
                unknown = [name for name in request.output_filter if name not in outputs]
                if unknown:
                    raise invalid(f"output tensor alias not found in signature: {unknown[0]}")
                outputs = {name: outputs[name] for name in request.output_filter}
            return protos.predict_response(servable, signature_name, outputs)

        return _answer(context, work)

    def _method(self, verb: str, spec: Any, input_proto: Any) -> tuple[LoadedVersion, str, dict]:
        servable = find(self.repository, spec)
        signature_name = spec.signature_name or DEFAULT_SIGNATURES[verb]
        check_method(servable, signature_name, verb)
        try:
            serialized = protos.serialized_examples(input_proto)
        except ValueError as err:
            raise invalid(str(err)) from None
        return servable, signature_name, self.inference.call(servable, signature_name, {INPUTS: serialized}, verb)

    def _respond(self, verb: str, request: Any, response: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:
            servable, signature_name, outputs = self._method(verb, request.model_spec, request.input)
            protos.model_spec(servable, signature_name, response.model_spec)
            fill = protos.classification_result if verb == "classify" else protos.regression_result
            fill(outputs, response.result)
            return response

        return _answer(context, work)

    def Classify(self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext) -> Any:
        return self._respond("classify", request, classification_pb2.ClassificationResponse(), context)

    def Regress(self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext) -> Any:
        return self._respond("regress", request, regression_pb2.RegressionResponse(), context)

    def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context: grpc.ServicerContext) -> Any:
        def work() -> Any:
            if not request.tasks:
                raise invalid("Expected at least one task")
            first = request.tasks[0].model_spec
            names = set()
            for task in request.tasks:
                if task.model_spec.name != first.name or task.model_spec.version != first.version:
                    raise invalid("Tasks must all access the same model name and version")
                if task.model_spec.signature_name in names:
                    raise invalid("Duplicate evaluation of signature: " + task.model_spec.signature_name)
                names.add(task.model_spec.signature_name)
            response = inference_pb2.MultiInferenceResponse()
            verbs = {method: verb for verb, method in METHODS.items()}
            for task in request.tasks:
                verb = verbs.get(task.method_name)
                if verb is None:
                    raise invalid(f"Unsupported signature method_name: {task.method_name}")
                servable, signature_name, outputs = self._method(verb, task.model_spec, request.input)
                result = response.results.add()
                protos.model_spec(servable, signature_name, result.model_spec)
                if verb == "classify":
                    protos.classification_result(outputs, result.classification_result)
                else:
                    protos.regression_result(outputs, result.regression_result)
            return response

        return _answer(context, work)

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> Any:
        def work() -> Any:
            from google.protobuf import json_format

            if list(request.metadata_field) != [SIGNATURE_DEF_FIELD]:
                fields = ", ".join(request.metadata_field) or "none"
                raise invalid(f"Metadata field(s) {fields} not supported: ask for exactly '{SIGNATURE_DEF_FIELD}'")
            servable = find(self.repository, request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            signature_map = json_format.ParseDict(servable.signature_defs, get_model_metadata_pb2.SignatureDefMap())
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
            return response

        return _answer(context, work)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: each version's state, and a new model config without a restart."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext) -> Any:
        def work() -> Any:
            from google.protobuf import json_format

            spec = request.model_spec
            if not spec.name:
                raise invalid("Missing ModelSpec name")
            choice = spec.WhichOneof("version_choice")
            status = self.repository.status(
                spec.name,
                int(spec.version.value) if choice == "version" else None,
                spec.version_label if choice == "version_label" else None,
            )
            return json_format.ParseDict(status, get_model_status_pb2.GetModelStatusResponse())

        return _answer(context, work)

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> Any:
        def work() -> Any:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid("ServerConfig is not of type ModelConfigList.")
            try:
                entries = from_proto(request.config, "the reload request", self.repository.root)
            except ModelConfigError as err:
                raise invalid(str(err)) from None
            self.repository.reload_config(entries)
            log.info("model config reloaded: %s", ", ".join(sorted(entries)) or "no models")
            return model_management_pb2.ReloadConfigResponse()

        return _answer(context, work)


def start_grpc(
    repository: ModelRepository, inference: Inference, host: str, port: int, max_message_bytes: int
) -> tuple[grpc.Server, int]:
    """Starts TF Serving's gRPC services on host:port (0 picks a free port).

    Returns:
      The running server and its bound port.

    Raises:
      OSError: the address cannot be bound.
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    pool = futures.ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="conveyor-serve-grpc")
    server = grpc.server(pool, options=options)
    prediction = PredictionService(repository, inference)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(repository), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as err:  # grpcio raises RuntimeError when it cannot bind
        raise OSError(f"cannot bind gRPC to {address}: {err}") from None
    if not bound:
        raise OSError(f"cannot bind gRPC to {address}: the port is in use or the address is not local")
    server.start()
    return server, bound


def stop_grpc(server: Optional[grpc.Server], grace_seconds: float = 2.0) -> None:
    """Stops the gRPC server, letting requests in flight finish for up to `grace_seconds`."""
    if server is not None:
        server.stop(grace_seconds).wait()
