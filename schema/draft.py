"""`conveyor init`: drafts a dataset config and its curated schema from the data, for a human to review.

The schema is TFDV's inference from statistics computed the way CsvExampleGen reads the files
(so its types are the pipeline's types), plus the SERVING environment without the label and drift
and skew comparators. The config takes its feature kinds from the column types and their number
of distinct values, and its task, classes, metrics and thresholds from the label.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline.config import DEFAULT_METRICS, TASKS, list_spans
from schema.check import CsvInput, DataReadError, read_csv_input

# Integer columns with at most this many values are categories (hour, day, year), not quantities.
MAX_INT_CATEGORIES = 20
# String columns with more values than this are hashed instead of given a vocabulary.
MAX_VOCABULARY = 100
# A label with at most this many values may be classified; more (strings) is refused.
MAX_CLASSES = 50
PROFILE_ROWS = 200_000
_TRUTHY = {"1", "true", "yes", "y", "positive", "pos", "t"}
SCHEMA_HEADER = """# proto-file: tensorflow_metadata/proto/v0/schema.proto
# proto-message: tensorflow.metadata.v0.Schema
#
# Drafted by `conveyor init` from {data} on {date}. Review it like code (schema/README.md):
# presence, domains and the drift/skew thresholds are inferred from one sample and need a human."""


class DraftError(ValueError):
    """The data cannot be drafted from as asked; names the column or option and what to do."""


@dataclass
class Column:
    """What one CSV column holds: CsvExampleGen's type for it and how many distinct values."""

    name: str
    type: str  # INT, FLOAT, BYTES, or EMPTY when no row has a value
    values: Counter = field(default_factory=Counter)
    missing: int = 0

    @property
    def distinct(self) -> int:
        return len(self.values)

    @property
    def present(self) -> int:
        return sum(self.values.values())


@dataclass
class Draft:
    name: str
    # Why the name differs from the one given (or the data directory's), or "" when it does not.
    name_note: str
    config_path: Path
    schema_path: Path
    task: str
    task_reason: str
    features: list[dict]
    skipped: list[tuple[str, str]]


def _number_type(values: Counter) -> str:
    kind = "INT"
    for value in values:
        try:
            int(value)
            continue
        except ValueError:
            pass
        try:
            float(value)
        except ValueError:
            return "BYTES"
        kind = "FLOAT"
    return kind


def profile(csv_input: CsvInput, max_rows: int = PROFILE_ROWS) -> dict[str, Column]:
    """Distinct values and missing counts per column over (up to `max_rows` of) the files."""
    counts = {name: Counter() for name in csv_input.header}
    missing = Counter()
    seen = 0
    for path in csv_input.files:
        reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
        next(reader)
        for row in reader:
            if not row:
                continue
            for name, value in zip(csv_input.header, row, strict=True):
                if value == "":
                    missing[name] += 1
                else:
                    counts[name][value] += 1
            seen += 1
            if seen >= max_rows:
                break
    return {
        name: Column(name, _number_type(counts[name]) if counts[name] else "EMPTY", counts[name], missing[name])
        for name in csv_input.header
    }


def infer_task(label: Column) -> tuple[str, str]:
    """(task, why) from the label's values."""
    if label.type == "FLOAT":
        return "regression", "the label holds fractional numbers"
    if label.distinct == 2:
        return "binary", "the label has exactly 2 values"
    limit = MAX_INT_CATEGORIES if label.type == "INT" else MAX_CLASSES
    if label.distinct <= limit:
        return "multiclass", f"the label has {label.distinct} values"
    if label.type == "INT":
        return "regression", f"the label is an integer with {label.distinct} values"
    raise DraftError(
        f"label '{label.name}' is text with {label.distinct} distinct values: too many classes "
        f"(at most {MAX_CLASSES}); pick another label or pass --task"
    )


def _classes(label: Column, task: str) -> list[str]:
    values = sorted(label.values, key=lambda v: (int(v), v) if label.type == "INT" else (0, v))
    if task == "multiclass":
        return values
    if set(values) <= {"0", "1"}:
        return ["0", "1"]
    truthy = [v for v in values if v.lower() in _TRUTHY]
    if len(truthy) == 1:
        positive = truthy[0]
    else:  # the rarer class is the one worth detecting; ties go to the later value
        positive = min(reversed(values), key=lambda v: label.values[v])
    return [next(v for v in values if v != positive), positive]


def _check_task(label: Column, task: str) -> None:
    if task == "regression" and label.type not in ("INT", "FLOAT"):
        raise DraftError(f"--task regression needs a numeric label; '{label.name}' holds text")
    if task == "binary" and label.distinct != 2:
        raise DraftError(f"--task binary needs a label with 2 values; '{label.name}' has {label.distinct}")
    if task == "multiclass" and label.distinct < 2:
        raise DraftError(f"--task multiclass needs at least 2 label values; '{label.name}' has {label.distinct}")


