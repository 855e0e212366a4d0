"""The web UI's pages: runs, a run, models, a version and the rollback confirmation, as escaped HTML.

Every page is drawn from what registry.runs and registry.versions return for the store at request
time (the same functions `conveyor runs` and `conveyor models` print), so there is no copy to go stale.
Styles and charts are inline (SVG); nothing is fetched from elsewhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from registry.lineage import NodeExecution, created_ms, format_spans, model_origin, updated_ms
from registry.record import describe, exec_property
from registry.runs import OUTCOMES, Outcome, outcome, run_provenance
from registry.summary import RunSummary
from registry.versions import HEADLINE_METRICS, VersionRecord, headline

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#22303c;color:#fff;padding:10px 24px}header a{color:#fff;margin-right:18px;text-decoration:none}
main{padding:16px 24px;max-width:1200px}h1{font-size:20px}table{border-collapse:collapse;background:#fff;width:100%}
th,td{border-bottom:1px solid #e1e4e8;padding:5px 8px;text-align:left;vertical-align:top}th{background:#eef1f4}
pre{background:#fff;border:1px solid #e1e4e8;padding:10px;overflow:auto}.tag{padding:1px 6px;border-radius:8px;
font-size:12px;background:#e1e4e8}.ok{background:#d4f4dd}.bad{background:#fbd5d5}.warn{background:#fdf0c4}
.chain{display:flex;flex-wrap:wrap;gap:6px;align-items:stretch}.step{background:#fff;border:1px solid #c9d1d9;
padding:6px 10px;border-radius:6px;max-width:260px;word-break:break-all}.arrow{align-self:center}
iframe{width:100%;height:900px;border:1px solid #c9d1d9;background:#fff}button{padding:6px 14px}
"""


def e(value) -> str:
    """Escapes any value for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str) -> str:
    """A whole HTML document with the shared header."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} - conveyor</title>'
        f"<style>{_CSS}</style></head><body><header><b>conveyor</b> &nbsp; "
        '<a href="/runs">Runs</a><a href="/models">Models</a><a href="/data">Data</a></header>'
        f"<main><h1>{e(title)}</h1>{body}</main></body></html>"
    )


def utc(ms: int) -> str:
    """A time in ms since 1970 as UTC text."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ms else ""


def seconds(seconds: float) -> str:
    """A duration in words: seconds, or minutes above two."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def outcome_text(result: Outcome, summary: RunSummary) -> str:
    """The page's words for an outcome: the CLI's, except that a cached run with no reason says so."""
    if result.kind == "cached" and not summary.not_pushed_reason:
        return "from cache"
    return result.text


def badge(result: Outcome, summary: RunSummary) -> str:
    """An outcome as a coloured tag and its words; a model not blessed says which threshold it missed."""
    text = outcome_text(result, summary)
    if result.kind == "not blessed" and summary.failures:
        more = len(summary.failures) - 1
        text += f": {summary.failures[0]}" + (f" (and {more} more)" if more else "")
    return f'<span class="tag {_TAG.get(result.kind, "")}">{e(result.kind)}</span> {e(text)}'


def span_of(executions: dict[str, NodeExecution]) -> tuple[float, float]:
    """(first start, last end) of a run's executions, in ms."""
    starts = [created_ms(n.execution) for n in executions.values()]
    ends = [updated_ms(n.execution) for n in executions.values()]
    return (min(starts), max(ends)) if starts else (0, 0)


_TAG = {"pushed": "ok", "not blessed": "warn", "data gate": "warn", "failed": "bad"}


