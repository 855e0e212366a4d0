"""The compiled pipeline executed as open-source Kubeflow Pipelines executes it (tests/kubeflow/kfp_harness.py):
two runs of one compiled file over two spans, the second warm-started from and compared with the first."""

import json
import os
from pathlib import Path

import pytest
import tensorflow as tf

from components.cluster_state import LATEST_BLESSED_MODEL, LATEST_STATISTICS, PLACEHOLDER, read_record, state_dir
from components.pusher.publish import TRAINING_RECORD, list_versions
from kubeflow.kubeflow_runner import cluster_config, compile_pipeline
from pipeline.config import EvaluationConfig, KubeflowConfig, ThresholdConfig, TrainingConfig, load_config
from pipeline.metadata import DEFAULT_PASSWORD_ENV, MetadataStore
from registry import lineage
from registry.lineage import connect
from registry.record import metrics_by_slice
from tests.conftest import SMALL_FEATURES, TAXI_CONFIG, write_csv
from tests.kubeflow import kfp_harness
from tests.servers import PASSWORD, start_mysql
from tests.test_continuous_training import _span_sample

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One compiled file, executed on span 1, then again after span 2 arrived."""
    data = tmp_path_factory.mktemp("cluster_data")
    write_csv(data / "span-1" / "data.csv", *_span_sample(1, 200))
    root = tmp_path_factory.mktemp("cluster_root")
    local = load_config(TAXI_CONFIG, output_dir=tmp_path_factory.mktemp("unused_local"), data_root=data)
    local = local.replace(
        training=TrainingConfig(train_steps=20, eval_steps=3),
        evaluation=EvaluationConfig(
            metrics=("AUC", "ExampleCount"), thresholds=(ThresholdConfig("AUC", lower_bound=0.2, max_change=0.5),)
        ),
        features=SMALL_FEATURES,
    )
    config = cluster_config(
        local,
        KubeflowConfig(
            pipeline_root=str(root / "pipeline_root"),
            data_root=str(data),
            serving_root=str(root / "serving"),
            image="conveyor:test",
            beam_args=("--direct_num_workers=1",),
        ),
    )
    spec = compile_pipeline(config, root / "pipeline.yaml")
    # What kubeflow/Dockerfile bakes into the image from `make image` (the pod has no git checkout), and
    # the password of KFP's MySQL (a MariaDB server on loopback) for `conveyor models list --metadata`.
    image_env = {"CONVEYOR_GIT_COMMIT": "0123abc", "CONVEYOR_GIT_DIRTY": "no", DEFAULT_PASSWORD_ENV: PASSWORD}
    saved = {k: os.environ.get(k) for k in image_env}
    os.environ.update(image_env)
    mysql, stop = start_mysql(Path(f"/tmp/conveyor-kfp-mysql-{os.getpid()}"))
    try:
        url = mysql.url()
        store = connect(MetadataStore.parse(url, DEFAULT_PASSWORD_ENV))
        yield (*_three_runs(config, spec, data, store), url)
    finally:
        stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _three_runs(config, spec, data, store):
    """Three executions of the compiled file, recorded in `store` as KFP records them."""
    first = kfp_harness.execute(spec, f"{config.output.pipeline_root}/run-1", metadata=store)
    versions_first = list_versions(config.serving_model_dir)
    # The same trips in another order: a new span the data gate's drift check (now against run 1's
    # statistics) passes; 200 trips of the real span 2 drift on `company` beyond the schema's 0.2.
    header, rows = _span_sample(1, 200)
    write_csv(data / "span-2" / "data.csv", header, rows[::-1])
    second = kfp_harness.execute(spec, f"{config.output.pipeline_root}/run-2", metadata=store)
    versions_second = list_versions(config.serving_model_dir)
    # Nothing changed: KFP runs every task again (ExampleGen is never cached), and nothing new is pushed.
    third = kfp_harness.execute(
        spec, f"{config.output.pipeline_root}/run-3", subprocess_tasks=("ImportSchemaGen",), metadata=store
    )
    return config, first, versions_first, second, versions_second, third, list_versions(config.serving_model_dir)


def _one(outputs, task, key):
    (artifact,) = outputs[task][key]
    return artifact


def _training_record(outputs) -> dict:
    model = _one(outputs, "Trainer", "model")
    return json.loads((Path(model["uri"]) / "Format-Serving" / TRAINING_RECORD).read_text())


def test_first_run_ingests_the_newest_span_trains_cold_and_pushes_a_loadable_model(cluster):
    config, first, versions, *_ = cluster
    assert _one(first, "CsvExampleGen", "examples")["metadata"]["span"] == 1
    assert _one(first, "latest_blessed_model", "model")["metadata"][PLACEHOLDER] == 1
    assert lineage.PLACEHOLDER == PLACEHOLDER, "the registry skips the placeholders KFP records as inputs"
    assert _training_record(first)["warm_start"]["base_model"] is None
    assert _one(first, "SafePusher", "pushed_model")["metadata"]["pushed"] == 1
    assert len(versions) == 1
    loaded = tf.saved_model.load(str(Path(config.serving_model_dir) / str(versions[0])))
    assert "serving_default" in loaded.signatures


def test_the_pipeline_writes_the_model_card_and_the_provenance_of_the_cluster_run(cluster):
    """ModelCardGen ran in the cluster's run: a card in the pushed version, and the provenance the
    registry reads (the Kubeflow run that started it, the pipeline run's id, the code version)."""
    config, first, versions, second, *_ = cluster
    card = _one(first, "ModelCardGen", "model_card")["metadata"]
    assert card["version"] == str(versions[0])
    page = Path(card["card_html"])
    assert page == Path(config.serving_model_dir) / str(versions[0]) / "assets.extra" / "model_card.html"
    text = page.read_text()
    assert "Model card: taxi version" in text and "started by: Kubeflow Pipelines run run-1" in text
    assert card["started_by"] == "Kubeflow Pipelines run run-1" and len(card["pipeline_run"]) == 36
    assert card["git_commit"] == "0123abc" and card["git_dirty"] == "no", "the image's code version"
    assert (Path(_one(first, "ModelCardGen", "model_card")["uri"]) / "model_card.html").read_text() == text
    # The second run's card compares with the first model: its baseline is the latest blessed model.
    second_card = Path(_one(second, "ModelCardGen", "model_card")["metadata"]["card_html"]).read_text()
    assert "baseline: " + _one(second, "latest_blessed_model", "model")["uri"] in second_card


def test_models_list_reads_the_cluster_runs_from_kfps_own_ml_metadata(cluster, tmp_path, capsys):
    """`conveyor models list/show --metadata mysql://...` on the store as KFP's driver and launcher write it
    (system.PipelineRun contexts, task_name executions, tfx.* artifact types): both pushed versions, their
    spans and metrics, and the provenance the pipeline's ModelCardGen recorded."""
    import yaml

    from cli.main import main
    from tests.conftest import TAXI_CONFIG

    config, _, _, _, versions, *_, url = cluster
    raw = yaml.safe_load(TAXI_CONFIG.read_text())
    raw["schema"] = str((TAXI_CONFIG.parent / raw["schema"]).resolve())
    raw["data"]["root"] = str((TAXI_CONFIG.parent / raw["data"]["root"]).resolve())
    raw["kubeflow"]["serving_root"] = str(Path(config.serving_model_dir).parent)
    path = tmp_path / "taxi.yaml"
    path.write_text(yaml.safe_dump(raw))
    common = ["--config", str(path), "--output-dir", str(tmp_path / "out"), "--metadata", url]
    assert main(["models", "list", *common]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == [str(v) for v in reversed(versions)], out
    assert [r[2] for r in rows] == ["2", "1"], "spans"
    assert "auc" in out and "pushed by Kubeflow to" in out
    assert main(["models", "show", str(versions[0]), *common]) == 0
    shown = capsys.readouterr().out
    assert "started by: Kubeflow Pipelines run run-1" in shown and "git commit: 0123abc" in shown
    assert "SafePusher" in shown and "blessed: yes" in shown
    assert main(["runs", "list", *common]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 3 and all(" succeeded " in line for line in listed), listed
    assert "pushed version" not in listed[0], "run 3 (newest) pushed nothing new"
    assert [sum(f"pushed version {v}" in line for line in listed) for v in versions] == [1, 1], listed
    # The UI's per-stage reads find KFP's tasks by their task_name (no TFX node contexts on a cluster).
    from pipeline.metadata import MetadataStore
    from registry.runs import runs_of_nodes, runs_page

    store = MetadataStore.parse(url)
    stats = runs_of_nodes(store, config.name, ("StatisticsGen", "ExampleValidator"))
    assert len(stats) == 3 and all(set(ex) == {"StatisticsGen", "ExampleValidator"} for _, ex, _ in stats)
    assert all(summary.rows.get("train") for _, _, summary in stats)
    assert runs_page(store, config.name, "pushed").total == 2
    # The UI's models pages read the versions Kubeflow pushed too (into the config's kubeflow.serving_root).
    from pipeline.config import load_config
    from registry.ui import Registry

    ui_config = load_config(str(path), output_dir=str(tmp_path / "out"), metadata=url)
    registry = Registry(ui_config, tmp_path / "out", rollback=lambda version: (version, version))
    assert [r.version for r in registry.versions()] == list(reversed(versions))
    # Who and which code: a cluster run's context holds nothing of it; its ModelCardGen recorded it.
    from registry.ui_pages import runs_page as runs_html

    oldest = listed[-1].split()[0]
    assert main(["runs", "show", oldest, *common]) == 0
    assert "  git_commit: 0123abc" in capsys.readouterr().out
    page = runs_page(store, config.name)
    assert page.total == 3 and "<code>0123abc</code>" in runs_html(page.rows, None, config.name)


def test_second_run_takes_the_new_span_warm_starts_from_the_first_model_and_compares_with_it(cluster):
    config, first, _, second, versions, *_ = cluster
    assert _one(second, "CsvExampleGen", "examples")["metadata"]["span"] == 2
    base = _one(second, "latest_blessed_model", "model")
    assert base["metadata"]["blessed_model_uri"] == _one(first, "Trainer", "model")["uri"]
    start = _training_record(second)["warm_start"]
    assert start["base_model"] and start["loaded_layers"], start
    metrics = metrics_by_slice(_one(second, "Evaluator", "evaluation")["uri"])
    assert all("baseline" in m for m in metrics["Overall"].values()), metrics["Overall"]
    assert len(versions) == 2


def test_drift_is_checked_against_the_previous_runs_statistics(cluster):
    config, first, _, second, *_ = cluster
    assert "conveyor_placeholder" in _one(first, "PreviousStatistics", "previous_statistics")["metadata"]
    previous = _one(second, "PreviousStatistics", "previous_statistics")
    assert previous["metadata"]["recorded_uri"] == _one(first, "StatisticsGen", "statistics")["uri"]
    assert tf.io.gfile.glob(f"{previous['uri']}/Split-train/FeatureStats.pb")
    # After the third run (unchanged data), its statistics and its blessed (if not pushed) model are the latest.
    third = cluster[5]
    records = state_dir(config.output.pipeline_root, config.name)
    assert read_record(records, LATEST_STATISTICS)["uri"] == _one(third, "StatisticsGen", "statistics")["uri"]
    assert read_record(records, LATEST_STATISTICS)["previous_uri"] == _one(second, "StatisticsGen", "statistics")["uri"]
    assert read_record(records, LATEST_BLESSED_MODEL)["model_uri"] == _one(third, "Trainer", "model")["uri"]


def test_an_unchanged_rerun_pushes_nothing_new(cluster):
    config, _, _, second, versions_second, third, versions_third, _ = cluster
    assert _one(third, "CsvExampleGen", "examples")["metadata"]["span"] == 2
    pushed = _one(third, "SafePusher", "pushed_model")["metadata"]
    assert pushed["pushed"] == 0
    assert "already serves a model trained from the same data, schema and config" in pushed["not_pushed_reason"]
    assert versions_third == versions_second


def test_a_task_runs_as_the_containers_own_command_in_a_process_of_its_own(cluster):
    """ImportSchemaGen of the third run ran as `python -m kubeflow.entrypoint ...`, a real process."""
    *_, third, _, _ = cluster
    schema = Path(_one(third, "ImportSchemaGen", "schema")["uri"]) / "schema.pbtxt"
    assert schema.read_text() == (Path(kfp_harness.PROJECT_ROOT) / "schema" / "taxi" / "schema.pbtxt").read_text()
