"""TFMA's per-example fast path (pipeline/speedups_tfma.py): the same answers as TFMA's own function for
every input it takes, TFMA's own function for every other, and installed in Beam's worker processes."""

import itertools
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline import speedups
from pipeline.runner import EVALUATOR_MULTI_PROCESSING_BYTES, evaluator_beam_args


def _functions():
    # Imported here, not at the top: a Beam worker unpickling this module's functions must not install it.
    from tensorflow_model_analysis.metrics import metric_util

    from pipeline import speedups_tfma

    speedups_tfma.apply()
    fast = metric_util.to_label_prediction_example_weight
    return fast, fast.conveyor_original


def _inputs():
    """StandardMetricInputs as TFMA's evaluator hands them to metrics: one model or a candidate and a
    baseline, scalar and vector values, numeric, boolean and string labels, with and without weights."""
    from tensorflow_model_analysis.metrics import metric_types

    values = [
        np.array(1.0, dtype=np.float32),
        np.array([0.0], dtype=np.float32),
        np.array([1]),
        np.array([True]),
        np.array([[0.7]], dtype=np.float32),
        np.array([0.2, 0.8], dtype=np.float32),
        np.array([b"yes"]),
        np.array([1.5]),
    ]
    predictions = [values[0], values[1], values[4], values[5]]
    for label, prediction in itertools.product(values, predictions):
        for weight in (None, np.array([2.0])):
            yield metric_types.StandardMetricInputs(labels=label, predictions=prediction, example_weights=weight)
            yield metric_types.StandardMetricInputs(
                labels={"candidate": label, "baseline": label},
                predictions={"candidate": prediction, "baseline": prediction * 0.5},
                example_weights=weight,
            )
            yield metric_types.StandardMetricInputs(
                labels=label, predictions={"candidate": prediction}, example_weights=weight
            )
            # A dict of outputs, as a classification signature returns them, under a prediction key.
            outputs = {"p": prediction, "classes": np.array([b"0", b"1"]), "scores": prediction}
            yield metric_types.StandardMetricInputs(labels=label, predictions=outputs, example_weights=weight)
            yield metric_types.StandardMetricInputs(
                labels={"candidate": label}, predictions={"candidate": outputs}, example_weights=weight
            )


def _outcome(fn, inputs, **kwargs):
    try:
        return [tuple((v.dtype.str, v.shape, v.tolist()) for v in r) for r in fn(inputs, **kwargs)]
    except Exception as err:  # noqa: BLE001 - the test compares what each raises
        return type(err).__name__


def test_the_fast_path_answers_as_tfma_does_for_every_input_and_option():
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.metrics import metric_types

    fast, original = _functions()
    two_models = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(name="candidate", label_key="y"), tfma.ModelSpec(name="baseline", label_key="y")]
    )
    one_model = tfma.EvalConfig(model_specs=[tfma.ModelSpec(label_key="y", prediction_key="p")])
    one_model_no_key = tfma.EvalConfig(model_specs=[tfma.ModelSpec(label_key="y")])
    common = {
        "eval_config": (None, one_model, one_model_no_key, two_models),
        "model_name": ("", "candidate"),
        "fractional_labels": (False, True),
        "flatten": (True, False),
    }
    combinations = [dict(zip(common, c, strict=True)) for c in itertools.product(*common.values())]
    # Each rarer option on its own, over the configs and model names.
    rare = [{"example_weighted": True}, {"squeeze": False}, {"sub_key": metric_types.SubKey(class_id=1)}]
    rare += [{"class_weights": {0: 0.5}}, {"output_name": "out"}, {"allow_none": True}]
    rare += [{"require_single_example_weight": True}, {"example_weighted": True, "fractional_labels": True}]
    for config, model_name in itertools.product(common["eval_config"], common["model_name"]):
        combinations += [{"eval_config": config, "model_name": model_name, **extra} for extra in rare]
    compared = fast_taken = 0
    for inputs in _inputs():
        for kwargs in combinations:
            expected, got = _outcome(original, inputs, **kwargs), _outcome(fast, inputs, **kwargs)
            assert got == expected, (inputs, kwargs)
            compared += 1
    for inputs in _inputs():  # and the common calls do take the fast path
        got = fast(inputs, model_name="candidate" if isinstance(inputs.prediction, dict) else "")
        fast_taken += getattr(got, "__name__", "") != "to_label_prediction_example_weight"
    assert compared > 20_000 and fast_taken > 50, (compared, fast_taken)


