"""`conveyor predict` against the model alone: rows per second and peak memory at 100k and 1M taxi rows.

Usage: python benchmarks/predict.py [--sizes 100000,1000000] [--modes in_memory,multi_processing]
                                    [--output-dir output] [--workdir /tmp/conveyor-predict-bench]

Over the newest pushed taxi version (<output-dir>/serving_model/taxi/<highest version>/), for each size it
writes taxi-like rows (benchmarks/scale.py's generator) and measures, in the same run:

- the reference: a plain loop in this process feeding `serving_default` batches of 1,024 tf.Examples that
  were serialized beforehand (parsing the CSV and building the examples are not timed): the model's own speed;
- `conveyor predict` on the CSV (a fresh process, CSV output) under each DirectRunner mode, timed by the
  command's own summary (the pipeline from construction to the renamed output) and by the wall clock.

Peak memory is the largest sum of RSS over the command's whole process tree (Beam's worker processes too),
sampled every 50 ms. The ratio is the pipeline's rows per second over the reference's.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this directory comes first on sys.path, and benchmarks/pipeline.py would shadow
# the `pipeline` package: put the project root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(PROJECT_ROOT))
BATCH = 1024
MODEL = "taxi"


def _tree_rss(root) -> int:
    """Bytes of RSS of `root` and all its descendants now (0 for processes that are gone)."""
    import psutil

    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_predict(csv_path: Path, output_dir: Path, out: Path, mode: str) -> dict:
    """`conveyor predict` in a fresh process: its summary's rows/s, the wall time and peak tree RSS.

    Raises:
      RuntimeError: the command failed (its stderr's last line).
    """
    import psutil

    workers = os.cpu_count() or 1
    argv = [
        str(Path(sys.executable).with_name("conveyor")),
        "predict",
        "--data",
        str(csv_path),
        "--config",
        str(PROJECT_ROOT / "configs" / "taxi.yaml"),
        "--output-dir",
        str(output_dir),
        "--output",
        str(out),
        f"--beam-arg=--direct_running_mode={mode}",
        f"--beam-arg=--direct_num_workers={1 if mode == 'in_memory' else workers}",
    ]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(watched))
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError((stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    found = re.search(r"rows in +([\d,]+)  \(([\d,]+) rows/s\)", stdout)
    seconds = re.search(r": [\d,]+ rows in ([\d.]+) s", stdout)
    return {
        "rows": int(found.group(1).replace(",", "")),
        "rows_per_second": int(found.group(2).replace(",", "")),
        "pipeline_seconds": float(seconds.group(1)),
        "wall_seconds": wall,
        "peak_rss_mib": peak / 2**20,
    }


def reference(csv_path: Path, version_dir: Path) -> dict:
    """Rows per second of `serving_default` over batches of BATCH pre-serialized examples of the file."""
    import psutil
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from components.examples import to_example
    from serving.batch_predict import load_target

    target = load_target(MODEL, int(version_dir.name), version_dir)
    schema = text_format.Parse((version_dir / "assets.extra" / "schema.pbtxt").read_text(), schema_pb2.Schema())
    skip = {f.name for f in schema.feature} - target.features
    with open(csv_path, newline="", encoding="utf-8") as f:
        examples = [to_example(row, schema, skip=skip).SerializeToString() for row in csv.DictReader(f)]
    batches = [tf.constant(examples[i : i + BATCH]) for i in range(0, len(examples), BATCH)]
    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    serve(examples=batches[0])  # the first call traces; the loop measures steady scoring
    start = time.monotonic()
    for batch in batches:
        serve(examples=batch)
    seconds = time.monotonic() - start
    return {
        "rows": len(examples),
        "rows_per_second": len(examples) / seconds,
        "seconds": seconds,
        "peak_rss_mib": psutil.Process().memory_info().rss / 2**20,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--modes", default="in_memory,multi_processing")
    parser.add_argument("--output-dir", default="output", help="where `conveyor run` pushed (default: output)")
    parser.add_argument("--workdir", default="/tmp/conveyor-predict-bench")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.scale import generate
    from components.pusher.publish import list_versions

    model_dir = Path(args.output_dir) / "serving_model" / MODEL
    versions = list_versions(model_dir)
    if not versions:
        print(f"error: no pushed {MODEL} version in {model_dir}; run `conveyor run` first", file=sys.stderr)
        return 2
    version_dir = model_dir / str(versions[-1])
    workdir = Path(args.workdir)
    machine = platform.processor() or platform.machine()
    print(f"# {dt.date.today()} {platform.node()}, {os.cpu_count()} cores, {machine}")
    print(f"# model {MODEL} version {versions[-1]}; reference: serving_default at batch {BATCH}")
    for size in [int(s) for s in args.sizes.split(",")]:
        csv_path = workdir / f"trips-{size}.csv"
        if not csv_path.is_file():
            generate(size, csv_path)
        ref = reference(csv_path, version_dir)
        print(
            f"{size:>9,} rows  reference            {ref['rows_per_second']:>10,.0f} rows/s"
            f"  ({ref['seconds']:.1f} s, {ref['peak_rss_mib']:,.0f} MiB RSS)"
        )
        for mode in args.modes.split(","):
            out = workdir / f"scored-{size}-{mode}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            got = run_predict(csv_path, Path(args.output_dir), out, mode)
            assert got["rows"] == size, got
            print(
                f"{size:>9,} rows  predict {mode:<16} {got['rows_per_second']:>6,} rows/s"
                f"  ({got['pipeline_seconds']:.1f} s pipeline, {got['wall_seconds']:.1f} s command,"
                f" {got['peak_rss_mib']:,.0f} MiB peak tree RSS)"
                f"  ratio {got['rows_per_second'] / ref['rows_per_second']:.2f}x",
                flush=True,
            )
            subprocess.run(["rm", "-rf", str(out)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
