"""`conveyor monitor`: skew and drift of the traffic `conveyor serve` logged, for cron or an alerting system.

Exit codes: 0 clean, or no verdict (too few logged examples: said so, never a false alarm); 1 findings;
2 nothing to check (no readable request logs, or the version's training statistics not found), one line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Optional

from cli.options import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_registry, library_logs_to

MONITOR_LOG = "monitor.log"
MONITORING_SUBDIR = "monitoring"
DEFAULT_WINDOW_HOURS = 24.0
DEFAULT_MIN_EXAMPLES = 100  # components.request_logs.MIN_EXAMPLES, repeated so `--help` loads no Beam


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `conveyor monitor` to the console script."""
    p = sub.add_parser("monitor", help="skew and drift of logged serving traffic against training (exit 1 on findings)")
    add_registry(p)
    p.add_argument("--model", default=None, help="model name (default: the config's serving.model_name)")
    p.add_argument(
        "--version", type=int, default=None, help="check the requests this version answered (default: most of them)"
    )
    p.add_argument(
        "--since",
        default=None,
        metavar="TIME",
        help="the window's start: ISO 8601 (UTC unless it says otherwise) or Unix seconds; default: --window "
        "hours before now",
    )
    p.add_argument(
        "--window",
        type=float,
        default=DEFAULT_WINDOW_HOURS,
        metavar="HOURS",
        help="the window's length; drift compares it with the window as long before it "
        f"(default: {DEFAULT_WINDOW_HOURS:g})",
    )
    p.add_argument(
        "--log-dir",
        default=None,
        help="the request-log root `conveyor serve --request-log-dir` wrote (default: <output-dir>/request_logs)",
    )
    p.add_argument(
        "--min-examples",
        type=int,
        default=DEFAULT_MIN_EXAMPLES,
        metavar="N",
        help=f"fewest logged examples a verdict is given on (default: {DEFAULT_MIN_EXAMPLES}); below it: "
        "no verdict, exit 0",
    )
    p.add_argument("--json", action="store_true", help="print the check as JSON instead of lines")
    p.set_defaults(func=cmd_monitor)


def parse_time(text: str) -> float:
    """UTC seconds from ISO 8601 (naive means UTC; a trailing Z is accepted) or from Unix seconds.

    Raises:
      ValueError: neither.
    """
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r} is neither ISO 8601 (2026-12-01T09:00:00Z) nor Unix seconds") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)).timestamp()


def _refuse(reason: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"verdict": "unavailable", "reason": reason}))
    else:
        print(f"error: {reason}", file=sys.stderr)
    return EXIT_USAGE


def training_statistics(config, model_dir: str, version: int):
    """The training statistics of a pushed version, through ML Metadata lineage: the version's push, the
    run that made it (a rollback's, the version it restored), that run's StatisticsGen output.

    Returns:
      (statistics, "run <id>: <path>").

    Raises:
      LookupError: the version was never pushed to model_dir, or its statistics are gone or unreadable.
    """
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    from registry.lineage import open_store
    from registry.statistics import run_statistics
    from registry.versions import versions

    records = {r.version: r for r in versions(config.output.store, config.name, model_dir)}
    record, seen = records.get(version), set()
    while record is not None and record.rollback_of and record.rollback_of not in seen:
        seen.add(record.rollback_of)
        record = records.get(record.rollback_of)
    if record is None or not record.run_id:
        known = ", ".join(map(str, sorted(records))) or "none"
        raise LookupError(f"version {version} has no push recorded for {model_dir} (versions: {known})")
    found = run_statistics(open_store(config.output.store), config.name, record.run_id)
    if not tf.io.gfile.exists(found.path):
        raise LookupError(f"version {version}'s training statistics are gone: {found.path}")
    return tfdv.load_stats_binary(found.path), f"run {found.run}: {found.path}"


def cmd_monitor(args: argparse.Namespace) -> int:
    from pipeline.config import load_config

    config = load_config(args.config, output_dir=args.output_dir, metadata=args.metadata)
    with library_logs_to(Path(args.output_dir) / "logs" / MONITOR_LOG):
        return _monitor(args, config)


