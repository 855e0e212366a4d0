"""Schema review for data engineers: what new data would change in the curated schema, and approving it.

`diff` compares the schema TFDV infers from the data with the curated one and says each difference
in plain words; `approve` writes the accepted changes into the curated file (stable order, nothing
unrelated rewritten) and appends to the review log beside it.
"""

from __future__ import annotations

import copy
import datetime as dt
import getpass
import hashlib
import html
import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

REVIEW_LOG = "reviews.jsonl"


@dataclass(frozen=True)
class Change:
    feature: str
    kind: str
    text: str

    def line(self) -> str:
        return f"{self.feature}: {self.text}"


@dataclass
class SchemaDiff:
    changes: list[Change] = field(default_factory=list)
    inferred: Optional[schema_pb2.Schema] = None
    statistics: Optional[statistics_pb2.DatasetFeatureStatisticsList] = None
    data: str = ""
    rows: int = 0

    @property
    def features(self) -> list[str]:
        return sorted({c.feature for c in self.changes})


# ---------------------------------------------------------------------------------------------
# Reading and writing the curated file


def read_schema(path: str | Path) -> tuple[str, schema_pb2.Schema]:
    """The curated schema and its leading comment block (the `# proto-file:` header and notes)."""
    text = Path(path).read_text(encoding="utf-8")
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    return "\n".join(header), text_format.Parse(text, schema_pb2.Schema())


