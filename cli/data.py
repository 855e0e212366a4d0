"""The data engineers' commands: `conveyor init`, `conveyor data check`, `conveyor schema diff/approve`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.options import EXIT_OK, EXIT_USAGE, add_config, add_metadata


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `init`, `data check` and `schema diff/approve` to the console script."""
    init = sub.add_parser("init", help="draft a dataset config and curated schema from a CSV directory")
    init.add_argument("--data", required=True, help="directory of CSV files (or of span-<N>/ directories)")
    init.add_argument("--label", required=True, help="the column to predict")
    init.add_argument("--task", choices=("binary", "multiclass", "regression"), help="default: inferred from the label")
    init.add_argument("--name", help="pipeline and model name (default: the data directory's name)")
    init.add_argument("--out-dir", default=".", help="project directory for configs/ and schema/ (default: .)")
    init.add_argument("--force", action="store_true", help="overwrite an existing draft")
    init.set_defaults(func=cmd_init)

    data = sub.add_parser("data", help="check data against the curated schema").add_subparsers(
        dest="data_command", required=True
    )
    check = data.add_parser("check", help="validate a CSV file or directory against the curated schema")
    check.add_argument("path", help="a CSV file or a directory of CSV files")
    add_config(check)
    check.set_defaults(func=cmd_data_check)

    schema = sub.add_parser("schema", help="review and approve the curated schema").add_subparsers(
        dest="schema_command", required=True
    )
    for name, func, text in (
        ("diff", cmd_schema_diff, "report every difference between the data and the curated schema"),
        ("approve", cmd_schema_approve, "write the data's schema changes into the curated schema"),
    ):
        p = schema.add_parser(name, help=text)
        add_config(p)
        p.add_argument("--data-root", default=None, help="data to compare (default: the config's data.root)")
        p.add_argument(
            "--run",
            nargs="?",
            const="latest",
            default=None,
            metavar="RUN_ID",
            help="compare a pipeline run's training statistics instead of data (no RUN_ID: the latest run); "
            "the review log names the run that made them and its store",
        )
        p.add_argument("--output-dir", default="output", help="with --run: the run's output directory")
        add_metadata(p)
        p.set_defaults(func=func)
    schema.choices["diff"].add_argument(
        "--report-dir", default="output/schema_review", help="where the Markdown and HTML reports go"
    )
    schema.choices["approve"].add_argument(
        "--feature", action="append", default=[], help="approve only this feature's changes (repeatable)"
    )


def _load(args: argparse.Namespace):
    from pipeline.config import load_config

    return load_config(
        args.config,
        output_dir=getattr(args, "output_dir", "output"),
        data_root=getattr(args, "data_root", None),
        metadata=getattr(args, "metadata", None),
    )


