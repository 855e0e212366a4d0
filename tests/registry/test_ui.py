"""`conveyor ui` over the e2e runs' real output: each page against the registry's own values, the
read-only rules, the rollback flow against `conveyor models rollback`, and the pages in headless Chromium."""

import html
import json
import math
import os
import re
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from cli.ui import rollback_action, schema_review
from components.pusher.publish import list_versions, publish
from pipeline.config import OutputConfig
from registry.lineage import custom_property, open_store
from registry.record import describe
from registry.runs import outcome, runs
from registry.ui import Registry, make_server
from registry.ui_pages import e, metric_series, outcome_text
from registry.versions import served_version, versions

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def serving(config, output_dir, review_log=None):
    log, schema_diff = schema_review(config)
    registry = Registry(config, Path(output_dir), rollback_action(config), review_log or log, schema_diff)
    server = make_server(registry, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetch(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=60) as r:
            return r.status, r.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8")


def output_dir_of(config) -> Path:
    return Path(config.output.metadata_path).parent


@pytest.fixture(scope="module")
def ui(two_runs, e2e_config):
    with serving(e2e_config, output_dir_of(e2e_config)) as base:
        yield base


@pytest.fixture
def private(two_runs, e2e_config, tmp_path):
    """A copy of the store and the serving directory (the pipeline's artifacts stay shared, read-only):
    the copy's pushes name the copied serving directory, so a rollback there leaves the session's alone."""
    source = output_dir_of(e2e_config)
    shutil.copy(source / "metadata.sqlite", tmp_path / "metadata.sqlite")
    shutil.copytree(e2e_config.output.serving_root, tmp_path / "serving_model")
    old, new = e2e_config.output.serving_root, str(tmp_path / "serving_model")
    store = open_store(str(tmp_path / "metadata.sqlite"), readonly=False)
    pushed = [a for a in store.get_artifacts_by_type("PushedModel") if custom_property(a, "pushed_destination")]
    for artifact in pushed:
        where = custom_property(artifact, "pushed_destination")
        artifact.custom_properties["pushed_destination"].string_value = where.replace(old, new, 1)
        if artifact.uri.startswith(old):  # a rollback's PushedModel is the version directory itself
            artifact.uri = new + artifact.uri[len(old) :]
    store.put_artifacts(pushed)
    out = OutputConfig.under(tmp_path)
    return e2e_config.replace(output=OutputConfig(e2e_config.output.pipeline_root, out.serving_root, out.metadata_path))


def test_runs_page_lists_every_run_newest_first_with_its_outcome(ui, e2e_config):
    status, body = fetch(f"{ui}/runs")
    assert status == 200
    found = runs(e2e_config.output.store, e2e_config.name)
    assert len(found) >= 2
    positions = [body.index(f">{e(run.name)}</a>") for run, _, _ in found]
    assert positions == sorted(positions), "newest first, as `conveyor runs list`"
    for run, executions, summary in found:
        assert e(outcome_text(outcome(executions, summary), summary)) in body
        assert run.custom_properties["git_commit"].string_value[:12] in body
    kinds = {outcome(ex, s).kind: run.name for run, ex, s in found}
    assert {"pushed", "cached"} <= set(kinds)
    _, pushed_only = fetch(f"{ui}/runs?outcome=pushed")
    assert kinds["pushed"] in pushed_only and f">{kinds['cached']}</a>" not in pushed_only
    assert fetch(f"{ui}/runs?outcome=nonsense")[0] == 400


def test_run_page_shows_components_states_and_artifacts(ui, e2e_config):
    found = runs(e2e_config.output.store, e2e_config.name)
    for run, executions, summary in found[:2]:
        status, body = fetch(f"{ui}/runs/{urllib.parse.quote(run.name)}")
        assert status == 200
        for node_id, node in executions.items():
            assert f"<td>{e(node_id)}</td>" in body
            for artifacts in node.outputs.values():
                assert all(f"/files?path={urllib.parse.quote(a.uri)}" in body for a in artifacts)
        assert e(summary.lines()[0]) in body
    cached = next(run for run, ex, _ in found if any(n.state == "cached" for n in ex.values()))
    _, body = fetch(f"{ui}/runs/{urllib.parse.quote(cached.name)}")
    assert '<span class="tag warn">cached</span>' in body
    assert fetch(f"{ui}/runs/no-such-run")[0] == 404


def test_models_page_has_every_version_state_and_the_metrics_chart(ui, e2e_config):
    status, body = fetch(f"{ui}/models")
    assert status == 200
    records = versions(e2e_config.output.store, e2e_config.name, e2e_config.serving_model_dir)
    assert records
    for r in records:
        assert f'<a href="/models/{r.version}">{r.version}</a>' in body
    served = served_version(e2e_config.serving_model_dir)
    assert re.search(rf"/models/{served}\">{served}</a></td><td><span class=\"tag ok\">served", body)
    assert '<span class="tag">stable</span>' in body
    series = metric_series(records)
    assert "auc" in series
    for name, values in series.items():
        for version, value in values:
            assert f'data-metric="{name}" data-version="{version}" data-value="{value:.6f}"' in body


def test_version_page_has_the_record_lineage_and_card(ui, e2e_config):
    records = versions(e2e_config.output.store, e2e_config.name, e2e_config.serving_model_dir)
    record = records[0]
    status, body = fetch(f"{ui}/models/{record.version}")
    assert status == 200
    for line in describe(record, e2e_config.model_name):
        assert e(line) in body
    lineage = body[body.index("id='lineage'") : body.index("<h2>Record")]
    for step in ("data", "statistics", "schema", "transform", "model", "evaluation", f"push: version {record.version}"):
        assert f"<b>{step}</b>" in lineage
    assert urllib.parse.quote(record.executions["StatisticsGen"].output("statistics").uri) in lineage
    assert "cold start" in lineage and f"train {record.summary.rows['train']:,}" in lineage
    card = Path(record.destination) / "assets.extra" / "model_card.html"
    assert card.is_file() and 'sandbox="" srcdoc="' in body
    assert fetch(f"{ui}/models/123456")[0] == 404


def test_only_rollback_may_post_and_files_stay_inside_the_output_dir(ui, e2e_config):
    assert fetch(f"{ui}/runs", method="DELETE")[0] == 405
    assert fetch(f"{ui}/runs", data=b"x=1")[0] == 405
    assert fetch(f"{ui}/models", method="PUT", data=b"")[0] == 405
    version = list_versions(e2e_config.serving_model_dir)[0]
    assert fetch(f"{ui}/models/{version}/rollback", data=b"token=forged")[0] == 403
    assert list_versions(e2e_config.serving_model_dir) == [version], "a refused POST changes nothing"
    assert fetch(f"{ui}/files?path=/etc/passwd")[0] == 403
    outside = output_dir_of(e2e_config) / ".." / ".." / "etc"
    assert fetch(f"{ui}/files?path={urllib.parse.quote(str(outside))}")[0] == 403
    status, body = fetch(f"{ui}/files?path={urllib.parse.quote(e2e_config.serving_model_dir)}")
    assert status == 200 and f">{version}</a>/" in body


def _record_of(config, version):
    return next(r for r in versions(config.output.store, config.name, config.serving_model_dir) if r.version == version)


def test_rollback_through_the_confirmation_is_conveyor_models_rollback(private):
    from cli.main import main

    model_dir = private.serving_model_dir
    good = list_versions(model_dir)[-1]
    bad = publish(Path(model_dir) / str(good), model_dir)  # a bad version reached the directory by hand
    with serving(private, output_dir_of(private)) as base:
        status, confirm = fetch(f"{base}/models/{good}/rollback")
        assert status == 200 and f"Roll back to version {good}?" in confirm
        assert list_versions(model_dir) == [good, bad], "the GET only asks"
        token = re.search(r'name="token" value="([^"]+)"', confirm).group(1)
        status, done = fetch(f"{base}/models/{good}/rollback", data=urllib.parse.urlencode({"token": token}).encode())
        assert status == 200
        ui_new = list_versions(model_dir)[-1]
        assert f"Version {good} is served again as version {ui_new}." in done and ui_new > bad
        assert fetch(f"{base}/models/{ui_new}")[0] == 200
    ui_config = (Path(private.output.serving_root) / "models.config").read_text()
    args = ["--config", private.source, "--output-dir", str(output_dir_of(private))]
    assert main(["models", "rollback", "--to", str(good), *args]) == 0
    cli_new = list_versions(model_dir)[-1]
    cli_config = (Path(private.output.serving_root) / "models.config").read_text()
    assert cli_config == ui_config.replace(str(ui_new), str(cli_new))
    by_ui, by_cli = _record_of(private, ui_new), _record_of(private, cli_new)
    assert by_ui.rollback_of == by_cli.rollback_of == good
    ui_dir, cli_dir = Path(model_dir) / str(ui_new), Path(model_dir) / str(cli_new)
    assert sorted(p.relative_to(ui_dir) for p in ui_dir.rglob("*")) == sorted(
        p.relative_to(cli_dir) for p in cli_dir.rglob("*")
    )
    marker = json.loads((ui_dir / "assets.extra" / "rollback.json").read_text())
    assert (
        marker["rollback_of"]
        == good
        == json.loads((cli_dir / "assets.extra" / "rollback.json").read_text())["rollback_of"]
    )
    pb = (Path(model_dir) / str(good) / "saved_model.pb").read_bytes()
    assert (ui_dir / "saved_model.pb").read_bytes() == pb


def _chromium():
    if CHROMIUM is None:
        message = "chromium is not installed: `apt-get install chromium` (.ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def test_pages_in_headless_chromium_fetch_nothing_from_elsewhere_and_roll_back(private, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    model_dir = private.serving_model_dir
    good = list_versions(model_dir)[-1]
    publish(Path(model_dir) / str(good), model_dir)
    records = versions(private.output.store, private.name, model_dir)
    found = runs(private.output.store, private.name)
    elsewhere = []
    with serving(private, output_dir_of(private)) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()

            def route(r):
                if urllib.parse.urlsplit(r.request.url).hostname != "127.0.0.1":
                    elsewhere.append(r.request.url)
                    r.abort()
                else:
                    r.continue_()

            page.route("**/*", route)
            page.goto(f"{base}/runs")
            assert page.locator("table#runs tr").count() == len(found) + 1
            page.screenshot(path=str(tmp_path / "runs.png"))
            page.goto(f"{base}/models")
            assert page.locator("svg#metrics-chart circle.point").count() == sum(
                map(len, metric_series(records).values())
            )
            assert page.locator("table#versions tr").count() == len(records) + 1
            page.screenshot(path=str(tmp_path / "models.png"))
            page.click(f"a[href='/models/{good}']")
            assert page.locator("#lineage .step").count() >= 6
            # The model card is drawn inside the page (sandboxed), its charts decoded from data: URIs.
            card_image = page.frame_locator("#card").locator("img").first
            assert card_image.evaluate("img => img.complete && img.naturalWidth") > 200
            page.click(f"a[href='/models/{good}/rollback']")
            page.click("#confirm")
            page.wait_for_selector("#done")
            new = list_versions(model_dir)[-1]
            assert page.locator("#done").inner_text() == f"Version {good} is served again as version {new}."
            # Runs -> the run that pushed `good` -> its version -> compared with the rollback's version.
            pushed_run, pushed_executions, _ = next(f for f in found if f[2].pushed_to)
            page.goto(f"{base}/runs")
            page.click(f"table#runs a[href='/runs/{urllib.parse.quote(pushed_run.name)}']")
            assert page.locator("svg#graph g.node").count() == len(pushed_executions)
            assert page.locator("#summary").inner_text().splitlines()[0] == "status: succeeded"
            page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
            page.click("#version")
            assert urllib.parse.urlsplit(page.url).path == f"/models/{good}"
            page.select_option("#compare select[name='b']", str(new))
            page.click("#compare button")
            page.wait_for_selector("table#metrics")
            metrics, _ = _evaluation_of(_record_of(private, good))
            expected = [(w, n, v["candidate"]) for w, by in metrics.items() for n, v in by.items() if "candidate" in v]
            rows = page.locator("table#metrics tr")
            assert rows.count() == len(expected) + 1
            where, name, a_value, b_value, _ = rows.nth(1).locator("td").all_inner_texts()
            assert where == "Overall" and a_value == f"{metrics['Overall'][name]['candidate']:.4f}"
            assert b_value == "", "the rollback's version was evaluated by no run of its own"
            page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
            page.goto(f"{base}/data")
            assert page.locator("table.features svg.dist").count() > 10
            page.screenshot(path=str(tmp_path / "data.png"), full_page=True)
        finally:
            browser.close()
    assert elsewhere == []
    assert _record_of(private, new).rollback_of == good


def test_values_from_ml_metadata_are_escaped_not_run():
    """A run name, a user and an error text are ML Metadata strings: each reaches the page as text."""
    from ml_metadata.proto import metadata_store_pb2

    from registry.lineage import NodeExecution
    from registry.runs import ERROR_KEY
    from registry.summary import RunSummary
    from registry.ui_pages import runs_page
    from registry.ui_run import run_page

    attack = '<script>alert("x")</script>'
    run = metadata_store_pb2.Context(name=attack)
    run.custom_properties["user"].string_value = attack
    execution = metadata_store_pb2.Execution(last_known_state=metadata_store_pb2.Execution.FAILED)
    execution.custom_properties[ERROR_KEY].string_value = attack
    executions = {attack: NodeExecution(attack, "failed", execution)}
    for body in (
        runs_page([(run, executions, RunSummary(attack))], None, attack),
        run_page(run, executions, RunSummary(attack), {"user": attack}, Path("/nonexistent")),
    ):
        assert "<script" not in body and e(attack) in body


def _cli_out(capsys, *argv: str) -> str:
    from cli.main import main

    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _inner(body: str, element_id: str) -> str:
    """The text of the <pre> with this id, unescaped."""
    match = re.search(rf"id='{element_id}'>(.*?)</pre>", body, re.S)
    return html.unescape(match.group(1))


def test_run_page_graph_follows_ml_metadata_events_and_summary_is_runs_show(ui, e2e_config, two_runs, capsys):
    from ml_metadata.proto import metadata_store_pb2

    store = open_store(e2e_config.output.store)
    args = ["--config", e2e_config.source, "--output-dir", str(output_dir_of(e2e_config))]
    states = set()
    # The session's two runs (the first trains and pushes, the second is cached), whatever other test
    # files in this test process added to the same store before (gate-stopped runs have no Trainer).
    ours = {two_runs[0].summary.run_id, two_runs[2].summary.run_id}
    listed = [r for r in runs(e2e_config.output.store, e2e_config.name) if r[0].name in ours]
    assert len(listed) == 2
    for run, executions, summary in listed:
        _, body = fetch(f"{ui}/runs/{urllib.parse.quote(run.name)}")
        # Every execution is a node, with the state ML Metadata recorded (cached ones as cached).
        nodes = dict(re.findall(r'<g class="node" data-node="([^"]+)" data-state="([^"]+)"', body))
        assert set(nodes) == set(executions)
        states.update(nodes.values())
        for node_id, node in executions.items():
            expected = "nothing resolved" if node.state == "failed" and node_id.endswith("_resolver") else node.state
            assert nodes[node_id] == expected
        # Every edge is an artifact one execution wrote and another read, straight from the events.
        drawn = set(re.findall(r'class="edge" data-from="([^"]+)" data-to="([^"]+)"', body))
        ids = {n.execution.id: node_id for node_id, n in executions.items()}
        events = store.get_events_by_execution_ids(list(ids))
        wrote = {(ev.artifact_id, ids[ev.execution_id]) for ev in events if ev.type == metadata_store_pb2.Event.OUTPUT}
        read = {(ev.artifact_id, ids[ev.execution_id]) for ev in events if ev.type == metadata_store_pb2.Event.INPUT}
        assert drawn == {(w, r) for a, w in wrote for b, r in read if a == b and w != r}
        assert {("CsvExampleGen", "StatisticsGen"), ("Transform", "Trainer"), ("Trainer", "Evaluator")} <= drawn
        assert _inner(body, "summary") == _cli_out(capsys, "runs", "show", run.name, *args).rstrip("\n")
        if summary.pushed_to:
            assert f'id="version" href="/models/{Path(summary.pushed_to).name}"' in body
    assert {"cached", "complete"} <= states, "the second run's components came from the cache"


def test_a_components_part_of_the_run_log_is_found_by_the_run_id(private, two_runs):
    """`conveyor run`'s one log per run, placed where it writes it (<output>/logs): each component's part."""
    first = runs(private.output.store, private.name)[-1][0]
    logs = output_dir_of(private) / "logs"
    logs.mkdir(exist_ok=True)
    shutil.copy(two_runs[0].log_path, logs / two_runs[0].log_path.name)
    with serving(private, output_dir_of(private)) as base:
        status, body = fetch(f"{base}/runs/{urllib.parse.quote(first.name)}/log/Trainer")
        assert status == 200
        shown = html.unescape(re.search(r"<pre class='log'>(.*?)</pre>", body, re.S).group(1)).splitlines()
        lines = two_runs[0].log_path.read_text(encoding="utf-8").splitlines()
        start = next(i for i, line in enumerate(lines) if line.endswith("Component Trainer is running."))
        end = next(i for i in range(start + 1, len(lines)) if lines[i].endswith(" is running."))
        assert shown == lines[start:end][-400:] and lines[end].endswith("Component Evaluator is running.")
        assert fetch(f"{base}/runs/{urllib.parse.quote(first.name)}/log/NoSuchNode")[0] == 404
        logs.joinpath(two_runs[0].log_path.name).unlink()
        _, body = fetch(f"{base}/runs/{urllib.parse.quote(first.name)}/log/Trainer")
        assert "TFX writes no log per component" in body


def test_files_route_refuses_paths_outside_the_output_directory(private, tmp_path):
    with serving(private, output_dir_of(private)) as base:
        for raw in ("../../../../etc/passwd", "serving_model/../../..", "/etc/passwd", str(tmp_path.parent)):
            assert fetch(f"{base}/files?path={urllib.parse.quote(raw)}")[0] == 403, raw
        (tmp_path / "escape").symlink_to("/etc")
        assert fetch(f"{base}/files?path=escape/passwd")[0] == 403, "a symlink out is outside too"
        status, body = fetch(f"{base}/files?path=serving_model/models.config")
        assert status == 200 and "model_config_list" in body
        assert fetch(f"{base}/files?path=no_such_file")[0] == 404


def _evaluation_of(record):
    from registry.record import metrics_by_slice, thresholds

    evaluator = record.executions["Evaluator"]
    return metrics_by_slice(evaluator.output("evaluation").uri), thresholds(evaluator)


def test_compare_shows_every_metric_per_slice_thresholds_config_and_data(ui, e2e_config):
    records = versions(e2e_config.output.store, e2e_config.name, e2e_config.serving_model_dir)
    record = records[-1]
    v = record.version
    status, body = fetch(f"{ui}/compare?a={v}&b={v}")
    assert status == 200
    metrics, bounds = _evaluation_of(record)
    assert len(metrics) > 1, "the e2e config slices the evaluation"
    table = body[body.index("id='metrics'") : body.index("id='thresholds'")]
    for where, by_name in metrics.items():
        for name, values in by_name.items():
            if "candidate" in values:
                value = f"{values['candidate']:.4f}"
                row = f"<tr><td>{e(where)}</td><td>{e(name)}</td><td>{value}</td><td>{value}</td>"
                change = "" if math.isnan(values["candidate"]) else '<span class="tag ">+0.0000</span>'
                assert f"{row}<td>{change}</td></tr>" in table, (where, name)
    assert table.index("<td>Overall</td>") < min(table.index(f"<td>{e(w)}</td>") for w in metrics if w != "Overall")
    thresholds_table = body[body.index("id='thresholds'") : body.index("id='config'")]
    assert bounds and all(e(t["bound"]) in thresholds_table for t in bounds)
    # The e2e config's thresholds: AUC >= 0.3 and may drop 0.5 at most, BinaryAccuracy >= 0.3.
    assert {(t["metric"], t["kind"]) for t in bounds} == {
        ("auc", "value"),
        ("auc", "change vs baseline"),
        ("binary_accuracy", "value"),
    }
    assert thresholds_table.count("&gt;= 0.3") == 2 * 2 and thresholds_table.count("pass</span>") == 2 * len(bounds)
    assert "0 difference(s)" in body[body.index("Config difference") :]
    data = body[body.index("id='data'") :]
    assert "no difference" in data
    for bad in ("a=1&b=2", f"a={v}", f"a={v}&b=nonsense", "a=../1&b=1"):
        assert fetch(f"{ui}/compare?{bad}")[0] == 404


def test_data_page_draws_each_features_statistics_and_the_review_history(private, two_runs, tmp_path):
    import tensorflow_data_validation as tfdv

    from schema import review

    found = runs(private.output.store, private.name)
    statistics = found[-1][1]["StatisticsGen"].output("statistics")
    stats = tfdv.load_stats_binary(str(Path(statistics.uri) / "Split-train" / "FeatureStats.pb"))
    log = tmp_path / "schema" / review.REVIEW_LOG
    log.parent.mkdir()
    result, _ = review.diff_statistics(stats, private.schema_path, "the e2e data", 271)
    assert result.changes, "the e2e data's small sample differs from the curated schema"
    review.record_review(log, result, result.changes[:1], "before", "after", {"id": found[-1][0].name})
    with serving(private, output_dir_of(private), review_log=log) as base:
        status, body = fetch(f"{base}/data")
    assert status == 200
    assert "span 0</b>" in body and e(found[-1][0].name) in body
    train = body[body.index("data-split='train'") : body.index("</table>", body.index("data-split='train'"))]
    for feature in stats.datasets[0].features:
        name = feature.path.step[0]
        common = feature.num_stats.common_stats if feature.HasField("num_stats") else feature.string_stats.common_stats
        fraction = common.num_missing / (common.num_missing + common.num_non_missing)
        assert f'class="missing" data-feature="{e(name)}" data-fraction="{fraction:.6f}"' in train
        chart = re.search(rf'class="dist" data-feature="{re.escape(e(name))}".*?</svg>', train, re.S).group(0)
        if feature.HasField("num_stats"):
            expected = len(next(h for h in feature.num_stats.histograms if h.type == 0).buckets)
        else:
            expected = min(12, len(feature.string_stats.top_values))
        assert chart.count('class="bar"') == expected, name
    diff = body[body.index("id='diff'") :]
    assert all(e(c.line()) in diff for c in result.changes)
    history = body[body.index("id='reviews'") :]
    change = result.changes[0]
    assert e(change.text) in history and e(change.feature) in history and "1 change(s) from the e2e data" in history
    assert "<li>none</li>" in body[body.index("id='anomalies'") :] and not found[-1][2].anomalies


def test_a_page_is_drawn_again_when_ml_metadata_changes(private):
    """Pages are kept while their sources stand still (registry.ui_memo); a write to the store shows at once."""
    with serving(private, output_dir_of(private)) as base:
        _, before = fetch(f"{base}/runs")
        assert fetch(f"{base}/runs")[1] == before
        store = open_store(private.output.store, readonly=False)
        run = runs(private.output.store, private.name)[0][0]
        run.custom_properties["user"].string_value = "someone-else"
        store.put_contexts([run])
        _, after = fetch(f"{base}/runs")
        assert "someone-else" in after and "someone-else" not in before


def test_new_pages_escape_feature_names_run_errors_and_pipeline_names(tmp_path):
    """A feature name (from a CSV header), a run's error, its log and a pipeline name reach the pages as text."""
    from ml_metadata.proto import metadata_store_pb2
    from tensorflow_metadata.proto.v0 import statistics_pb2

    from registry.lineage import NodeExecution
    from registry.runs import ERROR_KEY
    from registry.summary import RunSummary
    from registry.ui_compare import compare_page
    from registry.ui_data import SpanStatistics, data_page
    from registry.ui_run import run_page
    from registry.versions import VersionRecord

    attack = '<script>alert("x")</script>'
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    feature = stats.datasets.add(num_examples=3).features.add()
    feature.path.step.append(attack)
    feature.string_stats.common_stats.num_non_missing = 3
    feature.string_stats.top_values.add(value=attack, frequency=3)
    (tmp_path / "stats" / "Split-train").mkdir(parents=True)
    (tmp_path / "stats" / "Split-train" / "FeatureStats.pb").write_bytes(stats.SerializeToString())
    summary = RunSummary(attack, anomalies={"train": [attack]})
    found = [SpanStatistics([1], attack, str(tmp_path / "stats"), ["train"], summary, [attack])]
    review_log = tmp_path / "reviews.jsonl"
    change = {"feature": attack, "kind": attack, "text": attack}
    review_log.write_text(json.dumps({"approved_by": attack, "data": attack, "changes": [change]}) + "\n")
    data = data_page(found, found[0], review_log, tmp_path, lambda *_: ([attack], [attack]))

    run = metadata_store_pb2.Context(name=attack)
    execution = metadata_store_pb2.Execution(last_known_state=metadata_store_pb2.Execution.FAILED)
    execution.custom_properties[ERROR_KEY].string_value = attack
    executions = {attack: NodeExecution(attack, "failed", execution)}
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "run-1.log").write_text(
        f'string_value: "{attack}"\nComponent {attack} is running.\nTraceback: {attack}\n', encoding="utf-8"
    )
    run_body = run_page(run, executions, summary, {"user": attack}, tmp_path)
    assert f"<pre class='log'>Component {e(attack)} is running." in run_body, "the failed component's log, found"
    record = VersionRecord(1, attack, attack, attack, summary=summary)
    for body in (data, run_body, compare_page(record, record, attack)):
        assert "<script" not in body and e(attack) in body


