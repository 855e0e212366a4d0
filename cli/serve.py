"""`conveyor serve`: TF Serving's REST API over the pushed models, until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from pipeline.environment import DEFAULT_CONFIG
from serving.defaults import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_POLL_SECONDS,
    DEFAULT_PORT,
    MAX_BODY_FLAG,
    REQUEST_LOGS_SUBDIR,
    SERVING_SUBDIR,
)

DEFAULT_OUTPUT_DIR = "output"
# The serving package's logger: loads, unloads and failures of every module in it.
log = logging.getLogger("serving")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `conveyor serve` to the console script."""
    serve = sub.add_parser("serve", help="a local server with TF Serving's REST and gRPC APIs over the pushed models")
    add_arguments(serve)
    serve.set_defaults(func=main)


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
    parser.add_argument(
        MAX_BODY_FLAG,
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body accepted; larger ones get 413 (default: {DEFAULT_MAX_BODY_BYTES}, 64 MiB)",
    )
    grpc = parser.add_mutually_exclusive_group()
    grpc.add_argument(
        "--grpc-port",
        type=int,
        default=DEFAULT_GRPC_PORT,
        help=f"gRPC port for TF Serving's PredictionService and ModelService (default: {DEFAULT_GRPC_PORT}, as TF "
        "Serving; 0 picks a free one)",
    )
    grpc.add_argument("--no-grpc", action="store_true", help="serve REST only")
    parser.add_argument(
        "--model-config-file",
        help=f"a TF Serving model config (ModelServerConfig text proto); default: <output-dir>/{SERVING_SUBDIR}/"
        "models.config, which the Pusher keeps, once it exists. Re-read when it changes",
    )
    parser.add_argument(
        "--enable-batching",
        action="store_true",
        help="join concurrent requests into batches (off by default, as in TF Serving)",
    )
    parser.add_argument(
        "--batching-parameters-file",
        help="TF Serving's BatchingParameters text proto (max_batch_size, batch_timeout_micros, num_batch_threads, "
        "max_enqueued_batches, allowed_batch_sizes); implies --enable-batching",
    )
    parser.add_argument(
        "--request-log-rate",
        type=float,
        help="share of requests logged as TF Serving PredictionLog records, in [0, 1] (default: the config's "
        "serving.request_log_rate, else 0: no logging)",
    )
    parser.add_argument(
        "--request-log-dir",
        help="where request logs go, as <dir>/<model>/*.tfrecord (default: the config's serving.request_log_dir, "
        f"else <output-dir>/{REQUEST_LOGS_SUBDIR})",
    )
    parser.add_argument(
        "--config",
        help="dataset config whose serving: section gives defaults for the request-log flags; only that section is "
        "read, so the data it names need not be here (default: configs/taxi.yaml when present)",
    )


def _request_log_settings(args: argparse.Namespace) -> tuple[float, Path]:
    """The request log's rate and directory: each flag given, else the config's `serving.` key, else the default.

    Raises:
      ConfigError: the config named by --config is missing or has a bad `serving.` value (the key is named).
      ValueError: --request-log-rate is outside [0, 1].
    """
    from pipeline.config_serve import ServeConfig, load_serve_config

    if args.config:
        config = load_serve_config(args.config)
    else:
        config = load_serve_config(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else ServeConfig()
    rate = args.request_log_rate
    if rate is None:
        rate = config.request_log_rate if config.request_log_rate is not None else 0.0
    elif not 0.0 <= rate <= 1.0:
        raise ValueError(f"--request-log-rate must be between 0 and 1, got {rate}")
    directory = args.request_log_dir or config.request_log_dir or Path(args.output_dir) / REQUEST_LOGS_SUBDIR
    return rate, Path(directory)


def _options(args: argparse.Namespace) -> dict:
    """ModelServer's batching and request-log arguments from the flags.

    Raises:
      ValueError: a flag's value is unusable; the message names the flag or the file.
    """
    from serving.batching import BatchingParameters, read_parameters
    from serving.request_log import RequestLog

    batching = None
    if args.batching_parameters_file:
        batching = read_parameters(args.batching_parameters_file)
    elif args.enable_batching:
        batching = BatchingParameters()
    log_rate, log_dir = _request_log_settings(args)
    config_file = args.model_config_file
    if config_file and not Path(config_file).is_file():
        raise ValueError(f"--model-config-file {config_file} does not exist")
    request_log = None
    if log_rate > 0:  # last: it starts the log's writer thread
        request_log = RequestLog(log_dir, log_rate)
    return {
        "grpc_port": None if args.no_grpc else args.grpc_port,
        "model_config_file": config_file,
        "batching": batching,
        "request_log": request_log,
    }


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so that it stops the server the way Ctrl-C does."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def main(args: argparse.Namespace) -> int:
    """Runs `conveyor serve` until interrupted; returns the exit code."""
    from serving.server import ModelServer, describe

    if not args.poll_seconds > 0:
        print(f"error: --poll-seconds must be positive, got {args.poll_seconds}", file=sys.stderr)
        return 2
    if not args.max_body_bytes > 0:
        print(f"error: {MAX_BODY_FLAG} must be positive, got {args.max_body_bytes}", file=sys.stderr)
        return 2
    try:
        options = _options(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("conveyor serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    serving_root = Path(args.output_dir) / SERVING_SUBDIR
    server = ModelServer(
        serving_root, args.host, args.port, args.poll_seconds, max_body_bytes=args.max_body_bytes, **options
    )
    # A service manager, `docker stop` and Kubernetes stop with SIGTERM, a terminal with SIGINT; either
    # may come while the models load.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            server.start()
        except OSError as err:
            print(
                f"error: cannot listen on {args.host} (REST {args.port}, gRPC {args.grpc_port}): {err}", file=sys.stderr
            )
            server.stop()
            return 2
        grpc = f" and gRPC {server.grpc_address}" if server.grpc_port else ""
        print(
            f"conveyor serve: REST {server.url}{grpc} serving {describe(server.served())} from {serving_root}",
            flush=True,
        )
        if options["request_log"] is not None:
            request_log = options["request_log"]
            print(f"conveyor serve: logging {request_log.rate:g} of requests to {request_log.root}", flush=True)
        server.wait()
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        # A second SIGTERM while stopping must not break the stop off with a traceback.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()
        log.info("stopped")
        signal.signal(signal.SIGTERM, previous)
    return 0
