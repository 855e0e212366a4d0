"""Latency and throughput of `conveyor serve` against calling the pushed SavedModel in process.

Usage: python benchmarks/serving.py [--output-dir output] [--seconds 10] [--max-requests 2000]

Over the newest pushed model (<output-dir>/serving_model/<model>/<highest version>/), at batch 1 and 64,
sequential requests: (a) in process, `serving_default` called on serialized tf.Examples; (b) through
`conveyor serve` started in this process on a free localhost port, over one keep-alive HTTP connection,
with b64 tf.Examples in the row form; (c) the same with plain JSON feature values, which the server turns
into tf.Examples. Each row runs after a warm-up until --seconds pass or --max-requests are made. Request
bodies are encoded once beforehand; response JSON is decoded in every request.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import http.client
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this directory comes first on sys.path, and benchmarks/serving.py would shadow
# the `serving` package: put the project root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(PROJECT_ROOT))
BATCHES = (1, 64)
WARM_UP = 20


def _rows(schema, count: int) -> tuple[list[dict[str, str]], set[str]]:
    """`count` raw rows of the bundled taxi data, without the columns kept out of serving (the label)."""
    from serving.models import not_served

    excluded = not_served(schema)
    files = sorted(PROJECT_ROOT.glob("data/taxi/**/*.csv"))
    if not files:
        raise FileNotFoundError(f"no CSV files under {PROJECT_ROOT / 'data' / 'taxi'}")
    with open(files[0], newline="", encoding="utf-8") as f:
        rows = list(itertools.islice(csv.DictReader(f), count))
    return [{k: v for k, v in row.items() if k not in excluded} for row in rows], excluded


def _typed(row: dict[str, str], schema) -> dict:
    """A raw row as a client sends it in JSON: numbers for numeric features, missing values left out."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    types = {f.name: f.type for f in schema.feature}
    typed = {}
    for name, text in row.items():
        if text == "":
            continue
        if types[name] == schema_pb2.INT:
            typed[name] = int(float(text))
        else:
            typed[name] = float(text) if types[name] == schema_pb2.FLOAT else text
    return typed


def _measure(call: Callable[[], None], seconds: float, max_requests: int) -> list[float]:
    """Latencies in seconds of sequential calls, after a warm-up, bounded by time and by count."""
    for _ in range(WARM_UP):
        call()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < max_requests and time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def _http_call(connection: http.client.HTTPConnection, path: str, body: bytes) -> Callable[[], None]:
    def call() -> None:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"the server answered {response.status}: {answer}")

    return call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="output", help="where `conveyor run` pushed (default: output)")
    parser.add_argument("--model", default="taxi", help="model name under serving_model/ (default: taxi)")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per (mode, batch) row (default: 10)")
    parser.add_argument("--max-requests", type=int, default=2000, help="requests per row at most (default: 2000)")
    args = parser.parse_args(argv)

    from components.pusher.publish import SCHEMA_FILE, list_versions

    serving_root = Path(args.output_dir) / "serving_model"
    versions = list_versions(serving_root / args.model)
    if not versions:
        print(f"no pushed {args.model} model under {serving_root}: run `make run` first", file=sys.stderr)
        return 2
    version = versions[-1]
    version_dir = serving_root / args.model / str(version)

    import numpy as np
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    from components.examples import to_example
    from serving.server import ModelServer

    schema = tfdv.load_schema_text(str(version_dir / "assets.extra" / SCHEMA_FILE))
    raw, excluded = _rows(schema, max(BATCHES))
    if len(raw) < max(BATCHES):
        print(f"the bundled data has {len(raw)} rows, fewer than the largest batch {max(BATCHES)}", file=sys.stderr)
        return 2
    serialized = [to_example(row, schema, skip=excluded).SerializeToString() for row in raw]
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

    results = []
    with ModelServer(serving_root, "127.0.0.1", 0, poll_seconds=60) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        path = f"/v1/models/{args.model}/versions/{version}:predict"
        for batch in BATCHES:
            examples = serialized[:batch]
            b64 = json.dumps({"instances": [{"b64": base64.b64encode(e).decode("ascii")} for e in examples]})
            plain = json.dumps({"instances": [_typed(row, schema) for row in raw[:batch]]})
            modes = {
                "in-process": lambda e=examples: signature(examples=tf.constant(e))["probabilities"].numpy(),
                "server, b64 tf.Example": _http_call(connection, path, b64.encode("utf-8")),
                "server, plain JSON": _http_call(connection, path, plain.encode("utf-8")),
            }
            for mode, call in modes.items():
                latencies = np.array(_measure(call, args.seconds, args.max_requests))
                results.append(
                    {
                        "mode": mode,
                        "batch": batch,
                        "requests": len(latencies),
                        "p50": float(np.percentile(latencies, 50)) * 1000,
                        "p99": float(np.percentile(latencies, 99)) * 1000,
                        "rps": len(latencies) / float(latencies.sum()),
                    }
                )
                print(f"  {mode}, batch {batch}: {len(latencies)} requests", file=sys.stderr, flush=True)
        connection.close()

    baseline = {r["batch"]: r for r in results if r["mode"] == "in-process"}
    print()
    print(f"Serving benchmark: {args.model} version {version} ({version_dir})")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.platform()}; "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}; {dt.date.today()}"
    )
    print(
        f"sequential requests, at most {args.seconds:g} s or {args.max_requests} per row after {WARM_UP} warm-up; "
        "server: one keep-alive connection on localhost"
    )
    print()
    print("| mode | batch | requests | p50 ms | p99 ms | requests/s | rows/s | p50 / in-process | req/s / in-process |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        base = baseline[r["batch"]]
        print(
            f"| {r['mode']} | {r['batch']} | {r['requests']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | "
            f"{r['rps'] * r['batch']:.0f} | {r['p50'] / base['p50']:.2f}x | {r['rps'] / base['rps']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