def test_the_data_pages_runs_hold_statistics_and_validation_alone_with_the_values_runs_gives(two_runs, e2e_config):
    """The data page reads two components of every run (registry.runs.runs_of_nodes), not whole runs."""
    from registry.runs import runs_of_nodes

    nodes = ("StatisticsGen", "ExampleValidator")
    whole = runs(e2e_config.output.store, e2e_config.name)
    partial = runs_of_nodes(e2e_config.output.store, e2e_config.name, nodes)
    assert [run.name for run, _, _ in partial] == [run.name for run, _, _ in whole]
    for (_, executions, summary), (_, all_executions, all_summary) in zip(partial, whole, strict=True):
        assert set(executions) == set(nodes) and set(all_executions) > set(nodes)
        for node in nodes:
            assert executions[node].execution.id == all_executions[node].execution.id
            assert executions[node].outputs.keys() == all_executions[node].outputs.keys()
            for key, artifacts in all_executions[node].inputs.items():
                assert [a.id for a in executions[node].inputs[key]] == [a.id for a in artifacts], (node, key)
        assert summary.rows == all_summary.rows and summary.rows
        assert summary.anomalies == all_summary.anomalies


def test_read_ahead_reads_every_version_and_evaluation_before_anyone_asks(private):
    """`conveyor ui` reads the registry ahead on start: the versions are then kept for the pages, and each
    version's evaluation per slice and validation result were read from its files."""
    from registry.summary import forget_files, from_files

    forget_files()
    log, schema_diff = schema_review(private)
    registry = Registry(private, output_dir_of(private), rollback_action(private), log, schema_diff)
    total, count = registry.read_ahead()
    expected = versions(private.output.store, private.name, private.serving_model_dir)
    assert total == len(runs(private.output.store, private.name)) and count == len(expected) >= 1
    kept = registry.memo.get(("versions", registry.state()), lambda: pytest.fail("versions not read ahead"))
    assert [(r.version, r.run_id) for r in kept] == [(r.version, r.run_id) for r in expected]
    evaluated = [r for r in kept if "Evaluator" in r.executions]
    assert evaluated, "the pushed versions were evaluated"
    for record in evaluated:
        evaluation = record.executions["Evaluator"].output("evaluation")
        assert from_files("metrics by slice", evaluation, lambda: pytest.fail("evaluation not read ahead"))
        from_files("validation failures", evaluation, lambda: pytest.fail("validation not read ahead"))


