"""The `conveyor` command line: run, data check, schema diff/approve, models, runs, serve, compile."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

from cli import data, metadata, monitor, predict, registry, run, serve, ui
from cli.options import EXIT_USAGE
from kubeflow import kubeflow_runner
from pipeline.environment import prepare_environment

# Each registers its sub-commands, in the order `conveyor --help` lists them.
COMMANDS = (run, data, registry, ui, metadata, serve, monitor, predict)


def _register_compile(sub: argparse._SubParsersAction) -> None:
    compile_ = sub.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines (KFP v2 YAML)")
    kubeflow_runner.add_arguments(compile_)
    compile_.set_defaults(func=kubeflow_runner.main)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    _register_compile(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    prepare_environment()
    args = build_parser().parse_args(argv)
    from pipeline.config import ConfigError
    from pipeline.metadata import MetadataUnavailable

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, MetadataUnavailable) as err:
        # A bad config or a missing file (e.g. no ML Metadata yet) is the user's to fix: one line.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
