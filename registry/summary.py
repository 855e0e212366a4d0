"""The end-of-run summary a person reads: rows, anomalies, metrics against the baseline, blessing, push."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2

from components.data_gate.anomalies import by_split, read_artifact
from registry.lineage import (
    NodeExecution,
    custom_property,
    format_spans,
    int_property,
    model_origin,
    string_property,
)

TRAINING_RECORD = os.path.join("assets.extra", "conveyor_training.json")

# An artifact's files never change once it is LIVE (TFX writes them before publishing it), so what is
# read from them is kept, per process, under (what was read, artifact id, uri): not a copy of ML
# Metadata (nothing here says which runs or versions exist), only of files that mean the same for as
# long as that artifact does. A re-drawn page then reads only the new runs' files.
_FILE_VALUES: dict[tuple, Any] = {}
_FILE_VALUES_KEPT = 20_000
_FILE_VALUES_LOCK = threading.Lock()


def from_files(what: str, artifact: metadata_store_pb2.Artifact, read: Callable[[], Any], *extra) -> Any:
    """read()'s value for this artifact's files, read once per process while the artifact is LIVE.

    The value is shared between callers: treat it as read-only.
    """
    if artifact.state != metadata_store_pb2.Artifact.LIVE or not artifact.id:
        return read()
    key = (what, artifact.id, artifact.uri, *extra)
    with _FILE_VALUES_LOCK:
        if key in _FILE_VALUES:
            return _FILE_VALUES[key]
    value = read()
    with _FILE_VALUES_LOCK:
        if len(_FILE_VALUES) >= _FILE_VALUES_KEPT:
            _FILE_VALUES.clear()
        _FILE_VALUES[key] = value
    return value


def forget_files() -> None:
    """Drops every value from_files kept (the benchmark's cold start)."""
    with _FILE_VALUES_LOCK:
        _FILE_VALUES.clear()


@dataclass
class MetricLine:
    name: str
    candidate: Optional[float]
    baseline: Optional[float]


@dataclass
class RunSummary:
    """What happened in one run, read from ML Metadata and the artifacts it points to."""

    run_id: str
    rows: dict[str, int] = field(default_factory=dict)
    anomalies: dict[str, list[str]] = field(default_factory=dict)
    metrics: list[MetricLine] = field(default_factory=list)
    has_baseline: bool = False
    blessed: Optional[bool] = None
    failures: list[str] = field(default_factory=list)
    pushed_to: Optional[str] = None
    card: Optional[str] = None
    not_pushed_reason: Optional[str] = None
    training: str = ""
    span: Optional[int] = None
    cached: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"Run {self.run_id}"]
        if self.span is not None:
            out.append(f"  span: {self.span}")
        if self.rows:
            out.append("  rows: " + ", ".join(f"{split} {n:,}" for split, n in sorted(self.rows.items())))
        if self.anomalies:
            out.append("  anomalies:")
            for split, items in sorted(self.anomalies.items()):
                out.extend(f"    [{split}] {item}" for item in items)
        else:
            out.append("  anomalies: none against the curated schema")
        if self.training:
            out.append(f"  training: {self.training}")
        if self.metrics:
            out.append("  metrics (overall):" + ("" if self.has_baseline else " no baseline yet"))
            for m in self.metrics:
                base = f"  baseline {m.baseline:.4f}" if m.baseline is not None else ""
                cand = f"{m.candidate:.4f}" if m.candidate is not None else "n/a"
                out.append(f"    {m.name:<24} candidate {cand}{base}")
        if self.blessed is not None:
            if self.blessed:
                how = "against the baseline" if self.has_baseline else "on absolute thresholds alone (first model)"
                out.append(f"  blessed: yes, {how}")
            else:
                out.append("  blessed: no")
                out.extend(f"    {f}" for f in self.failures)
        if self.pushed_to:
            out.append(f"  pushed: {self.pushed_to}")
            if self.card:
                out.append(f"  model card: {self.card}")
        elif self.not_pushed_reason:
            out.append(f"  pushed: nothing ({self.not_pushed_reason})")
        if self.cached:
            out.append(f"  from cache: {', '.join(self.cached)}")
        return out


def _rows(statistics: NodeExecution) -> dict[str, int]:
    artifact = statistics.output("statistics")
    return dict(from_files("rows", artifact, lambda: _read_rows(artifact)))


