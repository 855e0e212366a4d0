"""The warm-start resolver: the latest blessed model, except that an unchanged re-run resolves what
the run it repeats resolved, so that the Trainer, Evaluator and pusher are served from TFX's cache.

The stock LatestBlessedModelStrategy hands a re-run of unchanged data the model the first run
trained from that very data. The Trainer's inputs then differ from the first run's, so TFX's cache
cannot hit: the re-run trains (or at least evaluates and checks) again for nothing. This strategy
looks at how the latest blessed model was made (ML Metadata lineage): when its Trainer had exactly
this run's inputs (the same transformed examples, transform graph and schema artifacts, and the
same training config), it returns the model that Trainer warm-started from, and its blessing.
Every other case (new data, a changed config) resolves the latest blessed model, as the stock
strategy does.

Open-source Kubeflow Pipelines runs no resolvers: compiled pipelines read the latest blessed model
from a record in the artifact store instead (components.cluster_state;
`PipelineConfig.resolve_from_metadata`).
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy

MODEL = "model"
MODEL_BLESSING = "model_blessing"
# The Trainer inputs that identify a run's training data; the resolver takes this run's artifacts
# of each under the same key.
TRAINER_INPUTS = ("examples", "transform_graph", "schema")
BASE_MODEL = "base_model"


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return None


def _steps(value: str) -> Optional[int]:
    args = _json(value)
    if not isinstance(args, dict):
        return None
    steps = args.get("num_steps", args.get("numSteps"))
    return int(steps) if steps is not None else None


class WarmStartModelStrategy(LatestBlessedModelStrategy):
    """The latest blessed model, or for an unchanged re-run the base model of the run it repeats.

    Args:
      custom_config_json: the Trainer's `custom_config`, as JSON.
      train_steps: the Trainer's training steps.
      eval_steps: the Trainer's evaluation steps.
      run_fn: the Trainer's `run_fn` dotted path.
    """

    def __init__(self, custom_config_json: str, train_steps: int, eval_steps: int, run_fn: str):
        self._custom_config = json.loads(custom_config_json)
        self._train_steps = train_steps
        self._eval_steps = eval_steps
        self._run_fn = run_fn

    def resolve_artifacts(self, store, input_dict):
        models = {MODEL: input_dict.get(MODEL, []), MODEL_BLESSING: input_dict.get(MODEL_BLESSING, [])}
        passthrough = {k: v for k, v in input_dict.items() if k not in models}
        if not models[MODEL] or not models[MODEL_BLESSING]:
            return {MODEL: [], MODEL_BLESSING: [], **passthrough}
        result = self._resolve(models, MODEL, MODEL_BLESSING)
        if result[MODEL]:
            repeated = self._base_of_identical_run(store, result[MODEL][0], passthrough, models[MODEL_BLESSING])
            if repeated is not None:
                result = repeated
        return {**result, **passthrough}

    def _base_of_identical_run(self, store, model, current: dict, blessings: list) -> Optional[dict]:
        """When `model`'s Trainer had exactly this run's inputs: the model it warm-started from and
        that model's blessing (both empty for a cold start). Otherwise None."""
        producers = [e.execution_id for e in store.get_events_by_artifact_ids([model.id]) if _is_output(e)]
        if not producers:
            return None
        (trainer,) = store.get_executions_by_id(producers[:1])
        if not self._same_config(trainer):
            return None
        inputs: dict[str, set[int]] = {}
        for event in store.get_events_by_execution_ids([trainer.id]):
            if event.type == metadata_store_pb2.Event.INPUT and event.path.steps:
                inputs.setdefault(event.path.steps[0].key, set()).add(event.artifact_id)
        for key in TRAINER_INPUTS:
            if inputs.get(key, set()) != {a.id for a in current.get(key, [])}:
                return None
        base_ids = inputs.get(BASE_MODEL, set())
        if not base_ids:
            return {MODEL: [], MODEL_BLESSING: []}
        (base_id,) = base_ids
        blessing = max((b for b in blessings if _blesses(b, base_id)), key=lambda b: b.id, default=None)
        if blessing is None:
            return None
        return {MODEL: [_model(store, base_id)], MODEL_BLESSING: [blessing]}

    def _same_config(self, trainer: metadata_store_pb2.Execution) -> bool:
        props = trainer.custom_properties
        if props.get("run_fn") is None or props["run_fn"].string_value != self._run_fn:
            return False
        if _json(props["custom_config"].string_value if "custom_config" in props else "") != self._custom_config:
            return False
        train = _steps(props["train_args"].string_value) if "train_args" in props else None
        evaluate = _steps(props["eval_args"].string_value) if "eval_args" in props else None
        return (train, evaluate) == (self._train_steps, self._eval_steps)


def _model(store, artifact_id: int):
    from tfx.types import artifact_utils, standard_artifacts

    artifact_type = store.get_artifact_type(standard_artifacts.Model.TYPE_NAME)
    (artifact,) = store.get_artifacts_by_id([artifact_id])
    return artifact_utils.deserialize_artifact(artifact_type, artifact)


def _is_output(event: metadata_store_pb2.Event) -> bool:
    return event.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)


def _blesses(blessing, model_id: int) -> bool:
    from tfx.components.evaluator import constants

    return (
        blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY) == 1
        and blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY) == model_id
    )
