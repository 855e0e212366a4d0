"""Latency and throughput of `conveyor serve` against calling the pushed SavedModel in process.

Usage: python benchmarks/serving.py [--output-dir output] [--seconds 10] [--max-requests 2000] [--rounds 3]

Over the newest pushed model (<output-dir>/serving_model/<model>/<highest version>/), at batch 1 and 64,
sequential requests: (a) in process, `serving_default` called on serialized tf.Examples; (b) through
`conveyor serve` started in this process on a free localhost port, over one keep-alive HTTP connection,
with b64 tf.Examples in the row form; (c) the same with plain JSON feature values, which the server turns
into tf.Examples. Each row runs after a warm-up until --seconds pass or --max-requests are made. Request
bodies are encoded once beforehand; response JSON is decoded in every request.

Then, at batch 1, concurrent clients (1, 8, 32; threads spread over up to 4 client processes, so that one
process's interpreter lock does not cap the load; each client has its own keep-alive connection or gRPC
channel): p50, p99 and throughput for REST and gRPC against the same number of threads calling
`serving_default` in process; server-side batching on against off at 32 clients (with how full the batches
were); and the request log at rate 1.0 against no log, on and off alternating. Each is measured --rounds
times, interleaved, and given as the median and range of the rounds.

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
PARTS = ("sequential", "concurrent", "batching", "log", "warmup")
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
# Load generators: up to this many client processes share the clients, so that one Python process's
# interpreter lock does not cap the load the server sees.
CLIENT_PROCESSES = 4


def _summary(latencies: list[float], elapsed: float) -> dict:
    import numpy as np

    flat = np.array(latencies)
    return {
        "requests": len(flat),
        "p50": float(np.percentile(flat, 50)) * 1000,
        "p99": float(np.percentile(flat, 99)) * 1000,
        "rps": len(flat) / elapsed,
    }


def _load(make_call: Callable[[int], Callable[[], None]], clients: int, seconds: float, start_at: float = 0.0):
    """`clients` threads each calling their own `make_call(i)()` back to back for `seconds` after a warm-up,
    from wall-clock time `start_at` (or at once): every latency in seconds, and the seconds the run took."""
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
    time.sleep(max(0.0, start_at - time.time()))
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    return [x for row in latencies for x in row], time.perf_counter() - began


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
    """A load generator, in a process of its own as real clients are. Takes (protocol, address, path,
    payload, clients, seconds, start_at); answers (latencies, elapsed)."""
    while (job := connection.recv()) is not None:
        protocol, address, path, payload, clients, seconds, start_at = job
        if protocol == "REST":
            make = _rest_client(int(address.rsplit(":", 1)[1]), path, payload)
        else:
            make = _grpc_client(address, payload)
        connection.send(_load(make, clients, seconds, start_at))


class _Clients:
    """CLIENT_PROCESSES client processes; a run spreads its clients over them and merges what they measured."""

    def __init__(self):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes = [], []
        for _ in range(CLIENT_PROCESSES):
            ours, theirs = context.Pipe()
            process = context.Process(target=_client_process, args=(theirs,), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    def run(self, protocol: str, target: tuple, clients: int, seconds: float) -> dict:
        used = self.pipes[: min(clients, len(self.pipes))]
        shares = [clients // len(used) + (i < clients % len(used)) for i in range(len(used))]
        start_at = time.time() + 2.0  # every process has made its connections and warmed up by then
        for pipe, share in zip(used, shares, strict=True):
            pipe.send((protocol, *target, share, seconds, start_at))
        answers = [pipe.recv() for pipe in used]
        return _summary([x for latencies, _ in answers for x in latencies], max(e for _, e in answers))

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for process in self.processes:
            process.join(30)


def _spread(rows: list[dict], key: str) -> str:
    """The median of the rounds, and their range."""
    import numpy as np

    values = [r[key] for r in rows]
    fmt = "{:.2f}" if key != "rps" else "{:,.0f}"
    return f"{fmt.format(float(np.median(values)))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _median(rows: list[dict], key: str) -> float:
    import numpy as np

    return float(np.median([r[key] for r in rows]))


def concurrent_load(
    serving_root: Path,
    model: str,
    version: int,
    example: bytes,
    signature,
    seconds: float,
    rounds: int,
    parts: set[str] = frozenset(PARTS),
) -> list:
    """Batch-1 latency and throughput at 1, 8 and 32 clients: in process, REST and gRPC; then batching and the
    request log, each against the same server without them. Every measurement is repeated `rounds` times,
    the settings compared interleaved round by round, so that a slow spell of the shared machine hits both."""
    import numpy as np
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
    clients_processes = _Clients()

    def measure(setting: str, protocol: str, clients: int, target, round_: int) -> None:
        if protocol == "in-process":
            result = _summary(*_load(target, clients, seconds))
        else:
            result = clients_processes.run(protocol, target, clients, seconds)
        rows.append({"setting": setting, "protocol": protocol, "clients": clients, "round": round_, **result})
        done = f"  {setting}, {protocol}, {clients} clients, round {round_}: {result['requests']} requests"
        print(done, file=sys.stderr, flush=True)

    def rest(server) -> tuple:
        return (f"127.0.0.1:{server.port}", path, body)

    def grpc(server) -> tuple:
        return (server.grpc_address, "", request.SerializeToString())

    batching = BatchingParameters(**BATCHING)
    with (
        tempfile.TemporaryDirectory() as logs,
        ModelServer(serving_root, "127.0.0.1", 0, poll_seconds=60, grpc_port=0) as plain,
        ModelServer(serving_root, "127.0.0.1", 0, poll_seconds=60, grpc_port=0, batching=batching) as batched,
        ModelServer(
            serving_root, "127.0.0.1", 0, poll_seconds=60, grpc_port=0, request_log=RequestLog(logs, 1.0)
        ) as logged,
    ):
        for round_ in range(rounds):
            for clients in CLIENTS if "concurrent" in parts else (32,) if "batching" in parts else ():
                measure("plain", "in-process", clients, in_process, round_)
                measure("plain", "REST", clients, rest(plain), round_)
                measure("plain", "gRPC", clients, grpc(plain), round_)
            for protocol, target in (("REST", rest), ("gRPC", grpc)) if "batching" in parts else ():
                measure("batching", protocol, 32, target(batched), round_)
            # The log's cost is a few percent at most: on and off alternate, A B B A, so that a drift of the
            # machine's load over a round hits both alike; the ratio is taken pair by pair.
            for order in ((False, True), (True, False)) if "log" in parts else ():
                for protocol, target in (("REST", rest), ("gRPC", grpc)):
                    for on in order:
                        setting, server = ("request log 1.0", logged) if on else ("no log", plain)
                        measure(setting, protocol, 1, target(server), round_)
        batchers = [batcher for _, batcher in batched.inference._batchers.values()]
        fill = sum(b.batched_requests for b in batchers) / max(1, sum(b.batches for b in batchers))
        written = logged.inference.request_log.written
    clients_processes.close()

    def group(setting: str, protocol: str, clients: int) -> list[dict]:
        return [r for r in rows if (r["setting"], r["protocol"], r["clients"]) == (setting, protocol, clients)]

    print()
    print(
        f"Concurrent clients, batch 1 (b64 tf.Example over REST, a PredictRequest over gRPC); {rounds} rounds of "
        f"{seconds:g} s each, median (range); clients spread over {CLIENT_PROCESSES} client processes:"
    )
    print()
    print("| setting | protocol | clients | requests | p50 ms | p99 ms | requests/s | p50 - in-process ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for setting, protocol, clients in dict.fromkeys((r["setting"], r["protocol"], r["clients"]) for r in rows):
        these = group(setting, protocol, clients)
        base = group("plain", "in-process", clients)
        delta = ""
        if base and protocol != "in-process":  # each round against the in-process run of the same round
            deltas = [r["p50"] - next(b["p50"] for b in base if b["round"] == r["round"]) for r in these]
            delta = _spread([{"d": d} for d in deltas], "d")
        print(
            f"| {setting} | {protocol} | {clients} | {sum(r['requests'] for r in these)} | {_spread(these, 'p50')} | "
            f"{_spread(these, 'p99')} | {_spread(these, 'rps')} | {delta} |"
        )
    print()
    for protocol in ("REST", "gRPC") if "batching" in parts else ():
        pairs = zip(group("batching", protocol, 32), group("plain", protocol, 32), strict=True)
        ratios = [b["rps"] / p["rps"] for b, p in pairs]
        print(f"batching at 32 clients, {protocol}: {_spread([{'x': x} for x in ratios], 'x')}x the unbatched req/s")
    if "batching" in parts:
        print(f"batching: {fill:.1f} requests per batch on average (max_batch_size {BATCHING['max_batch_size']})")
    for protocol in ("REST", "gRPC"):
        on, off = group("request log 1.0", protocol, 1), group("no log", protocol, 1)
        if not on:
            continue
        # Per round, A B B A: the mean of its two on-runs over the mean of its two off-runs.
        ratios = []
        for round_ in sorted({r["round"] for r in on}):
            mean_on = float(np.mean([r["p50"] for r in on if r["round"] == round_]))
            mean_off = float(np.mean([r["p50"] for r in off if r["round"] == round_]))
            ratios.append(mean_on / mean_off - 1)
        print(
            f"request log at rate 1.0, {protocol}, 1 client: p50 {_median(on, 'p50'):.3f} ms against "
            f"{_median(off, 'p50'):.3f} without; per-round ratio median {np.median(ratios):+.1%} (range "
            f"{min(ratios):+.1%} to {max(ratios):+.1%}, quartiles {np.percentile(ratios, 25):+.1%} to "
            f"{np.percentile(ratios, 75):+.1%}, {len(ratios)} rounds of A B B A)"
        )
    print(f"request log: {written} records written")
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
    parser.add_argument("--rounds", type=int, default=3, help="repeats of each concurrent measurement (default: 3)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"which measurements, comma-separated, of {', '.join(PARTS)} (default: all)",
    )
    parser.add_argument("--warmup-rounds", type=int, default=8, help="rounds of the first-request measurement")
    args = parser.parse_args(argv)

    from components.pusher.publish import SCHEMA_FILE, list_versions

    serving_root = Path(args.output_dir) / "serving_model"
    versions = list_versions(serving_root / args.model)
    if not versions:
        print(f"no pushed {args.model} model under {serving_root}: run `make run` first", file=sys.stderr)
        return 2
    version = versions[-1]
    version_dir = serving_root / args.model / str(version)

    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    from components.examples import to_example

    schema = tfdv.load_schema_text(str(version_dir / "assets.extra" / SCHEMA_FILE))
    raw, excluded = _rows(schema, max(BATCHES))
    if len(raw) < max(BATCHES):
        print(f"the bundled data has {len(raw)} rows, fewer than the largest batch {max(BATCHES)}", file=sys.stderr)
        return 2
    serialized = [to_example(row, schema, skip=excluded).SerializeToString() for row in raw]
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        print(f"unknown --parts {', '.join(sorted(parts - set(PARTS)))}; known: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if "sequential" in parts:
        sequential(args, serving_root, version, version_dir, schema, raw, serialized, signature)
    if parts & {"concurrent", "batching", "log"}:
        concurrent_load(serving_root, args.model, version, serialized[0], signature, args.seconds, args.rounds, parts)
    if "warmup" in parts and (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file():
        first_request_after_new_version(version_dir, args.model, serialized[0], args.warmup_rounds)
    return 0


def sequential(args, serving_root, version, version_dir, schema, raw, serialized, signature) -> None:
    """Sequential requests at batch 1 and 64 over one connection, against the in-process call."""
    import numpy as np
    import tensorflow as tf

    from serving.server import ModelServer

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


if __name__ == "__main__":
    sys.exit(main())
