"""`conveyor predict`: score a CSV file, a directory of CSVs or a span with a pushed version, on Beam.

Exit codes: 0 done; 1 the run failed or lost rows; 2 bad input (path, model, version, label, header), one
line and no output written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from cli.options import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_config, add_metadata, library_logs_to

PREDICT_LOG = "predict.log"
FORMATS = ("csv", "tfrecord", "parquet")  # serving.batch_predict's, repeated so `--help` does not load Beam


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `conveyor predict` to the console script."""
    p = sub.add_parser("predict", help="score a CSV table with a pushed model version on Beam (RunInference)")
    p.add_argument("--data", required=True, help="a CSV file, a directory of CSVs, or a data root of span-<N>/")
    p.add_argument("--model", default=None, help="model name (default: the config's serving.model_name)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=None, help="the version to score with (default: the newest)")
    which.add_argument("--label", default=None, help="the version a models.config label names (stable, canary)")
    p.add_argument(
        "--output",
        default=None,
        help="directory to create for the scored rows (default: <output-dir>/predictions/<model>-<version>-<time>)",
    )
    p.add_argument("--format", choices=FORMATS, default="csv", help="the scored rows' file format (default: csv)")
    p.add_argument(
        "--keep", nargs="+", default=[], metavar="COLUMN", help="input columns copied into each output row (an id)"
    )
    p.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="a Beam pipeline argument, passed through unchanged (repeat it); added to the config's beam.args",
    )
    add_config(p)
    p.add_argument("--output-dir", default="output", help="the run's output directory: <output-dir>/serving_model")
    add_metadata(p)
    p.set_defaults(func=cmd_predict)


def beam_args(configured: tuple[str, ...], given: list[str]) -> list[str]:
    """The config's and the command line's Beam arguments; without a runner or DirectRunner mode among them, the
    in-memory DirectRunner: on this 2-core machine it scored 1M taxi rows 1.6x faster than one worker per core
    (benchmarks/predict.py, README), whose workers each load TensorFlow and the model."""
    args = [*configured, *given]
    flags = {a.split("=")[0] for a in args}
    if not flags & {"--runner", "--direct_running_mode", "--direct_num_workers"}:
        args += ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    return args


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.config import load_config

    config = load_config(args.config, output_dir=args.output_dir, metadata=args.metadata)
    log_path = Path(args.output_dir) / "logs" / PREDICT_LOG
    # Multi-processing Beam workers are fresh interpreters: keep their import-time FutureWarnings off the terminal.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    with library_logs_to(log_path):
        return _predict(args, config, log_path)


def pushed_line(config, model_dir: Path, version: int) -> str:
    """What the registry (the output directory's SQLite, or the shared store) says of the version: the run
    that pushed it, or that it has no push on record.

    Args:
      config: the pipeline config; its output.store is the registry read.
      model_dir: the model's directory of version directories.
      version: the version being scored.

    Returns:
      One line to print.

    Raises:
      MetadataUnavailable: a shared store that cannot be opened.
    """
    from registry.versions import versions

    store = config.output.store
    try:
        records = {r.version: r for r in versions(store, config.name, str(model_dir))}
    except FileNotFoundError:  # a serving directory copied without its registry still scores
        return f"  registry: no ML Metadata at {store.shown}; scoring from the version directory alone"
    record = records.get(version)
    if record is None or not record.run_id:
        return f"  registry: no push of version {version} into {model_dir} recorded in {store.shown}"
    restored = f", restoring version {record.rollback_of}" if record.rollback_of else ""
    return f"  registry: pushed {record.pushed_at} by run {record.run_id}{restored} ({store.shown})"


def _predict(args: argparse.Namespace, config, log_path: Path) -> int:
    from pipeline.metadata import MetadataUnavailable
    from serving import batch_predict as bp

    model = args.model or config.model_name
    try:
        files = bp.input_files(args.data)
        version, path = bp.resolve_version(config.output.serving_root, model, args.version, args.label)
        target = bp.load_target(model, version, path)
        bp.check_headers(files, target, args.keep)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        output = args.output or Path(args.output_dir) / "predictions" / f"{model}-{version}-{stamp}"
        bp.check_output(output)
        pushed = pushed_line(config, path.parent, version)
    except (bp.PredictError, MetadataUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    what = files[0] if len(files) == 1 else f"{len(files)} files in {Path(files[0]).parent}"
    print(f"scoring {what} with {model} version {version} ({target.task}, {target.signature} signature)")
    print(pushed)
    try:
        summary = bp.predict(target, files, output, args.format, args.keep, beam_args(config.beam_args, args.beam_arg))
    except Exception as err:  # a runner re-raises a worker's failure as whatever it was; the log keeps the trace
        logging.getLogger(__name__).exception("batch prediction failed")
        last = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        print(f"error: batch prediction failed, no output written: {last} (see {log_path})", file=sys.stderr)
        return EXIT_FAILED
    print(f"predict {model} version {version}: {summary.rows_in:,} rows in {summary.seconds:.1f} s")
    print(f"  scored    {summary.scored:>10,}")
    print(f"  rejected  {summary.rejected:>10,}")
    print(f"  rows in   {summary.rows_in:>10,}  ({summary.rows_per_second:,.0f} rows/s)")
    for name in summary.predictions:
        print(f"  predictions: {name}")
    for name in summary.rejected_files:
        print(f"  rejected rows: {name}")
    if not summary.balanced:
        print(
            f"error: {summary.rows_in - summary.scored - summary.rejected} rows were neither scored nor rejected",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
