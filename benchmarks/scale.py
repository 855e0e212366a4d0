"""The data stages at 100k and 1M rows: rows per second per component and peak memory.

Usage: python benchmarks/scale.py [--sizes 100000,1000000] [--modes in_memory,multi_processing]
                                  [--workdir /tmp/conveyor-scale] [--stage all|example_gen]

For each size it writes taxi-like data deterministically (the bundled trips resampled with noise
on the numeric columns), then measures, each in a fresh process:

- pyarrow alone reading the CSV and computing each numeric column's mean, standard deviation and
  quantiles: the physical floor for one pass over the file;
- stock TFDV `generate_statistics_from_csv` on the same file, in-memory DirectRunner;
- Conveyor's data stages (CsvExampleGen, StatisticsGen, SchemaGen, ExampleValidator, the data
  gate, Transform) from `create_pipeline`, under each Beam running mode, with per-component wall
  times from ML Metadata and rows per second (the running mode `conveyor run` would pick is
  reported with them).

With `--stage example_gen`, only CsvExampleGen: pyarrow's bare read of the CSV, then stock TFX's
CsvExampleGen executor and Conveyor's (`components/example_gen.py`) on the same file, each run
through its `Executor.Do` in a fresh process under each Beam running mode, with the rows written.

Peak memory is the larger of the process's and its largest child's max RSS (Beam's worker
processes are children in multi-processing mode; their sum is not measured).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this directory comes first on sys.path, and benchmarks/pipeline.py would shadow
# the `pipeline` package: put the project root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(PROJECT_ROOT))
NUMERIC_NOISE = {"fare": 0.05, "trip_miles": 0.05, "trip_seconds": 0.05, "tips": 0.05}
INTEGER_COLUMNS = {"trip_seconds"}
COORDINATES = ("pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude")


def generate(rows: int, path: Path, seed: int = 7) -> None:
    """`rows` taxi-like trips: bundled trips drawn with replacement, numeric columns jittered."""
    trips, header = [], None
    for source in sorted((PROJECT_ROOT / "data" / "taxi").glob("span-*/data.csv")):
        with open(source, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            trips.extend(reader)
    rng = random.Random(seed)
    index = {name: i for i, name in enumerate(header)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for _ in range(rows):
            row = list(rng.choice(trips))
            for name, scale in NUMERIC_NOISE.items():
                value = row[index[name]]
                if value:
                    noisy = max(float(value) * (1 + rng.gauss(0, scale)), 0)
                    row[index[name]] = str(round(noisy)) if name in INTEGER_COLUMNS else f"{noisy:.2f}"
            for name in COORDINATES:
                value = row[index[name]]
                if value:
                    row[index[name]] = f"{float(value) + rng.gauss(0, 0.002):.6f}"
            writer.writerow(row)


_PYARROW = """
import sys, time, resource
import pyarrow.csv as pv, pyarrow.compute as pc, pyarrow as pa
t = time.monotonic()
table = pv.read_csv(sys.argv[1])
for column in table.columns:
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        pc.mean(column); pc.stddev(column); pc.quantile(column, q=[0.1 * i for i in range(11)])
print("SECONDS", time.monotonic() - t)
"""

_TFDV = """
import sys, time, json
import tensorflow_data_validation as tfdv
from apache_beam.options.pipeline_options import PipelineOptions
options = tfdv.StatsOptions(**json.loads(sys.argv[2]))
t = time.monotonic()
tfdv.generate_statistics_from_csv(sys.argv[1], stats_options=options, output_path=sys.argv[3],
    pipeline_options=PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"]))
print("SECONDS", time.monotonic() - t)
"""

_STAGES = """
import sys, time, io
from pipeline.environment import prepare_environment
prepare_environment()
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from pipeline import speedups
from pipeline.config import load_config
from pipeline.pipeline import create_pipeline
from pipeline.runner import local_beam_args
speedups.apply()
config = load_config(sys.argv[1], output_dir=sys.argv[2], data_root=sys.argv[3])
config = config.replace(beam_args=local_beam_args(tuple(sys.argv[4:]), config.data_root))
pipeline = create_pipeline(config, data_stages_only=True)
t = time.monotonic()
LocalDagRunner().run(pipeline)
print("SECONDS", time.monotonic() - t)
print("BEAM", " ".join(config.beam_args))
"""

_PYARROW_READ = """
import sys, time
import pyarrow.csv as pv
t = time.monotonic()
table = pv.read_csv(sys.argv[1])
print("SECONDS", time.monotonic() - t)
print("ROWS", table.num_rows)
"""

_EXAMPLE_GEN = """
import sys, time, glob, os
from pipeline.environment import prepare_environment
prepare_environment()
from pipeline import speedups
from pipeline.runner import local_beam_args
from tfx.components.example_gen import utils
from tfx.components.example_gen.csv_example_gen import executor as stock
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts, standard_component_specs as keys
from tfx.utils import proto_utils
from components import example_gen
speedups.apply()
executor_class = {"stock": stock.Executor, "conveyor": example_gen.Executor}[sys.argv[1]]
input_config = utils.make_default_input_config()
examples = standard_artifacts.Examples()
examples.uri = sys.argv[3]
properties = {
    keys.INPUT_BASE_KEY: sys.argv[2],
    keys.INPUT_CONFIG_KEY: proto_utils.proto_to_json(input_config),
    keys.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(utils.make_default_output_config(input_config)),
    keys.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.FORMAT_TF_EXAMPLE,
}
args = list(local_beam_args(tuple(sys.argv[4:])))
context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=args, tmp_dir=sys.argv[3] + "-tmp")
t = time.monotonic()
executor_class(context).Do({}, {keys.EXAMPLES_KEY: [examples]}, properties)
print("SECONDS", time.monotonic() - t)
print("BEAM", " ".join(args))
"""

_WRAP = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    exec(compile(open(sys.argv[0]).read(), "bench", "exec"))
finally:
    usage = [resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print("MAXRSS", max(usage))
"""


