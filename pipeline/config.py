"""The typed pipeline configuration: one YAML file per dataset, parsed once into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from pipeline.config_checks import TOP_KEYS as _TOP_KEYS
from pipeline.config_checks import ConfigError
from pipeline.config_checks import check_keys as _check_keys
from pipeline.config_checks import positive as _positive
from pipeline.config_checks import typed as _typed
from pipeline.config_predict import parse_predict
from pipeline.config_serve import SERVING_KEYS, serve_settings
from pipeline.metadata import MetadataStore

FEATURE_KINDS = ("numeric", "categorical_string", "categorical_int", "bucketized", "hashed")
TASKS = ("binary", "multiclass", "regression")
# What each task measures when `evaluation.metrics` is not given (TFMA metric class names).
DEFAULT_METRICS = {
    "binary": ("AUC", "BinaryAccuracy", "Calibration", "ExampleCount"),
    "multiclass": ("SparseCategoricalAccuracy", "ExampleCount"),
    "regression": ("MeanAbsoluteError", "RootMeanSquaredError", "ExampleCount"),
}
# Metrics where smaller is better: their thresholds default to direction lower_is_better.
LOWER_IS_BETTER = frozenset(
    {
        "MeanAbsoluteError",
        "MeanSquaredError",
        "RootMeanSquaredError",
        "MeanAbsolutePercentageError",
        "BinaryCrossentropy",
    }
)
DIRECTIONS = ("higher_is_better", "lower_is_better")
SPAN_DIR_RE = re.compile(r"^span-(\d+)$")
SPAN_PATTERN = "span-{SPAN}/*.csv"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_FEATURE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FeatureConfig:
    """One raw input column and how it is turned into a model input.

    kind: numeric (z-scored, missing values imputed with the mean plus an is-missing flag),
    categorical_string / categorical_int (vocabulary of the top_k values plus oov_buckets),
    bucketized (numeric cut into `buckets` quantile buckets), hashed (a high-cardinality
    categorical hashed into `hash_buckets` buckets, no vocabulary).
    """

    name: str
    kind: str
    top_k: int = 100
    oov_buckets: int = 1
    buckets: int = 10
    hash_buckets: int = 1000

    @property
    def transformed_name(self) -> str:
        return f"{self.name}_xf"

    @property
    def cardinality(self) -> int:
        """Number of distinct indices the transform can emit (fixed, so it is stable across spans)."""
        if self.kind == "bucketized":
            return self.buckets
        if self.kind == "hashed":
            return self.hash_buckets
        if self.kind in ("categorical_string", "categorical_int"):
            return self.top_k + self.oov_buckets
        return 0


@dataclass(frozen=True)
class ModelConfig:
    hidden_units: tuple[int, ...] = (64, 32)
    embedding_dim: int = 8
    learning_rate: float = 0.001
    batch_size: int = 128
    seed: int = 42


@dataclass(frozen=True)
class TrainingConfig:
    train_steps: int = 1000
    eval_steps: int = 150


@dataclass(frozen=True)
class ThresholdConfig:
    """A metric bound: the candidate must reach `lower_bound`/`upper_bound` and may not be worse
    than the baseline by more than `max_change` (absolute)."""

    metric: str
    lower_bound: Optional[float] = None
    upper_bound: Optional[float] = None
    max_change: Optional[float] = None
    direction: str = "higher_is_better"


@dataclass(frozen=True)
class EvaluationConfig:
    metrics: tuple[str, ...] = DEFAULT_METRICS["binary"]
    thresholds: tuple[ThresholdConfig, ...] = ()
    slices: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class OutputConfig:
    """Where a run writes; an environment fact the runner sets, never the dataset file."""

    pipeline_root: str
    serving_root: str
    # The default store: SQLite in the output directory.
    metadata_path: Optional[str] = None
    # A shared store (config `metadata:` or `--metadata`), used instead of metadata_path when set.
    metadata: Optional[MetadataStore] = None
    # Seconds a run waits for another run of the pipeline holding the shared store's lock before it is
    # refused (metadata.lock_wait, `conveyor run --lock-wait`); 0 refuses at once.
    lock_wait: float = 0.0

    @property
    def store(self) -> Optional[MetadataStore]:
        """The ML Metadata store this run reads and writes, or None (a compiled cluster pipeline)."""
        if self.metadata is not None:
            return self.metadata
        return MetadataStore.sqlite(self.metadata_path) if self.metadata_path else None

    @classmethod
    def under(cls, output_dir: str | Path) -> OutputConfig:
        out = Path(output_dir).absolute()
        return cls(
            pipeline_root=str(out / "pipeline_root"),
            serving_root=str(out / "serving_model"),
            metadata_path=str(out / "metadata.sqlite"),
        )


@dataclass(frozen=True)
class KubeflowConfig:
    """Cluster facts for `conveyor compile`: where the pipeline reads and writes, which image it runs."""

    pipeline_root: str = ""
    data_root: str = ""
    serving_root: str = ""
    image: str = ""
    beam_args: tuple[str, ...] = ()
    # An existing PersistentVolumeClaim (ReadWriteMany) that holds the serving root: mounted at
    # `serving_root` in the pusher's pod, and in TF Serving's (kubeflow/README.md, Serving).
    serving_pvc: str = ""
    # How the cluster's data root is laid out, which cannot be listed from here: "spans"
    # (span-<N>/*.csv, newest span per run), "flat" (every CSV under it), or "" for the same layout
    # as the local data root.
    data_layout: str = ""


DATA_LAYOUTS = ("", "spans", "flat")


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    data_root: str
    label: str
    schema_path: str
    features: tuple[FeatureConfig, ...]
    model_name: str
    output: OutputConfig
    keep_versions: int = 5
    # binary, multiclass or regression; `classes` are the label's values in class-index order
    # (binary: [negative, positive]; ["0", "1"] unless configured).
    task: str = "binary"
    classes: tuple[str, ...] = ("0", "1")
    # Spans: `span_pattern` is set when the data root holds span-<N>/ directories; `span` picks one
    # (None: the newest); `window` trains on the last K spans and evaluates on the newest.
    serving_data_root: Optional[str] = None
    # `data.serving_root` naming `conveyor serve`'s request logs (a model's log directory, or the log root
    # holding one for `model_name`) instead of CSV: the data gate reads the logged requests for skew.
    serving_request_logs: Optional[str] = None
    span_pattern: Optional[str] = None
    span: Optional[int] = None
    window: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    beam_args: tuple[str, ...] = ()
    # The Evaluator's own Beam arguments, after beam_args (the local runner sets them: runner.evaluator_beam_args).
    evaluator_beam_args: tuple[str, ...] = ()
    kubeflow: KubeflowConfig = field(default_factory=KubeflowConfig)
    source: Optional[str] = None
    predict: Optional[Any] = None  # `predict:`, a pipeline.config_predict.PredictConfig: what BatchPredict scores
    # An orchestrator fact, not a dataset one: how the pipeline finds the latest blessed model and the
    # previous statistics. True: TFX resolvers over ML Metadata (local runs; an unchanged re-run is
    # served wholly from cache). False: records in the artifact store (components.cluster_state), for
    # open-source Kubeflow Pipelines, which runs no resolver executors.
    resolve_from_metadata: bool = True

    @property
    def serving_model_dir(self) -> str:
        return str(Path(self.output.serving_root) / self.model_name)

    def component_config(self) -> dict[str, Any]:
        """What the code inside the Trainer needs, as plain JSON-able values."""
        return {**self.transform_config(), "model": dataclasses.asdict(self.model)}

    def transform_config(self) -> dict[str, Any]:
        """What preprocessing_fn needs: no model hyperparameters, so that changing them leaves
        Transform's inputs as they were and TFX's cache serves it."""
        return {
            "label": self.label,
            "task": self.task,
            "classes": list(self.classes),
            "features": [dataclasses.asdict(f) for f in self.features],
        }

    def replace(self, **changes: Any) -> PipelineConfig:
        return dataclasses.replace(self, **changes)


def list_spans(data_root: str | Path) -> list[int]:
    """Span numbers of the `span-<N>/` directories under a local data root, ascending."""
    root = Path(data_root)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := SPAN_DIR_RE.match(p.name)))


def features_from_component_config(custom_config: Mapping[str, Any]) -> tuple[str, tuple[FeatureConfig, ...]]:
    """Inverse of `PipelineConfig.component_config` for the label and features."""
    features = tuple(FeatureConfig(**f) for f in custom_config["features"])
    return custom_config["label"], features


def task_from_component_config(custom_config: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The task and the label's classes from `PipelineConfig.component_config` (binary by default)."""
    task = custom_config.get("task", "binary")
    classes = tuple(custom_config.get("classes") or (("0", "1") if task == "binary" else ()))
    return task, classes


