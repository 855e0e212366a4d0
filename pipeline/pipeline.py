"""The DAG: one pure factory, create_pipeline(config), used by every runner and every end-to-end test."""

from __future__ import annotations

import json

import tensorflow_model_analysis as tfma
from google.protobuf.wrappers_pb2 import BoolValue

# TFX's own modules, not `tfx.v1`: importing tfx.v1 also imports its Google Cloud extensions
# (google.cloud.aiplatform), about 3 s of every command's start-up that no local run uses.
from tfx.components import (
    Evaluator,
    ExampleValidator,
    SchemaGen,
    StatisticsGen,
    Trainer,
    Transform,
)
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_artifact_strategy import LatestArtifactStrategy
from tfx.dsl.input_resolution.strategies.span_range_strategy import SpanRangeStrategy
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import example_gen_pb2, range_config_pb2, trainer_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

from components.cluster_state import LatestBlessedModel, PreviousStatistics, RecordBlessedModel, state_dir
from components.data_gate.component import DataGate
from components.example_gen import CsvExampleGen
from components.features import PREDICTION_KEY, TRANSFORM_SIGNATURE, transformed_label
from components.pusher.component import SafePusher
from components.warm_start import WarmStartModelStrategy
from pipeline.config import ConfigError, EvaluationConfig, PipelineConfig

PREPROCESSING_FN = "components.preprocessing.preprocessing_fn"
RUN_FN = "components.model.run_fn"


def _threshold(t) -> tfma.MetricThreshold:
    higher = t.direction == "higher_is_better"
    value = None
    if t.lower_bound is not None or t.upper_bound is not None:
        bounds = {}
        if t.lower_bound is not None:
            bounds["lower_bound"] = {"value": t.lower_bound}
        if t.upper_bound is not None:
            bounds["upper_bound"] = {"value": t.upper_bound}
        value = tfma.GenericValueThreshold(**bounds)
    change = None
    if t.max_change is not None:
        change = tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER if higher else tfma.MetricDirection.LOWER_IS_BETTER,
            absolute={"value": -t.max_change if higher else t.max_change},
        )
    return tfma.MetricThreshold(value_threshold=value, change_threshold=change)


def eval_config(
    label: str, evaluation: EvaluationConfig, task: str = "binary", classes: tuple[str, ...] = ("0", "1")
) -> tfma.EvalConfig:
    """TFMA's config: overall plus the configured slices, the configured metrics and their thresholds.

    The label TFMA compares with is the transformed one (the model's `transform_features`
    signature computes it): the class index for classification, whatever the raw label's type.
    Multiclass adds recall per class.

    Raises:
      ConfigError: a threshold names a metric that is not in evaluation.metrics.
    """
    thresholds = {t.metric: t for t in evaluation.thresholds}
    unknown = set(thresholds) - set(evaluation.metrics)
    if unknown:
        raise ConfigError("evaluation.thresholds", f"metric(s) {sorted(unknown)} are not in evaluation.metrics")
    overall = [tfma.SlicingSpec()]
    metrics = [
        tfma.MetricConfig(
            class_name=m,
            # Thresholds gate on the overall slice; per-slice values are reported, not gated, since
            # small slices (a rare payment type) are too noisy to block a release.
            per_slice_thresholds=(
                [tfma.PerSliceMetricThreshold(slicing_specs=overall, threshold=_threshold(thresholds[m]))]
                if m in thresholds
                else None
            ),
        )
        for m in evaluation.metrics
    ]
    specs = [tfma.MetricsSpec(metrics=metrics)]
    if task == "multiclass":
        specs.append(
            tfma.MetricsSpec(
                metrics=[tfma.MetricConfig(class_name="Recall")],
                binarize=tfma.BinarizationOptions(class_ids={"values": list(range(len(classes)))}),
            )
        )
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                # A plain SavedModel to TFMA: told, it does not load the model through Keras just to
                # find out (2 s per model and run); it only calls the signatures named here.
                model_type="tf_generic",
                signature_name="serving_default",
                label_key=transformed_label(label),
                prediction_key=PREDICTION_KEY[task],
                preprocessing_function_names=[TRANSFORM_SIGNATURE],
            )
        ],
        slicing_specs=overall + [tfma.SlicingSpec(feature_keys=list(s)) for s in evaluation.slices],
        metrics_specs=specs,
        # Only the configured metrics. TFMA's defaults (the metrics the Keras model was compiled
        # with) would make it load the model a second time through Keras, which took ~5 of the
        # Evaluator's 13 s on the taxi benchmark.
        options=tfma.Options(include_default_metrics=BoolValue(value=False)),
    )


