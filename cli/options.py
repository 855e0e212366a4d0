"""Flags and exit codes the sub-commands share, so every command spells them the same way."""

from __future__ import annotations

import argparse

from pipeline.environment import DEFAULT_CONFIG

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_config(parser: argparse.ArgumentParser) -> None:
    """`--config`, defaulting to the bundled taxi config."""
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="dataset config (default: configs/taxi.yaml)")


def add_registry(parser: argparse.ArgumentParser) -> None:
    """What the registry commands need: the pipeline and model names (from the config) and the output dir."""
    add_config(parser)
    parser.add_argument("--output-dir", default="output", help="the run's output directory (default: output)")