def test_version_page_names_the_review_log_approval_that_wrote_its_schema(private, tmp_path):
    """The lineage's schema step shows the approval whose schema_sha256_after is the imported schema's sha256."""
    import hashlib

    record = versions(private.output.store, private.name, private.serving_model_dir)[0]
    schema = Path(record.executions["ImportSchemaGen"].output("schema").uri) / "schema.pbtxt"
    digest = hashlib.sha256(schema.read_bytes()).hexdigest()
    log = tmp_path / "reviews.jsonl"
    entries = [
        {"approved_by": "someone-earlier", "approved_at": "2026-01-01T00:00:00+00:00", "schema_sha256_after": "0" * 64},
        {
            "approved_by": "<b>data-engineer</b>",
            "approved_at": "2026-02-02T00:00:00+00:00",
            "data": "span 0",
            "rows": 271,
            "changes": [{"feature": "fare", "kind": "range", "text": "fare's range"}],
            "run": {"id": "run-x"},
            "schema_sha256_after": digest,
        },
    ]
    log.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    with serving(private, output_dir_of(private), review_log=log) as base:
        _, body = fetch(f"{base}/models/{record.version}")
        lineage = body[body.index("id='lineage'") : body.index("<h2>Record")]
        assert (
            f"approved 2026-02-02T00:00:00+00:00 by {e('<b>data-engineer</b>')}: 1 change(s) from span 0 "
            "(271 rows, statistics of run run-x)"
        ) in lineage
        assert "someone-earlier" not in lineage
        log.write_text(json.dumps(entries[0]) + "\n")
        _, body = fetch(f"{base}/models/{record.version}")
        assert f"no review-log approval wrote this schema (sha256 {digest[:12]})" in body, "the log is watched"