def _example_gen(config: PipelineConfig) -> CsvExampleGen:
    """CsvExampleGen over the whole data root, or over one span-<N>/ directory: the newest by
    default, or `config.span`. The span is recorded on the Examples artifact."""
    if not config.span_pattern:
        return CsvExampleGen(input_base=config.data_root)
    range_config = None
    if config.span is not None:
        range_config = range_config_pb2.RangeConfig(
            static_range=range_config_pb2.StaticRange(start_span_number=config.span, end_span_number=config.span)
        )
    return CsvExampleGen(
        input_base=config.data_root,
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name="single_split", pattern=config.span_pattern)]
        ),
        range_config=range_config,
    )


def _serving_statistics(config: PipelineConfig) -> tuple[list, object]:
    """With `data.serving_root`, statistics of the serving data for the gate's skew check."""
    if not config.serving_data_root:  # none, or request logs: the data gate reads those itself
        return [], None
    serving_example_gen = CsvExampleGen(
        input_base=config.serving_data_root,
        output_config=example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(name="serving", hash_buckets=1)]
            )
        ),
    ).with_id("serving_example_gen")
    serving_statistics_gen = StatisticsGen(examples=serving_example_gen.outputs["examples"]).with_id(
        "serving_statistics_gen"
    )
    return [serving_example_gen, serving_statistics_gen], serving_statistics_gen.outputs["statistics"]


def _training_examples(config: PipelineConfig, example_gen) -> tuple:
    """This span's examples, or with `data.window: K` the last K spans ingested (this one included),
    gathered by a span-range resolver after ExampleGen has run. Evaluation stays on this span."""
    if config.window <= 1:
        return example_gen.outputs["examples"], []
    resolver = Resolver(
        strategy_class=SpanRangeStrategy,
        config={
            "range_config": range_config_pb2.RangeConfig(
                rolling_range=range_config_pb2.RollingRange(num_spans=config.window)
            )
        },
        examples=Channel(type=standard_artifacts.Examples, producer_component_id=example_gen.id, output_key="examples"),
    ).with_id("span_window_resolver")
    resolver.add_upstream_node(example_gen)
    return resolver.outputs["examples"], [resolver]


