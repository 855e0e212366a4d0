"""The web UI's comparison of two versions: every metric overall and per slice side by side with the change,
the thresholds each was held to, the config difference and the data difference.

Metrics and thresholds come from registry.record's metrics_by_slice and thresholds (what `conveyor models
show` prints, read from TFMA's output); the config is what each version's Trainer recorded in ML Metadata.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from registry.lineage import format_spans, int_property
from registry.record import _slice_order, evaluation_metrics, exec_property, thresholds
from registry.ui_pages import e, page
from registry.versions import VersionRecord

# What a version's run recorded about how it was made: the Trainer's execution properties.
CONFIG_PROPERTIES = ("custom_config", "train_args", "eval_args")


def _evaluation(record: VersionRecord) -> tuple[dict, list[dict[str, Any]]]:
    evaluator = record.executions.get("Evaluator")
    if evaluator is None or evaluator.output("evaluation") is None:
        return {}, []
    return evaluation_metrics(evaluator.output("evaluation")), thresholds(evaluator)


def _number(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def metric_rows(a: dict, b: dict) -> list[tuple[str, str, Optional[float], Optional[float]]]:
    """(slice, metric, A's candidate value, B's), every slice and metric either version has, Overall first."""
    rows = []
    for where in sorted(set(a) | set(b), key=lambda w: _slice_order((w, None))):  # as `models show` orders them
        names = set(a.get(where, {})) | set(b.get(where, {}))
        for name in sorted(names):
            va = a.get(where, {}).get(name, {}).get("candidate")
            vb = b.get(where, {}).get(name, {}).get("candidate")
            if va is not None or vb is not None:
                rows.append((where, name, va, vb))
    return rows


def flat_config(record: VersionRecord) -> dict[str, str]:
    """The Trainer's recorded config as dotted keys ("custom_config.model.hidden_units": "[16, 8]")."""
    trainer = record.executions.get("Trainer")
    out: dict[str, str] = {}
    if trainer is None:
        return out

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            for inner in value:  # features: keyed by name, so a reordering is no difference
                walk(f"{prefix}[{inner['name']}]", {k: v for k, v in inner.items() if k != "name"})
        else:
            out[prefix] = json.dumps(value, sort_keys=True)

    for name in CONFIG_PROPERTIES:
        raw = exec_property(trainer, name)
        if raw:
            try:
                walk(name, json.loads(raw))
            except ValueError:
                out[name] = raw
    for key in ("config", "git_commit", "git_dirty"):
        if key in record.provenance:
            out[f"run.{key}"] = str(record.provenance[key])
    return out


def data_facts(record: VersionRecord) -> dict[str, str]:
    """The data a version was made from: spans, rows per split, and the examples Transform and Evaluator read."""
    out = {"training spans": format_spans(record.training_spans) if record.training_spans else ""}
    for split, rows in sorted((record.summary.rows if record.summary else {}).items()):
        out[f"rows: {split}"] = f"{rows:,}"
    for role, node_id in (("training examples", "Transform"), ("evaluation examples", "Evaluator")):
        node = record.executions.get(node_id)
        for i, artifact in enumerate(node.inputs.get("examples", []) if node is not None else []):
            span = int_property(artifact, "span")
            out[f"{role} {i + 1}"] = f"{artifact.uri} (span {span})"
    return out


def _change(va: Optional[float], vb: Optional[float]) -> str:
    if va is None or vb is None or math.isnan(va) or math.isnan(vb):
        return ""
    tag = "ok" if vb > va else ("bad" if vb < va else "")
    return f'<span class="tag {tag}">{vb - va:+.4f}</span>'


def _pairs(title: str, table_id: str, a: dict[str, str], b: dict[str, str], va: int, vb: int) -> str:
    keys = sorted(set(a) | set(b))
    differ = [k for k in keys if a.get(k) != b.get(k)]
    rows = "".join(
        f"<tr><td><code>{e(k)}</code></td><td>{e(a.get(k, '(none)'))}</td><td>{e(b.get(k, '(none)'))}</td></tr>"
        for k in differ
    )
    same = len(keys) - len(differ)
    head = f"<tr><th>key</th><th>version {va}</th><th>version {vb}</th></tr>"
    body = rows or "<tr><td colspan=3>no difference</td></tr>"
    counts = f"<p>{len(differ)} difference(s); {same} the same.</p>"
    return f"<h2>{e(title)}</h2>{counts}<table id='{table_id}'>{head}{body}</table>"


def compare_page(a: VersionRecord, b: VersionRecord, model_name: str, form: str = "") -> str:
    """Two versions side by side (B's change against A: positive means B's value is higher)."""
    metrics_a, thresholds_a = _evaluation(a)
    metrics_b, thresholds_b = _evaluation(b)
    rows = "".join(
        f"<tr><td>{e(where)}</td><td>{e(name)}</td><td>{_number(va)}</td><td>{_number(vb)}</td>"
        f"<td>{_change(va, vb)}</td></tr>"
        for where, name, va, vb in metric_rows(metrics_a, metrics_b)
    )
    body = form + (
        f"<p>Version <a href='/models/{a.version}'>{a.version}</a> (run {e(a.run_id)}) against "
        f"<a href='/models/{b.version}'>{b.version}</a> (run {e(b.run_id)}); the change is B &minus; A.</p>"
        f"<h2>Metrics, overall and per slice</h2><table id='metrics'><tr><th>slice</th><th>metric</th>"
        f"<th>version {a.version}</th><th>version {b.version}</th><th>change</th></tr>"
        f"{rows or '<tr><td colspan=5>neither version has an evaluation</td></tr>'}</table>"
    )
    passed = {True: '<span class="tag ok">pass</span>', False: '<span class="tag bad">FAIL</span>', None: ""}
    keys = []
    for t in thresholds_a + thresholds_b:
        if (t["metric"], t["kind"]) not in keys:
            keys.append((t["metric"], t["kind"]))
    by_a = {(t["metric"], t["kind"]): t for t in thresholds_a}
    by_b = {(t["metric"], t["kind"]): t for t in thresholds_b}
    trows = "".join(
        f"<tr><td>{e(metric)}</td><td>{e(kind)}</td>"
        f"<td>{e(by_a[(metric, kind)]['bound'] if (metric, kind) in by_a else '(none)')} "
        f"{passed[by_a[(metric, kind)]['passed'] if (metric, kind) in by_a else None]}</td>"
        f"<td>{e(by_b[(metric, kind)]['bound'] if (metric, kind) in by_b else '(none)')} "
        f"{passed[by_b[(metric, kind)]['passed'] if (metric, kind) in by_b else None]}</td></tr>"
        for metric, kind in keys
    )
    body += (
        "<h2>Thresholds (from each run's evaluation config)</h2><table id='thresholds'><tr><th>metric</th>"
        f"<th>kind</th><th>version {a.version}</th><th>version {b.version}</th></tr>"
        f"{trows or '<tr><td colspan=4>no thresholds</td></tr>'}</table>"
    )
    body += _pairs("Config difference", "config", flat_config(a), flat_config(b), a.version, b.version)
    body += _pairs("Data difference", "data", data_facts(a), data_facts(b), a.version, b.version)
    return page(f"{model_name}: version {a.version} against {b.version}", body)
