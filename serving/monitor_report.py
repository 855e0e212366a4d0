"""A monitoring check's reports, written per check under `<output>/monitoring/<model>/<UTC time>/`: an
offline HTML page (no scripts, no network) with the findings on top and, feature by feature, training and
serving distributions side by side with the distance, its threshold and the sample sizes; the same in
Markdown; and the check as JSON, which `conveyor models show` reads back."""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from tensorflow_metadata.proto.v0 import statistics_pb2

from serving.monitor import DRIFT, SKEW, Check, Measurement

REPORT_HTML, REPORT_MD, RESULT_JSON = "report.html", "report.md", "result.json"
# (feature, summary line, inline SVG chart) for each feature of one statistics proto. The CLI passes
# schema.review's charts, which `conveyor schema diff` draws: serving/ may not import schema/.
FeatureCharts = Callable[[statistics_pb2.DatasetFeatureStatisticsList], list[tuple[str, str, str]]]


def report_dir(root: str | Path, model: str, now: Optional[dt.datetime] = None) -> Path:
    """A new directory for one check's reports: `<root>/<model>/<UTC time>/` (suffixed if taken)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    base = Path(root) / model / now.strftime("%Y%m%dT%H%M%SZ")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def _time(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def _examples(stats: Optional[statistics_pb2.DatasetFeatureStatisticsList]) -> int:
    return int(stats.datasets[0].num_examples) if stats is not None and stats.datasets else 0


def _headline(check: Check) -> list[str]:
    t = check.traffic
    lines = [
        f"Model {check.model}, version {check.version if check.version is not None else '(none)'}; "
        f"window {_time(t.current.start)} to {_time(t.current.end)}.",
        f"Sampling: {check.sampling()}; minimum for a verdict: {check.min_examples:,} examples.",
        f"Previous window: {t.previous.requests:,} requests ({len(t.previous.examples):,} examples).",
    ]
    if check.training_source:
        lines.append(f"Training statistics: {check.training_source} ({_examples(check.training):,} examples).")
    return lines


def _distance(measurements: list[Measurement], feature: str, kind: str) -> str:
    parts = [
        f"{m.measure} {m.distance:.4g} (threshold {m.threshold:g}){' EXCEEDED' if m.exceeded else ''}"
        for m in measurements
        if m.feature == feature and m.kind == kind
    ]
    return "; ".join(parts) or "not measured"


def _features(check: Check) -> list[str]:
    names = set()
    for stats in (check.training, check.serving):
        for dataset in (stats.datasets if stats is not None else [])[:1]:
            names.update(f.path.step[0] if f.path.step else f.name for f in dataset.features)
    return sorted(names)


def markdown(check: Check) -> str:
    """The check in Markdown: verdict and findings first, then every feature's distances."""
    lines = [f"# Monitoring: {check.model}", "", *[f"- {line}" for line in _headline(check)], ""]
    lines += [f"**Verdict: {check.verdict}**" + (f" ({check.reason})" if check.reason else ""), ""]
    if check.findings:
        lines += [f"## Findings ({len(check.findings)})", ""] + [f"- {f.line()}" for f in check.findings] + [""]
    for title, items in (("Not compared", check.notes), ("Left out of the analysis", check.traffic.problems())):
        if items:
            lines += [f"## {title}", ""] + [f"- {item}" for item in items] + [""]
    names = _features(check)
    if names:
        lines += [
            "## Features",
            "",
            "| feature | skew (training vs serving) | drift (vs previous window) |",
            "|---|---|---|",
        ]
        for name in names:
            skew, drift = _distance(check.measurements, name, SKEW), _distance(check.measurements, name, DRIFT)
            lines.append(f"| `{name}` | {skew} | {drift} |")
    return "\n".join(lines) + "\n"


def html_report(check: Check, feature_charts: FeatureCharts) -> str:
    """One self-contained page: the findings, then training and serving side by side for each feature."""
    esc = html.escape
    findings = "".join(f"<li><code>{esc(f.feature)}</code> {esc(f.line())}</li>" for f in check.findings)
    notes = "".join(f"<li>{esc(n)}</li>" for n in [*check.notes, *check.traffic.problems()])
    charts = {}
    for side, stats in (("training", check.training), ("serving", check.serving)):
        for name, summary, svg in feature_charts(stats) if stats is not None else []:
            charts.setdefault(name, {})[side] = (summary, svg)
    sizes = {"training": _examples(check.training), "serving": _examples(check.serving)}
    sections = []
    for name in _features(check):
        drawn = charts.get(name, {})
        cells = "".join(
            f"<td><b>{side}</b> ({sizes[side]:,} examples)<br><small>{esc(drawn.get(side, ('absent', ''))[0])}"
            f"</small><br>{drawn.get(side, ('', ''))[1]}</td>"
            for side in ("training", "serving")
        )
        skew, drift = _distance(check.measurements, name, SKEW), _distance(check.measurements, name, DRIFT)
        flagged = " flagged" if any(f.feature == name for f in check.findings) else ""
        sections.append(
            f'<section class="feature{flagged}"><h3><code>{esc(name)}</code></h3>'
            f"<p>skew: {esc(skew)}<br>drift: {esc(drift)}</p><table><tr>{cells}</tr></table></section>"
        )
    verdict = esc(check.verdict + (f" ({check.reason})" if check.reason else ""))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Monitoring: {esc(check.model)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
td {{ vertical-align: top; padding: 4px 12px 4px 0; }} .flagged h3 {{ color: #b3261e; }}
p, small {{ font-size: 12px; color: #555; }}
</style></head><body>
<h1>Monitoring: <code>{esc(check.model)}</code></h1>
<ul>{"".join(f"<li>{esc(line)}</li>" for line in _headline(check))}</ul>
<h2>Verdict: {verdict}</h2>
<h2>Findings ({len(check.findings)})</h2>
<ol>{findings or "<li>none</li>"}</ol>
<h2>Not compared or left out</h2>
<ul>{notes or "<li>nothing</li>"}</ul>
<h2>Features: training against serving</h2>
{"".join(sections) or "<p>No statistics: no verdict was given.</p>"}
</body></html>
"""


def write(check: Check, directory: Path, feature_charts: FeatureCharts) -> tuple[Path, Path, Path]:
    """Writes report.html, report.md and result.json into `directory`; returns their paths."""
    paths = directory / REPORT_HTML, directory / REPORT_MD, directory / RESULT_JSON
    paths[0].write_text(html_report(check, feature_charts), encoding="utf-8")
    paths[1].write_text(markdown(check), encoding="utf-8")
    paths[2].write_text(json.dumps(check.to_json(), indent=2) + "\n", encoding="utf-8")
    return paths