def runs_page(runs: list, selected: Optional[str], pipeline_name: str = "", paging: tuple[int, int] = (1, 1)) -> str:
    """Runs newest first (`runs` as registry.runs.runs returns them), optionally of one outcome; `paging`
    is (this page, pages) of registry.runs.runs_page, drawn as links to the others."""
    links = " ".join(
        f'<a href="/runs?outcome={quote(kind)}">{e(kind)}</a>' if kind != selected else f"<b>{e(kind)}</b>"
        for kind in OUTCOMES
    )
    rows = []
    for run, executions, summary in runs:
        result = outcome(executions, summary)
        if selected and result.kind != selected:
            continue
        start, end = span_of(executions)
        recorded = run_provenance(run, executions)
        who, commit = str(recorded.get("user", "")), str(recorded.get("git_commit", ""))
        rows.append(
            f'<tr><td><a href="/runs/{quote(run.name)}">{e(run.name)}</a></td>'
            f"<td>{badge(result, summary)}</td>"
            f"<td>{e('' if summary.span is None else summary.span)}</td><td>{e(utc(start))}</td>"
            f"<td>{e(seconds((end - start) / 1000))}</td><td>{e(who)}</td>"
            f"<td><code>{e(commit[:12])}</code></td></tr>"
        )
    head = "<tr><th>run</th><th>outcome</th><th>span</th><th>started (UTC)</th><th>duration</th><th>who</th>"
    body = f"<p>filter: <a href='/runs'>all</a> {links}</p><table id='runs'>{head}<th>commit</th></tr>"
    body += "".join(rows) or "<tr><td colspan=7>no runs</td></tr>"
    body += "</table>" + page_links(*paging, f"/runs?outcome={quote(selected)}&" if selected else "/runs?")
    return page(f"Runs of {pipeline_name}" if pipeline_name else "Runs", body)


def page_links(current: int, pages: int, prefix: str) -> str:
    """Links to every page of a long list ("" for one page), `prefix` ending in ? or &."""
    if pages <= 1:
        return ""
    links = " ".join(
        f"<b>{n}</b>" if n == current else f'<a href="{e(prefix)}page={n}">{n}</a>' for n in range(1, pages + 1)
    )
    return f"<p id='pages'>page: {links}</p>"


def artifact_link(uri: str) -> str:
    """A link to an artifact's file or directory through the read-only /files route."""
    return f'<a href="/files?path={quote(uri)}">{e(uri)}</a>'


def metric_series(records: list[VersionRecord]) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(version, candidate value)], oldest version first, for the headline metrics."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in sorted(records, key=lambda r: r.version):
        for m in record.summary.metrics if record.summary else []:
            if m.name in HEADLINE_METRICS and m.candidate is not None:
                series.setdefault(m.name, []).append((record.version, m.candidate))
    return series


_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def metrics_chart(series: dict[str, list[tuple[int, float]]], width: int = 720, height: int = 240) -> str:
    """An inline SVG line chart of each metric across versions (one point per version)."""
    points = [p for values in series.values() for p in values]
    if not points:
        return "<p>no evaluated versions yet</p>"
    versions = sorted({v for v, _ in points})
    low, high = min(y for _, y in points), max(y for _, y in points)
    if high - low < 1e-9:
        low, high = low - 0.05, high + 0.05
    pad = 40

    def x(version: int) -> float:
        return pad + (versions.index(version) + 0.5) * (width - 2 * pad) / len(versions)

    def y(value: float) -> float:
        return height - pad - (value - low) / (high - low) * (height - 2 * pad)

    out = [f'<svg id="metrics-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" ']
    out.append(f'viewBox="0 0 {width} {height}" role="img"><title>metrics across versions</title>')
    out.append(f'<rect width="{width}" height="{height}" fill="#fff"/>')
    for value in (low, high):
        out.append(f'<text x="4" y="{y(value) + 4:.1f}" font-size="11">{value:.3f}</text>')
    for version in versions:
        out.append(f'<text x="{x(version) - 4:.1f}" y="{height - 12}" font-size="11">v{version}</text>')
    for i, (name, values) in enumerate(sorted(series.items())):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{x(v):.1f},{y(val):.1f}" for v, val in values)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for v, val in values:
            out.append(
                f'<circle class="point" data-metric="{e(name)}" data-version="{v}" data-value="{val:.6f}" '
                f'cx="{x(v):.1f}" cy="{y(val):.1f}" r="3.5" fill="{colour}"><title>{e(name)} v{v}: {val:.4f}'
                "</title></circle>"
            )
        out.append(f'<text x="{width - 200}" y="{16 + 14 * i}" font-size="12" fill="{colour}">{e(name)}</text>')
    return "".join(out) + "</svg>"


