"""Runs the Conveyor pipeline on this machine.

Usage: python local_runner.py [--config FILE] [--data-root DIR] [--output-dir DIR]
"""

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
