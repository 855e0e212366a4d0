"""The server's defaults, light to import: the console script builds `conveyor serve`'s flags from them
without loading the serving stack (numpy, TensorFlow Metadata) for every other command."""

DEFAULT_HOST = "127.0.0.1"
# TF Serving's REST port, so a client written against this server needs no change to talk to the real one.
DEFAULT_PORT = 8501
# TF Serving's gRPC port (`tensorflow_model_server --port`).
DEFAULT_GRPC_PORT = 8500
DEFAULT_POLL_SECONDS = 1.0
SERVING_SUBDIR = "serving_model"
# The largest request body (REST) or message (gRPC's max_receive_message_length) accepted: 64 MiB, past
# gRPC's 4 MiB default, since a batch of serialized tf.Examples is easily that large.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_BODY_FLAG = "--max-body-bytes"
REQUEST_LOGS_SUBDIR = "request_logs"