def _read_rows(artifact: metadata_store_pb2.Artifact) -> dict[str, int]:
    rows = {}
    for split in json.loads(string_property(artifact, "split_names")):
        path = os.path.join(artifact.uri, f"Split-{split}", "FeatureStats.pb")
        stats = tfdv.load_stats_binary(path)
        rows[split] = sum(d.num_examples for d in stats.datasets)
    return rows


def _anomalies(validator: NodeExecution) -> dict[str, list[str]]:
    artifact = validator.output("anomalies")
    found = from_files(
        "anomalies",
        artifact,
        lambda: dict(by_split(read_artifact(artifact.uri, string_property(artifact, "split_names")))),
    )
    return {split: list(items) for split, items in found.items()}


def metric_label(key, classes: tuple[str, ...] = ()) -> str:
    """A TFMA MetricKey in words: its name, and for a per-class metric the class."""
    if key.HasField("sub_key") and key.sub_key.HasField("class_id"):
        index = key.sub_key.class_id.value
        return f"{key.name} [{classes[index] if index < len(classes) else f'class {index}'}]"
    return key.name


def _classes(trainer: Optional[NodeExecution]) -> tuple[str, ...]:
    """The label's classes from the Trainer's custom_config (empty for regression or when absent)."""
    if trainer is None:
        return ()
    for props in (trainer.execution.properties, trainer.execution.custom_properties):
        if "custom_config" in props:
            try:
                return tuple(json.loads(props["custom_config"].string_value).get("classes") or ())
            except ValueError:
                return ()
    return ()


def _metrics(evaluator: NodeExecution, classes: tuple[str, ...] = ()) -> tuple[list[MetricLine], bool, list[str]]:
    evaluation = evaluator.output("evaluation")
    lines, has_baseline, failures = from_files(
        "metrics", evaluation, lambda: _read_metrics(evaluation.uri, classes), classes
    )
    return [MetricLine(m.name, m.candidate, m.baseline) for m in lines], has_baseline, list(failures)


def _read_metrics(uri: str, classes: tuple[str, ...]) -> tuple[list[MetricLine], bool, list[str]]:
    values: dict[str, dict[str, float]] = {}
    for per_slice in tfma.load_metrics(uri):
        if per_slice.slice_key.single_slice_keys:
            continue
        for kv in per_slice.metric_keys_and_values:
            if kv.key.is_diff or not kv.value.HasField("double_value"):
                continue
            role = "baseline" if kv.key.model_name == "baseline" else "candidate"
            values.setdefault(metric_label(kv.key, classes), {})[role] = kv.value.double_value.value
    has_baseline = any("baseline" in v for v in values.values())
    lines = [MetricLine(name, v.get("candidate"), v.get("baseline")) for name, v in sorted(values.items())]
    failures = []
    validation = tfma.load_validation_result(uri)
    for per_slice in validation.metric_validations_per_slice:
        where = tfma.slicer.stringify_slice_key(tfma.slicer.deserialize_slice_key(per_slice.slice_key)) or "Overall"
        for failure in per_slice.failures:
            failures.append(_failure_text(failure, where, values.get(metric_label(failure.metric_key, classes), {})))
    return lines, has_baseline, failures


def _failure_text(failure, where: str, values: dict[str, float]) -> str:
    """One failed threshold in words: candidate value, baseline value and the bound it missed."""
    name, threshold = failure.metric_key.name, failure.metric_threshold
    observed = failure.metric_value.double_value.value
    cand, base = values.get("candidate"), values.get("baseline")
    both = f"candidate {cand:.4f}" if cand is not None else f"candidate {observed:.4f}"
    if base is not None:
        both += f", baseline {base:.4f}"
    if failure.metric_key.is_diff:
        change = threshold.change_threshold
        higher = change.direction == tfma.MetricDirection.HIGHER_IS_BETTER
        limit = abs(change.absolute.value)
        allowed = f"may drop at most {limit:g}" if higher else f"may rise at most {limit:g}"
        return f"{name} on {where}: {both}; change {observed:+.4f} vs baseline, bound: {allowed}"
    bounds = []
    vt = threshold.value_threshold
    if vt.HasField("lower_bound"):
        bounds.append(f">= {vt.lower_bound.value:g}")
    if vt.HasField("upper_bound"):
        bounds.append(f"<= {vt.upper_bound.value:g}")
    return f"{name} on {where}: {both}; bound: {' and '.join(bounds) or 'its threshold'}"


