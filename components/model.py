"""The Keras model, its training and its serving signature (run_fn runs inside Trainer)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx_bsl.public import tfxio

from components.features import missing_indicator_name, transformed_label
from components.pusher.publish import TRAINING_RECORD, training_fingerprint
from components.signatures import export_signatures, set_method_names
from pipeline.config import FeatureConfig, ModelConfig, features_from_component_config, task_from_component_config

LABEL_STATS_BATCHES = 200

log = logging.getLogger(__name__)


def build_model(
    features: tuple[FeatureConfig, ...],
    model: ModelConfig,
    task: str = "binary",
    num_classes: int = 2,
    label_stats: tuple[float, float] = (0.0, 1.0),
) -> keras.Model:
    """A feed-forward network over the transformed features: embeddings for categorical inputs,
    z-scores and missing flags for numeric ones, then dense layers to the task's head.

    Heads: binary, one sigmoid probability of the positive class; multiclass, a softmax over
    `num_classes`; regression, one linear unit rescaled by the label's (mean, std) so the network
    learns in z-units and predicts in the label's own.

    Layer names derive from feature names, so a warm start can match layers across versions.
    """
    keras.utils.set_random_seed(model.seed)
    inputs, parts = {}, []
    for f in features:
        if f.kind == "numeric":
            for name in (f.transformed_name, missing_indicator_name(f)):
                inputs[name] = keras.Input(shape=(1,), name=name, dtype=tf.float32)
                parts.append(inputs[name])
        else:
            inputs[f.transformed_name] = keras.Input(shape=(1,), name=f.transformed_name, dtype=tf.int64)
            emb = keras.layers.Embedding(f.cardinality, model.embedding_dim, name=f"embedding_{f.name}")
            parts.append(keras.layers.Flatten(name=f"flatten_{f.name}")(emb(inputs[f.transformed_name])))
    x = keras.layers.Concatenate(name="concat")(parts) if len(parts) > 1 else parts[0]
    for i, units in enumerate(model.hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
    if task == "multiclass":
        output = keras.layers.Dense(num_classes, activation="softmax", name="output")(x)
        loss = keras.losses.SparseCategoricalCrossentropy()
    elif task == "regression":
        mean, std = label_stats
        z = keras.layers.Dense(1, name="output")(x)
        output = keras.layers.Rescaling(scale=std, offset=mean, name="label_scale")(z)
        loss = keras.losses.Huber(delta=std)
    else:
        output = keras.layers.Dense(1, activation="sigmoid", name="output")(x)
        loss = keras.losses.BinaryCrossentropy()
    net = keras.Model(inputs=inputs, outputs=output)
    net.compile(optimizer=keras.optimizers.Adam(model.learning_rate), loss=loss)
    keep_autograph_out_of_keras()
    return net


def keep_autograph_out_of_keras() -> None:
    """Tells AutoGraph not to transpile tf_keras' own code, as TensorFlow already does for `keras`.

    TF 2.16's AutoGraph rules skip the `keras` package but predate Keras 2 moving to `tf_keras`, so
    every tf.function over the model (Keras' train/test/predict steps, and the traces
    `model.save` makes) transpiled Keras' internals first: measured on the taxi benchmark, 15 s of
    the first epoch and 5 of the Trainer's 11 s in saving. Keras' code runs unchanged either way; it
    is written for graph mode and never needed conversion. Idempotent.
    """
    from tensorflow.python.autograph.core import config as autograph_config

    rule = autograph_config.DoNotConvert("tf_keras")
    if not any(getattr(r, "_prefix", None) == "tf_keras" for r in autograph_config.CONVERSION_RULES):
        autograph_config.CONVERSION_RULES = (rule, *autograph_config.CONVERSION_RULES)


def input_fn(
    file_pattern: list[str],
    data_accessor: Any,
    tf_transform_output: tft.TFTransformOutput,
    label: str,
    batch_size: int,
    seed: int,
    repeat: bool = True,
) -> tf.data.Dataset:
    """Batches of (transformed features, label) from the transformed examples, repeated forever
    unless `repeat` is False (one pass)."""
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(
            batch_size=batch_size,
            label_key=transformed_label(label),
            shuffle_seed=seed,
            num_epochs=None if repeat else 1,
        ),
        tf_transform_output.transformed_metadata.schema,
    )


def label_stats(dataset: tf.data.Dataset, max_batches: int = LABEL_STATS_BATCHES) -> tuple[float, float]:
    """Mean and standard deviation of a regression label over (up to `max_batches` of) one pass."""
    total, total_sq, count = 0.0, 0.0, 0
    for _, y in dataset.take(max_batches):
        values = tf.reshape(tf.cast(y, tf.float64), [-1]).numpy()
        total, total_sq, count = total + values.sum(), total_sq + (values**2).sum(), count + values.size
    if count == 0:
        return 0.0, 1.0
    mean = total / count
    std = max((total_sq / count - mean**2), 0.0) ** 0.5
    return float(mean), float(std) if std > 1e-9 else 1.0


@dataclass(frozen=True)
class WarmStart:
    """What a warm start did: how many layers took the base model's weights, and why others did not."""

    base_model: Optional[str]
    loaded: tuple[str, ...] = ()
    fresh: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    @property
    def summary(self) -> str:
        if not self.loaded:
            return f"cold start: {self.reason}"
        total = len(self.loaded) + len(self.fresh)
        return f"warm-started from {self.base_model}: {len(self.loaded)} of {total} layers"

    def as_dict(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "loaded_layers": list(self.loaded),
            "fresh_layers": [{"layer": n, "reason": r} for n, r in self.fresh],
            "summary": self.summary,
        }


