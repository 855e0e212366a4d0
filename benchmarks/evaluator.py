"""The Evaluator at scale: seconds and peak memory at 100,000 evaluation rows, with the same metrics.

Usage: python benchmarks/evaluator.py [--rows 300000] [--rounds 1] [--workdir /tmp/conveyor-evaluator]
                                      [--reuse] [--profile]

Writes `--rows` taxi-like trips (benchmarks/scale.py's generator; a third of them land in the evaluation
split), runs the whole taxi pipeline on them once (200 training steps: the model's quality is not what is
measured), then re-runs that run's Evaluator on the same inputs, each time in a fresh process through TFX's
`Executor.Do` with the exec properties ML Metadata recorded, under the Beam arguments the run used:

- `first run`: the candidate alone, as on a first run (no blessed model yet);
- `with a baseline`: the candidate against a baseline (the same model, as TFX resolves it for a re-run),
  what every later run of a continuous pipeline pays: TFMA evaluates both models and their differences.

each two ways, alternating: `stock`, TFX's Evaluator as it comes, under the run's Beam arguments; and
`conveyor`, with the Evaluator's own Beam arguments (`runner.evaluator_beam_args`: multi-processing above a
size) and TFMA's per-example fast path (`pipeline/speedups_tfma.py`).

Each re-run's metrics and slices are compared with the pipeline's own Evaluator output: they must be the
same, to 1e-6 relative (see same_metrics). `--profile` runs the first round under py-spy and
writes its raw samples next to the outputs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
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
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TRAIN_STEPS = 200

# Runs the whole pipeline once, as `conveyor run` would, with the Beam arguments it would pick.
_PIPELINE = """
import sys, time
from pipeline.environment import prepare_environment
prepare_environment()
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from pipeline import speedups
from pipeline.config import load_config
from pipeline.pipeline import create_pipeline
from pipeline.runner import local_beam_args
speedups.apply()
config = load_config(sys.argv[1], output_dir=sys.argv[2])
config = config.replace(beam_args=local_beam_args(config.beam_args, config.data_root))
t = time.monotonic()
LocalDagRunner().run(create_pipeline(config))
print("SECONDS", time.monotonic() - t)
print("BEAM", " ".join(config.beam_args))
"""

# One Evaluator execution from a JSON spec: input artifacts (ML Metadata protos), exec properties, Beam args.
_EVALUATOR = """
import json, sys, time
from pipeline.environment import prepare_environment
prepare_environment()
from google.protobuf import json_format
from ml_metadata.proto import metadata_store_pb2
from tfx.components.evaluator import executor
from tfx.dsl.components.base import base_beam_executor
from tfx.types import standard_artifacts
from pipeline import speedups
speedups.apply()
spec = json.load(open(sys.argv[1]))
if spec["fast"]:
    from pipeline import speedups_tfma  # noqa: F401 - installs TFMA's per-example fast path on import
types = {"Examples": standard_artifacts.Examples, "Model": standard_artifacts.Model,
         "Schema": standard_artifacts.Schema, "ModelEvaluation": standard_artifacts.ModelEvaluation,
         "ModelBlessing": standard_artifacts.ModelBlessing}
def artifact(type_name, proto=None, uri=None):
    a = types[type_name]()
    if proto is not None:
        a.set_mlmd_artifact(json_format.Parse(json.dumps(proto), metadata_store_pb2.Artifact()))
    if uri is not None:
        a.uri = uri
    return a
inputs = {k: [artifact(t, p) for t, p in v] for k, v in spec["inputs"].items()}
outputs = {"evaluation": [artifact("ModelEvaluation", uri=spec["out"] + "/evaluation")],
           "blessing": [artifact("ModelBlessing", uri=spec["out"] + "/blessing")]}
