"""`conveyor run`: the pipeline on this machine, after the input has been checked readable."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from cli.options import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_config, add_metadata
from pipeline.engines import ENGINES


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `conveyor run` to the console script."""
    run = sub.add_parser("run", help="run the pipeline locally: ExampleGen through Pusher")
    add_config(run)
    run.add_argument("--data-root", default=None, help="directory of CSV files, overriding data.root")
    run.add_argument("--output-dir", default="output", help="artifacts, ML Metadata, logs and serving models")
    run.add_argument("--span", type=int, default=None, help="run on data-root/span-N/ (default: the newest span)")
    add_metadata(run)
    run.add_argument(
        "--lock-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait up to SECONDS for another run of this pipeline on the shared store, then refuse "
        "(default: the config's metadata.lock_wait, else 0: refuse at once)",
    )
    run.add_argument(
        "--engine",
        choices=ENGINES,
        default="direct",
        help="where the Beam components run: the DirectRunner in this process (default), or Apache Flink's "
        "embedded cluster through Beam's FlinkRunner (needs Java and `make flink-jar`; README, Flink)",
    )
    run.set_defaults(func=cmd_run)


def run_input(config) -> Path:
    """The directory ExampleGen will read in this run: the chosen or newest span, or the data root."""
    from pipeline.config import list_spans

    if not config.span_pattern:
        return Path(config.data_root)
    span = config.span if config.span is not None else list_spans(config.data_root)[-1]
    return Path(config.data_root) / f"span-{span}"


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.engines import EngineUnavailable, engine_args
    from pipeline.metadata import MetadataUnavailable
    from pipeline.runner import ComponentFailed, RunLocked, run_local
    from pipeline.store_lock import StoreLocked
    from registry.lineage import connect
    from schema.check import DataReadError, check_labels, read_csv_input, require_label

    try:
        config = load_config(
            args.config, output_dir=args.output_dir, data_root=args.data_root, span=args.span, metadata=args.metadata
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.lock_wait is not None:
        if args.lock_wait < 0:
            print(f"error: --lock-wait must be at least 0 seconds, got {args.lock_wait:g}", file=sys.stderr)
            return EXIT_USAGE
        config = config.replace(output=dataclasses.replace(config.output, lock_wait=args.lock_wait))
    try:
        config = config.replace(beam_args=config.beam_args + engine_args(args.engine))
    except EngineUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if config.output.store.shared:
        try:  # before any component runs: an unreachable store fails in one line, not inside TFX
            connect(config.output.store)
        except MetadataUnavailable as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
    try:
        csv_input = read_csv_input(run_input(config))
        require_label(csv_input, config.label)
        check_labels(csv_input, config.label, config.task, config.classes)
    except DataReadError as err:
        print(f"error: cannot read input: {err}", file=sys.stderr)
        return EXIT_USAGE
    engine = " (Beam components on Flink)" if args.engine == "flink" else ""
    print(f"conveyor: running pipeline '{config.name}' on {config.data_root}{engine}", file=sys.stderr)
    try:
        result = run_local(config, sys.stderr)
    except (RunLocked, StoreLocked, MetadataUnavailable, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ComponentFailed as err:
        print(f"error: {err.node_id} failed: {err.error}", file=sys.stderr)
        print(f"  full log: {err.log_path}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(result.summary.lines()))
    print(f"  full log: {result.log_path}")
    return EXIT_OK