def feature_kind(column: Column, rows: int) -> tuple[Optional[dict], str]:
    """The feature entry for a column and a note on why, or (None, why it is left out)."""
    if column.type == "EMPTY":
        return None, "no row has a value"
    if column.distinct == 1:
        return None, f"one value only ({next(iter(column.values))!r}): nothing to learn from"
    if column.type == "FLOAT":
        return {"name": column.name, "kind": "numeric"}, "fractional numbers"
    if column.type == "INT":
        if column.distinct <= MAX_INT_CATEGORIES:
            entry = {"name": column.name, "kind": "categorical_int", "top_k": column.distinct}
            return entry, f"integers with {column.distinct} values: categories"
        return {"name": column.name, "kind": "numeric"}, f"integers with {column.distinct} values"
    if column.distinct == column.present and rows >= 20:
        return None, "every value is different: looks like an identifier"
    if column.distinct <= MAX_VOCABULARY:
        entry = {"name": column.name, "kind": "categorical_string", "top_k": column.distinct}
        return entry, f"text with {column.distinct} values"
    buckets = min(max(2 * column.distinct, 100), 10_000)
    entry = {"name": column.name, "kind": "hashed", "hash_buckets": buckets}
    return entry, f"text with {column.distinct} values: hashed into {buckets} buckets"


def _sanitize(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    cleaned = cleaned if cleaned and cleaned[0].isalpha() else f"data-{cleaned}".rstrip("-")
    return cleaned[:63]


def _thresholds(task: str, label: Column, classes: list[str]) -> list[dict]:
    if task == "binary":
        return [{"metric": "AUC", "lower_bound": 0.6, "max_change": 0.01}]
    if task == "multiclass":
        majority = max(label.values.values()) / max(label.present, 1)
        return [{"metric": "SparseCategoricalAccuracy", "lower_bound": round(majority, 2), "max_change": 0.01}]
    numbers = [float(v) for v, n in label.values.items() for _ in range(n)]
    mean = sum(numbers) / len(numbers)
    std = math.sqrt(sum((x - mean) ** 2 for x in numbers) / len(numbers))
    return [
        {"metric": "RootMeanSquaredError", "upper_bound": float(f"{std:.4g}"), "max_change": float(f"{0.05 * std:.3g}")}
    ]


def _flow(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, str):
        return (
            value
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value) and value.lower() not in _YAML_WORDS
            else repr(value)
        )
    return str(value)


_YAML_WORDS = {"yes", "no", "true", "false", "on", "off", "null", "y", "n", "~"}


