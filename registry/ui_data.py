"""The web UI's data page: per span, the statistics StatisticsGen computed (each feature's distribution and
missing fraction, drawn here as inline SVG), the anomalies ExampleValidator found, and the curated
schema's review history (each approval's `schema diff` changes) from the review log beside the schema.

The statistics are read from the run's artifact (TFDV's FeatureStats.pb), the anomalies from the run's
summary (registry.summary), and the spans from ML Metadata's lineage: nothing is copied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from registry.lineage import NodeExecution, example_spans, format_spans, string_property
from registry.summary import RunSummary
from registry.ui_pages import artifact_link, e, page

STATISTICS_NODE = "StatisticsGen"
SCHEMA_REVIEW_DIR = "schema_review"  # under the output directory: `conveyor schema diff`'s reports
VALIDATION_NODE = "ExampleValidator"  # its anomalies are shown beside the statistics
MAX_BARS = 12


@dataclass
class SpanStatistics:
    """One statistics artifact: the spans it describes, the run that computed it (the newest that used it
    when none of the runs read computed it), the newest run's summary, and every run that used it."""

    spans: list[int]
    run: str
    uri: str
    splits: list[str]
    summary: RunSummary
    used_by: list[str] = field(default_factory=list)


def span_statistics(store, runs: list) -> list[SpanStatistics]:
    """Every statistics artifact the runs computed or reused, newest first, one entry per artifact.

    Args:
      store: the open ML Metadata store.
      runs: (run, executions, summary) newest first, as registry.runs.runs (or runs_of_nodes, with these
        two nodes at least) returns them.

    Returns:
      One entry per StatisticsGen output; a cached run reusing it is listed in `used_by`.
    """
    found: dict[int, SpanStatistics] = {}
    for run, executions, summary in runs:
        node: Optional[NodeExecution] = executions.get(STATISTICS_NODE)
        artifact = node.output("statistics") if node is not None and node.state in ("complete", "cached") else None
        if artifact is None:
            continue
        if artifact.id in found:
            found[artifact.id].used_by.append(run.name)
            if node.state == "complete":  # the run that computed them; the newer ones took them from the cache
                found[artifact.id].run = run.name
            continue
        spans = sorted({s for examples in node.inputs.get("examples", []) for s in example_spans(store, examples)})
        splits = json.loads(string_property(artifact, "split_names"))
        found[artifact.id] = SpanStatistics(spans, run.name, artifact.uri, list(splits), summary, [run.name])
    return list(found.values())


def _feature_name(feature) -> str:
    return feature.path.step[0] if feature.path.step else feature.name


def _missing_fraction(common) -> float:
    total = common.num_missing + common.num_non_missing
    return common.num_missing / total if total else 0.0


def bars_svg(items: list[tuple[str, float]], name: str, width: int = 300) -> str:
    """A horizontal bar chart (label, count) as inline SVG, drawn here from the statistics."""
    if not items:
        return "<p>no distribution recorded</p>"
    top = max(v for _, v in items) or 1.0
    row, label_w = 15, 110
    out = [
        f'<svg class="dist" data-feature="{e(name)}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{row * len(items) + 4}" role="img"><title>distribution of {e(name)}</title>'
    ]
    for i, (label, value) in enumerate(items):
        w = (width - label_w - 50) * value / top
        y = i * row + 2
        out.append(
            f'<text x="{label_w - 4}" y="{y + 10}" text-anchor="end" font-size="10">{e(label[:18])}</text>'
            f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{row - 4}" fill="#4a7fb5"/>'
            f'<text x="{label_w + w + 3:.1f}" y="{y + 10}" font-size="10">{value:,.0f}</text>'
        )
    return "".join(out) + "</svg>"


def missing_svg(fraction: float, name: str, width: int = 120) -> str:
    """The missing fraction as a filled bar."""
    return (
        f'<svg class="missing" data-feature="{e(name)}" data-fraction="{fraction:.6f}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="14" role="img">'
        f'<rect width="{width}" height="14" fill="#eef1f4"/>'
        f'<rect width="{width * fraction:.1f}" height="14" fill="#d62728"/></svg> {fraction:.1%}'
    )


def feature_rows(stats) -> list[tuple[str, str, float, str]]:
    """(feature, summary, missing fraction, distribution SVG) per feature of TFDV statistics."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    rows = []
    for dataset in stats.datasets:
        for f in sorted(dataset.features, key=_feature_name):
            name = _feature_name(f)
            if f.HasField("num_stats"):
                s = f.num_stats
                hist = next((h for h in s.histograms if h.type == statistics_pb2.Histogram.STANDARD), None)
                items = (
                    [(f"{b.low_value:.3g}–{b.high_value:.3g}", b.sample_count) for b in hist.buckets] if hist else []
                )
                text = f"numeric: mean {s.mean:.4g}, std {s.std_dev:.4g}, min {s.min:.4g}, max {s.max:.4g}"
                rows.append((name, text, _missing_fraction(s.common_stats), bars_svg(items, name)))
            elif f.HasField("string_stats"):
                s = f.string_stats
                items = [(v.value, v.frequency) for v in s.top_values[:MAX_BARS]]
                text = f"string: {s.unique:,} unique values"
                rows.append((name, text, _missing_fraction(s.common_stats), bars_svg(items, name)))
    return rows


def read_reviews(log: Optional[Path]) -> list[dict]:
    """The review log's entries, newest first (a line that is not JSON is shown as such, not dropped)."""
    if log is None or not log.is_file():
        return []
    out = []
    for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"unreadable": f"line {number} is not JSON"})
    return out[::-1]


