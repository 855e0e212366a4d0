"""The `conveyor` command line: run, data check, schema diff/approve, models, runs, serve, compile."""

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


def run_input(config) -> Path:
    """The directory ExampleGen will read in this run: the chosen or newest span, or the data root."""
    from pipeline.config import list_spans

    if not config.span_pattern:
        return Path(config.data_root)
    span = config.span if config.span is not None else list_spans(config.data_root)[-1]
    return Path(config.data_root) / f"span-{span}"


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.data_check import DataReadError, check_labels, read_csv_input, require_label
    from pipeline.runner import ComponentFailed, RunLocked, run_local

    try:
        config = load_config(args.config, output_dir=args.output_dir, data_root=args.data_root, span=args.span)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        csv_input = read_csv_input(run_input(config))
        require_label(csv_input, config.label)
        check_labels(csv_input, config.label, config.task, config.classes)
    except DataReadError as err:
        print(f"error: cannot read input: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"conveyor: running pipeline '{config.name}' on {config.data_root}", file=sys.stderr)
    try:
        result = run_local(config, sys.stderr)
    except (RunLocked, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
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


def cmd_init(args: argparse.Namespace) -> int:
    from pipeline.data_check import DataReadError
    from pipeline.draft import DraftError, draft

    try:
        result = draft(args.data, args.label, args.task, args.name, args.out_dir, args.force)
    except (DataReadError, DraftError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
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
    facets = report_dir / schema_review.FACETS_PAGE
    md.write_text(schema_review.markdown(result, config.schema_path), encoding="utf-8")
    page.write_text(schema_review.html_report(result, config.schema_path, anomalies), encoding="utf-8")
    facets.write_text(schema_review.facets_report(result), encoding="utf-8")
    if result.changes:
        print(f"{len(result.changes)} difference(s) between {config.data_root} and {config.schema_path}:")
        for change in result.changes:
            print(f"  {change.line()}")
    else:
        print(f"no differences: {config.data_root} matches {config.schema_path}")
    print(f"  reports: {md} (for a pull request), {page} (statistics; opens offline)")
    print(f"           {facets} (TFDV's interactive Facets view; loads Facets' scripts from the web)")
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


def _registry_config(args: argparse.Namespace):
    from pipeline.config import load_config

    return load_config(args.config, output_dir=args.output_dir)


def cmd_models_list(args: argparse.Namespace) -> int:
    from pipeline import registry
    from pipeline.lineage import format_spans

    config = _registry_config(args)
    model_dir = str(Path(config.output.serving_root) / (args.model or config.model_name))
    records = registry.versions(config.output.metadata_path, config.name, model_dir)
    served = registry.served_version(model_dir)
    present = set(registry.list_versions(model_dir))
    if not records:
        print(f"no versions pushed to {model_dir} yet")
        return EXIT_OK
    print(f"{'version':>12}  {'pushed at (UTC)':<25} {'spans':>5} {'train rows':>10}  metrics (change vs baseline)")
    for r in records:
        s = r.summary
        span = "" if s is None or s.span is None else str(s.span)
        if len(r.training_spans) > 1:  # a rolling window: every span the model was trained on
            span = format_spans(r.training_spans).split(" ", 1)[1]
        rows = "" if s is None or "train" not in s.rows else f"{s.rows['train']:,}"
        note = f"rollback of {r.rollback_of}" if r.rollback_of else registry.headline(s)
        flag = "  <- served" if r.version == served else ("" if r.version in present else "  (removed)")
        print(f"{r.version:>12}  {r.pushed_at:<25} {span:>5} {rows:>10}  {note}{flag}")
    return EXIT_OK


def cmd_models_show(args: argparse.Namespace) -> int:
    from pipeline import registry
    from pipeline.model_record import describe

    config = _registry_config(args)
    model_dir = str(Path(config.output.serving_root) / config.model_name)
    records = {r.version: r for r in registry.versions(config.output.metadata_path, config.name, model_dir)}
    if args.version not in records:
        known = ", ".join(map(str, sorted(records))) or "none"
        print(f"error: version {args.version} was never pushed to {model_dir} (versions: {known})", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(describe(records[args.version], config)))
    return EXIT_OK


def cmd_models_card(args: argparse.Namespace) -> int:
    from pipeline import registry
    from pipeline.model_card import write_card

    config = _registry_config(args)
    model_dir = config.serving_model_dir
    records = {r.version: r for r in registry.versions(config.output.metadata_path, config.name, model_dir)}
    if args.version not in records or args.version not in registry.list_versions(model_dir):
        print(f"error: version {args.version} is not in {model_dir}", file=sys.stderr)
        return EXIT_USAGE
    html_path, md_path = write_card(records[args.version], config, str(Path(model_dir) / str(args.version)))
    print(f"model card: {html_path}\n  markdown: {md_path}")
    return EXIT_OK


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from pipeline import registry
    from pipeline.runner import RunLocked, output_lock

    config = _registry_config(args)
    try:
        with output_lock(Path(config.output.metadata_path).parent):
            restored, new = registry.rollback(
                config.output.metadata_path, config.name, config.serving_model_dir, args.to
            )
    except (ValueError, FileNotFoundError, RunLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"rolled back: version {restored} is served again as version {new} ({config.serving_model_dir}/{new})")
    print(f"  models.config: {Path(config.output.serving_root) / 'models.config'} (stable = canary = {new})")
    return EXIT_OK


def cmd_runs_list(args: argparse.Namespace) -> int:
    from pipeline import registry

    config = _registry_config(args)
    for run, executions, summary in registry.runs(config.output.metadata_path, config.name):
        status, failed = registry.run_status(executions)
        if failed is not None:
            outcome = f"failed at {failed.node_id}"
        elif summary.pushed_to:
            outcome = f"pushed version {Path(summary.pushed_to).name}"
        elif summary.blessed is False:
            outcome = "not blessed"
        else:
            outcome = summary.not_pushed_reason or status
        span = "" if summary.span is None else f"span {summary.span}"
        print(f"{run.name:<28} {status:<11} {span:<8} {outcome}")
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace) -> int:
    from pipeline import registry

    config = _registry_config(args)
    for run, executions, summary in registry.runs(config.output.metadata_path, config.name):
        if run.name != args.run:
            continue
        status, failed = registry.run_status(executions)
        print(f"status: {status}")
        for key, value in registry.provenance(run).items():
            print(f"  {key}: {value}")
        if failed is not None:
            error = failed.execution.custom_properties.get(registry.ERROR_KEY)
            print(f"  failed component: {failed.node_id}")
            print(f"  error: {error.string_value if error else '(not recorded; see the run log)'}")
        print("\n".join(summary.lines()))
        return EXIT_OK
    print(f"error: no run {args.run!r}; see `conveyor runs list`", file=sys.stderr)
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline locally: ExampleGen through Pusher")
    _add_run_args(run)
    run.set_defaults(func=cmd_run)

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

    def registry_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=str(DEFAULT_CONFIG), help="dataset config (default: configs/taxi.yaml)")
        p.add_argument("--output-dir", default="output", help="the run's output directory (default: output)")

    models = sub.add_parser("models", help="pushed versions: list, show, roll back").add_subparsers(
        dest="models_command", required=True
    )
    p = models.add_parser("list", help="one row per pushed version, newest first")
    registry_args(p)
    p.add_argument("--model", default=None, help="model name (default: the config's serving.model_name)")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("show", help="everything about one pushed version")
    registry_args(p)
    p.add_argument("version", type=int)
    p.set_defaults(func=cmd_models_show)
    p = models.add_parser("card", help="(re)write a version's model card into its assets.extra/")
    registry_args(p)
    p.add_argument("version", type=int)
    p.set_defaults(func=cmd_models_card)
    p = models.add_parser("rollback", help="serve an earlier version again, as a new highest version")
    registry_args(p)
    p.add_argument("--to", type=int, default=None, help="version to restore (default: the one before the served)")
    p.set_defaults(func=cmd_models_rollback)

    runs = sub.add_parser("runs", help="pipeline runs: list, show").add_subparsers(dest="runs_command", required=True)
    p = runs.add_parser("list", help="every run, pushed or not, newest first")
    registry_args(p)
    p.set_defaults(func=cmd_runs_list)
    p = runs.add_parser("show", help="one run: status, failed component and error, thresholds")
    registry_args(p)
    p.add_argument("run", help="run id, as `conveyor runs list` prints it")
    p.set_defaults(func=cmd_runs_show)

    from pipeline import serving

    serve = sub.add_parser("serve", help="a local server with TF Serving's REST API over the pushed models")
    serving.add_arguments(serve)
    serve.set_defaults(func=serving.main)

    from kubeflow import kubeflow_runner

    compile_ = sub.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines (KFP v2 YAML)")
    kubeflow_runner.add_arguments(compile_)
    compile_.set_defaults(func=kubeflow_runner.main)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    prepare_environment()
    args = build_parser().parse_args(argv)
    from pipeline.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as err:
        # A bad config or a missing file (e.g. no ML Metadata yet) is the user's to fix: one line.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
