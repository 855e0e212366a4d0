"""`conveyor metadata copy`: a registry's history into another store (a local one into the team's)."""

from __future__ import annotations

import argparse
import sys

from cli.options import EXIT_OK, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `metadata copy` to the console script."""
    metadata = sub.add_parser("metadata", help="ML Metadata stores: copy a history into a shared one")
    commands = metadata.add_subparsers(dest="metadata_command", required=True)
    p = commands.add_parser("copy", help="copy every run, artifact and version record; again copies nothing twice")
    p.add_argument(
        "--from", dest="source", required=True, metavar="URL", help="e.g. sqlite:///abs/output/metadata.sqlite"
    )
    p.add_argument("--to", dest="target", required=True, metavar="URL", help="e.g. postgresql://USER@HOST:PORT/DB")
    p.add_argument(
        "--password-env", default="", help="the variable holding the target's password (CONVEYOR_METADATA_PASSWORD)"
    )
    p.set_defaults(func=cmd_copy)


def cmd_copy(args: argparse.Namespace) -> int:
    from pipeline.metadata import MetadataStore
    from registry.copy import copy_store

    try:
        source = MetadataStore.parse(args.source)
        target = MetadataStore.parse(args.target, args.password_env)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    counts = copy_store(source, target)
    print(f"copied {counts.line()} from {source.shown} to {target.shown}")
    return EXIT_OK