def _run(script: str, *args: str, workdir: Path) -> dict:
    """Runs a script in a fresh process; returns its SECONDS, BEAM and MAXRSS (MiB) lines."""
    path = workdir / f"script-{abs(hash(script))}.py"
    path.write_text(script)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", _WRAP, str(path), *args], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT
    )
    if result.returncode != 0:
        raise RuntimeError(f"failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    out = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("SECONDS", "MAXRSS", "BEAM", "ROWS"):
            out[key] = value
    out["MAXRSS"] = int(out["MAXRSS"]) / 1024
    return out


def _component_seconds(output: Path) -> dict[str, float]:
    from registry.lineage import open_store, pipeline_runs, run_executions

    store = open_store(str(output / "metadata.sqlite"))
    run = pipeline_runs(store, "taxi")[-1]
    return {
        node: (e.execution.last_update_time_since_epoch - e.execution.create_time_since_epoch) / 1000
        for node, e in run_executions(store, run, "taxi").items()
        if not node.endswith("resolver") and node != "ImportSchemaGen"
    }


def _example_records(output: Path) -> dict[str, int]:
    """Records per split in an examples directory, counted through TensorFlow's own reader."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from components.examples import record_compression

    counts = {}
    for split in sorted(p for p in output.iterdir() if p.name.startswith("Split-")):
        files = sorted(str(f) for f in split.iterdir())
        dataset = tf.data.TFRecordDataset(files, compression_type=record_compression(files)).batch(65536)
        counts[split.name[len("Split-") :]] = sum(int(tf.size(b)) for b in dataset)
    return counts


def _example_gen_stage(size: int, data: Path, work: Path, modes: list[str]) -> None:
    """pyarrow's bare read, then stock and Conveyor's CsvExampleGen, side by side per mode."""
    csv_path = str(data / "data.csv")
    arrow = _run(_PYARROW_READ, csv_path, workdir=work)
    print("| CsvExampleGen | Beam mode | s | rows/s | vs stock | rows per split | peak MiB |")
    print("|---|---|---:|---:|---:|---|---:|")
    seconds = float(arrow["SECONDS"])
    print(f"| pyarrow `read_csv` alone | | {seconds:.1f} | {size / seconds:,.0f} | | | {arrow['MAXRSS']:.0f} |")
    for mode in modes:
        beam = [f"--direct_running_mode={mode}"]
        beam.append(f"--direct_num_workers={os.cpu_count() if mode == 'multi_processing' else 1}")
        reference = None
        for name in ("stock", "conveyor"):
            out = work / f"examples-{size}-{mode}-{name}"
            result = _run(_EXAMPLE_GEN, name, str(data), str(out), *beam, workdir=work)
            seconds = float(result["SECONDS"])
            reference = reference or seconds
            counts = ", ".join(f"{k} {v:,}" for k, v in _example_records(out).items())
            print(
                f"| {name} | {mode} | {seconds:.1f} | {size / seconds:,.0f} | {reference / seconds:.2f}x "
                f"| {counts} | {result['MAXRSS']:.0f} |",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--modes", default="in_memory,multi_processing")
    parser.add_argument("--workdir", default="/tmp/conveyor-scale")
    parser.add_argument("--stage", choices=("all", "example_gen"), default="all")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = PROJECT_ROOT / "configs" / "taxi.yaml"
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}; {dt.date.today()}", flush=True)
    for size in [int(s) for s in args.sizes.split(",")]:
        data = work / f"rows-{size}"
        started = time.monotonic()
        generate(size, data / "data.csv")
        megabytes = (data / "data.csv").stat().st_size / 2**20
        print(
            f"\n## {size:,} rows ({megabytes:.0f} MiB CSV, written in {time.monotonic() - started:.0f} s)", flush=True
        )
        if args.stage == "example_gen":
            _example_gen_stage(size, data, work, args.modes.split(","))
            continue
        csv_path = str(data / "data.csv")
        arrow = _run(_PYARROW, csv_path, workdir=work)
        stock = _run(_TFDV, csv_path, "{}", str(work / "stock.stats"), workdir=work)
        reference = float(stock["SECONDS"])
        print("| statistics of the CSV | s | rows/s | vs stock TFDV | peak MiB |")
        print("|---|---:|---:|---:|---:|")
        for name, r in (
            ("pyarrow read + mean/std/quantiles", arrow),
            ("stock TFDV generate_statistics_from_csv, in-memory", stock),
        ):
            seconds = float(r["SECONDS"])
            print(
                f"| {name} | {seconds:.1f} | {size / seconds:,.0f} | {reference / seconds:.2f}x | {r['MAXRSS']:.0f} |"
            )
        for mode in args.modes.split(","):
            out = work / f"out-{size}-{mode}"
            out.mkdir(parents=True)  # ML Metadata's SQLite file is created there, not its directory
            beam = [f"--direct_running_mode={mode}"]
            if mode == "multi_processing":
                beam.append(f"--direct_num_workers={os.cpu_count()}")
            result = _run(_STAGES, str(config), str(out), str(data), *beam, workdir=work)
            seconds = _component_seconds(out)
            stats = seconds.get("StatisticsGen", float("nan"))
            print(
                f"\n{mode} (Beam args: {result['BEAM']}): data stages {float(result['SECONDS']):.1f} s, "
                f"peak {result['MAXRSS']:.0f} MiB; StatisticsGen {reference / stats:.2f}x stock TFDV's speed"
            )
            print("| component | s | rows/s |")
            print("|---|---:|---:|")
            for node, s in seconds.items():
                print(f"| {node} | {s:.1f} | {size / s:,.0f} |" if s >= 0.5 else f"| {node} | {s:.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