def _reviews_block(log: Optional[Path], reviews: list[dict], output_dir: Path) -> str:
    if log is None:
        return "<p>no review log: the curated schema's folder is not known to this server</p>"
    if not reviews:
        return f"<p>No approvals recorded in {e(log)} yet (<code>conveyor schema approve</code> writes them).</p>"
    items = []
    for r in reviews:
        if "unreadable" in r:
            items.append(f"<li class='review'>{e(r['unreadable'])}</li>")
            continue
        changes = "".join(
            f"<tr><td><code>{e(c.get('feature'))}</code></td><td>{e(c.get('kind'))}</td><td>{e(c.get('text'))}</td></tr>"
            for c in r.get("changes", [])
        )
        run = r.get("run") or {}
        made = f", statistics of run {e(run.get('id'))}" if run else ""
        items.append(
            f"<li class='review'><b>{e(r.get('approved_at'))}</b> by {e(r.get('approved_by'))}: "
            f"{len(r.get('changes', []))} change(s) from {e(r.get('data'))} ({e(r.get('rows'))} rows{made})"
            f"<table class='changes'><tr><th>feature</th><th>kind</th><th>change (as `schema diff` "
            f"reported it)</th></tr>{changes}</table></li>"
        )
    reports = [p for p in sorted((output_dir / SCHEMA_REVIEW_DIR).glob("schema_diff.*")) if p.is_file()]
    latest = " ".join(artifact_link(str(p)) for p in reports)
    tail = f"<p>The latest <code>schema diff</code> reports: {latest}</p>" if reports else ""
    return f"<p>Review log: {e(log)}</p><ol id='reviews'>{''.join(items)}</ol>{tail}"


SchemaDiffer = Callable[[object, str, int], tuple[list[str], list[str]]]


def data_page(
    found: list[SpanStatistics],
    chosen: Optional[SpanStatistics],
    review_log: Optional[Path],
    output_dir: Path,
    schema_diff: Optional[SchemaDiffer] = None,
) -> str:
    """The spans, one span's statistics (charts per split), its anomalies, a diff and the review history.

    Args:
      found: every statistics artifact, newest first (span_statistics).
      chosen: the one to draw, or None when there is none.
      review_log: the review log beside the curated schema, or None when not known.
      output_dir: the output directory (for the latest `schema diff` reports).
      schema_diff: (statistics, what they describe, rows) -> (difference lines, anomaly lines) against the
        curated schema, as `conveyor schema diff --run` computes them; None to leave it out.
    """
    import tensorflow_data_validation as tfdv

    links = " · ".join(
        f'<a href="/data?statistics={quote(s.uri)}">{e(format_spans(s.spans))}</a> (run {e(s.run)})'
        if s is not chosen
        else f"<b>{e(format_spans(s.spans))}</b> (run {e(s.run)})"
        for s in found
    )
    body = f"<p id='spans'>Statistics: {links or 'none yet (no run reached StatisticsGen)'}</p>"
    if chosen is not None:
        used = ", ".join(chosen.used_by)
        body += f"<h2>{e(format_spans(chosen.spans))}</h2><p>computed by run {e(chosen.run)}; used by {e(used)}; "
        body += f"{artifact_link(chosen.uri)}</p>"
        anomalies = chosen.summary.anomalies
        items = "".join(f"<li>[{e(split)}] {e(a)}</li>" for split, lines in sorted(anomalies.items()) for a in lines)
        body += f"<h3>Anomalies against the curated schema</h3><ul id='anomalies'>{items or '<li>none</li>'}</ul>"
        for split in chosen.splits:
            path = os.path.join(chosen.uri, f"Split-{split}", "FeatureStats.pb")
            if not os.path.isfile(path):
                body += f"<p>{e(split)}: {e(path)} is not readable from here</p>"
                continue
            stats = tfdv.load_stats_binary(path)
            rows = sum(d.num_examples for d in stats.datasets)
            body += f"<h3>{e(split)}: {rows:,} rows</h3><table class='features' data-split='{e(split)}'>"
            body += "<tr><th>feature</th><th>statistics</th><th>missing</th><th>distribution</th></tr>"
            body += "".join(
                f"<tr><td><code>{e(n)}</code></td><td>{e(t)}</td><td>{missing_svg(m, n)}</td><td>{svg}</td></tr>"
                for n, t, m, svg in feature_rows(stats)
            )
            body += "</table>"
            if schema_diff is not None and split == "train":
                changes, _ = schema_diff(stats, f"{path} (run {chosen.run})", rows)
                lines = "".join(f"<li>{e(c)}</li>" for c in changes) or "<li>no differences</li>"
                body += f"<h3><code>schema diff</code> of these statistics now</h3><ul id='diff'>{lines}</ul>"
    body += "<h2>Schema review history</h2>" + _reviews_block(review_log, read_reviews(review_log), output_dir)
    return page("Data", body)
