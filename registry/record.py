"""The full record of one pushed version, in words: who, when, which code, data, schema, metrics, thresholds."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

from registry.lineage import NodeExecution, created_ms, custom_property, int_property, updated_ms
from registry.summary import from_files, metric_label
from registry.versions import VersionRecord

TRAINING_RECORD = os.path.join("assets.extra", "conveyor_training.json")
# Who and what made a version, in the order shown (registry.runs.provenance, registry.card_gen).
PROVENANCE_SHOWN = ("user", "started_by", "git_commit", "git_dirty", "config", "pipeline_run")


# Where Kubeflow Pipelines keeps a task's input parameters (backend/src/v2/metadata/client.go `inputs`).
KFP_INPUTS = "inputs"


def exec_property(node: NodeExecution, name: str) -> Optional[str]:
    """An execution's exec property: TFX records each as a property; KFP all in its `inputs` struct."""
    for props in (node.execution.properties, node.execution.custom_properties):
        if name in props:
            value = props[name]
            kind = value.WhichOneof("value")
            return getattr(value, kind) if kind else None
    kfp = node.execution.custom_properties.get(KFP_INPUTS)
    if kfp is not None and kfp.HasField("struct_value") and name in kfp.struct_value.fields:
        value = kfp.struct_value.fields[name]
        return value.string_value if value.HasField("string_value") else str(value.number_value)
    return None


# What a resolver that found nothing means: TFX records it as FAILED, but it is the normal first run.
_NOTHING_RESOLVED = {
    "previous_statistics_resolver": "nothing to compare with: first span",
    "latest_blessed_model_resolver": "nothing to start from or compare with: no blessed model yet",
}


def _state(node_id: str, state: str) -> str:
    if state == "failed" and node_id.endswith("_resolver"):
        return _NOTHING_RESOLVED.get(node_id, "nothing found")
    return state


