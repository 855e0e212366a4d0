"""`conveyor ui`: serves the registry's web pages on 127.0.0.1 until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from cli.options import EXIT_OK, EXIT_USAGE, add_registry, library_logs_to

UI_LOG = "ui.log"


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `ui` to the console script."""
    p = sub.add_parser("ui", help="web pages over the registry: runs, models, lineage; rollback")
    add_registry(p)
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.set_defaults(func=cmd_ui)


def rollback_action(config):
    """What the UI's rollback button does: `conveyor models rollback --to V`, under the same locks."""
    from pipeline.metadata import MetadataUnavailable
    from pipeline.runner import RunLocked, registry_write_lock
    from pipeline.store_lock import StoreLocked
    from registry.ui import ActionRefused
    from registry.versions import rollback

    def roll_back(to: int) -> tuple[int, int]:
        try:
            with registry_write_lock(config):
                return rollback(config.output.store, config.name, config.serving_model_dir, to)
        except (ValueError, FileNotFoundError, RunLocked, StoreLocked, MetadataUnavailable) as err:
            raise ActionRefused(str(err)) from None

    return roll_back


def schema_review(config):
    """The curated schema's review log and `conveyor schema diff --run`'s comparison, for the data page.

    Returns:
      (review log path, (statistics, data, rows) -> (difference lines, anomaly lines)).
    """
    from schema import review

    def schema_diff(stats, data: str, rows: int) -> tuple[list[str], list[str]]:
        found, anomalies = review.diff_statistics(stats, config.schema_path, data, rows)
        return [c.line() for c in found.changes], anomalies

    return Path(config.schema_path).parent / review.REVIEW_LOG, schema_diff


def _read_ahead(registry) -> None:
    """registry.read_ahead(), with one line when it is done, or in the UI log why it stopped (a page drawn
    later reads for itself and shows the same error to the person asking)."""
    import tensorflow as tf
    from ml_metadata import errors

    from pipeline.metadata import MetadataUnavailable

    started = time.monotonic()
    try:
        total, versions = registry.read_ahead()
    except (OSError, ValueError, MetadataUnavailable, errors.StatusError, tf.errors.OpError) as err:
        logging.getLogger("conveyor.ui").warning("reading the registry ahead stopped: %s", err)
        return
    took = time.monotonic() - started
    print(f"conveyor ui: read {total} runs and {versions} versions ahead ({took:.1f} s)", flush=True)


def cmd_ui(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from registry.lineage import open_store
    from registry.ui import Registry, make_server

    config = load_config(args.config, output_dir=args.output_dir, metadata=args.metadata)
    open_store(config.output.store)  # no ML Metadata yet, or an unreachable server: one line now, not per page
    registry = Registry(config, Path(args.output_dir), rollback_action(config), *schema_review(config))
    try:
        server = make_server(registry, args.host, args.port)
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    host, port = server.server_address[:2]
    print(f"conveyor ui: http://{host}:{port}/runs (Ctrl-C to stop)", flush=True)
    # SIGTERM ends it like Ctrl-C; shutdown() must come from another thread than serve_forever's.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    with library_logs_to(Path(args.output_dir) / "logs" / UI_LOG):
        # Pages are answered at once; meanwhile the registry is read ahead so that the first ones need not wait
        # (its library warnings go to the UI's log too).
        threading.Thread(target=_read_ahead, args=(registry,), daemon=True, name="read-ahead").start()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    print("conveyor ui: stopped")
    return EXIT_OK
