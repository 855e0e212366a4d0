"""Continuous training end to end over two spans: warm start from the served model, replace it only when better."""

import csv
import io
import random
from pathlib import Path

import pytest

from cli.main import main
from components.pusher.publish import list_versions, publish
from pipeline.config import EvaluationConfig, ModelConfig, ThresholdConfig, TrainingConfig, load_config
from pipeline.runner import run_local
from registry.lineage import int_property, open_store, pipeline_runs, run_executions
from registry.versions import versions
from tests.conftest import PROJECT_ROOT, SMALL_FEATURES, TAXI_CONFIG, write_csv

pytestmark = pytest.mark.e2e


def _span_sample(span: int, n: int, seed: int = 3):
    """n trips of one bundled span, every column with a value somewhere (see sample_taxi_rows)."""
    with open(PROJECT_ROOT / "data" / "taxi" / f"span-{span}" / "data.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    sample = random.Random(seed).sample(rows, n)
    for col in range(len(header)):
        if not any(r[col] for r in sample):
            # pickup_census_tract is empty in whole spans; the curated schema allows that.
            sample[-1 - col] = next((r for r in rows if r[col]), sample[-1 - col])
    return header, sample


@pytest.fixture(scope="session")
def span_runs(tmp_path_factory):
    """Span 1, then span 2 (warm start, compared with span 1's model), then a worse candidate."""
    root = tmp_path_factory.mktemp("spans")
    for span in (1, 2):
        write_csv(root / f"span-{span}" / "data.csv", *_span_sample(span, 300))
    out = tmp_path_factory.mktemp("ct_out")
    logs = tmp_path_factory.mktemp("ct_logs")
    evaluation = EvaluationConfig(
        metrics=("AUC", "BinaryAccuracy", "ExampleCount"),
        thresholds=(ThresholdConfig("AUC", lower_bound=0.3, max_change=0.05),),
        slices=(("payment_type",),),
    )

    def config(span=None, **changes):
        base = load_config(TAXI_CONFIG, output_dir=out, data_root=root, span=span)
        return base.replace(
            **{
                "training": TrainingConfig(train_steps=80, eval_steps=5),
                "evaluation": evaluation,
                "features": SMALL_FEATURES,
                **changes,
            }
        )

    results = {"a": run_local(config(span=1), io.StringIO(), logs)}
    results["versions_a"] = list_versions(config().serving_model_dir)
    # Span 2 trains on a rolling window of the last two spans and is evaluated on span 2 alone.
    results["b"] = run_local(config(window=2), io.StringIO(), logs)
    results["versions_b"] = list_versions(config().serving_model_dir)
    # Deliberately worse: one training step, and other layer sizes so no dense layer can warm-start.
    # Same data as span 2's run (Transform is served from cache), other training config: the
    # warm-start resolver must give the latest blessed model, as for new data.
    worse = config(window=2, training=TrainingConfig(train_steps=1, eval_steps=5), model=ModelConfig(hidden_units=(7,)))
    worse = worse.replace(
        evaluation=EvaluationConfig(
            metrics=evaluation.metrics, thresholds=(ThresholdConfig("AUC", lower_bound=0.3, max_change=0.0),)
        )
    )
    results["c"] = run_local(worse, io.StringIO(), logs)
    results["versions_c"] = list_versions(config().serving_model_dir)
    results["config"] = config()
    return results


def test_first_span_is_pushed_on_absolute_thresholds_alone(span_runs):
    a = span_runs["a"].summary
    assert a.span == 1
    assert a.training == "cold start: no blessed model yet"
    assert a.blessed and not a.has_baseline
    assert len(span_runs["versions_a"]) == 1
    assert "on absolute thresholds alone (first model)" in "\n".join(a.lines())


def test_second_span_warm_starts_from_the_served_model_and_is_compared_with_it(span_runs):
    config = span_runs["config"]
    store = open_store(config.output.metadata_path)
    run_a, run_b = pipeline_runs(store, config.name)[:2]
    a = run_executions(store, run_a, config.name)
    b = run_executions(store, run_b, config.name)
    model_a = a["Trainer"].output("model")
    assert [m.id for m in b["Trainer"].inputs["base_model"]] == [model_a.id]
    assert [m.id for m in b["Evaluator"].inputs["baseline_model"]] == [model_a.id]
    # The window: Transform (and so Trainer) saw spans 1 and 2; the Evaluator only span 2.
    assert sorted(int_property(e, "span") for e in b["Transform"].inputs["examples"]) == [1, 2]
    assert [int_property(e, "span") for e in b["Evaluator"].inputs["examples"]] == [2]
    summary = span_runs["b"].summary
    assert summary.span == 2
    version_a = span_runs["versions_a"][0]
    assert summary.training.startswith(f"warm-started from version {version_a} (span 1): ")
    assert summary.has_baseline
    auc = next(m for m in summary.metrics if m.name == "auc")
    assert auc.baseline is not None and auc.candidate is not None


def test_a_worse_candidate_is_not_blessed_and_the_served_model_stays(span_runs):
    c = span_runs["c"].summary
    assert c.blessed is False
    assert any(f.startswith("auc on Overall") for f in c.failures), c.failures
    assert c.pushed_to is None and "did not bless" in c.not_pushed_reason
    assert span_runs["versions_c"] == span_runs["versions_b"]
    assert "fresh: dense_0" in c.training
    config = span_runs["config"]
    store = open_store(config.output.metadata_path)
    run_b, run_c = pipeline_runs(store, config.name)[1:3]
    b, c_executions = run_executions(store, run_b, config.name), run_executions(store, run_c, config.name)
    assert c_executions["Transform"].state == "cached"
    model_b = b["Trainer"].output("model")
    assert [m.id for m in c_executions["Trainer"].inputs["base_model"]] == [model_b.id]
    assert [m.id for m in c_executions["Evaluator"].inputs["baseline_model"]] == [model_b.id]


def test_models_list_shows_the_spans_each_version_was_trained_on(span_runs, capsys):
    config = span_runs["config"]
    args = ["--config", config.source, "--output-dir", str(Path(config.output.metadata_path).parent)]
    assert main(["models", "list", *args]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    version_a, version_b = span_runs["versions_a"][0], span_runs["versions_b"][-1]
    assert rows[str(version_a)][2:3] == ["1"]
    assert rows[str(version_b)][2:3] == ["1-2"], "span 2's model was trained on a window of spans 1 and 2"


def test_runs_show_names_the_failed_threshold_of_a_not_blessed_run(span_runs, capsys):
    config = span_runs["config"]
    args = ["--config", config.source, "--output-dir", str(Path(config.output.metadata_path).parent)]
    run_c = span_runs["c"].summary.run_id
    assert main(["runs", "show", run_c, *args]) == 0
    out = capsys.readouterr().out
    assert "blessed: no" in out
    assert "auc on Overall: candidate " in out and "baseline " in out and "bound: may drop at most 0" in out
    assert main(["runs", "list", *args]) == 0
    assert "not blessed" in capsys.readouterr().out


def test_rollback_republishes_the_previous_version_with_lineage(span_runs, capsys):
    config = span_runs["config"]
    args = ["--config", config.source, "--output-dir", str(Path(config.output.metadata_path).parent)]
    model_dir = config.serving_model_dir
    good = list_versions(model_dir)[-1]
    # A bad version reached the directory (copied by hand): rollback serves `good` again.
    bad = publish(Path(model_dir) / str(good), model_dir)
    assert main(["models", "rollback", *args]) == 0
    assert f"version {good} is served again" in capsys.readouterr().out
    new = list_versions(model_dir)[-1]
    assert new > bad
    restored = (Path(model_dir) / str(new) / "saved_model.pb").read_bytes()
    assert restored == (Path(model_dir) / str(good) / "saved_model.pb").read_bytes()
    records = {r.version: r for r in versions(config.output.metadata_path, config.name, model_dir)}
    assert records[new].rollback_of == good
    config_text = (Path(config.output.serving_root) / "models.config").read_text()
    assert f'key: "stable"\n      value: {new}' in config_text
    assert main(["models", "rollback", "--to", "999", *args]) == 2
    assert "version 999 is not in" in capsys.readouterr().err


def test_a_rerun_of_span_two_would_warm_start_from_span_ones_model_again(span_runs):
    """The warm-start resolver for an unchanged re-run of span 2's run: not span 2's own model (that
    would defeat the cache) but the model that run warm-started from, with its blessing."""
    from components.warm_start import WarmStartModelStrategy
    from pipeline.pipeline import RUN_FN
    from registry.record import exec_property
    from tests.components.test_warm_start import typed_artifacts

    config = span_runs["config"]
    store = open_store(config.output.metadata_path)
    run_a, run_b = pipeline_runs(store, config.name)[:2]
    trainer_b = run_executions(store, run_b, config.name)["Trainer"]
    model_a = run_executions(store, run_a, config.name)["Trainer"].output("model")
    strategy = WarmStartModelStrategy(
        custom_config_json=exec_property(trainer_b, "custom_config"), train_steps=80, eval_steps=5, run_fn=RUN_FN
    )
    result = strategy.resolve_artifacts(
        store,
        {
            "model": typed_artifacts(store, "Model"),
            "model_blessing": typed_artifacts(store, "ModelBlessing"),
            **{key: trainer_b.inputs[key] for key in ("examples", "transform_graph", "schema")},
        },
    )
    assert [m.id for m in result["model"]] == [model_a.id]
    (blessing,) = result["model_blessing"]
    assert blessing.get_int_custom_property("current_model_id") == model_a.id