context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=spec["beam"], tmp_dir=spec["out"] + "/tmp")
t = time.monotonic()
executor.Executor(context).Do(inputs, outputs, spec["exec_properties"])
print("SECONDS", time.monotonic() - t)
"""


def write_config(data: Path, work: Path) -> Path:
    """The taxi config on the generated data, with a short training budget."""
    import yaml

    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "taxi.yaml").read_text(encoding="utf-8"))
    raw["data"] = {"root": str(data)}
    raw["schema"] = str(PROJECT_ROOT / "schema" / "taxi" / "schema.pbtxt")
    raw["training"] = {"train_steps": TRAIN_STEPS, "eval_steps": 50}
    path = work / "taxi.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def run_pipeline(rows: int, work: Path) -> Path:
    from benchmarks.scale import _run, generate

    data = work / "data"
    started = time.monotonic()
    generate(rows, data / "data.csv")
    print(f"{rows:,} rows written in {time.monotonic() - started:.0f} s", flush=True)
    out = work / "out"
    out.mkdir(parents=True)
    result = _run(_PIPELINE, str(write_config(data, work)), str(out), workdir=work)
    print(f"pipeline: {float(result['SECONDS']):.0f} s (Beam args: {result['BEAM']})", flush=True)
    return out


def evaluator_spec(out: Path, with_baseline: bool, conveyor: bool) -> tuple[dict, str]:
    """(the spec _EVALUATOR runs, the pipeline's own evaluation uri) from the newest run's Evaluator."""
    from google.protobuf import json_format

    from registry.lineage import open_store, pipeline_runs, run_executions

    store = open_store(str(out / "metadata.sqlite"))
    run = pipeline_runs(store, "taxi")[-1]
    node = run_executions(store, run, "taxi")["Evaluator"]
    type_names = {t.id: t.name for t in store.get_artifact_types()}

    def encode(artifacts):
        return [[type_names[a.type_id], json_format.MessageToDict(a)] for a in artifacts]

    inputs = {k: encode(v) for k, v in node.inputs.items() if k != "baseline_model"}
    if with_baseline:
        inputs["baseline_model"] = encode(node.inputs["model"])
    props = {}
    for name, value in node.execution.custom_properties.items():
        if name.startswith("__") or name in ("module_file", "module_path"):
            continue
        which = value.WhichOneof("value")
        if which in ("string_value", "int_value"):
            props[name] = getattr(value, which)
    spec = {"inputs": inputs, "exec_properties": props, "beam": _beam_args(out, conveyor), "fast": conveyor}
    return spec, node.output("evaluation").uri


def _override(args: list[str], overrides: list[str]) -> list[str]:
    """Beam arguments with each flag of `overrides` replacing the same flag in `args`, and of a flag given
    twice only the last (as Beam reads them)."""
    kept: dict[str, str] = {}
    for a in [*args, *overrides]:
        kept.pop(a.split("=")[0], None)
        kept[a.split("=")[0]] = a
    return list(kept.values())


def _beam_args(out: Path, conveyor: bool) -> list[str]:
    """The run's Beam arguments; for Conveyor's Evaluator, followed by its own (runner.evaluator_beam_args)."""
    from pipeline.config import load_config
    from pipeline.runner import evaluator_beam_args, local_beam_args

    config = load_config(out.parent / "taxi.yaml", output_dir=str(out))
    args = list(local_beam_args(config.beam_args, config.data_root))
    if conveyor:
        args += evaluator_beam_args(config.beam_args, config.data_root)
    return _override(args, [])


def eval_rows(evaluation_uri: str) -> int:
    from registry.record import metrics_by_slice

    return int(metrics_by_slice(evaluation_uri)["Overall"]["example_count"]["candidate"])


def same_metrics(a_uri: str, b_uri: str) -> str:
    """'identical' (the candidate's every metric of every slice within 1e-6 relative; in `b`, the baseline's,
    where there is one, the same as the candidate's: it is the same model), or the first difference.

    Not bit for bit: TFMA sums floats in the order Beam's bundles arrive, which differs between runs of
    the same code (a calibration of 1.0134280071177526 in one run, 1.0134280071953978 in the next; 1e-9
    apart on one hour's slice of 20k rows).
    """
    from registry.record import metrics_by_slice

    a, b = metrics_by_slice(a_uri), metrics_by_slice(b_uri)
    if set(a) != set(b):
        return f"slices differ: {sorted(set(a) ^ set(b))[:5]}"

    def close(x, y):
        if x is None or y is None:
            return False
        return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)

    for where in sorted(a):
        for name in sorted(set(a[where]) | set(b[where])):
            x, y = a[where].get(name, {}), b[where].get(name, {})
            if not close(x.get("candidate"), y.get("candidate")):
                return f"{where} {name}: {x} != {y}"
            if "baseline" in y and not close(y["baseline"], y["candidate"]):
                return f"{where} {name}: baseline {y['baseline']} != candidate {y['candidate']}"
    return "identical"


def measure(out: Path, rounds: int, profile: bool, work: Path, cases: list[str], overrides: list[str]) -> None:
    from benchmarks.scale import _WRAP

    script = work / "evaluator.py"
    script.write_text(_EVALUATOR)
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    args: dict[str, list[str]] = {}
    own_uri = ""
    for round_ in range(rounds):
        for case in cases:
            order = ("stock", "conveyor") if round_ % 2 == 0 else ("conveyor", "stock")
            for variant in order:
                spec, own_uri = evaluator_spec(out, case == "with a baseline", variant == "conveyor")
                spec["beam"] = args[variant] = _override(spec["beam"], overrides if variant == "conveyor" else [])
                name = f"{case.replace(' ', '-')}-{variant}-{round_}"
                target = work / "runs" / name
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True)
                spec["out"] = str(target)
                spec_path = target / "spec.json"
                spec_path.write_text(json.dumps(spec))
                command = [sys.executable, "-c", _WRAP, str(script), str(spec_path)]
                if profile and round_ == 0:
                    command = ["py-spy", "record", "--subprocesses", "-f", "raw", "-o", str(work / f"{name}.txt"), "--"]
                    command += [sys.executable, "-c", _WRAP, str(script), str(spec_path)]
                env = {**os.environ, "PYTHONWARNINGS": "ignore"}
                result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT)
                if result.returncode != 0:
                    raise RuntimeError(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
                lines = dict(line.partition(" ")[::2] for line in result.stdout.splitlines() if " " in line)
                seconds, peak = float(lines["SECONDS"]), int(lines["MAXRSS"]) / 1024
                check = same_metrics(own_uri, str(target / "evaluation"))
                figures.setdefault((case, variant), []).append((seconds, peak))
                print(f"  round {round_}: {case}, {variant}: {seconds:.1f} s, peak {peak:,.0f} MiB, metrics {check}")
                if check != "identical":
                    raise SystemExit(f"{name}: the metrics changed: {check}")
    rows = eval_rows(own_uri)
    print()
    print(f"| Evaluator on {rows:,} evaluation rows | s (median of {rounds}) | rows/s | vs stock | peak MiB |")
    print("|---|---:|---:|---:|---:|")
    for case in cases:
        stock = statistics.median(s for s, _ in figures[(case, "stock")])
        for variant in ("stock", "conveyor"):
            values = figures[(case, variant)]
            seconds = statistics.median(s for s, _ in values)
            peak = max(p for _, p in values)
            print(
                f"| {case}, {variant} | {seconds:.1f} | {rows / seconds:,.0f} | {stock / seconds:.2f}x | {peak:,.0f} |"
            )
    print(f"\n{dt.date.today()}, {platform.node()}, {os.cpu_count()} cores")
    for variant, beam in args.items():
        print(f"{variant}: Beam args {' '.join(beam)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/conveyor-evaluator")
    parser.add_argument("--reuse", action="store_true", help="re-run the Evaluator of an earlier call's pipeline")
    parser.add_argument("--profile", action="store_true", help="py-spy flame graphs of the first round")
    parser.add_argument("--cases", default="first run,with a baseline", help="comma-separated")
    parser.add_argument("--beam-arg", action="append", default=[], help="replaces the run's flag of that name")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    out = work / "out"
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        run_pipeline(args.rows, work)
    measure(out, args.rounds, args.profile, work, args.cases.split(","), args.beam_arg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