def models_page(records: list[VersionRecord], served: Optional[int], present: set, labels: dict, pinned: set) -> str:
    """Every version (newest first) with its served / pinned / label state, and the metrics chart."""
    by_version: dict[int, list[str]] = {}
    for label, version in labels.items():
        by_version.setdefault(version, []).append(label)
    rows = []
    older = {r.version: o.version for r, o in zip(records, records[1:], strict=False)}
    for r in records:
        s = r.summary
        state = []
        if r.version == served:
            state.append('<span class="tag ok">served</span>')
        if r.version in pinned:
            state.append('<span class="tag">pinned</span>')
        state.extend(f'<span class="tag">{e(label)}</span>' for label in sorted(by_version.get(r.version, [])))
        if r.version not in present:
            state.append('<span class="tag bad">removed</span>')
        spans = format_spans(r.training_spans) if r.training_spans else ("" if s is None else f"span {s.span}")
        rows_text = "" if s is None or "train" not in s.rows else f"{s.rows['train']:,}"
        note = f"rollback of {r.rollback_of}" if r.rollback_of else headline(s)
        rows.append(
            f'<tr><td><a href="/models/{r.version}">{r.version}</a></td><td>{" ".join(state)}</td>'
            f"<td>{e(r.pushed_at)}</td><td>{e(spans)}</td><td>{e(rows_text)}</td><td>{e(note)}</td>"
            f'<td><a href="/runs/{quote(r.run_id)}">{e(r.run_id)}</a></td>'
            f"<td>{compare_link(older.get(r.version), r.version)}</td></tr>"
        )
    head = "<tr><th>version</th><th>state</th><th>pushed at (UTC)</th><th>data</th><th>train rows</th>"
    body = metrics_chart(metric_series(records)) + compare_form(sorted(r.version for r in records))
    body += f"<table id='versions'>{head}<th>metrics (change vs baseline)</th><th>run</th><th></th></tr>"
    return page("Models", body + ("".join(rows) or "<tr><td colspan=8>no versions pushed yet</td></tr>") + "</table>")


def compare_link(older: Optional[int], version: int) -> str:
    """A link comparing a version with the one pushed before it (none for the first)."""
    if older is None:
        return ""
    return f'<a class="compare" href="/compare?a={older}&amp;b={version}">compare with {older}</a>'


def compare_form(versions: list[int], a: Optional[int] = None, b: Optional[int] = None) -> str:
    """A GET form choosing two versions for /compare."""
    if len(versions) < 1:
        return ""

    def options(chosen: Optional[int]) -> str:
        return "".join(f"<option value='{v}'{' selected' if v == chosen else ''}>{v}</option>" for v in versions)

    return (
        "<form id='compare' method='get' action='/compare'><p>Compare version "
        f"<select name='a'>{options(a)}</select> with <select name='b'>{options(b if b is not None else versions[-1])}"
        "</select> <button type='submit'>compare</button></p></form>"
    )


def _step(title: str, *lines: str) -> str:
    return f'<div class="step"><b>{e(title)}</b>' + "".join(f"<br>{line}" for line in lines if line) + "</div>"


def schema_review_entry(schema_uri: str, reviews: list[dict]) -> str:
    """The review-log approval that wrote the schema a run imported (its file's sha256 is the approval's
    `schema_sha256_after`), in words; or why there is none."""
    path = Path(schema_uri) / "schema.pbtxt"
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return f"{path} is not readable from here"
    entry = next((r for r in reviews if r.get("schema_sha256_after") == digest), None)
    if entry is None:
        return f"no review-log approval wrote this schema (sha256 {digest[:12]})"
    run = (entry.get("run") or {}).get("id")
    made = f", statistics of run {run}" if run else ""
    return (
        f"approved {entry.get('approved_at')} by {entry.get('approved_by')}: {len(entry.get('changes', []))} "
        f"change(s) from {entry.get('data')} ({entry.get('rows')} rows{made})"
    )