def _window(args: argparse.Namespace) -> tuple[float, float]:
    if args.window <= 0:
        raise ValueError(f"--window must be positive hours, got {args.window:g}")
    length = args.window * 3600
    if args.since is None:
        end = time.time() + 1  # this second's requests included
        return end - length, end
    start = parse_time(args.since)
    return start, start + length


def _monitor(args: argparse.Namespace, config) -> int:
    import tensorflow_data_validation as tfdv

    from schema.review import _feature_charts
    from serving import monitor_report
    from serving.defaults import REQUEST_LOGS_SUBDIR
    from serving.monitor import FINDINGS, check
    from serving.request_examples import LogsUnavailable, read_traffic

    model = args.model or config.model_name
    model_dir = str(Path(config.output.serving_root) / model)
    try:
        start, end = _window(args)
        traffic = read_traffic(
            args.log_dir or Path(args.output_dir) / REQUEST_LOGS_SUBDIR, model, start, end, args.version
        )
        training, source = (None, "")
        if traffic.version is not None:
            training, source = training_statistics(config, model_dir, traffic.version)
        result = check(
            traffic, tfdv.load_schema_text(config.schema_path), training, args.min_examples, config.beam_args, source
        )
    except (ValueError, LogsUnavailable, LookupError) as err:
        return _refuse(str(err), args.json)
    directory = monitor_report.report_dir(Path(args.output_dir) / MONITORING_SUBDIR, model)
    html_path, md_path, _ = monitor_report.write(result, directory, _feature_charts)
    if args.json:
        print(json.dumps(result.to_json() | {"report": str(html_path), "markdown": str(md_path)}, indent=2))
    else:
        _print(result, html_path, md_path)
    return EXIT_FAILED if result.verdict == FINDINGS else EXIT_OK


def _print(result, html_path: Path, md_path: Path) -> None:
    version = result.version if result.version is not None else "(no request in the window)"
    print(f"monitor {result.model} version {version}: {result.verdict}")
    print(f"  {result.sampling()}")
    if result.reason:
        print(f"  {result.reason}")
    for finding in result.findings:
        print(f"  {finding.line()}")
    for line in [*result.notes, *result.traffic.problems()]:
        print(f"  note: {line}")
    print(f"  report: {html_path} (opens offline)\n  markdown: {md_path}")


def version_lines(output_dir: str, log_dir: Optional[str], model: str, version: int) -> list[str]:
    """What `conveyor models show VERSION` says about serving: the traffic the version answered (from the
    request logs) and its newest monitoring check."""
    from serving.defaults import REQUEST_LOGS_SUBDIR
    from serving.monitor_report import RESULT_JSON
    from serving.request_examples import version_traffic

    root = Path(log_dir) if log_dir else Path(output_dir) / REQUEST_LOGS_SUBDIR
    served = version_traffic(root, model).get(version)
    lines = ["  serving (request logs):"]
    if served is None:
        lines.append(f"    no logged requests in {root / model} (conveyor serve --request-log-rate)")
    else:
        first, last = (
            dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")
            for t in (served.first, served.last)
        )
        lines.append(
            f"    {served.requests:,} logged requests ({served.examples:,} examples), standing for about "
            f"{round(served.estimated_requests):,} served, {first} to {last}"
        )
    checks = sorted(Path(output_dir, MONITORING_SUBDIR, model).glob(f"*/{RESULT_JSON}"), key=lambda p: p.parent.name)
    for path in reversed(checks):
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("version") != version:
            continue
        findings = result.get("findings", [])
        said = f"{result['verdict']}" + (
            f" ({len(findings)}: {', '.join(sorted({f['feature'] for f in findings}))})" if findings else ""
        )
        lines.append(f"  last monitoring check ({path.parent.name}): {said}; report {path.with_name('report.html')}")
        return lines
    lines.append("  last monitoring check: none (conveyor monitor)")
    return lines
