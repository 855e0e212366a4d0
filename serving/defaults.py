"""The server's defaults, light to import: the console script builds `conveyor serve`'s flags from them
without loading the serving stack (numpy, TensorFlow Metadata) for every other command."""

DEFAULT_HOST = "127.0.0.1"
# TF Serving's REST port, so a client written against this server needs no change to talk to the real one.
DEFAULT_PORT = 8501
DEFAULT_POLL_SECONDS = 1.0
SERVING_SUBDIR = "serving_model"
