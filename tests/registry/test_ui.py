"""`conveyor ui` over the e2e runs' real output: each page against the registry's own values, the
read-only rules, the rollback flow against `conveyor models rollback`, and the pages in headless Chromium."""

import json
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

from cli.ui import rollback_action
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
def serving(config, output_dir):
    server = make_server(Registry(config, Path(output_dir), rollback_action(config)), "127.0.0.1", 0)
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
    for line in describe(record, e2e_config):
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
    from registry.ui_pages import run_page, runs_page

    attack = '<script>alert("x")</script>'
    run = metadata_store_pb2.Context(name=attack)
    run.custom_properties["user"].string_value = attack
    execution = metadata_store_pb2.Execution(last_known_state=metadata_store_pb2.Execution.FAILED)
    execution.custom_properties[ERROR_KEY].string_value = attack
    executions = {attack: NodeExecution(attack, "failed", execution)}
    for body in (
        runs_page([(run, executions, RunSummary(attack))], None),
        run_page(run, executions, RunSummary(attack), {"user": attack}),
    ):
        assert "<script" not in body and e(attack) in body
