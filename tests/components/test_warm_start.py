"""The warm-start resolver strategy over the real ML Metadata of the end-to-end runs."""

import json

import pytest
from tfx.types import artifact_utils

from components.warm_start import WarmStartModelStrategy
from pipeline.pipeline import RUN_FN
from registry.lineage import open_store, pipeline_runs, run_executions

pytestmark = pytest.mark.e2e


def typed_artifacts(store, type_name):
    artifact_type = store.get_artifact_type(type_name)
    return [artifact_utils.deserialize_artifact(artifact_type, a) for a in store.get_artifacts_by_type(type_name)]


@pytest.fixture(scope="module")
def resolve(two_runs, e2e_config):
    """resolve(config changes, current inputs) -> the model ids the strategy gives the Trainer."""
    store = open_store(e2e_config.output.metadata_path)
    first_run = pipeline_runs(store, e2e_config.name)[0]
    trainer = run_executions(store, first_run, e2e_config.name)["Trainer"]
    current = {key: trainer.inputs[key] for key in ("examples", "transform_graph", "schema")}
    config = {
        "custom_config_json": json.dumps(e2e_config.component_config(), sort_keys=True),
        "train_steps": e2e_config.training.train_steps,
        "eval_steps": e2e_config.training.eval_steps,
        "run_fn": RUN_FN,
    }

    def run(inputs=None, **changes):
        strategy = WarmStartModelStrategy(**{**config, **changes})
        input_dict = {
            "model": typed_artifacts(store, "Model"),
            "model_blessing": typed_artifacts(store, "ModelBlessing"),
            **(current if inputs is None else inputs),
        }
        result = strategy.resolve_artifacts(store, input_dict)
        return [m.id for m in result["model"]], [b.id for b in result["model_blessing"]]

    return run, trainer.output("model").id, current


def test_an_unchanged_rerun_resolves_what_the_first_run_resolved(resolve):
    run, _, _ = resolve
    # The first run had no base model; so does a re-run with the same inputs and config.
    assert run() == ([], [])


def test_a_changed_training_config_warm_starts_from_the_latest_blessed_model(resolve):
    run, first_model, _ = resolve
    models, blessings = run(train_steps=41)
    assert models == [first_model] and len(blessings) == 1


def test_other_data_warm_starts_from_the_latest_blessed_model(resolve):
    run, first_model, current = resolve
    assert run(inputs={**current, "examples": []})[0] == [first_model]
