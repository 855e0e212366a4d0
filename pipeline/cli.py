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
    parser.add_argument("--span", type=int, default=None, help="run on data-root/span-N/ (default: the newest span)")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.runner import ComponentFailed, run_local

    try:
        config = load_config(args.config, output_dir=args.output_dir, data_root=args.data_root, span=args.span)
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


def _load(args: argparse.Namespace):
    from pipeline.config import load_config

    return load_config(args.config, data_root=getattr(args, "data_root", None))


def cmd_data_check(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError
    from pipeline.data_check import check

    try:
        config = _load(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    code, message = check(args.path, config.schema_path, config.label, config.beam_args)
    print(message, file=sys.stderr if code else sys.stdout)
    return code


def _schema_diff(args: argparse.Namespace):
    from pipeline import schema_review
    from pipeline.config import ConfigError
    from pipeline.data_check import DataReadError

    try:
        config = _load(args)
        result, anomalies = schema_review.diff(config.data_root, config.schema_path, config.beam_args)
    except (ConfigError, DataReadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None, None, None
    return config, result, anomalies


def cmd_schema_diff(args: argparse.Namespace) -> int:
    from pipeline import schema_review

    config, result, anomalies = _schema_diff(args)
    if config is None:
        return EXIT_USAGE
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    md, page = report_dir / "schema_diff.md", report_dir / "schema_diff.html"
    md.write_text(schema_review.markdown(result, config.schema_path), encoding="utf-8")
    page.write_text(schema_review.html_report(result, config.schema_path, anomalies), encoding="utf-8")
    if result.changes:
        print(f"{len(result.changes)} difference(s) between {config.data_root} and {config.schema_path}:")
        for change in result.changes:
            print(f"  {change.line()}")
    else:
        print(f"no differences: {config.data_root} matches {config.schema_path}")
    print(f"  reports: {md} (for a pull request), {page} (statistics; opens offline)")
    return EXIT_OK


def cmd_schema_approve(args: argparse.Namespace) -> int:
    from pipeline import schema_review

    config, result, _ = _schema_diff(args)
    if config is None:
        return EXIT_USAGE
    if not result.changes:
        print(f"nothing to approve: {config.data_root} matches {config.schema_path}")
        return EXIT_OK
    header, curated = schema_review.read_schema(config.schema_path)
    before = Path(config.schema_path).read_text(encoding="utf-8")
    try:
        updated, accepted = schema_review.apply(curated, result, args.feature or None)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    schema_review.write_schema(config.schema_path, header, updated)
    after = Path(config.schema_path).read_text(encoding="utf-8")
    log = Path(config.schema_path).parent / schema_review.REVIEW_LOG
    entry = schema_review.record_review(log, result, accepted, before, after)
    print(f"approved {len(accepted)} change(s) to {', '.join(entry['features'])} in {config.schema_path}")
    print(f"  review logged in {log} (by {entry['approved_by']})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline locally: ExampleGen through Pusher")
    _add_run_args(run)
    run.set_defaults(func=cmd_run)

    data = sub.add_parser("data", help="check data against the curated schema").add_subparsers(
        dest="data_command", required=True
    )
    check = data.add_parser("check", help="validate a CSV file or directory against the curated schema")
    check.add_argument("path", help="a CSV file or a directory of CSV files")
    check.add_argument("--config", default=str(DEFAULT_CONFIG), help="dataset config (default: configs/taxi.yaml)")
    check.set_defaults(func=cmd_data_check)

    schema = sub.add_parser("schema", help="review and approve the curated schema").add_subparsers(
        dest="schema_command", required=True
    )
    for name, func, text in (
        ("diff", cmd_schema_diff, "report every difference between the data and the curated schema"),
        ("approve", cmd_schema_approve, "write the data's schema changes into the curated schema"),
    ):
        p = schema.add_parser(name, help=text)
        p.add_argument("--config", default=str(DEFAULT_CONFIG), help="dataset config (default: configs/taxi.yaml)")
        p.add_argument("--data-root", default=None, help="data to compare (default: the config's data.root)")
        p.set_defaults(func=func)
    schema.choices["diff"].add_argument(
        "--report-dir", default="output/schema_review", help="where the Markdown and HTML reports go"
    )
    schema.choices["approve"].add_argument(
        "--feature", action="append", default=[], help="approve only this feature's changes (repeatable)"
    )

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