def _read_vocabulary(path: str) -> list[str]:
    with tf.io.gfile.GFile(path, "r") as f:
        return [line.rstrip("\n") for line in f]


def _base_vocabularies(base_model_dir: str) -> dict[str, list[str]]:
    record = os.path.join(base_model_dir, str(TRAINING_RECORD))
    if not tf.io.gfile.exists(record):
        return {}
    with tf.io.gfile.GFile(record) as f:
        return json.load(f).get("vocabularies", {})


def warm_start(
    net: keras.Model,
    base_model_dir: Optional[str],
    features: tuple[FeatureConfig, ...],
    vocabularies: Mapping[str, list[str]],
) -> WarmStart:
    """Copies weights from the base model layer by layer where they are compatible.

    Embedding rows are re-mapped token by token when the vocabulary changed between the base
    model's transform and this one, so no row silently means a different value. A layer whose
    shapes differ, or that the base model lacks, starts fresh and the reason is recorded.

    Args:
      net: the freshly built model.
      base_model_dir: the latest blessed model's serving directory, or None.
      features: the configured features.
      vocabularies: this transform's vocabulary per categorical feature.

    Returns:
      What was loaded and what started fresh.
    """
    if not base_model_dir:
        return WarmStart(None, reason="no blessed model yet")
    try:
        base = keras.models.load_model(base_model_dir, compile=False)
    except (OSError, ValueError, TypeError) as err:
        return WarmStart(base_model_dir, reason=f"base model at {base_model_dir} could not be loaded ({err})")
    base_layers = {layer.name: layer for layer in base.layers}
    base_vocabs = _base_vocabularies(base_model_dir)
    by_embedding = {f"embedding_{f.name}": f for f in features if f.kind != "numeric"}
    loaded, fresh = [], []
    for layer in net.layers:
        if not layer.weights:
            continue
        old = base_layers.get(layer.name)
        if old is None:
            fresh.append((layer.name, "not in the base model (new feature or layer)"))
            continue
        old_weights, new_weights = old.get_weights(), layer.get_weights()
        if [w.shape for w in old_weights] != [w.shape for w in new_weights]:
            shapes = f"{[w.shape for w in old_weights]} -> {[w.shape for w in new_weights]}"
            fresh.append((layer.name, f"shape changed {shapes}"))
            continue
        feature = by_embedding.get(layer.name)
        if feature is not None and feature.kind in ("categorical_string", "categorical_int"):
            old_vocab, new_vocab = base_vocabs.get(feature.name), vocabularies.get(feature.name)
            if old_vocab is None or new_vocab is None:
                fresh.append((layer.name, "base model has no record of its vocabulary"))
                continue
            if old_vocab != new_vocab:
                remapped = _remap_rows(old_weights[0], new_weights[0], old_vocab, new_vocab, feature.oov_buckets)
                layer.set_weights([remapped])
                loaded.append(layer.name)
                continue
        layer.set_weights(old_weights)
        loaded.append(layer.name)
    if not loaded:
        return WarmStart(base_model_dir, fresh=tuple(fresh), reason="no layer of the base model is compatible")
    return WarmStart(base_model_dir, tuple(loaded), tuple(fresh))