def write_schema(path: str | Path, header: str, schema: schema_pb2.Schema) -> None:
    body = text_format.MessageToString(schema)
    Path(path).write_text(f"{header}\n{body}" if header else body, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Comparing


def _domain_values(schema: schema_pb2.Schema, feature: schema_pb2.Feature) -> Optional[list[str]]:
    if feature.HasField("string_domain"):
        return list(feature.string_domain.value)
    if feature.HasField("domain"):
        for domain in schema.string_domain:
            if domain.name == feature.domain:
                return list(domain.value)
    return None


def _value_counts(stats: statistics_pb2.DatasetFeatureStatisticsList) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for dataset in stats.datasets:
        for f in dataset.features:
            if f.HasField("string_stats"):
                name = f.path.step[0] if f.path.step else f.name
                counts[name] = {b.label: int(b.sample_count) for b in f.string_stats.rank_histogram.buckets}
    return counts


def _numeric_range(stats: statistics_pb2.DatasetFeatureStatisticsList) -> dict[str, tuple[float, float]]:
    ranges = {}
    for dataset in stats.datasets:
        for f in dataset.features:
            if f.HasField("num_stats") and f.num_stats.common_stats.num_non_missing:
                ranges[f.path.step[0] if f.path.step else f.name] = (f.num_stats.min, f.num_stats.max)
    return ranges


def _presence(f: schema_pb2.Feature) -> str:
    return f"min_fraction {f.presence.min_fraction:g}, min_count {f.presence.min_count}"


def _valency(f: schema_pb2.Feature) -> str:
    if f.HasField("shape"):
        return "shape [" + ", ".join(str(d.size) for d in f.shape.dim) + "]"
    if f.HasField("value_count"):
        return f"value_count {f.value_count.min}..{f.value_count.max}"
    return "any number of values"


def _type(f: schema_pb2.Feature) -> str:
    return schema_pb2.FeatureType.Name(f.type)


def compare(
    curated: schema_pb2.Schema,
    inferred: schema_pb2.Schema,
    statistics: statistics_pb2.DatasetFeatureStatisticsList,
) -> list[Change]:
    """Every difference between the curated schema and the one inferred from the data, one per line."""
    changes: list[Change] = []
    cur = {f.name: f for f in curated.feature}
    new = {f.name: f for f in inferred.feature}
    counts = _value_counts(statistics)
    ranges = _numeric_range(statistics)
    for name in sorted(set(new) - set(cur)):
        changes.append(Change(name, "added", f"feature added ({_type(new[name])}, {_presence(new[name])})"))
    for name in sorted(set(cur) - set(new)):
        changes.append(Change(name, "removed", "feature removed: the data has no such column"))
    for name in sorted(set(cur) & set(new)):
        c, n = cur[name], new[name]
        if c.type != n.type:
            changes.append(Change(name, "type", f"type changed from {_type(c)} to {_type(n)}"))
        if (c.presence.min_fraction, c.presence.min_count) != (n.presence.min_fraction, n.presence.min_count):
            changes.append(Change(name, "presence", f"presence changed from {_presence(c)} to {_presence(n)}"))
        if _valency(c) != _valency(n):
            changes.append(Change(name, "valency", f"valency changed from {_valency(c)} to {_valency(n)}"))
        old_values, new_values = _domain_values(curated, c), _domain_values(inferred, n)
        if old_values is not None or new_values is not None:
            old_set, new_set = set(old_values or []), set(new_values or [])
            seen = counts.get(name, {})
            added = sorted(new_set - old_set)
            gone = sorted(old_set - new_set)
            if added:
                shown = ", ".join(f"{v!r} ({seen.get(v, 0):,} rows)" for v in added[:10])
                more = f" and {len(added) - 10} more" if len(added) > 10 else ""
                changes.append(Change(name, "values_added", f"{len(added)} categorical value(s) added: {shown}{more}"))
            if gone:
                shown = ", ".join(repr(v) for v in gone[:10])
                more = f" and {len(gone) - 10} more" if len(gone) > 10 else ""
                changes.append(Change(name, "values_gone", f"{len(gone)} categorical value(s) gone: {shown}{more}"))
        non_finite = _non_finite_change(c, statistics)
        if non_finite is not None:
            changes.append(non_finite)
        for kind in ("int_domain", "float_domain"):
            if c.HasField(kind) and name in ranges:
                lo, hi = ranges[name]
                d = getattr(c, kind)
                if (d.HasField("min") and lo < d.min) or (d.HasField("max") and hi > d.max):
                    changes.append(
                        Change(
                            name,
                            "range",
                            f"numeric range changed: data spans [{lo:g}, {hi:g}], schema allows [{d.min:g}, {d.max:g}]",
                        )
                    )
    return changes


def _non_finite(statistics: statistics_pb2.DatasetFeatureStatisticsList, name: str) -> tuple[int, int]:
    from components.data_gate.anomalies import non_finite_counts

    counts = non_finite_counts(statistics, name)
    return (counts[0], counts[1]) if counts is not None else (0, 0)


def _non_finite_change(curated: schema_pb2.Feature, statistics) -> Optional[Change]:
    """The data holds NaN or infinity where the curated schema forbids them (float_domain disallow_*)."""
    if curated.type != schema_pb2.FLOAT:
        return None
    nan, inf = _non_finite(statistics, curated.name)
    forbidden = []
    if nan and curated.float_domain.disallow_nan:
        forbidden.append(f"{nan:,} NaN")
    if inf and curated.float_domain.disallow_inf:
        forbidden.append(f"{inf:,} infinite")
    if not forbidden:
        return None
    return Change(
        curated.name,
        "non_finite",
        f"data has {' and '.join(forbidden)} value(s), which the schema forbids (float_domain disallow_nan / "
        "disallow_inf): usually broken upstream data to fix; approving allows them for this feature",
    )


def forbid_non_finite(feature: schema_pb2.Feature, statistics) -> None:
    """A float feature whose data has no NaN (no infinity) gets them forbidden, as `conveyor init` drafts it."""
    if feature.type != schema_pb2.FLOAT:
        return
    nan, inf = _non_finite(statistics, feature.name)
    if not nan:
        feature.float_domain.disallow_nan = True
    if not inf:
        feature.float_domain.disallow_inf = True


# ---------------------------------------------------------------------------------------------
# Approving


def _merged_feature(curated: Optional[schema_pb2.Feature], inferred: schema_pb2.Feature, lo_hi) -> schema_pb2.Feature:
    """The inferred feature, keeping what only people set: environments, drift and skew comparators,
    annotations, and numeric ranges (widened to cover the data)."""
    merged = copy.deepcopy(inferred)
    if curated is None:
        return merged
    for name in ("not_in_environment", "in_environment"):
        del getattr(merged, name)[:]
        getattr(merged, name).extend(getattr(curated, name))
    for name in ("drift_comparator", "skew_comparator", "annotation"):
        merged.ClearField(name)
        if curated.HasField(name):
            getattr(merged, name).CopyFrom(getattr(curated, name))
    if curated.HasField("float_domain") and merged.HasField("float_domain") and curated.type == merged.type:
        # What people decided about NaN and infinity survives an approval of other changes.
        merged.float_domain.disallow_nan = curated.float_domain.disallow_nan
        merged.float_domain.disallow_inf = curated.float_domain.disallow_inf
    for kind in ("int_domain", "float_domain"):
        if curated.HasField(kind) and not merged.HasField(kind) and curated.type == merged.type:
            d = copy.deepcopy(getattr(curated, kind))
            if lo_hi is not None:
                lo, hi = lo_hi
                cast = int if kind == "int_domain" else float
                if d.HasField("min"):
                    d.min = min(d.min, cast(lo))
                if d.HasField("max"):
                    d.max = max(d.max, cast(hi))
            getattr(merged, kind).CopyFrom(d)
    return merged


def apply(
    curated: schema_pb2.Schema, diff: SchemaDiff, features: Optional[Iterable[str]] = None
) -> tuple[schema_pb2.Schema, list[Change]]:
    """The curated schema with the accepted changes written in.

    Features keep their place; added ones go at the end in name order; string domains follow their
    feature. Nothing else in the file changes.

    Args:
      curated: the curated schema.
      diff: from `diff`.
      features: accept only these features' changes (all when None).

    Returns:
      The new schema and the changes it accepted.

    Raises:
      ValueError: a named feature has no pending change.
    """
    assert diff.inferred is not None and diff.statistics is not None
    wanted = set(features) if features else set(diff.features)
    unknown = wanted - set(diff.features)
    if unknown:
        raise ValueError(f"no pending change for feature(s) {', '.join(sorted(unknown))}; see `conveyor schema diff`")
    accepted = [c for c in diff.changes if c.feature in wanted]
    inferred = {f.name: f for f in diff.inferred.feature}
    ranges = _numeric_range(diff.statistics)
    result = copy.deepcopy(curated)
    del result.feature[:]
    for f in curated.feature:
        if f.name not in wanted:
            result.feature.append(f)
        elif f.name in inferred:
            merged = _merged_feature(f, inferred[f.name], ranges.get(f.name))
            if f.type != schema_pb2.FLOAT:  # became a float feature: forbid NaN/Inf where the data has none
                forbid_non_finite(merged, diff.statistics)
            if any(c.feature == f.name and c.kind == "non_finite" for c in accepted):
                nan, inf = _non_finite(diff.statistics, f.name)
                if nan:
                    merged.float_domain.disallow_nan = False
                if inf:
                    merged.float_domain.disallow_inf = False
            result.feature.append(merged)
    for name in sorted(wanted - {f.name for f in curated.feature}):
        added = _merged_feature(None, inferred[name], None)
        forbid_non_finite(added, diff.statistics)
        result.feature.append(added)
    _sync_string_domains(result, curated, diff.inferred, wanted)
    return result, accepted


def _sync_string_domains(result, curated, inferred, wanted) -> None:
    domains = {d.name: d for d in curated.string_domain}
    for f in result.feature:
        if f.name in wanted and f.HasField("domain"):
            source = next((d for d in inferred.string_domain if d.name == f.domain), None)
            if source is not None:
                domains[f.domain] = source
    used = {f.domain for f in result.feature if f.HasField("domain")}
    order = [d.name for d in curated.string_domain] + sorted(set(domains) - {d.name for d in curated.string_domain})
    del result.string_domain[:]
    result.string_domain.extend(domains[n] for n in order if n in used)


def _who() -> str:
    try:
        name = subprocess.run(
            ["git", "config", "user.name"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        name = ""
    return name or getpass.getuser()


def record_review(
    log_path: Path,
    diff: SchemaDiff,
    accepted: Sequence[Change],
    schema_before: str,
    schema_after: str,
    run: Optional[Mapping[str, object]] = None,
) -> dict:
    """Appends one JSON line to the review log: who, when, which changes, from which data and statistics.

    Args:
      log_path: the review log beside the curated schema.
      diff: what was compared, with its statistics.
      accepted: the changes written into the schema.
      schema_before: the curated file's text before the approval.
      schema_after: its text after.
      run: when the statistics came from a pipeline run: its id (the pipeline_run context name) and
        the ML Metadata store it is recorded in (the URL without a password), under "run".

    Returns:
      The entry as written.
    """
    entry = {
        "approved_by": _who(),
        "approved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": diff.data,
        "rows": diff.rows,
        "statistics_sha256": hashlib.sha256(diff.statistics.SerializeToString(deterministic=True)).hexdigest(),
        "schema_sha256_before": hashlib.sha256(schema_before.encode()).hexdigest(),
        "schema_sha256_after": hashlib.sha256(schema_after.encode()).hexdigest(),
        "features": sorted({c.feature for c in accepted}),
        "changes": [asdict(c) for c in accepted],
    }
    if run is not None:
        entry["run"] = dict(run)
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return entry


# ---------------------------------------------------------------------------------------------
# Reports


def markdown(diff: SchemaDiff, schema_path: str) -> str:
    lines = [f"## Schema diff: `{schema_path}`", "", f"Data: `{diff.data}` ({diff.rows:,} rows)", ""]
    if not diff.changes:
        lines.append("No differences: the data matches the curated schema.")
    else:
        lines += ["| feature | change |", "|---|---|"]
        pipe = "\\|"
        lines += [f"| `{c.feature}` | {c.text.replace('|', pipe)} |" for c in diff.changes]
        lines += ["", "Approve with `conveyor schema approve` (all) or `--feature NAME` (some)."]
    return "\n".join(lines) + "\n"


def _bars_svg(items: list[tuple[str, float]], width: int = 360) -> str:
    """A horizontal bar chart as inline SVG: no scripts, no network, opens anywhere."""
    if not items:
        return ""
    top = max(v for _, v in items) or 1.0
    row, label_w = 16, 140
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(items) + 4}" role="img">']
    for i, (label, value) in enumerate(items):
        w = (width - label_w - 60) * value / top
        y = i * row + 2
        parts.append(
            f'<text x="{label_w - 4}" y="{y + 11}" text-anchor="end" font-size="11">{html.escape(label[:22])}</text>'
        )
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{row - 4}" fill="#4a7fb5"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 11}" font-size="11">{value:,.0f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _feature_charts(stats: statistics_pb2.DatasetFeatureStatisticsList) -> list[tuple[str, str, str]]:
    charts = []
    for dataset in stats.datasets:
        for f in sorted(dataset.features, key=lambda f: f.path.step[0] if f.path.step else f.name):
            name = f.path.step[0] if f.path.step else f.name
            if f.HasField("num_stats"):
                s = f.num_stats
                missing = s.common_stats.num_missing
                summary = (
                    f"mean {s.mean:.4g}, std {s.std_dev:.4g}, min {s.min:.4g}, max {s.max:.4g}, missing {missing:,}"
                )
                hist = next((h for h in s.histograms if h.type == statistics_pb2.Histogram.STANDARD), None)
                items = (
                    [(f"{b.low_value:.3g}–{b.high_value:.3g}", b.sample_count) for b in hist.buckets] if hist else []
                )
                charts.append((name, summary, _bars_svg(items)))
            elif f.HasField("string_stats"):
                s = f.string_stats
                summary = f"{s.unique:,} unique values, missing {s.common_stats.num_missing:,}"
                items = [(v.value, v.frequency) for v in s.top_values[:12]]
                charts.append((name, summary, _bars_svg(items)))
    return charts


# TFDV's own statistics view (Facets Overview). TFDV's page fetches Facets' web components from
# cdnjs and GitHub at view time, and no package registry ships a build of them, so it cannot open
# offline: html_report draws the same statistics itself, and this page is the interactive extra.
FACETS_PAGE = "schema_diff_facets.html"


def facets_report(diff: SchemaDiff) -> str:
    """TFDV's interactive statistics visualisation of the data, as TFDV renders it in notebooks."""
    from tensorflow_data_validation.utils.display_util import get_statistics_html

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Statistics: {html.escape(diff.data)}</title></head><body>
{get_statistics_html(diff.statistics)}
</body></html>
"""


def html_report(diff: SchemaDiff, schema_path: str, anomalies: Sequence[str]) -> str:
    """One self-contained page: the differences, the anomalies table and per-feature statistics charts."""
    esc = html.escape
    rows = "".join(f"<tr><td><code>{esc(c.feature)}</code></td><td>{esc(c.text)}</td></tr>" for c in diff.changes)
    anomaly_rows = "".join(f"<tr><td>{esc(a)}</td></tr>" for a in anomalies)
    charts = "".join(
        f"<section><h3><code>{esc(n)}</code></h3><p>{esc(s)}</p>{svg}</section>"
        for n, s, svg in _feature_charts(diff.statistics)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Schema diff: {esc(schema_path)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
section {{ display: inline-block; vertical-align: top; width: 380px; margin: 0 1em 1em 0; }}
h3 {{ margin-bottom: 0.2em; }} p {{ margin-top: 0; font-size: 12px; color: #555; }}
</style></head><body>
<h1>Schema diff</h1>
<p>Curated schema <code>{esc(schema_path)}</code> against data <code>{esc(diff.data)}</code> ({diff.rows:,} rows).</p>
<h2>Differences ({len(diff.changes)})</h2>
<table><tr><th>feature</th><th>change</th></tr>{rows or '<tr><td colspan="2">none</td></tr>'}</table>
<h2>Anomalies against the curated schema ({len(anomalies)})</h2>
<table><tr><th>anomaly</th></tr>{anomaly_rows or "<tr><td>none</td></tr>"}</table>
<h2>Statistics</h2>
<p>TFDV's statistics of the data, feature by feature. The same statistics in TFDV's interactive
Facets view: <a href="{FACETS_PAGE}">{FACETS_PAGE}</a> (needs the web for Facets' scripts).</p>
{charts}
</body></html>
"""


def diff(data_path: str | Path, schema_path: str | Path, beam_args: Sequence[str] = ()) -> tuple[SchemaDiff, list[str]]:
    """Statistics of the data (TFDV on Beam), the schema inferred from them, and the differences. The data is
    a CSV file or directory, or a directory of `conveyor serve` request logs (the examples logged requests
    carried).

    Returns:
      The diff and the anomaly lines of the data against the curated schema.

    Raises:
      DataReadError: the data cannot be read.
    """
    from components.request_logs import directory_statistics, is_log_directory
    from schema.check import DataReadError, csv_statistics, read_csv_input

    if is_log_directory(data_path):  # `conveyor serve`'s request logs: what serving really sends
        statistics, said = directory_statistics(data_path, min_examples=1)
        if statistics is None:
            raise DataReadError(data_path, said)
        rows = int(statistics.datasets[0].num_examples)
        return diff_statistics(statistics, schema_path, f"served traffic: {said}", rows)
    csv_input = read_csv_input(data_path)
    return diff_statistics(csv_statistics(csv_input, beam_args), schema_path, str(data_path), csv_input.rows)


def diff_statistics(
    stats: statistics_pb2.DatasetFeatureStatisticsList, schema_path: str | Path, data: str, rows: int
) -> tuple[SchemaDiff, list[str]]:
    """The schema inferred from statistics already computed (a pipeline run's), and the differences.

    Args:
      stats: TFDV statistics of one dataset.
      schema_path: the curated schema.
      data: what the statistics describe, for the reports and the review log.
      rows: how many rows they count.

    Returns:
      The diff and the anomaly lines of the data against the curated schema.
    """
    import tensorflow_data_validation as tfdv

    from components.data_gate.anomalies import from_proto

    inferred = tfdv.infer_schema(stats, infer_feature_shape=True)
    _, curated = read_schema(schema_path)
    changes = compare(curated, inferred, stats)
    anomalies = [a.line() for a in from_proto("data", tfdv.validate_statistics(stats, curated, environment="TRAINING"))]
    return SchemaDiff(changes, inferred, stats, data, rows), anomalies