def _training(trainer: NodeExecution, store, pipeline_name: str) -> str:
    """ "warm-started from version V (span N): L of M layers", "cold start: <reason>", or a reuse."""
    model = trainer.output("model")
    record = from_files("training record", model, lambda: _read_training_record(model.uri))
    if record is None:
        return ""
    base = (trainer.inputs.get("base_model") or [None])[0]
    origin = "the latest blessed model"
    if base is not None and store is not None:
        version, spans = model_origin(store, base.id, pipeline_name)
        origin = f"version {version or '(not pushed)'} ({format_spans(spans)})"
    if record.get("reused_from"):
        return f"inputs unchanged since {origin}: reused it without training"
    start = record.get("warm_start", {})
    loaded, fresh = start.get("loaded_layers", []), start.get("fresh_layers", [])
    if not loaded:
        return start.get("summary", "")
    text = f"warm-started from {origin}: {len(loaded)} of {len(loaded) + len(fresh)} layers"
    if fresh:
        text += "; fresh: " + "; ".join(f"{f['layer']} ({f['reason']})" for f in fresh)
    return text


def _read_training_record(model_uri: str) -> Optional[dict]:
    path = os.path.join(model_uri, "Format-Serving", TRAINING_RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def summarize(run_id: str, executions: dict[str, NodeExecution], store=None, pipeline_name: str = "") -> RunSummary:
    """Builds the summary of one run from its executions (see registry.lineage.run_executions)."""
    summary = RunSummary(run_id)
    example_gen = executions.get("CsvExampleGen")
    if example_gen is not None and example_gen.output("examples") is not None:
        summary.span = int_property(example_gen.output("examples"), "span") if example_gen.outputs else None
    for node_id, node in executions.items():
        (summary.cached if node.state == "cached" else summary.executed).append(node_id)
    done = {k: v for k, v in executions.items() if v.state in ("complete", "cached")}
    if "StatisticsGen" in done:
        summary.rows = _rows(done["StatisticsGen"])
    if "ExampleValidator" in done:
        summary.anomalies = _anomalies(done["ExampleValidator"])
    if "Trainer" in done:
        summary.training = _training(done["Trainer"], store, pipeline_name)
    if "Evaluator" in done:
        summary.metrics, summary.has_baseline, summary.failures = _metrics(
            done["Evaluator"], _classes(done.get("Trainer"))
        )
    _blessing_and_push(summary, done)
    summary.card = _card(done.get("ModelCardGen"), summary)
    return summary


def _card(card_gen: Optional[NodeExecution], summary: RunSummary) -> Optional[str]:
    """The model card ModelCardGen wrote for the version this run pushed (registry.card_gen), or why not."""
    card = card_gen.output("model_card") if card_gen is not None else None
    if card is None or not summary.pushed_to:
        return None
    error = custom_property(card, "card_error")
    if error:
        version = os.path.basename(summary.pushed_to)
        return f"not written ({error}); retry with `conveyor models card {version}`"
    return custom_property(card, "card_html")


def outcome_summary(run_id: str, executions: dict[str, NodeExecution]) -> RunSummary:
    """The part of summarize() a run's outcome needs (blessing and push), from ML Metadata alone: no file
    is read, so the executions may be only the Evaluator, the pusher and the failed ones."""
    done = {k: v for k, v in executions.items() if v.state in ("complete", "cached")}
    summary = RunSummary(run_id)
    _blessing_and_push(summary, done)
    return summary


def _blessing_and_push(summary: RunSummary, done: dict[str, NodeExecution]) -> None:
    if "Evaluator" in done:
        blessing = done["Evaluator"].output("blessing")
        summary.blessed = bool(custom_property(blessing, "blessed"))
    pusher = next((v for k, v in done.items() if k.endswith("Pusher")), None)
    if pusher is not None:
        pushed = pusher.output("pushed_model")
        if custom_property(pushed, "pushed") and pusher.state == "cached":
            destination = custom_property(pushed, "pushed_destination")
            summary.not_pushed_reason = f"inputs unchanged; {destination} was pushed by an earlier run"
        elif custom_property(pushed, "pushed"):
            summary.pushed_to = custom_property(pushed, "pushed_destination")
        else:
            summary.not_pushed_reason = custom_property(pushed, "not_pushed_reason")