def _remap_rows(old: Any, new: Any, old_vocab: list[str], new_vocab: list[str], oov_buckets: int) -> Any:
    """Embedding rows for this vocabulary: a known token keeps its learned row, a new one starts
    fresh, and the out-of-vocabulary buckets (which follow the vocabulary) keep theirs."""
    out = new.copy()
    old_index = {token: i for i, token in enumerate(old_vocab)}
    for i, token in enumerate(new_vocab):
        j = old_index.get(token)
        if j is not None:
            out[i] = old[j]
    out[len(new_vocab) : len(new_vocab) + oov_buckets] = old[len(old_vocab) : len(old_vocab) + oov_buckets]
    return out


def _vocabularies(tf_transform_output: tft.TFTransformOutput, features: tuple[FeatureConfig, ...]) -> dict:
    return {
        f.name: _read_vocabulary(tf_transform_output.vocabulary_file_by_name(f.name))
        for f in features
        if f.kind in ("categorical_string", "categorical_int")
    }


def _fingerprint(fn_args: FnArgs) -> str:
    """Identifies everything a training run depends on: data, transform, config and step budgets."""
    inputs = {
        "train_files": sorted(fn_args.train_files),
        "eval_files": sorted(fn_args.eval_files),
        "transform_output": fn_args.transform_output,
        "custom_config": fn_args.custom_config,
        "train_steps": fn_args.train_steps,
        "eval_steps": fn_args.eval_steps,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _copy_tree(src: str, dst: str) -> None:
    for directory, _, files in tf.io.gfile.walk(src):
        target = os.path.join(dst, os.path.relpath(directory, src))
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target, name), overwrite=True)


class NonFinitePredictions(ValueError):
    """The trained model predicts NaN or infinity: training diverged, or NaN reached its inputs."""


# Batches of evaluation examples the trained model must score finitely before it is exported.
FINITE_CHECK_BATCHES = 4


def check_finite_predictions(
    net: keras.Model, dataset: tf.data.Dataset, learning_rate: float, batches: int = FINITE_CHECK_BATCHES
) -> None:
    """Scores a few batches of `dataset` and stops the Trainer when any prediction is not finite, before
    the Evaluator's TFMA internals fail on such scores without saying why.

    Raises:
      NonFinitePredictions: with how many predictions were not finite and the likely causes.
    """
    bad = total = 0
    for features, _ in dataset.take(batches):
        predictions = net(features, training=False)
        values = tf.concat([tf.reshape(tf.cast(p, tf.float32), [-1]) for p in tf.nest.flatten(predictions)], 0)
        bad += int(tf.reduce_sum(tf.cast(~tf.math.is_finite(values), tf.int32)))
        total += int(tf.size(values))
    if bad:
        raise NonFinitePredictions(
            f"training produced non-finite predictions: {bad:,} of {total:,} scores on evaluation examples are NaN "
            "or infinite, so the model is not exported, evaluated or pushed. Likely causes: a learning rate too "
            f"high (config key model.learning_rate, now {learning_rate:g}), or unscaled or non-finite inputs "
            "(NaN or infinity the schema allows, or extreme values; see `conveyor schema diff`)"
        )


