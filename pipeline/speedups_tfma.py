"""TFMA 0.47's per-example cost in the Evaluator, cut without changing a metric.

Profiled on 100,000 evaluation rows (benchmarks/evaluator.py, README Performance), TFMA spent most of
its time in one function, `metric_util.to_label_prediction_example_weight`: every metric's combiner
calls it for every example in every slice, and each call walks the eval config's model specs, builds
a throw-away class to look keys up, and passes the label, prediction and weight through general
code for dict outputs, sparse labels, vocabularies, top-k and class weights.

`fast_label_prediction_example_weight` answers the common call (one model output, or the configured
key of a dict of outputs; a numeric label and prediction of one value each; no sub key, no class
weights, no example weights) with what the
general code yields for it: the same arrays, the same dtypes, the same split into two weighted
halves for fractional labels (TFMA's own `_yield_fractional_labels`). Every other call goes to
TFMA's function unchanged, and so does any call that raises, so errors read as TFMA's.

`apply()` installs it in this process, and importing the module applies it: `runner.evaluator_beam_args`
names the module as a Beam plugin (`speedups.TFMA_PLUGIN_ARG`), so the DirectRunner's worker processes
import it before they run the Evaluator's work.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_NUMERIC = frozenset("biuf")
_SCALAR_SHAPES = ((), (1,))


def _keys(eval_config, model_name: str, cache: dict = {}) -> tuple[str, str]:  # noqa: B006 (a cache)
    """(prediction_key, label_key) of `model_name` in `eval_config`, as TFMA's loop finds them."""
    key = (id(eval_config), model_name)
    hit = cache.get(key)
    if hit is not None and hit[0] is eval_config:
        return hit[1]
    prediction_key = label_key = ""
    if eval_config and eval_config.model_specs:
        for spec in eval_config.model_specs:
            spec_name = spec.name if len(eval_config.model_specs) > 1 else ""
            if spec_name == model_name:
                prediction_key, label_key = spec.prediction_key, spec.label_key
                break
    if len(cache) > 1024:
        cache.clear()
    cache[key] = (eval_config, (prediction_key, label_key))
    return prediction_key, label_key


def _by_model(value, model_name: str):
    """`value` keyed by model name, as TFMA's optional lookup does it; None where that needs TFMA's own
    (prefixed keys, nested dicts)."""
    if not isinstance(value, Mapping):
        return value
    if model_name in value:
        found = value[model_name]
        return None if isinstance(found, Mapping) else found
    return None


def _fast(original, yield_fractional):
    def fast_label_prediction_example_weight(
        inputs,
        eval_config=None,
        model_name="",
        output_name="",
        sub_key=None,
        aggregation_type=None,
        class_weights=None,
        example_weighted=False,
        fractional_labels=False,
        flatten=True,
        squeeze=True,
        allow_none=False,
        require_single_example_weight=False,
    ):
        args = (eval_config, model_name, output_name, sub_key, aggregation_type, class_weights, example_weighted)
        args += (fractional_labels, flatten, squeeze, allow_none, require_single_example_weight)
        if sub_key is not None or class_weights or output_name:
            return original(inputs, *args)
        label, prediction = inputs.label, inputs.prediction
        _, label_key = _keys(eval_config, model_name)
        if (
            isinstance(label, Mapping)
            and label_key
            and any(k == label_key or k.startswith(label_key + "/") for k in label)
        ):
            return original(inputs, *args)
        if model_name:
            if not isinstance(prediction, Mapping) or model_name not in prediction:
                return original(inputs, *args)
            prediction = prediction[model_name]
            label = _by_model(label, model_name)
        if isinstance(prediction, Mapping):
            # prepare_labels_and_predictions: the configured key of a dict of outputs. (It also reads a
            # label vocabulary from the dict, which only string labels use; those go to TFMA's own.)
            prediction_key, _ = _keys(eval_config, model_name)
            if not prediction_key or prediction_key not in prediction:
                return original(inputs, *args)
            prediction = prediction[prediction_key]
        weight = inputs.example_weight
        if example_weighted and weight is not None:
            return original(inputs, *args)
        if not (
            type(label) is np.ndarray
            and type(prediction) is np.ndarray
            and label.shape in _SCALAR_SHAPES
            and prediction.shape in _SCALAR_SHAPES
            and label.dtype.kind in _NUMERIC
            and prediction.dtype.kind in _NUMERIC
        ):
            return original(inputs, *args)
        if not label.shape:
            label = label.reshape((1,))
        if not prediction.shape:
            prediction = prediction.reshape((1,))
        weight = np.array([1.0]) if flatten else np.array([1.0], dtype=np.float32)
        if fractional_labels:
            if not 0.0 <= float(label[0]) <= 1.0:
                return original(inputs, *args)  # TFMA raises, with its message
            return yield_fractional(label, prediction, weight)
        return iter(((label, prediction, weight),))

    fast_label_prediction_example_weight.conveyor_original = original
    return fast_label_prediction_example_weight


def apply() -> None:
    """Installs the fast path wherever TFMA 0.47 holds the function (idempotent)."""
    from tensorflow_model_analysis.metrics import metric_util

    current = metric_util.to_label_prediction_example_weight
    if getattr(current, "conveyor_original", None) is None:
        install(_fast(current, metric_util._yield_fractional_labels))


def install(fn) -> None:
    """Makes `fn` TFMA's to_label_prediction_example_weight: in metric_util, through which calibration,
    calibration_histogram and example_count call it, and in the defaults binary_confusion_matrices took
    when it was defined."""
    from tensorflow_model_analysis.metrics import binary_confusion_matrices, metric_util

    current = metric_util.to_label_prediction_example_weight
    metric_util.to_label_prediction_example_weight = fn
    for member in vars(binary_confusion_matrices).values():
        defaults = getattr(member, "__defaults__", None)
        if defaults and any(d is current for d in defaults):
            member.__defaults__ = tuple(fn if d is current else d for d in defaults)


if __name__ != "__main__":
    # Imported as a Beam plugin by a DirectRunner worker process (speedups.TFMA_PLUGIN_ARG), or by the
    # launcher: either way the process is about to run TFMA.
    apply()
