"""Latency and throughput of `conveyor serve` against calling the pushed SavedModel in process.

Usage: python benchmarks/serving.py [--output-dir output] [--seconds 10] [--max-requests 2000]

Over the newest pushed model (<output-dir>/serving_model/<model>/<highest version>/), at batch 1 and 64,
sequential requests: (a) in process, `serving_default` called on serialized tf.Examples; (b) through
`conveyor serve` started in this process on a free localhost port, over one keep-alive HTTP connection,
with b64 tf.Examples in the row form; (c) the same with plain JSON feature values, which the server turns
into tf.Examples. Each row runs after a warm-up until --seconds pass or --max-requests are made. Request
bodies are encoded once beforehand; response JSON is decoded in every request.

Then, at batch 1, concurrent clients (1, 8, 32; threads of a separate client process, each with its own
keep-alive connection or gRPC channel): p50, p99 and throughput for REST and gRPC against the same number of threads
calling `serving_default` in process; server-side batching on against off at 32 clients; and the request
log at rate 1.0 against no log.

Last, the first request after a new version appears against the steady p50, with the version's warmup file
(assets.extra/tf_serving_warmup_requests, replayed before the version is available) and without it.
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
import tempfile
import threading
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


CLIENTS = (1, 8, 32)
# Batching for the comparison at 32 clients: batches of up to 32 rows, formed within 2 ms.
BATCHING = {"max_batch_size": 32, "batch_timeout_micros": 2000, "num_batch_threads": 2, "max_enqueued_batches": 100}


def _load(make_call: Callable[[int], Callable[[], None]], clients: int, seconds: float) -> dict:
    """`clients` threads each calling their own `make_call(i)()` back to back for `seconds` after a warm-up:
    p50 and p99 latency in ms and requests per second over all of them."""
    import numpy as np

    calls = [make_call(i) for i in range(clients)]
    for call in calls:
        for _ in range(5):
            call()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(i: int) -> None:
        start.wait()
        while time.perf_counter() < deadline[0]:
            began = time.perf_counter()
            calls[i]()
            latencies[i].append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = np.array([x for row in latencies for x in row])
    return {
        "requests": len(flat),
        "p50": float(np.percentile(flat, 50)) * 1000,
        "p99": float(np.percentile(flat, 99)) * 1000,
        "rps": len(flat) / elapsed,
    }


def _rest_client(port: int, path: str, body: bytes) -> Callable[[int], Callable[[], None]]:
    def make(_: int) -> Callable[[], None]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        return _http_call(connection, path, body)

    return make


def _grpc_client(address: str, request: bytes) -> Callable[[int], Callable[[], None]]:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    message = predict_pb2.PredictRequest.FromString(request)

    def make(_: int) -> Callable[[], None]:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))
        return lambda: stub.Predict(message, timeout=60)

    return make


def _client_process(connection) -> None:
    """The load generator, in a process of its own as real clients are: it never competes with the server
    for the interpreter lock. Takes (protocol, address, path, payload, clients, seconds), answers _load's dict."""
    while (job := connection.recv()) is not None:
        protocol, address, path, payload, clients, seconds = job
        if protocol == "REST":
            make = _rest_client(int(address.rsplit(":", 1)[1]), path, payload)
        else:
            make = _grpc_client(address, payload)
        connection.send(_load(make, clients, seconds))