def _ms(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ms else "?"


def metrics_by_slice(evaluation_uri: str) -> dict[str, dict[str, dict[str, float]]]:
    """slice -> metric -> {"candidate": v, "baseline": v, "diff": v}."""
    import tensorflow_model_analysis as tfma

    out: dict[str, dict[str, dict[str, float]]] = {}
    for per_slice in tfma.load_metrics(evaluation_uri):
        where = tfma.slicer.stringify_slice_key(tfma.slicer.deserialize_slice_key(per_slice.slice_key)) or "Overall"
        for kv in per_slice.metric_keys_and_values:
            if not kv.value.HasField("double_value"):
                continue
            role = "diff" if kv.key.is_diff else ("baseline" if kv.key.model_name == "baseline" else "candidate")
            out.setdefault(where, {}).setdefault(metric_label(kv.key), {})[role] = kv.value.double_value.value
    return out


def evaluation_metrics(evaluation) -> dict[str, dict[str, dict[str, float]]]:
    """metrics_by_slice of an Evaluator's `evaluation` artifact, read once per process (see from_files)."""
    kept = from_files("metrics by slice", evaluation, lambda: metrics_by_slice(evaluation.uri))
    return {where: {name: dict(v) for name, v in metrics.items()} for where, metrics in kept.items()}


def _validation_failures(evaluation) -> frozenset:
    """(metric name, is_diff) of every failed threshold in an `evaluation` artifact's validation result."""
    import tensorflow_model_analysis as tfma

    failures = set()
    validation = tfma.load_validation_result(evaluation.uri)
    for per_slice in validation.metric_validations_per_slice:
        for failure in per_slice.failures:
            failures.add((failure.metric_key.name, failure.metric_key.is_diff))
    return frozenset(failures)


def thresholds(evaluator: NodeExecution) -> list[dict[str, Any]]:
    """Every configured threshold with its bound and whether the candidate passed it."""
    config = json.loads(exec_property(evaluator, "eval_config") or "{}")
    evaluation = evaluator.output("evaluation")
    failures = from_files("validation failures", evaluation, lambda: _validation_failures(evaluation))
    found = []
    for spec in config.get("metrics_specs", config.get("metricsSpecs", [])):
        for metric in spec.get("metrics", []):
            name = _snake(metric.get("class_name", metric.get("className", "")))
            for per_slice in metric.get("per_slice_thresholds", metric.get("perSliceThresholds", [])):
                threshold = per_slice.get("threshold", {})
                value = threshold.get("value_threshold", threshold.get("valueThreshold"))
                change = threshold.get("change_threshold", threshold.get("changeThreshold"))
                if value:
                    lo = value.get("lower_bound", value.get("lowerBound"))
                    hi = value.get("upper_bound", value.get("upperBound"))
                    bound = " and ".join(
                        b for b in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if b
                    )
                    found.append(
                        {"metric": name, "kind": "value", "bound": bound, "passed": (name, False) not in failures}
                    )
                if change:
                    absolute = change.get("absolute", 0)
                    lower_is_better = change.get("direction") in ("LOWER_IS_BETTER", 1)
                    found.append(
                        {
                            "metric": name,
                            "kind": "change vs baseline",
                            "bound": f"candidate - baseline {'<=' if lower_is_better else '>='} {absolute}",
                            "passed": (name, True) not in failures,
                        }
                    )
    return found


def _slice_order(item) -> tuple:
    where = item[0]
    if where == "Overall":
        return (0, "", 0, "")
    feature, _, value = where.partition(":")
    return (1, feature, 0, f"{int(value):>12}") if value.lstrip("-").isdigit() else (1, feature, 1, value)


def _snake(name: str) -> str:
    out = ""
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out += "_"
        out += ch.lower()
    return out


def training_record(trainer: NodeExecution) -> dict:
    path = os.path.join(trainer.output("model").uri, "Format-Serving", TRAINING_RECORD)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def describe(record: VersionRecord, model_name: str) -> list[str]:
    """The lines `conveyor models show VERSION` prints (and a model card holds)."""
    s, ex = record.summary, record.executions
    out = [
        f"version {record.version} of model '{model_name}'",
        f"  pushed at: {record.pushed_at} to {record.destination}",
    ]
    if record.rollback_of:
        out.append(f"  rollback of version {record.rollback_of}")
    out.append(f"  run: {record.run_id}")
    for key in PROVENANCE_SHOWN:
        if key in record.provenance:
            label = {"git_dirty": "uncommitted changes", "pipeline_run": "pipeline run"}.get(key, key.replace("_", " "))
            out.append(f"  {label}: {record.provenance[key]}")
    # A record made inside the pipeline (registry.card_gen) knows no component's times: ML Metadata has them.
    if ex and any(created_ms(node.execution) for node in ex.values()):
        out.append("  components (UTC start - end, state):")
        for node_id, node in ex.items():
            start, end = _ms(created_ms(node.execution)), _ms(updated_ms(node.execution))
            out.append(f"    {node_id:<32} {start} - {end}  {_state(node_id, node.state)}")
    trainer = ex.get("Trainer")
    if trainer is not None:
        custom = json.loads(exec_property(trainer, "custom_config") or "{}")
        out.append("  config:")
        out.append(f"    label: {custom.get('label')}")
        relevant = {"bucketized": ("buckets",), "categorical_string": ("top_k", "oov_buckets")}
        relevant["categorical_int"] = relevant["categorical_string"]
        for f in custom.get("features", []):
            extra = " ".join(f"{k}={f[k]}" for k in relevant.get(f["kind"], ()))
            out.append(f"    feature {f['name']}: {f['kind']} {extra}".rstrip())
        out.append(f"    model: {json.dumps(custom.get('model', {}))}")
        train_args = json.loads(exec_property(trainer, "train_args") or "{}")
        eval_args = json.loads(exec_property(trainer, "eval_args") or "{}")
        out.append(f"    train steps: {train_args.get('num_steps')}, eval steps: {eval_args.get('num_steps')}")
    out.append("  data:")
    transform, evaluator = ex.get("Transform"), ex.get("Evaluator")
    for role, node in (("training data", transform), ("evaluation data", evaluator)):
        for artifact in node.inputs.get("examples", []) if node is not None else []:
            span, version = int_property(artifact, "span"), int_property(artifact, "version") or 0
            out.append(f"    {role}: {artifact.uri} (span {span}, version {version})")
    if trainer is not None:
        for artifact in trainer.inputs.get("examples", []):
            out.append(f"    transformed training data: {artifact.uri}")
    if s is not None and s.rows:
        out.append("    rows: " + ", ".join(f"{k} {v:,}" for k, v in sorted(s.rows.items())))
    schema_gen = ex.get("ImportSchemaGen")
    if schema_gen is not None:
        path = exec_property(schema_gen, "schema_file")
        artifact = schema_gen.output("schema")
        digest = _sha256(os.path.join(artifact.uri, "schema.pbtxt")) if artifact is not None else "?"
        out.append(f"  schema: {path} (sha256 of the imported schema {digest})")
    if trainer is not None:
        tr = training_record(trainer)
        out.append(f"  training: {s.training if s else ''}")
        losses = tr.get("history", {}).get("loss", [])
        if losses:
            out.append("    loss per epoch: " + ", ".join(f"{v:.4f}" for v in losses))
    if evaluator is not None:
        baseline = evaluator.inputs.get("baseline_model") or []
        out.append(f"  baseline: {baseline[0].uri if baseline else 'none (first model: absolute thresholds only)'}")
        out.append("  metrics (candidate / baseline):")
        for where, metrics in sorted(evaluation_metrics(evaluator.output("evaluation")).items(), key=_slice_order):
            shown = ", ".join(
                f"{name} {v['candidate']:.4f}" + (f" / {v['baseline']:.4f}" if "baseline" in v else "")
                for name, v in sorted(metrics.items())
                if "candidate" in v
            )
            out.append(f"    {where}: {shown}")
        out.append("  thresholds (overall slice):")
        for t in thresholds(evaluator):
            out.append(f"    {t['metric']} {t['kind']}: {t['bound']}: {'pass' if t['passed'] else 'FAIL'}")
        blessing = evaluator.output("blessing")
        out.append(f"  blessed: {'yes' if custom_property(blessing, 'blessed') else 'no'}")
    out.append(f"  push destination: {record.destination}")
    return out