def run_fn(fn_args: FnArgs) -> None:
    """Trains the model (warm-started from the latest blessed one when there is one) and exports it.

    When the latest blessed model was trained from exactly these inputs, training again would only
    repeat it: its files are reused as this run's model, so re-running an unchanged pipeline
    pushes nothing new.

    Args:
      fn_args: TFX's trainer arguments; `custom_config` is `PipelineConfig.component_config()`.
    """
    fingerprint = _fingerprint(fn_args)
    if fn_args.base_model and training_fingerprint(fn_args.base_model) == fingerprint:
        log.info("inputs unchanged since the latest blessed model %s; reusing it", fn_args.base_model)
        _copy_tree(fn_args.base_model, fn_args.serving_model_dir)
        record_path = os.path.join(fn_args.serving_model_dir, str(TRAINING_RECORD))
        with tf.io.gfile.GFile(record_path) as f:
            record = json.load(f)
        record["reused_from"] = fn_args.base_model
        with tf.io.gfile.GFile(record_path, "w") as f:
            json.dump(record, f)
        return
    label, features = features_from_component_config(fn_args.custom_config)
    model_config = ModelConfig(**fn_args.custom_config["model"])
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    vocabularies = _vocabularies(tf_transform_output, features)

    train = input_fn(
        fn_args.train_files,
        fn_args.data_accessor,
        tf_transform_output,
        label,
        model_config.batch_size,
        model_config.seed,
    )
    evaluate = input_fn(
        fn_args.eval_files,
        fn_args.data_accessor,
        tf_transform_output,
        label,
        model_config.batch_size,
        model_config.seed,
    )

    task, classes = task_from_component_config(fn_args.custom_config)
    stats = (0.0, 1.0)
    if task == "regression":
        one_pass = input_fn(
            fn_args.train_files,
            fn_args.data_accessor,
            tf_transform_output,
            label,
            model_config.batch_size,
            model_config.seed,
            repeat=False,
        )
        stats = label_stats(one_pass)
        log.info("regression label %s: mean %.4g, std %.4g", label, *stats)
    net = build_model(features, model_config, task, len(classes), stats)
    start = warm_start(net, fn_args.base_model, features, vocabularies)
    log.info("%s", start.summary)
    for name, reason in start.fresh:
        log.info("layer %s started fresh: %s", name, reason)

    # Ten epochs when the budget divides evenly, so the record holds a loss curve, not one number.
    # The evaluation steps run once, after the last epoch, as TFX's eval_args mean: validating
    # after every epoch would spend ten times eval_steps on numbers nobody reads.
    epochs = 10 if fn_args.train_steps >= 10 and fn_args.train_steps % 10 == 0 else 1
    history = net.fit(
        train,
        epochs=epochs,
        steps_per_epoch=fn_args.train_steps // epochs,
        validation_data=evaluate,
        validation_steps=fn_args.eval_steps,
        validation_freq=[epochs],
        verbose=0,
    )
    check_finite_predictions(net, evaluate, model_config.learning_rate)

    signatures = export_signatures(net, tf_transform_output, [f.name for f in features], task, classes)
    net.save(fn_args.serving_model_dir, save_format="tf", signatures=signatures)
    set_method_names(fn_args.serving_model_dir)
    record = {
        "warm_start": start.as_dict(),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "train_steps": fn_args.train_steps,
        "task": task,
        "classes": list(classes),
        "label_stats": list(stats) if task == "regression" else None,
        "fingerprint": fingerprint,
        # The training config alone (no paths): part of the pusher's inputs identity.
        "config_fingerprint": hashlib.sha256(
            json.dumps([fn_args.custom_config, fn_args.train_steps, fn_args.eval_steps], sort_keys=True).encode()
        ).hexdigest(),
        "vocabularies": vocabularies,
    }
    record_path = os.path.join(fn_args.serving_model_dir, str(TRAINING_RECORD))
    tf.io.gfile.makedirs(os.path.dirname(record_path))
    with tf.io.gfile.GFile(record_path, "w") as f:
        json.dump(record, f)
