"""Warm start against cold start on the newest span: evaluation AUC per step budget, same seed.

Usage: python benchmarks/warm_start.py [--output-dir output/benchmarks/warm_start] [--budgets 25,50,100,200,400,800]

It runs the real pipeline on the second-newest span (the served model, the warm start's base) and
on the newest span (for its Transform output), then trains the configured model on the newest
span's transformed training split for each budget, cold and warm-started from the served model,
with the same seed, and evaluates AUC on the transformed evaluation split.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import sys
import time
from pathlib import Path

from pipeline.environment import prepare_environment  # light: sets TF_USE_LEGACY_KERAS before TF loads

prepare_environment()

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class _Accessor:
    """The one method of TFX's DataAccessor that input_fn uses, over tfx_bsl's TFExampleRecord."""

    def tf_dataset_factory(self, file_pattern, options, schema):
        from tfx_bsl.public import tfxio

        return tfxio.TFExampleRecord(file_pattern=file_pattern, schema=schema).TensorFlowDataset(options)


def _auc(net, dataset, steps: int) -> float:
    import tf_keras as keras

    metric = keras.metrics.AUC()
    for features, labels in dataset.take(steps):
        metric.update_state(labels, net(features, training=False))
    return float(metric.result().numpy())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(PROJECT_ROOT / "output" / "benchmarks" / "warm_start"))
    parser.add_argument("--budgets", default="25,50,100,200,400,800")
    parser.add_argument("--eval-batches", type=int, default=40)
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]

    import tensorflow as tf
    import tensorflow_transform as tft
    from tfx.utils import path_utils

    from components.model import _vocabularies, build_model, input_fn, warm_start
    from pipeline.config import list_spans, load_config
    from pipeline.runner import run_local
    from registry.lineage import open_store, pipeline_runs, run_executions

    config_path = PROJECT_ROOT / "configs" / "taxi.yaml"
    base_config = load_config(config_path, output_dir=args.output_dir)
    spans = list_spans(base_config.data_root)
    if len(spans) < 2:
        print(f"need at least two spans under {base_config.data_root}", file=sys.stderr)
        return 2
    previous, newest = spans[-2], spans[-1]
    for span in (previous, newest):
        started = time.monotonic()
        run_local(load_config(config_path, output_dir=args.output_dir, span=span), io.StringIO())
        print(f"pipeline on span {span}: {time.monotonic() - started:.0f}s", flush=True)

    store = open_store(base_config.output.metadata_path)
    runs = pipeline_runs(store, base_config.name)
    executions = {}
    for run in runs:
        executions.update(
            {k: v for k, v in run_executions(store, run, base_config.name).items() if v.state in ("complete", "cached")}
        )
    transform = executions["Transform"]
    graph_uri = transform.output("transform_graph").uri
    examples_uri = transform.output("transformed_examples").uri
    base_model = None
    for run in runs[:-1]:
        trainer = run_executions(store, run, base_config.name).get("Trainer")
        if trainer is not None and trainer.output("model") is not None:
            base_model = path_utils.serving_model_path(trainer.output("model").uri)

    tf_transform_output = tft.TFTransformOutput(graph_uri)
    features, model_config, label = base_config.features, base_config.model, base_config.label
    vocabularies = _vocabularies(tf_transform_output, features)

    def dataset(split: str):
        files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
        return input_fn(files, _Accessor(), tf_transform_output, label, model_config.batch_size, model_config.seed)

    results = []
    for budget in budgets:
        row = {"budget": budget}
        for mode in ("cold", "warm"):
            net = build_model(features, model_config)
            if mode == "warm":
                start = warm_start(net, base_model, features, vocabularies)
                row["layers"] = start.summary
            started = time.monotonic()
            net.fit(dataset("train"), steps_per_epoch=budget, epochs=1, verbose=0)
            row[f"{mode}_seconds"] = time.monotonic() - started
            row[mode] = _auc(net, dataset("eval"), args.eval_batches)
        results.append(row)
        print(f"budget {budget:>4}: cold AUC {row['cold']:.4f}  warm AUC {row['warm']:.4f}", flush=True)

    target = results[-1]["cold"]
    reached = next((r["budget"] for r in results if r["warm"] >= target), None)
    print()
    print(f"Warm start vs cold start on span {newest} (base: the model trained on span {previous}); same seed")
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.platform()}; {dt.date.today()}")
    print("| steps | cold AUC | warm AUC |")
    print("|---:|---:|---:|")
    for r in results:
        print(f"| {r['budget']} | {r['cold']:.4f} | {r['warm']:.4f} |")
    if reached is None:
        print(f"warm start did not reach the cold model's final AUC ({target:.4f}) within {budgets[-1]} steps")
    else:
        print(
            f"warm start reaches the cold model's final AUC ({target:.4f} at {budgets[-1]} steps) in {reached} steps: "
            f"{reached / budgets[-1]:.3f} of the steps"
        )
    print(f"warm start: {results[0].get('layers', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
