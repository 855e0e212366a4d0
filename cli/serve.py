"""`conveyor serve`: TF Serving's REST API over the pushed models, until interrupted."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from serving.defaults import DEFAULT_HOST, DEFAULT_POLL_SECONDS, DEFAULT_PORT, SERVING_SUBDIR

DEFAULT_OUTPUT_DIR = "output"
# The serving package's logger: loads, unloads and failures of every module in it.
log = logging.getLogger("serving")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `conveyor serve` to the console script."""
    serve = sub.add_parser("serve", help="a local server with TF Serving's REST API over the pushed models")
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


def main(args: argparse.Namespace) -> int:
    """Runs `conveyor serve` until interrupted; returns the exit code."""
    from serving.server import ModelServer, describe

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
