"""The registry's commands: `conveyor models list/show/card/rollback` and `conveyor runs list/show`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.options import EXIT_OK, EXIT_USAGE, add_registry, library_logs_to

REGISTRY_LOG = "registry.log"


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `models` and `runs` to the console script."""
    models = sub.add_parser("models", help="pushed versions: list, show, roll back").add_subparsers(
        dest="models_command", required=True
    )
    p = models.add_parser("list", help="one row per pushed version, newest first")
    add_registry(p)
    p.add_argument("--model", default=None, help="model name (default: the config's serving.model_name)")
    p.set_defaults(func=_quiet(cmd_models_list))
    p = models.add_parser("show", help="everything about one pushed version")
    add_registry(p)
    p.add_argument("version", type=int)
    p.set_defaults(func=_quiet(cmd_models_show))
    p = models.add_parser("card", help="(re)write a version's model card into its assets.extra/")
    add_registry(p)
    p.add_argument("version", type=int)
    p.set_defaults(func=_quiet(cmd_models_card))
    p = models.add_parser("rollback", help="serve an earlier version again, as a new highest version")
    add_registry(p)
    p.add_argument("--to", type=int, default=None, help="version to restore (default: the one before the served)")
    p.set_defaults(func=_quiet(cmd_models_rollback))

    runs = sub.add_parser("runs", help="pipeline runs: list, show").add_subparsers(dest="runs_command", required=True)
    p = runs.add_parser("list", help="every run, pushed or not, newest first")
    add_registry(p)
    p.set_defaults(func=_quiet(cmd_runs_list))
    p = runs.add_parser("show", help="one run: status, failed component and error, thresholds")
    add_registry(p)
    p.add_argument("run", help="run id, as `conveyor runs list` prints it")
    p.set_defaults(func=_quiet(cmd_runs_show))


def _quiet(command):
    """The command with library warnings in `<output-dir>/logs/registry.log` instead of above its table."""

    def run(args: argparse.Namespace) -> int:
        with library_logs_to(Path(args.output_dir) / "logs" / REGISTRY_LOG):
            return command(args)

    return run


def _config(args: argparse.Namespace):
    from pipeline.config import load_config

    return load_config(args.config, output_dir=args.output_dir, metadata=args.metadata)


def cmd_models_list(args: argparse.Namespace) -> int:
    from registry.lineage import format_spans
    from registry.versions import cluster_model_dir, headline, list_versions, served_version, versions

    config = _config(args)
    model_dir = str(Path(config.output.serving_root) / (args.model or config.model_name))
    cluster_dir = cluster_model_dir(config, args.model)
    records = versions(config.output.store, config.name, model_dir, cluster_dir)
    served = served_version(model_dir)
    present = set(list_versions(model_dir))
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
        note = f"rollback of {r.rollback_of}" if r.rollback_of else headline(s)
        if cluster_dir and Path(r.destination).parent == Path(cluster_dir):
            flag = f"  (pushed by Kubeflow to {r.destination})"
        else:
            flag = "  <- served" if r.version == served else ("" if r.version in present else "  (removed)")
        print(f"{r.version:>12}  {r.pushed_at:<25} {span:>5} {rows:>10}  {note}{flag}")
    return EXIT_OK


def cmd_models_show(args: argparse.Namespace) -> int:
    from cli.monitor import version_lines
    from registry.record import describe
    from registry.versions import cluster_model_dir, versions

    config = _config(args)
    model_dir = str(Path(config.output.serving_root) / config.model_name)
    records = {r.version: r for r in versions(config.output.store, config.name, model_dir, cluster_model_dir(config))}
    if args.version not in records:
        known = ", ".join(map(str, sorted(records))) or "none"
        print(f"error: version {args.version} was never pushed to {model_dir} (versions: {known})", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(describe(records[args.version], config.model_name)))
    print("\n".join(version_lines(args.output_dir, None, config.model_name, args.version)))
    return EXIT_OK


def cmd_models_card(args: argparse.Namespace) -> int:
    from registry.model_card import write_card
    from registry.versions import list_versions, versions

    config = _config(args)
    model_dir = config.serving_model_dir
    records = {r.version: r for r in versions(config.output.store, config.name, model_dir)}
    if args.version not in records or args.version not in list_versions(model_dir):
        print(f"error: version {args.version} is not in {model_dir}", file=sys.stderr)
        return EXIT_USAGE
    html_path, md_path = write_card(records[args.version], config, str(Path(model_dir) / str(args.version)))
    print(f"model card: {html_path}\n  markdown: {md_path}")
    return EXIT_OK


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from pipeline.metadata import MetadataUnavailable
    from pipeline.runner import RunLocked, registry_write_lock
    from pipeline.store_lock import StoreLocked
    from registry.versions import rollback

    config = _config(args)
    try:
        with registry_write_lock(config):
            restored, new = rollback(config.output.store, config.name, config.serving_model_dir, args.to)
    except (ValueError, FileNotFoundError, RunLocked, StoreLocked, MetadataUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"rolled back: version {restored} is served again as version {new} ({config.serving_model_dir}/{new})")
    print(f"  models.config: {Path(config.output.serving_root) / 'models.config'} (stable = canary = {new})")
    return EXIT_OK


def cmd_runs_list(args: argparse.Namespace) -> int:
    from registry.runs import outcome, runs

    config = _config(args)
    for run, executions, summary in runs(config.output.store, config.name):
        result = outcome(executions, summary)
        span = "" if summary.span is None else f"span {summary.span}"
        print(f"{run.name:<28} {result.status:<11} {span:<8} {result.text}")
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace) -> int:
    from registry.runs import ERROR_KEY, run_provenance, run_status, runs

    config = _config(args)
    for run, executions, summary in runs(config.output.store, config.name):
        if run.name != args.run:
            continue
        status, failed = run_status(executions)
        print(f"status: {status}")
        for key, value in run_provenance(run, executions).items():
            print(f"  {key}: {value}")
        if failed is not None:
            error = failed.execution.custom_properties.get(ERROR_KEY)
            print(f"  failed component: {failed.node_id}")
            print(f"  error: {error.string_value if error else '(not recorded; see the run log)'}")
        print("\n".join(summary.lines()))
        return EXIT_OK
    print(f"error: no run {args.run!r}; see `conveyor runs list`", file=sys.stderr)
    return EXIT_USAGE