def lineage_steps(record: VersionRecord, store, pipeline_name: str, reviews: Optional[list[dict]] = None) -> list[str]:
    """The chain that made a version: data -> statistics -> schema -> transform -> model -> evaluation -> push.

    `reviews` are the curated schema's review-log entries (registry.ui_data.read_reviews), newest first.
    """
    ex, s = record.executions, record.summary
    steps = []
    rows = ", ".join(f"{k} {v:,}" for k, v in sorted(s.rows.items())) if s is not None else ""
    steps.append(_step("data", e(format_spans(record.training_spans) if record.training_spans else ""), e(rows)))
    node = ex.get("StatisticsGen")
    if node is not None and node.output("statistics") is not None:
        steps.append(_step("statistics", artifact_link(node.output("statistics").uri)))
    node = ex.get("ImportSchemaGen")
    if node is not None:
        schema = node.output("schema")
        review = schema_review_entry(schema.uri, reviews or []) if schema is not None else ""
        steps.append(_step("schema", e(exec_property(node, "schema_file")), e(review)))
    node = ex.get("Transform")
    if node is not None and node.output("transform_graph") is not None:
        steps.append(_step("transform", artifact_link(node.output("transform_graph").uri)))
    node = ex.get("Trainer")
    if node is not None and node.output("model") is not None:
        base = (node.inputs.get("base_model") or [None])[0]
        start = "cold start"
        if base is not None:
            version, spans = model_origin(store, base.id, pipeline_name)
            start = f"warm start from version {version or '(not pushed)'} ({format_spans(spans)})"
        steps.append(_step("model", artifact_link(node.output("model").uri), e(start)))
    node = ex.get("Evaluator")
    if node is not None:
        baseline = node.inputs.get("baseline_model") or []
        against = f"baseline: {baseline[0].uri}" if baseline else "no baseline (absolute thresholds)"
        blessed = "" if s is None or s.blessed is None else ("blessed" if s.blessed else "not blessed")
        steps.append(_step("evaluation", e(against), e(blessed)))
    steps.append(_step(f"push: version {record.version}", artifact_link(record.destination)))
    return steps


def version_page(
    record: VersionRecord,
    config,
    store,
    card_html: Optional[str],
    rollback_ok: bool,
    older: Optional[int] = None,
    known: tuple[int, ...] = (),
    reviews: Optional[list[dict]] = None,
) -> str:
    """One version: its lineage, its full record (`conveyor models show`), its model card and rollback."""
    steps = lineage_steps(record, store, config.name, reviews)
    body = "<h2>Lineage</h2><div class='chain' id='lineage'>"
    body += "<span class='arrow'>&rarr;</span>".join(steps) + "</div>"
    if older is not None:
        body += f"<p>{compare_link(older, record.version)}</p>"
    if len(known) > 1:
        body += compare_form(sorted(known), record.version, older if older is not None else max(known))
    if rollback_ok:
        body += f'<p><a href="/models/{record.version}/rollback">Roll back to version {record.version}&hellip;</a></p>'
    body += f"<h2>Record</h2><pre id='record'>{e(chr(10).join(describe(record, config.model_name)))}</pre>"
    if card_html is not None:
        # sandbox: the card is shown, never run; srcdoc keeps it on this page without a second request.
        body += f'<h2>Model card</h2><iframe id="card" sandbox="" srcdoc="{e(card_html)}"></iframe>'
    else:
        body += "<p>no model card in this version's assets.extra/</p>"
    return page(f"Version {record.version} of {config.model_name}", body)


def confirm_page(version: int, served: Optional[int], token: str) -> str:
    """The rollback confirmation: a POST form carrying the token this server issued."""
    body = (
        f"<p>Roll back to version {version}? Its files are published again as a new highest version "
        f"(served now: {e(served)}), exactly as <code>conveyor models rollback --to {version}</code> does.</p>"
        f'<form method="post" action="/models/{version}/rollback"><input type="hidden" name="token" '
        f'value="{e(token)}"><button id="confirm" type="submit">Roll back to version {version}</button> '
        f'<a href="/models/{version}">cancel</a></form>'
    )
    return page(f"Roll back to version {version}?", body)


def done_page(restored: int, new: int) -> str:
    body = f'<p id="done">Version {restored} is served again as version {new}.</p>'
    return page(
        "Rolled back", body + f'<p><a href="/models/{new}">version {new}</a> · <a href="/models">models</a></p>'
    )


def message_page(title: str, text: str) -> str:
    return page(title, f"<p>{e(text)}</p>")