def _latest_blessed_model(config: PipelineConfig, import_schema_gen, transform):
    """The Trainer's base model and the Evaluator's baseline: the latest blessed model.

    Locally, a resolver with Conveyor's WarmStartModelStrategy, which also sees this run's Trainer
    inputs, so that an unchanged re-run resolves what the run it repeats resolved and the Trainer,
    Evaluator and pusher are served from cache. On the cluster, the artifact-store record
    (components.cluster_state.LatestBlessedModel).
    """
    if not config.resolve_from_metadata:
        return LatestBlessedModel(state_dir=_state_dir(config)).with_id("latest_blessed_model")
    return Resolver(
        strategy_class=WarmStartModelStrategy,
        # Flat values: TFX types a resolver's config per key and cannot hold a nested mixed dict.
        config={
            "custom_config_json": json.dumps(config.component_config(), sort_keys=True),
            "train_steps": config.training.train_steps,
            "eval_steps": config.training.eval_steps,
            "run_fn": RUN_FN,
        },
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=import_schema_gen.outputs["schema"],
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")


def _state_dir(config: PipelineConfig) -> str:
    return state_dir(config.output.pipeline_root, config.name)


def _previous_statistics(config: PipelineConfig, statistics_gen) -> tuple:
    """The previous run's statistics, for the data gate's drift check, as (node, channel): locally a
    resolver that runs before this run's StatisticsGen (so the latest statistics are the previous
    run's); on the cluster the artifact-store record, read and replaced after this run's StatisticsGen."""
    if not config.resolve_from_metadata:
        node = PreviousStatistics(statistics=statistics_gen.outputs["statistics"], state_dir=_state_dir(config))
        return node, node.outputs["previous_statistics"]
    resolver = Resolver(
        strategy_class=LatestArtifactStrategy,
        statistics=Channel(
            type=standard_artifacts.ExampleStatistics,
            producer_component_id="StatisticsGen",
            output_key="statistics",
        ),
    ).with_id("previous_statistics_resolver")
    return resolver, resolver.outputs["statistics"]


def _predict_nodes(config: PipelineConfig, pusher, schema) -> list:
    """BatchPredict after the push when the config names data to score (`predict:`); else nothing."""
    if config.predict is None:
        return []
    from components.batch_predict import BatchPredict

    return [
        BatchPredict(
            pushed_model=pusher.outputs["pushed_model"],
            schema=schema,
            data_root=config.predict.data_root,
            output_format=config.predict.format,
        )
    ]


def _card_node(config: PipelineConfig, upstream: dict, latest_blessed):
    """ModelCardGen after the push: the version's model card and provenance, from this run's artifacts.

    On the cluster, Kubeflow's driver fills in the run's name and id (registry.card_gen.KFP_RUN_*);
    locally the run is the ML Metadata context the execution belongs to, so nothing run-specific is
    passed and an unchanged re-run is served from cache like the push it follows.
    """
    from tfx.utils import proto_utils

    from registry.card_gen import KFP_RUN_ID, KFP_RUN_NAME, ModelCardGen

    trainer = {
        "custom_config": config.component_config(),
        "train_args": {"num_steps": config.training.train_steps},
        "eval_args": {"num_steps": config.training.eval_steps},
    }
    cluster = not config.resolve_from_metadata
    return ModelCardGen(
        **upstream,
        base_model=latest_blessed.outputs["model"],
        model_name=config.model_name,
        trainer_config=json.dumps(trainer, sort_keys=True),
        eval_config=proto_utils.proto_to_json(
            eval_config(config.label, config.evaluation, config.task, config.classes)
        ),
        schema_file=config.schema_path,
        slice_features=json.dumps(sorted({f for cols in config.evaluation.slices for f in cols})),
        config_source=config.source or "",
        pipeline_run=KFP_RUN_ID if cluster else "",
        started_by=KFP_RUN_NAME if cluster else "",
    )


def _model_nodes(config: PipelineConfig, example_gen, statistics_gen, import_schema_gen, transform) -> list:
    """The latest blessed model, Trainer, Evaluator and SafePusher (and on the cluster, the record of a
    newly blessed model)."""
    component_config = config.component_config()
    latest_blessed = _latest_blessed_model(config, import_schema_gen, transform)
    trainer = Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=import_schema_gen.outputs["schema"],
        base_model=latest_blessed.outputs["model"],
        train_args=trainer_pb2.TrainArgs(num_steps=config.training.train_steps),
        eval_args=trainer_pb2.EvalArgs(num_steps=config.training.eval_steps),
        custom_config=component_config,
    )
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=latest_blessed.outputs["model"],
        eval_config=eval_config(config.label, config.evaluation, config.task, config.classes),
    )
    if config.evaluator_beam_args:
        evaluator.with_beam_pipeline_args(list(config.evaluator_beam_args))
    pusher = SafePusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        examples=example_gen.outputs["examples"],
        schema=import_schema_gen.outputs["schema"],
        serving_model_dir=config.serving_model_dir,
        keep_versions=config.keep_versions,
    )
    schema = import_schema_gen.outputs["schema"]
    # One artifact may reach a task under one input name only: KFP records an INPUT event per name,
    # and ML Metadata refuses two events of one kind between the same artifact and execution.
    window = transform.inputs["examples"] is not example_gen.outputs["examples"]
    card = _card_node(
        config,
        {
            **({"training_examples": transform.inputs["examples"]} if window else {}),
            "pushed_model": pusher.outputs["pushed_model"],
            "model": trainer.outputs["model"],
            "model_blessing": evaluator.outputs["blessing"],
            "evaluation": evaluator.outputs["evaluation"],
            "examples": example_gen.outputs["examples"],
            "transformed_examples": transform.outputs["transformed_examples"],
            "statistics": statistics_gen.outputs["statistics"],
            "schema": schema,
        },
        latest_blessed,
    )
    nodes = [latest_blessed, trainer, evaluator, pusher, card, *_predict_nodes(config, pusher, schema)]
    if not config.resolve_from_metadata:
        nodes.append(
            RecordBlessedModel(
                model=trainer.outputs["model"],
                model_blessing=evaluator.outputs["blessing"],
                pushed_model=pusher.outputs["pushed_model"],
                state_dir=_state_dir(config),
            )
        )
    return nodes