def concurrent_load(serving_root: Path, model: str, version: int, example: bytes, signature, seconds: float) -> list:
    """Batch-1 latency and throughput at 1, 8 and 32 clients: in process, REST and gRPC; then batching and the
    request log, each against the same server without them."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving.batching import BatchingParameters
    from serving.request_log import RequestLog
    from serving.server import ModelServer

    body = json.dumps({"instances": [{"b64": base64.b64encode(example).decode("ascii")}]}).encode("utf-8")
    path = f"/v1/models/{model}/versions/{version}:predict"
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.version.value = version
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto([example], dtype=tf.string))
    feed = tf.constant([example])

    def in_process(_: int) -> Callable[[], None]:
        return lambda: {k: v.numpy() for k, v in signature(examples=feed).items()}

    rows = []

    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    clients_process = context.Process(target=_client_process, args=(theirs,), daemon=True)
    clients_process.start()

    def measure(setting: str, protocol: str, clients: int, target) -> None:
        if protocol == "in-process":
            result = _load(target, clients, seconds)
        else:
            ours.send((protocol, *target, clients, seconds))
            result = ours.recv()
        rows.append({"setting": setting, "protocol": protocol, "clients": clients, **result})
        print(f"  {setting}, {protocol}, {clients} clients: {result['requests']} requests", file=sys.stderr, flush=True)

    def rest(server) -> tuple:
        return (f"127.0.0.1:{server.port}", path, body)

    def grpc(server) -> tuple:
        return (server.grpc_address, "", request.SerializeToString())

    with ModelServer(serving_root, "127.0.0.1", 0, poll_seconds=60, grpc_port=0) as server:
        for clients in CLIENTS:
            measure("plain", "in-process", clients, in_process)
            measure("plain", "REST", clients, rest(server))
            measure("plain", "gRPC", clients, grpc(server))
    batching = BatchingParameters(**BATCHING)
    with ModelServer(serving_root, "127.0.0.1", 0, poll_seconds=60, grpc_port=0, batching=batching) as server:
        measure("batching", "REST", 32, rest(server))
        measure("batching", "gRPC", 32, grpc(server))
    with tempfile.TemporaryDirectory() as logs:
        with ModelServer(
            serving_root, "127.0.0.1", 0, poll_seconds=60, grpc_port=0, request_log=RequestLog(logs, 1.0)
        ) as server:
            measure("request log 1.0", "REST", 1, rest(server))
            measure("request log 1.0", "gRPC", 1, grpc(server))
    ours.send(None)
    clients_process.join(30)

    plain = {(r["protocol"], r["clients"]): r for r in rows if r["setting"] == "plain"}
    print()
    print("Concurrent clients, batch 1 (b64 tf.Example over REST, a PredictRequest over gRPC):")
    print()
    print(
        "| setting | protocol | clients | requests | p50 ms | p99 ms | requests/s | p50 - in-process ms "
        "| req/s vs plain |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = plain[("in-process", r["clients"])] if ("in-process", r["clients"]) in plain else None
        same = plain.get((r["protocol"], r["clients"]))
        delta = f"{r['p50'] - base['p50']:+.2f}" if base and r["protocol"] != "in-process" else ""
        ratio = f"{r['rps'] / same['rps']:.2f}x" if same and r["setting"] != "plain" else ""
        print(
            f"| {r['setting']} | {r['protocol']} | {r['clients']} | {r['requests']} | {r['p50']:.2f} | "
            f"{r['p99']:.2f} | {r['rps']:.0f} | {delta} | {ratio} |"
        )
    for protocol in ("REST", "gRPC"):
        logged = next(r for r in rows if r["setting"] == "request log 1.0" and r["protocol"] == protocol)
        base = plain[(protocol, 1)]
        print(
            f"request log at rate 1.0, {protocol}, 1 client: p50 {logged['p50'] / base['p50'] - 1:+.1%} against no log"
        )
    return rows


def first_request_after_new_version(version_dir: Path, model: str, example: bytes, rounds: int = 4) -> list[dict]:
    """Per round and mode (the version's warmup file kept, or removed): while the server serves a version over
    one open connection, a new version appears (one synchronous scan, which loads it and replays any
    warmup); then the latency of the first batch-1 request to it and the p50 of the next 200.

    Round 0 is not reported: it pays the process's one-time start-up, which neither mode should be charged for.
    """
    import shutil
    import tempfile

    import numpy as np

    from components.warmup import WARMUP_PATH
    from serving.server import ModelServer

    body = json.dumps({"instances": [{"b64": base64.b64encode(example).decode("ascii")}]}).encode("utf-8")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "serving_model"
        shutil.copytree(version_dir, root / model / "1")
        with ModelServer(root, "127.0.0.1", 0, poll_seconds=3600) as server:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            for _ in range(50):
                _http_call(connection, f"/v1/models/{model}/versions/1:predict", body)()
            version = 1
            for round_ in range(rounds + 1):
                for warmup in (True, False) if round_ % 2 else (False, True):
                    version += 1
                    shutil.copytree(version_dir, root / model / str(version))
                    if not warmup:
                        (root / model / str(version) / WARMUP_PATH).unlink()
                    started = time.perf_counter()
                    server.repository.refresh()
                    load = time.perf_counter() - started
                    call = _http_call(connection, f"/v1/models/{model}/versions/{version}:predict", body)
                    started = time.perf_counter()
                    call()
                    first = time.perf_counter() - started
                    steady = []
                    for _ in range(200):
                        started = time.perf_counter()
                        call()
                        steady.append(time.perf_counter() - started)
                    if round_:
                        p50 = float(np.percentile(steady, 50))
                        rows.append({"round": round_, "warmup": warmup, "load": load, "first": first, "p50": p50})
            connection.close()
    print()
    print("First request after a new version appears (batch 1, b64 tf.Example, one open connection):")
    print()
    print("| round | warmup file | load + warmup s | first request ms | steady p50 ms | first / p50 |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['round']} | {'replayed' if r['warmup'] else 'removed'} | {r['load']:.2f} | "
            f"{r['first'] * 1000:.2f} | {r['p50'] * 1000:.2f} | {r['first'] / r['p50']:.1f}x |"
        )
    for warmup in (True, False):
        ratios = [r["first"] / r["p50"] for r in rows if r["warmup"] is warmup]
        print(f"median first / p50, warmup file {'replayed' if warmup else 'removed'}: {np.median(ratios):.1f}x")
    return rows


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
    concurrent_load(serving_root, args.model, version, serialized[0], signature, args.seconds)
    if (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file():
        first_request_after_new_version(version_dir, args.model, serialized[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
