"""The `conveyor` command line: `conveyor run` and the subcommands later work adds."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "taxi.yaml"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def prepare_environment() -> None:
    """Process-wide settings every entry point needs before TensorFlow is first imported."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="dataset config (default: configs/taxi.yaml)")
    parser.add_argument("--data-root", default=None, help="directory of CSV files, overriding data.root")
    parser.add_argument("--output-dir", default="output", help="artifacts, ML Metadata, logs and serving models")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.runner import ComponentFailed, run_local

    try:
        config = load_config(args.config, output_dir=args.output_dir, data_root=args.data_root)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"conveyor: running pipeline '{config.name}' on {config.data_root}", file=sys.stderr)
    try:
        result = run_local(config, sys.stderr)
    except ComponentFailed as err:
        print(f"error: {err.node_id} failed: {err.error}", file=sys.stderr)
        print(f"  full log: {err.log_path}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(result.summary.lines()))
    print(f"  full log: {result.log_path}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline locally: ExampleGen through Pusher")
    _add_run_args(run)
    run.set_defaults(func=cmd_run)

    from kubeflow import kubeflow_runner

    compile_ = sub.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines (KFP v2 YAML)")
    kubeflow_runner.add_arguments(compile_)
    compile_.set_defaults(func=kubeflow_runner.main)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    prepare_environment()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