def create_pipeline(config: PipelineConfig, data_stages_only: bool = False) -> Pipeline:
    """Builds the Conveyor pipeline from a validated config; pure, reads nothing from the environment.

    Args:
      config: the dataset config with this run's output locations.
      data_stages_only: stop after Transform (ExampleGen through the data gate and Transform), as
        benchmarks/scale.py measures them.

    Returns:
      The TFX pipeline: ExampleGen through a push of blessed models only.
    """
    example_gen = _example_gen(config)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    previous_statistics, previous = _previous_statistics(config, statistics_gen)
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    import_schema_gen = ImportSchemaGen(schema_file=config.schema_path)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=import_schema_gen.outputs["schema"]
    )
    serving_nodes, serving_statistics = _serving_statistics(config)
    data_gate = DataGate(
        anomalies=example_validator.outputs["anomalies"],
        statistics=statistics_gen.outputs["statistics"],
        schema=import_schema_gen.outputs["schema"],
        previous_statistics=previous,
        **({"serving_statistics": serving_statistics} if serving_statistics is not None else {}),
        **({"serving_request_logs": config.serving_request_logs} if config.serving_request_logs else {}),
    )
    training_examples, window_nodes = _training_examples(config, example_gen)
    transform = Transform(
        examples=training_examples,
        schema=import_schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=config.transform_config(),
        # StatisticsGen and the data gate already cover the raw data; Transform's own pre- and
        # post-transform statistics would be two more full passes nobody reads.
        disable_statistics=True,
        # No run reads the analyzer cache back (no `analyzer_cache` input is wired), so writing it
        # would only add a Beam stage per analyzer.
        disable_analyzer_cache=True,
        force_tf_compat_v1=True,
    )
    transform.add_upstream_node(data_gate)
    model_nodes = (
        [] if data_stages_only else _model_nodes(config, example_gen, statistics_gen, import_schema_gen, transform)
    )
    store = config.output.store
    metadata = store.connection_config() if store is not None else None
    return Pipeline(
        pipeline_name=config.name,
        pipeline_root=config.output.pipeline_root,
        components=[
            example_gen,
            *serving_nodes,
            *([previous_statistics] if config.resolve_from_metadata else []),
            statistics_gen,
            *([] if config.resolve_from_metadata else [previous_statistics]),
            schema_gen,
            import_schema_gen,
            example_validator,
            data_gate,
            *window_nodes,
            transform,
            *model_nodes,
        ],
        enable_cache=True,
        metadata_connection_config=metadata,
        beam_pipeline_args=list(config.beam_args),
    )