def cmd_init(args: argparse.Namespace) -> int:
    from schema.check import DataReadError
    from schema.draft import DraftError, draft

    try:
        result = draft(args.data, args.label, args.task, args.name, args.out_dir, args.force)
    except (DataReadError, DraftError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if result.name_note:
        print(f"note: {result.name_note}")
    print(f"drafted {result.config_path}")
    print(f"drafted {result.schema_path}")
    print(f"  task: {result.task} ({result.task_reason})")
    for f in result.features:
        print(f"  feature {f['name']}: {f['kind']}")
    for column, reason in result.skipped:
        print(f"  left out {column}: {reason}")
    print("review both files (feature kinds, classes, thresholds, the schema's domains), then:")
    shown = result.config_path
    if shown.is_relative_to(Path.cwd()):
        shown = shown.relative_to(Path.cwd())
    print(f"  conveyor run --config {shown}")
    return EXIT_OK


def cmd_data_check(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError
    from schema.check import check

    try:
        config = _load(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    code, message = check(args.path, config.schema_path, config.label, config.beam_args)
    print(message, file=sys.stderr if code else sys.stdout)
    return code


def _schema_diff(args: argparse.Namespace):
    """The config, the diff, its anomaly lines and, with --run, the run that made the statistics."""
    from pipeline.config import ConfigError
    from pipeline.metadata import MetadataUnavailable
    from schema import review
    from schema.check import DataReadError

    if args.run and args.data_root:
        print("error: --run compares a run's statistics and --data-root a directory's data: pass one", file=sys.stderr)
        return None, None, None, None
    try:
        config = _load(args)
        if args.run:
            return (config, *_run_diff(config, args.run))
        result, anomalies = review.diff(config.data_root, config.schema_path, config.beam_args)
    except (ConfigError, DataReadError, LookupError, MetadataUnavailable, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None, None, None, None
    return config, result, anomalies, None


def _run_diff(config, run_id: str):
    """The diff of a run's training statistics, read where StatisticsGen wrote them, and the review log's
    record of the run that made them (a cached run's are an earlier run's)."""
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    from registry.lineage import format_spans, open_store
    from registry.statistics import run_statistics
    from schema import review

    found = run_statistics(open_store(config.output.store), config.name, None if run_id == "latest" else run_id)
    if not tf.io.gfile.exists(found.path):
        raise LookupError(
            f"run {found.run}'s statistics are not readable from here: {found.path} (every checkout sharing "
            "a store needs the runs' pipeline_root at the same path: a mounted path, gs:// or s3://)"
        )
    stats = tfdv.load_stats_binary(found.path)
    rows = sum(d.num_examples for d in stats.datasets)
    data = f"{found.path} (run {found.run}, {format_spans(list(found.spans))})"
    result, anomalies = review.diff_statistics(stats, config.schema_path, data, rows)
    run = {"id": found.run, "store": config.output.store.shown, "statistics": found.uri, "spans": list(found.spans)}
    if found.used_by != found.run:
        run["reused_by"] = found.used_by
    return result, anomalies, run


def cmd_schema_diff(args: argparse.Namespace) -> int:
    from schema import review

    config, result, anomalies, _ = _schema_diff(args)
    if config is None:
        return EXIT_USAGE
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    md, page = report_dir / "schema_diff.md", report_dir / "schema_diff.html"
    facets = report_dir / review.FACETS_PAGE
    md.write_text(review.markdown(result, config.schema_path), encoding="utf-8")
    page.write_text(review.html_report(result, config.schema_path, anomalies), encoding="utf-8")
    facets.write_text(review.facets_report(result), encoding="utf-8")
    if result.changes:
        print(f"{len(result.changes)} difference(s) between {result.data} and {config.schema_path}:")
        for change in result.changes:
            print(f"  {change.line()}")
    else:
        print(f"no differences: {result.data} matches {config.schema_path}")
    print(f"  reports: {md} (for a pull request), {page} (statistics; opens offline)")
    print(f"           {facets} (TFDV's interactive Facets view; loads Facets' scripts from the web)")
    return EXIT_OK


def cmd_schema_approve(args: argparse.Namespace) -> int:
    from schema import review

    config, result, _, run = _schema_diff(args)
    if config is None:
        return EXIT_USAGE
    if not result.changes:
        print(f"nothing to approve: {result.data} matches {config.schema_path}")
        return EXIT_OK
    header, curated = review.read_schema(config.schema_path)
    before = Path(config.schema_path).read_text(encoding="utf-8")
    try:
        updated, accepted = review.apply(curated, result, args.feature or None)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    review.write_schema(config.schema_path, header, updated)
    after = Path(config.schema_path).read_text(encoding="utf-8")
    log = Path(config.schema_path).parent / review.REVIEW_LOG
    entry = review.record_review(log, result, accepted, before, after, run)
    print(f"approved {len(accepted)} change(s) to {', '.join(entry['features'])} in {config.schema_path}")
    print(f"  review logged in {log} (by {entry['approved_by']})")
    if run is not None:
        print(f"  statistics made by run {run['id']} in {run['store']}")
    return EXIT_OK