def _plain(value):
    """An accumulator's output as comparable data (TFMA's objects have no __eq__)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__slots__"):
        return {k: _plain(getattr(value, k)) for k in value.__slots__}
    if hasattr(value, "__dict__"):
        return {k: _plain(v) for k, v in vars(value).items()}
    if hasattr(value, "_asdict"):
        return _plain(value._asdict())
    return value.tolist() if isinstance(value, np.ndarray) else value


def test_metrics_computed_through_the_fast_path_are_tfmas():
    """The taxi config's metrics (AUC, BinaryAccuracy, Calibration, ExampleCount) over the same examples,
    each combiner fed through TFMA's function and then through the fast path."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.metrics import metric_specs, metric_types

    from pipeline import speedups_tfma

    fast, original = _functions()
    rng = np.random.default_rng(0)
    examples = [
        metric_types.StandardMetricInputs(
            labels=np.array([float(rng.integers(0, 2))]), predictions=np.array([rng.random()], dtype=np.float32)
        )
        for _ in range(500)
    ]
    config = tfma.EvalConfig(model_specs=[tfma.ModelSpec(label_key="y")])
    specs = tfma.metrics.specs_from_metrics(
        [tfma.metrics.AUC(), tfma.metrics.BinaryAccuracy(), tfma.metrics.Calibration(), tfma.metrics.ExampleCount()]
    )

    def compute(fn):
        speedups_tfma.install(fn)
        computations = metric_specs.to_computations(specs, eval_config=config)  # fresh combiners
        out = {}
        for c in computations:
            if not hasattr(c, "combiner"):
                continue
            acc = c.combiner.create_accumulator()
            for e in examples:
                acc = c.combiner.add_input(acc, e)
            out.update({str(k): _plain(v) for k, v in c.combiner.extract_output(acc).items()})
        return out

    try:
        stock = compute(original)
        assert len(stock) >= 3, stock
        assert compute(fast) == stock
    finally:
        speedups_tfma.install(fast)


def test_the_evaluator_goes_multi_processing_above_its_size_and_always_names_the_plugin(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    (small / "data.csv").write_bytes(b"x" * 1000)
    with open(large / "data.csv", "wb") as f:
        f.truncate(EVALUATOR_MULTI_PROCESSING_BYTES + 1)
    plugin = speedups.TFMA_PLUGIN_ARG
    assert evaluator_beam_args((), str(small)) == (plugin,)
    workers = f"--direct_num_workers={os.cpu_count() or 1}"
    assert evaluator_beam_args((), str(large)) == ("--direct_running_mode=multi_processing", workers, plugin)
    assert evaluator_beam_args(("--direct_running_mode=in_memory",), str(large)) == (plugin,)
    assert evaluator_beam_args(("--runner=FlinkRunner",), str(large)) == ()


def test_the_pipeline_hands_the_evaluator_its_own_beam_arguments():
    from pipeline.config import load_config
    from pipeline.pipeline import create_pipeline
    from tests.conftest import TAXI_CONFIG

    extra = ("--direct_running_mode=multi_processing", speedups.TFMA_PLUGIN_ARG)
    config = load_config(TAXI_CONFIG).replace(beam_args=("--direct_running_mode=in_memory",), evaluator_beam_args=extra)
    nodes = {c.id: c for c in create_pipeline(config).components}
    evaluator, transform = (list(nodes[n].executor_spec.beam_pipeline_args) for n in ("Evaluator", "Transform"))
    assert evaluator[-len(extra) :] == list(extra), "after the pipeline's own, so they win"
    options = beam.options.pipeline_options.PipelineOptions(evaluator)
    assert options.view_as(beam.options.pipeline_options.DirectOptions).direct_running_mode == "multi_processing"
    assert options.view_as(beam.options.pipeline_options.SetupOptions).beam_plugins == ["pipeline.speedups_tfma"]
    assert not set(extra) & set(transform)


def _patched(_):
    from tensorflow_model_analysis.metrics import metric_util

    return getattr(metric_util.to_label_prediction_example_weight, "conveyor_original", None) is not None


@pytest.mark.e2e
@pytest.mark.parametrize("plugin", [True, False])
def test_beam_worker_processes_import_the_plugin_and_run_the_fast_path(plugin):
    """With the flag, each worker process has the fast path before it runs anything; without it, none
    has (the launcher's own patch does not reach them)."""
    args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    options = beam.options.pipeline_options.PipelineOptions(args + ([speedups.TFMA_PLUGIN_ARG] if plugin else []))
    with beam.Pipeline(options=options) as p:
        assert_that(p | beam.Create(range(4)) | beam.Reshuffle() | beam.Map(_patched), equal_to([plugin] * 4))
