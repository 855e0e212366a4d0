"""What reading `conveyor serve`'s request logs costs `conveyor monitor`: 100,000 logged requests analysed
against TFDV's own `generate_statistics_from_tfrecord` on the same examples written as plain TFRecords.

Usage: python benchmarks/monitor.py [--requests 100000]

The examples are the bundled taxi rows (repeated to the count), typed by the curated schema as a client
would send them; each is one logged Predict request written by the real request log (serving/request_log.py).
Monitoring's side reads the finished log files in the window (serving/request_examples.read_traffic) and
computes statistics on Beam (components/request_logs.statistics, StatisticsGen's options); TFDV's side reads
the plain TFRecord file. Both statistics must count the same examples.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this directory comes first on sys.path: put the project root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(PROJECT_ROOT))
SCHEMA = PROJECT_ROOT / "schema" / "taxi" / "schema.pbtxt"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="logged requests (default: 100000)")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    from components.examples import to_example
    from components.request_logs import statistics
    from serving.models import not_served
    from serving.request_examples import read_traffic
    from serving.request_log import RequestLog
    from serving.servable import LoadedVersion

    schema = tfdv.load_schema_text(str(SCHEMA))
    skip = not_served(schema)
    files = sorted(PROJECT_ROOT.glob("data/taxi/**/*.csv"))
    with open(files[0], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    serialized = [to_example(row, schema, skip=skip).SerializeToString() for row in rows]
    examples = list(itertools.islice(itertools.cycle(serialized), args.requests))
    servable = LoadedVersion("taxi", 1, Path("/nowhere"), None, {}, {}, None)
    outputs = {"probabilities": np.array([[0.5]], dtype=np.float32)}

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "request_logs"
        started = time.time()
        write_started = time.perf_counter()
        log = RequestLog(root, 1.0, queue_size=args.requests + 1)
        for example in examples:
            log.add("predict", servable, "serving_default", {"examples": [example]}, outputs)
        log.close(timeout=600)
        written = time.perf_counter() - write_started
        assert log.written == args.requests, (log.written, log.dropped)
        plain = Path(scratch) / "examples.tfrecord"
        with tf.io.TFRecordWriter(str(plain)) as writer:
            for example in examples:
                writer.write(example)

        monitor_started = time.perf_counter()
        traffic = read_traffic(root, "taxi", started - 1, time.time() + 1)
        read = time.perf_counter() - monitor_started
        ours = statistics({"serving": traffic.current.examples})["serving"]
        monitor_seconds = time.perf_counter() - monitor_started

        tfdv_started = time.perf_counter()
        theirs = tfdv.generate_statistics_from_tfrecord(str(plain))
        tfdv_seconds = time.perf_counter() - tfdv_started
    counted = (ours.datasets[0].num_examples, theirs.datasets[0].num_examples)
    assert counted == (args.requests, args.requests), counted

    print(f"Monitoring benchmark: {args.requests:,} logged requests of one taxi example each")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.platform()}; "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, TFDV {tfdv.__version__}; {dt.date.today()}"
    )
    print()
    print("| step | seconds | examples/s |")
    print("|---|---:|---:|")
    steps = [
        (f"request log: write {args.requests:,} records (background thread)", written),
        ("monitor: read the logs back into examples", read),
        ("monitor: read + statistics on Beam", monitor_seconds),
        ("TFDV generate_statistics_from_tfrecord, plain TFRecords", tfdv_seconds),
    ]
    for step, seconds in steps:
        print(f"| {step} | {seconds:.1f} | {args.requests / seconds:,.0f} |")
    print()
    ratio, reading = monitor_seconds / tfdv_seconds, read / tfdv_seconds
    print(f"monitor / TFDV: {ratio:.2f}x (reading the logs alone: {reading:.2f}x of TFDV's time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