def test_a_version_whose_directory_lost_its_card_shows_model_card_gens_copy(private):
    record = versions(private.output.store, private.name, private.serving_model_dir)[0]
    card = Path(record.destination) / "assets.extra" / "model_card.html"
    text = card.read_text(encoding="utf-8")
    card.unlink()
    with serving(private, output_dir_of(private)) as base:
        _, body = fetch(f"{base}/models/{record.version}")
    assert f'sandbox="" srcdoc="{e(text)}"' in body


def test_pages_are_refused_to_other_host_names_and_a_rollback_from_another_origin(ui, e2e_config):
    """DNS rebinding: a page of another site whose name resolves to 127.0.0.1 reads nothing and posts nothing."""
    port = urllib.parse.urlsplit(ui).port
    for host, expected in ((f"evil.example:{port}", 403), (f"localhost:{port}", 200), (f"127.0.0.1:{port}", 200)):
        request = urllib.request.Request(f"{ui}/runs", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status = answer.status
        except urllib.error.HTTPError as err:
            status = err.code
        assert status == expected, host
    version = list_versions(e2e_config.serving_model_dir)[0]
    request = urllib.request.Request(
        f"{ui}/models/{version}/rollback", data=b"token=x", headers={"Origin": "http://evil.example"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 403 and b"own page" in refused.value.read()


def test_runs_page_says_which_threshold_a_model_not_blessed_missed():
    from registry.runs import Outcome
    from registry.summary import RunSummary
    from registry.ui_pages import badge

    summary = RunSummary("r", blessed=False, failures=["auc on Overall: candidate 0.5; bound: >= 0.7", "<x>"])
    text = badge(Outcome("not blessed", "succeeded", None, "not blessed"), summary)
    assert "not blessed: auc on Overall: candidate 0.5; bound: &gt;= 0.7 (and 1 more)" in text


def test_the_data_page_credits_the_run_that_computed_the_statistics_not_a_cached_one(ui, e2e_config):
    found = runs(e2e_config.output.store, e2e_config.name)
    newest = found[0][1]["StatisticsGen"]
    assert newest.state == "cached", "the e2e re-run took its statistics from the cache"
    shown = newest.output("statistics").id
    [computed] = [
        r.name
        for r, ex, _ in found
        if ex["StatisticsGen"].state == "complete" and ex["StatisticsGen"].output("statistics").id == shown
    ]
    _, body = fetch(f"{ui}/data")
    assert f"computed by run {e(computed)};" in body and computed != found[0][0].name
