"""End to end against TFX's own Chicago taxi example, side by side on this machine.

Usage: python benchmarks/pipeline.py [--rounds 3] [--workdir /tmp/conveyor-bench]

Runs (a) tfx.examples.chicago_taxi_pipeline.taxi_pipeline_native_keras (its own module file, data
and default Beam arguments; 1000 training and 150 evaluation steps) and (b) `conveyor run` on the
same 15,002 trips (the big_tipper copy of that data) with the same step budgets, each in a fresh
process from an empty output directory, alternating, for --rounds rounds; then a fully cached
re-run of each. Prints wall times, peak memory (max RSS of the process and its children), our
per-component wall times from ML Metadata, and the ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this directory comes first on sys.path, and benchmarks/pipeline.py would shadow
# the `pipeline` package: put the project root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(PROJECT_ROOT))

# Runs one pipeline in this child process and reports its peak memory (KiB) on the last line.
_REFERENCE = """
import os, resource, sys
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
from tfx.examples.chicago_taxi_pipeline import taxi_pipeline_native_keras as t
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
root, here = sys.argv[1], os.path.dirname(t.__file__)
# The example's own data and module file, from the installed package (it expects them under ~/taxi).
LocalDagRunner().run(t._create_pipeline(
    pipeline_name="chicago_taxi_native_keras", pipeline_root=os.path.join(root, "pipeline_root"),
    data_root=os.path.join(here, "data", "simple"), module_file=os.path.join(here, "taxi_utils_native_keras.py"),
    serving_model_dir=os.path.join(root, "serving_model"),
    metadata_path=os.path.join(root, "metadata.db"), beam_pipeline_args=t._beam_pipeline_args))
usage = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
print("MAXRSS", max(usage))
"""
_OURS = """
import resource, sys
from cli.main import main
code = main(["run", "--data-root", sys.argv[2], "--output-dir", sys.argv[1]])
usage = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
print("MAXRSS", max(usage))
sys.exit(code)
"""


def _run(script: str, *args: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one pipeline run in a fresh Python process."""
    started = time.monotonic()
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    rss = next(int(line.split()[1]) for line in reversed(result.stdout.splitlines()) if line.startswith("MAXRSS"))
    return wall, rss / 1024


def _component_times(output: Path) -> dict[str, float]:
    from registry.lineage import open_store, pipeline_runs, run_executions

    store = open_store(str(output / "metadata.sqlite"))
    run = pipeline_runs(store, "taxi")[-1]
    return {
        node: (e.execution.last_update_time_since_epoch - e.execution.create_time_since_epoch) / 1000
        for node, e in run_executions(store, run, "taxi").items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/conveyor-bench")
    args = parser.parse_args(argv)

    from tfx.examples.chicago_taxi_pipeline import taxi_pipeline_native_keras as reference

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    data.mkdir(parents=True)
    source = Path(reference.__file__).parent / "data" / "big_tipper_label" / "data.csv"
    shutil.copy(source, data / "data.csv")

    ref_times, our_times, ref_rss, our_rss, components = [], [], [], [], []
    for i in range(args.rounds):
        wall, rss = _run(_REFERENCE, str(work / f"ref-{i}"))
        ref_times.append(wall)
        ref_rss.append(rss)
        print(f"round {i + 1}: reference {wall:.1f}s ({rss:.0f} MiB)", flush=True)
        wall, rss = _run(_OURS, str(work / f"ours-{i}"), str(data))
        our_times.append(wall)
        our_rss.append(rss)
        components.append(_component_times(work / f"ours-{i}"))
        print(f"round {i + 1}: conveyor  {wall:.1f}s ({rss:.0f} MiB)", flush=True)
    cached_ref, _ = _run(_REFERENCE, str(work / "ref-0"))
    cached_ours, _ = _run(_OURS, str(work / "ours-0"), str(data))

    ref, ours = statistics.median(ref_times), statistics.median(our_times)
    print()
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.platform()}")
    print(f"date: {dt.date.today()}; rounds: {args.rounds}; medians")
    print("| | TFX taxi example | conveyor | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| end to end, empty output (s) | {ref:.1f} | {ours:.1f} | {ours / ref:.2f}x |")
    print(f"| fully cached re-run (s) | {cached_ref:.1f} | {cached_ours:.1f} | {cached_ours / cached_ref:.2f}x |")
    print(f"| peak memory (MiB) | {max(ref_rss):.0f} | {max(our_rss):.0f} | {max(our_rss) / max(ref_rss):.2f}x |")
    print()
    print("conveyor per component (s, median over rounds):")
    for node in components[0]:
        print(f"  {node:<32} {statistics.median(c.get(node, 0.0) for c in components):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