# ---------------------------------------------------------------------------------------------
# Parsing


def _parse_features(raw: Any) -> tuple[FeatureConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("features", "must be a non-empty list of {name, kind} entries")
    features, seen = [], set()
    for i, entry in enumerate(raw):
        prefix = f"features[{i}]."
        _check_keys(
            entry, {"name", "kind", "top_k", "oov_buckets", "buckets", "hash_buckets"}, {"name", "kind"}, prefix
        )
        name = _typed(entry["name"], str, prefix + "name")
        if not _FEATURE_RE.match(name):
            raise ConfigError(prefix + "name", f"'{name}' is not a valid column name (letters, digits, _)")
        if name in seen:
            raise ConfigError(prefix + "name", f"feature '{name}' is listed twice")
        seen.add(name)
        kind = _typed(entry["kind"], str, prefix + "kind")
        if kind not in FEATURE_KINDS:
            raise ConfigError(prefix + "kind", f"'{kind}' is not one of {', '.join(FEATURE_KINDS)}")
        kwargs = {}
        for key in ("top_k", "buckets", "hash_buckets"):
            if key in entry:
                kwargs[key] = _positive(entry[key], prefix + key, minimum=1 if key == "top_k" else 2)
        if "oov_buckets" in entry:
            kwargs["oov_buckets"] = _positive(entry["oov_buckets"], prefix + "oov_buckets", minimum=1)
        features.append(FeatureConfig(name=name, kind=kind, **kwargs))
    return tuple(features)


def _parse_model(raw: Mapping[str, Any]) -> ModelConfig:
    _check_keys(raw, {f.name for f in dataclasses.fields(ModelConfig)}, set(), "model.")
    kwargs: dict[str, Any] = {}
    if "hidden_units" in raw:
        units = _typed(raw["hidden_units"], list, "model.hidden_units")
        if not units:
            raise ConfigError("model.hidden_units", "must list at least one layer size")
        kwargs["hidden_units"] = tuple(_positive(u, "model.hidden_units") for u in units)
    if "embedding_dim" in raw:
        kwargs["embedding_dim"] = _positive(raw["embedding_dim"], "model.embedding_dim")
    if "learning_rate" in raw:
        lr = _typed(raw["learning_rate"], float, "model.learning_rate")
        if not 0 < lr <= 1:
            raise ConfigError("model.learning_rate", f"must be in (0, 1], got {lr}")
        kwargs["learning_rate"] = lr
    if "batch_size" in raw:
        kwargs["batch_size"] = _positive(raw["batch_size"], "model.batch_size")
    if "seed" in raw:
        kwargs["seed"] = _positive(raw["seed"], "model.seed", minimum=0)
    return ModelConfig(**kwargs)


def _parse_training(raw: Mapping[str, Any]) -> TrainingConfig:
    _check_keys(raw, {"train_steps", "eval_steps"}, set(), "training.")
    return TrainingConfig(
        **{k: _positive(v, f"training.{k}") for k, v in raw.items()},
    )


def _parse_evaluation(raw: Mapping[str, Any], task: str = "binary") -> EvaluationConfig:
    _check_keys(raw, {"metrics", "thresholds", "slices"}, set(), "evaluation.")
    kwargs: dict[str, Any] = {"metrics": DEFAULT_METRICS[task]}
    if "metrics" in raw:
        metrics = _typed(raw["metrics"], list, "evaluation.metrics")
        kwargs["metrics"] = tuple(_typed(m, str, "evaluation.metrics") for m in metrics)
    thresholds = []
    for i, entry in enumerate(_typed(raw.get("thresholds", []), list, "evaluation.thresholds")):
        prefix = f"evaluation.thresholds[{i}]."
        _check_keys(entry, {f.name for f in dataclasses.fields(ThresholdConfig)}, {"metric"}, prefix)
        t: dict[str, Any] = {"metric": _typed(entry["metric"], str, prefix + "metric")}
        if t["metric"] in LOWER_IS_BETTER:
            t["direction"] = "lower_is_better"
        for key in ("lower_bound", "upper_bound"):
            if key in entry:
                t[key] = _typed(entry[key], float, prefix + key)
        if "max_change" in entry:
            t["max_change"] = _positive(entry["max_change"], prefix + "max_change", float, 0.0)
        if "direction" in entry:
            t["direction"] = _typed(entry["direction"], str, prefix + "direction")
            if t["direction"] not in DIRECTIONS:
                raise ConfigError(prefix + "direction", f"must be one of {', '.join(DIRECTIONS)}")
        if not any(k in t for k in ("lower_bound", "upper_bound", "max_change")):
            raise ConfigError(prefix + "metric", "needs lower_bound, upper_bound or max_change")
        thresholds.append(ThresholdConfig(**t))
    kwargs["thresholds"] = tuple(thresholds)
    slices = []
    for i, entry in enumerate(_typed(raw.get("slices", []), list, "evaluation.slices")):
        cols = [entry] if isinstance(entry, str) else _typed(entry, list, f"evaluation.slices[{i}]")
        slices.append(tuple(_typed(c, str, f"evaluation.slices[{i}]") for c in cols))
    kwargs["slices"] = tuple(slices)
    return EvaluationConfig(**kwargs)


def _parse_kubeflow(raw: Mapping[str, Any]) -> KubeflowConfig:
    _check_keys(raw, {f.name for f in dataclasses.fields(KubeflowConfig)}, set(), "kubeflow.")
    kwargs: dict[str, Any] = {k: _typed(v, str, f"kubeflow.{k}") for k, v in raw.items() if k != "beam_args"}
    if "beam_args" in raw:
        args = _typed(raw["beam_args"], list, "kubeflow.beam_args")
        kwargs["beam_args"] = tuple(_typed(a, str, "kubeflow.beam_args") for a in args)
    if kwargs.get("data_layout", "") not in DATA_LAYOUTS:
        raise ConfigError("kubeflow.data_layout", f"must be 'spans' or 'flat', not {kwargs['data_layout']!r}")
    return KubeflowConfig(**kwargs)


def _parse_task(raw: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """`task` (default binary) and `classes`: the label's values in class-index order, required for
    multiclass, [negative, positive] for binary (default ["0", "1"]), absent for regression."""
    task = _typed(raw.get("task", "binary"), str, "task")
    if task not in TASKS:
        raise ConfigError("task", f"'{task}' is not one of {', '.join(TASKS)}")
    if "classes" not in raw:
        if task == "multiclass":
            raise ConfigError("classes", "multiclass needs the label's values listed (conveyor init drafts them)")
        return task, ("0", "1") if task == "binary" else ()
    if task == "regression":
        raise ConfigError("classes", "a regression label has no classes; remove the key")
    values = _typed(raw["classes"], list, "classes")
    classes = tuple(str(_typed(v, (str, int), "classes")) for v in values)
    if len(set(classes)) != len(classes):
        raise ConfigError("classes", f"lists a value twice: {list(classes)}")
    if task == "binary" and len(classes) != 2:
        raise ConfigError("classes", f"binary needs exactly [negative, positive], got {list(classes)}")
    if task == "multiclass" and len(classes) < 2:
        raise ConfigError("classes", f"multiclass needs at least 2 classes, got {list(classes)}")
    return task, classes


def _parse_metadata(raw: Mapping[str, Any], override: Optional[str]) -> Optional[MetadataStore]:
    """The `metadata:` section ({url, password_env}); `override` (--metadata) wins over its url."""
    _check_keys(raw, {"url", "password_env", "lock_wait"}, set(), "metadata.")
    url = override or (_typed(raw["url"], str, "metadata.url") if raw.get("url") else None)
    password_env = _typed(raw.get("password_env", "") or "", str, "metadata.password_env")
    if password_env and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", password_env):
        raise ConfigError("metadata.password_env", f"'{password_env}' is not an environment variable name")
    if url is None:
        return None
    try:
        return MetadataStore.parse(url, password_env)
    except ValueError as err:
        raise ConfigError("--metadata" if override else "metadata.url", str(err)) from None


def parse_config(
    raw: Mapping[str, Any],
    base_dir: str | Path,
    output: OutputConfig,
    data_root: Optional[str | Path] = None,
    source: Optional[str] = None,
    metadata: Optional[str] = None,
) -> PipelineConfig:
    """Builds a PipelineConfig from already-loaded YAML.

    Args:
      raw: the YAML document.
      base_dir: directory that relative paths in the document are relative to.
      output: where this run writes.
      data_root: overrides `data.root` when given.
      source: the file name, for error messages.
      metadata: a store URL overriding `metadata.url` (`--metadata`).

    Returns:
      The validated, frozen configuration.

    Raises:
      ConfigError: naming the first offending key.
    """
    try:
        _check_keys(raw, _TOP_KEYS, {"name", "data", "label", "schema", "features", "serving"}, "")
        name = _typed(raw["name"], str, "name")
        if not _NAME_RE.match(name):
            raise ConfigError("name", f"'{name}' must be lower-case letters, digits and '-' (KFP-safe)")
        base = Path(base_dir)
        _check_keys(raw["data"], {"root", "window", "serving_root"}, {"root"}, "data.")
        serving_root = None
        if raw["data"].get("serving_root"):
            serving_root = base / _typed(raw["data"]["serving_root"], str, "data.serving_root")
            if not serving_root.is_dir():
                raise ConfigError("data.serving_root", f"serving data directory {serving_root} does not exist")
        root = Path(data_root) if data_root is not None else base / _typed(raw["data"]["root"], str, "data.root")
        if not root.exists():
            raise ConfigError("data.root", f"data directory {root} does not exist")
        spans = list_spans(root)
        window = _positive(raw["data"].get("window", 1), "data.window")
        if window > 1 and not spans:
            raise ConfigError("data.window", f"a window of {window} spans needs span-<N>/ directories under {root}")
        schema_path = base / _typed(raw["schema"], str, "schema")
        if not schema_path.is_file():
            raise ConfigError("schema", f"curated schema {schema_path} does not exist")
        label = _typed(raw["label"], str, "label")
        task, classes = _parse_task(raw)
        features = _parse_features(raw["features"])
        if label in {f.name for f in features}:
            raise ConfigError("label", f"'{label}' is also listed as a feature")

        _check_keys(raw["serving"], SERVING_KEYS, {"model_name"}, "serving.")
        serve_settings(raw["serving"], base)  # `conveyor run` refuses what `conveyor serve` would
        keep_versions = _positive(raw["serving"].get("keep_versions", 5), "serving.keep_versions")
        model_name = _typed(raw["serving"]["model_name"], str, "serving.model_name")
        if not _MODEL_NAME_RE.match(model_name) or ".." in model_name:
            raise ConfigError(
                "serving.model_name",
                f"'{model_name}' must be letters, digits, '_', '-' or '.' (no path separators or '..')",
            )
        logs = _request_logs(serving_root, model_name) if serving_root else None
        beam = raw.get("beam", {}) or {}
        _check_keys(beam, {"args"}, set(), "beam.")
        beam_args = tuple(_typed(a, str, "beam.args") for a in _typed(beam.get("args", []), list, "beam.args"))
        evaluation = _parse_evaluation(raw.get("evaluation", {}) or {}, task)
        slice_cols = {c for s in evaluation.slices for c in s}
        unknown = slice_cols - {f.name for f in features}
        if unknown:
            raise ConfigError("evaluation.slices", f"slice column(s) {sorted(unknown)} are not configured features")

        return PipelineConfig(
            name=name,
            data_root=str(root.resolve()),
            label=label,
            task=task,
            classes=classes,
            schema_path=str(schema_path.resolve()),
            features=features,
            model_name=model_name,
            output=dataclasses.replace(
                output,
                metadata=_parse_metadata(raw.get("metadata", {}) or {}, metadata),
                lock_wait=_positive((raw.get("metadata") or {}).get("lock_wait", 0), "metadata.lock_wait", float, 0.0),
            ),
            keep_versions=keep_versions,
            serving_data_root=str(serving_root.resolve()) if serving_root and not logs else None,
            serving_request_logs=str(logs.resolve()) if logs else None,
            span_pattern=SPAN_PATTERN if spans else None,
            window=window,
            model=_parse_model(raw.get("model", {}) or {}),
            training=_parse_training(raw.get("training", {}) or {}),
            evaluation=evaluation,
            beam_args=beam_args,
            kubeflow=_parse_kubeflow(raw.get("kubeflow", {}) or {}),
            source=source,
            predict=parse_predict(raw.get("predict"), base),
        )
    except ConfigError as err:
        raise ConfigError(err.key, err.problem, source) from None


def _request_logs(serving_root: Path, model_name: str) -> Optional[Path]:
    """The request-log directory `data.serving_root` names (its own `*.tfrecord` files, or those of
    `<serving_root>/<model_name>/`, as `conveyor serve` writes them), or None for CSV serving data."""
    for candidate in (serving_root, serving_root / model_name):
        if candidate.is_dir() and any(candidate.glob("*.tfrecord*")):
            return candidate
    return None


def load_config(
    path: str | Path,
    output_dir: str | Path = "output",
    data_root: Optional[str | Path] = None,
    span: Optional[int] = None,
    metadata: Optional[str] = None,
) -> PipelineConfig:
    """Reads and validates a dataset config file; relative paths in it are relative to its folder.

    Args:
      path: the YAML file.
      output_dir: where the run writes.
      data_root: overrides `data.root`.
      span: the span to run on (default: the newest); needs span-<N>/ directories.
      metadata: an ML Metadata URL overriding the config's `metadata.url` (`--metadata`).

    Raises:
      ConfigError: the file is missing, is not YAML, or holds a bad value (the key is named).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError("<file>", f"{path} is not valid YAML: {err}") from None
    if raw is None:
        raise ConfigError("<file>", f"{path} is empty")
    config = parse_config(raw, path.parent, OutputConfig.under(output_dir), data_root, str(path), metadata)
    if span is not None:
        available = list_spans(config.data_root)
        if span not in available:
            have = ", ".join(map(str, available)) or "none: the data root has no span-<N>/ directories"
            raise ConfigError("--span", f"span {span} not found under {config.data_root} (spans: {have})")
        config = config.replace(span=span)
    return config