def _config_text(
    name: str,
    data_root: str,
    schema: str,
    label: Column,
    task: str,
    why: str,
    classes: list[str],
    features: list[tuple[dict, str]],
    skipped: list[tuple[str, str]],
    rows: int,
) -> str:
    batch = 128
    train_steps = int(min(max(math.ceil(30 * rows / batch), 200), 5000) // 10 * 10)
    eval_steps = int(min(max(math.ceil(rows / 3 / batch), 5), 200))
    # One slice: the first categorical feature with a handful of values (a per-slice bar each).
    slice_by = [
        f["name"]
        for f, _ in features
        if f["kind"] in ("categorical_string", "categorical_int") and 2 <= f["top_k"] <= 20
    ][:1]
    lines = [
        f"# Drafted by `conveyor init` from {data_root} ({rows:,} rows) on {dt.date.today().isoformat()}.",
        "# Review every line (feature kinds, classes, thresholds), then: conveyor run --config <this file>",
        f"name: {name}",
        f"task: {task}   # {why}",
    ]
    if task != "regression":
        note = "class-index order" + (": [negative, positive]" if task == "binary" else "")
        lines.append(f"classes: {_flow(classes)}   # {note}")
    lines += [
        "data:",
        f"  root: {data_root}",
        f"label: {label.name}",
        f"schema: {schema}",
        "",
        "features:",
    ]
    width = max(len(_flow(f)) for f, _ in features) + 2
    lines += [f"  - {_flow(f):<{width}}# {note}" for f, note in features]
    if skipped:
        lines.append("# left out:")
        lines += [f"#   {column}: {reason}" for column, reason in skipped]
    lines += [
        "",
        "model:",
        "  hidden_units: [64, 32]",
        "  embedding_dim: 8",
        "  learning_rate: 0.001",
        f"  batch_size: {batch}",
        "  seed: 42",
        "",
        "training:",
        f"  train_steps: {train_steps}   # about {train_steps * batch / max(rows, 1):.0f} passes over the data",
        f"  eval_steps: {eval_steps}",
        "",
        "evaluation:",
        f"  metrics: {_flow(list(DEFAULT_METRICS[task]))}",
        "  thresholds:",
    ]
    lines += [f"    - {_flow(t)}" for t in _thresholds(task, label, classes)]
    if task == "multiclass":
        lines[-1] += "   # beat always answering the most common class"
    if task == "regression":
        lines[-1] += "   # beat always answering the mean"
    lines.append(f"  slices: {_flow([[c] for c in slice_by])}")
    lines += [
        "",
        "serving:",
        f"  model_name: {name}",
        "  keep_versions: 5",
        "",
        "beam:",
        "  # Empty: `conveyor run` picks the DirectRunner's mode by input size (README, Performance).",
        "  args: []",
        "",
    ]
    return "\n".join(lines)


def _draft_schema(csv_input: CsvInput, label: str, features: list[dict], beam_args: tuple[str, ...]):
    import tensorflow_data_validation as tfdv

    from schema.check import csv_statistics
    from schema.review import forbid_non_finite

    stats = csv_statistics(csv_input, beam_args)
    schema = tfdv.infer_schema(stats, infer_feature_shape=True)
    kinds = {f["name"]: f["kind"] for f in features}
    schema.default_environment.extend(["TRAINING", "SERVING"])
    for feature in schema.feature:
        forbid_non_finite(feature, stats)
        if feature.name == label:
            feature.not_in_environment.append("SERVING")
            continue
        kind = kinds.get(feature.name)
        if kind in ("categorical_string", "categorical_int"):
            for comparator in (feature.drift_comparator, feature.skew_comparator):
                comparator.infinity_norm.threshold = 0.2
        elif kind in ("numeric", "bucketized"):
            for comparator in (feature.drift_comparator, feature.skew_comparator):
                comparator.jensen_shannon_divergence.threshold = 0.5
    return schema


def draft(
    data: str | Path,
    label: str,
    task: Optional[str] = None,
    name: Optional[str] = None,
    out_dir: str | Path = ".",
    force: bool = False,
    beam_args: tuple[str, ...] = ("--direct_running_mode=in_memory", "--direct_num_workers=1"),
) -> Draft:
    """Writes `<out_dir>/configs/<name>.yaml` and `<out_dir>/schema/<name>/schema.pbtxt` from the data.

    Args:
      data: a directory of CSV files, or of span-<N>/ directories (the newest is profiled).
      label: the column to predict.
      task: binary, multiclass or regression; inferred from the label when None.
      name: the pipeline and model name; from the directory name when None.
      out_dir: the project directory the two files go under.
      force: overwrite existing files.

    Raises:
      DataReadError: the data cannot be read.
      DraftError: the label is missing or unsuitable, or a file exists and force is False.
    """
    from schema.review import write_schema

    data = Path(data).resolve()
    spans = list_spans(data)
    csv_input = read_csv_input(data / f"span-{spans[-1]}" if spans else data)
    if label not in csv_input.header:
        raise DataReadError(
            csv_input.files[0], f"has no column '{label}' (--label); columns: {', '.join(csv_input.header)}", 1
        )
    source = "--name" if name else "the data directory's name"
    given = name or data.name
    name = _sanitize(given)
    name_note = ""
    if name != given:
        name_note = (
            f"{source} {given!r} is used as {name!r}: pipeline and model names are lower-case letters, digits "
            "and '-' (Kubeflow Pipelines requires it; config key 'name')"
        )
    out = Path(out_dir).resolve()
    config_path, schema_path = out / "configs" / f"{name}.yaml", out / "schema" / name / "schema.pbtxt"
    for path in (config_path, schema_path):
        if path.exists() and not force:
            raise DraftError(f"{path} already exists; review it, or pass --force to draft it again")
    columns = profile(csv_input)
    target = columns[label]
    if target.missing:
        raise DraftError(f"label '{label}' is empty in {target.missing} row(s); every training row needs one")
    if task is not None and task not in TASKS:
        raise DraftError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    why = "given with --task"
    if task is None:
        task, why = infer_task(target)
    _check_task(target, task)
    classes = _classes(target, task) if task != "regression" else []
    features, skipped = [], []
    for column in columns.values():
        if column.name == label:
            continue
        entry, note = feature_kind(column, csv_input.rows)
        if entry is None:
            skipped.append((column.name, note))
        else:
            features.append((entry, note))
    if not features:
        raise DraftError(f"no usable feature columns besides the label: {'; '.join(f'{c}: {r}' for c, r in skipped)}")
    schema = _draft_schema(csv_input, label, [f for f, _ in features], beam_args)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    schema_path.parent.mkdir(parents=True, exist_ok=True)
    header = SCHEMA_HEADER.format(data=data, date=dt.date.today().isoformat())
    write_schema(schema_path, header, schema)
    text = _config_text(
        name,
        os.path.relpath(data, config_path.parent),
        os.path.relpath(schema_path, config_path.parent),
        target,
        task,
        why,
        classes,
        features,
        skipped,
        csv_input.rows,
    )
    config_path.write_text(text, encoding="utf-8")
    return Draft(name, name_note, config_path, schema_path, task, why, [f for f, _ in features], skipped)
