"""Flags and exit codes the sub-commands share, so every command spells them the same way."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from pipeline.environment import DEFAULT_CONFIG

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_config(parser: argparse.ArgumentParser) -> None:
    """`--config`, defaulting to the bundled taxi config."""
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="dataset config (default: configs/taxi.yaml)")


def add_registry(parser: argparse.ArgumentParser) -> None:
    """What the registry commands need: the pipeline and model names (from the config) and the output dir."""
    add_config(parser)
    parser.add_argument("--output-dir", default="output", help="the run's output directory (default: output)")
    add_metadata(parser)


def add_metadata(parser: argparse.ArgumentParser) -> None:
    """`--metadata URL`: a shared ML Metadata store instead of the output directory's SQLite file."""
    parser.add_argument(
        "--metadata",
        default=None,
        metavar="URL",
        help="ML Metadata store: sqlite:///PATH, postgresql://USER@HOST:PORT/DB or mysql://USER@HOST:PORT/DB "
        "(default: the config's metadata.url, else <output-dir>/metadata.sqlite); the password comes from the "
        "environment variable named by metadata.password_env",
    )


class _FileWhenWritten(logging.FileHandler):
    """A log file created (with its directory) only when a line is written to it."""

    def emit(self, record: logging.LogRecord) -> None:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        super().emit(record)


@contextlib.contextmanager
def library_logs_to(log_path: Path) -> Iterator[None]:
    """Sends library log lines (TensorFlow's deprecation warnings, Python warnings) to `log_path` instead of
    the terminal for the duration, so a command's output is its own lines only."""
    from tensorflow.python.platform import tf_logging

    handler = _FileWhenWritten(log_path, delay=True, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(), tf_logging.get_logger()]
    saved = [(lg, list(lg.handlers), lg.propagate) for lg in loggers]
    for lg in loggers:
        for h in list(lg.handlers):
            lg.removeHandler(h)
    loggers[0].addHandler(handler)
    loggers[1].propagate = True
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        loggers[0].removeHandler(handler)
        handler.close()
        for lg, handlers, propagate in saved:
            for h in handlers:
                lg.addHandler(h)
            lg.propagate = propagate
