"""Batch prediction: a table of raw CSV rows scored by one pushed version on Beam, through tfx_bsl's
RunInference (as TFX's BulkInferrer does), with every row accounted for as scored or rejected.

The version's `classification` or `regression` signature is run (tfx_bsl dispatches on its TF Serving method
name); rows are typed by the curated schema in `assets.extra/`, and the columns the model reads are read from
the signature's own ParseExample op, so a table is checked against the model rather than against a config.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import apache_beam as beam

from components.pusher.publish import MODELS_CONFIG, SCHEMA_FILE, TRAINING_RECORD, list_versions

FORMATS = ("csv", "tfrecord", "parquet")
NAMESPACE = "conveyor.predict"
PREDICTIONS, REJECTED, SUMMARY = "predictions", "rejected", "summary.json"
REJECTED_HEADER = ("file", "line", "reason")
PROGRESS_SECONDS = 2.0


class PredictError(ValueError):
    """Input batch prediction cannot use (a path, a model, a version, a label, a header); one line for a person."""


@dataclass(frozen=True)
class Target:
    """The version to score with and what it reads and answers."""

    model: str
    version: int
    path: Path
    signature: str
    # "binary", "multiclass" or "regression"; classes in the model's order (binary: [negative, positive]).
    task: str
    classes: tuple[str, ...]
    schema: Any
    # The columns the model parses: `required` ones fail the parse when a row has no value for them.
    required: frozenset[str]
    optional: frozenset[str]

    @property
    def features(self) -> frozenset[str]:
        return self.required | self.optional

    def output_columns(self) -> list[str]:
        """The model's outputs by name, as the output rows carry them after the kept columns."""
        if self.task == "regression":
            return ["value"]
        if self.task == "binary":
            return ["probability", "class"]
        return [*(f"score_{c}" for c in self.classes), "class"]


def _versions_message(model_dir: Path) -> str:
    versions = list_versions(model_dir)
    return ", ".join(map(str, versions)) if versions else "none"


def resolve_version(
    serving_root: str | Path, model: str, version: Optional[int] = None, label: Optional[str] = None
) -> tuple[int, Path]:
    """The version directory to score with: the one named, the one `label` names in models.config, or the newest.

    Raises:
      PredictError: no such model, version or label (the message names it and what exists).
    """
    root = Path(serving_root)
    model_dir = root / model
    if not list_versions(model_dir):
        models = sorted(p.name for p in root.iterdir() if list_versions(p)) if root.is_dir() else []
        have = ", ".join(models) if models else f"none under {root}"
        raise PredictError(f"unknown model '{model}': no pushed versions in {model_dir} (models: {have})")
    if label is not None:
        from serving.model_config import ModelConfigError, parse

        config_file = root / MODELS_CONFIG
        if not config_file.is_file():
            raise PredictError(f"unknown label '{label}': {config_file} does not exist, so no version has a label")
        try:
            entries = parse(config_file.read_text(encoding="utf-8"), str(config_file), root)
        except ModelConfigError as err:
            raise PredictError(str(err)) from None
        labels = dict(entries[model].labels) if model in entries else {}
        if label not in labels:
            have = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
            raise PredictError(f"unknown label '{label}' for model '{model}' in {config_file} (labels: {have})")
        version = labels[label]
    if version is None:
        version = list_versions(model_dir)[-1]
    if version not in list_versions(model_dir):
        raise PredictError(f"unknown version {version} of model '{model}' (versions: {_versions_message(model_dir)})")
    return version, model_dir / str(version)


def _parsed_features(saved_model_pb: Path, signature: str) -> tuple[frozenset[str], frozenset[str]]:
    """(required, optional) feature names the signature's ParseExampleV2 op reads: dense keys without a default
    fail the parse when missing, sparse keys may be absent. Empty sets when the graph holds no such op."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import tensor_util

    saved = saved_model_pb2.SavedModel.FromString(saved_model_pb.read_bytes())
    graph = next(g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags)
    library = {f.signature.name: f for f in graph.graph_def.library.function}
    nodes = {n.name: n for n in graph.graph_def.node}
    pending = [nodes[t.name.split(":")[0]] for t in graph.signature_def[signature].outputs.values()]
    functions = [a.func.name for n in pending for a in n.attr.values() if a.func.name]
    seen: set[str] = set()
    required: set[str] = set()
    optional: set[str] = set()
    while functions:
        name = functions.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        body = library[name].node_def
        consts = {n.name: tensor_util.MakeNdarray(n.attr["value"].tensor) for n in body if n.op == "Const"}
        for node in body:
            functions.extend(a.func.name for a in node.attr.values() if a.func.name)
            if node.op != "ParseExampleV2":
                continue
            # Inputs: serialized, names, sparse_keys, dense_keys, ragged_keys, then one default per dense key.
            inputs = [consts.get(i.split(":")[0]) for i in node.input if not i.startswith("^")]
            sparse, dense, defaults = inputs[2], inputs[3], inputs[5:]
            optional.update(k.decode() for k in sparse)
            for index, key in enumerate(dense):
                default = defaults[index] if index < len(defaults) else None
                (optional if default is not None and default.size else required).add(key.decode())
    return frozenset(required), frozenset(optional - required)


def load_target(model: str, version: int, path: Path) -> Target:
    """What batch prediction needs of a version directory, read without loading the model.

    Raises:
      PredictError: the version has no classification or regression signature, or no schema.
    """
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_metadata.proto.v0 import schema_pb2

    from serving.classify import DEFAULT_SIGNATURES, METHODS
    from serving.models import not_served

    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    methods = {k: v.method_name for g in saved.meta_graphs for k, v in g.signature_def.items()}
    signature = next((DEFAULT_SIGNATURES[v] for v in METHODS if methods.get(DEFAULT_SIGNATURES[v]) == METHODS[v]), None)
    if signature is None:
        raise PredictError(f"{path} has no classification or regression signature with TF Serving's method name")
    schema_file = path / "assets.extra" / SCHEMA_FILE
    if not schema_file.is_file():
        raise PredictError(f"{path} carries no assets.extra/{SCHEMA_FILE} to type raw CSV values with")
    schema = text_format.Parse(schema_file.read_text(encoding="utf-8"), schema_pb2.Schema())
    required, optional = _parsed_features(path / "saved_model.pb", signature)
    if not required | optional:
        # A model whose parse spec cannot be read: every feature the schema serves is its input.
        served = {f.name for f in schema.feature} - not_served(schema)
        optional = frozenset(served)
    record = path / TRAINING_RECORD
    facts = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    classes = tuple(str(c) for c in facts.get("classes", ()))
    if signature == DEFAULT_SIGNATURES["regress"]:
        task = "regression"
    else:
        if not classes:
            raise PredictError(f"{path} has no {TRAINING_RECORD} naming its classes")
        task = "binary" if len(classes) == 2 else "multiclass"
    return Target(model, version, path, signature, task, classes, schema, required, optional)


def input_files(data: str | Path) -> list[str]:
    """The CSV files to score: the file given, a directory's *.csv, or the newest span-<N>/ under a data root.

    Raises:
      PredictError: the path does not exist or holds no CSV file.
    """
    path = Path(data)
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise PredictError(f"--data {data} does not exist")
    files = sorted(str(p) for p in path.glob("*.csv") if p.is_file())
    if not files:
        spans = sorted(
            (p for p in path.glob("span-*") if p.is_dir() and p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
        )
        if spans:
            files = sorted(str(p) for p in spans[-1].glob("*.csv") if p.is_file())
    if not files:
        raise PredictError(f"--data {data} holds no *.csv file (nor a span-<N>/ directory of them)")
    return files


def check_headers(files: Sequence[str], target: Target, keep: Sequence[str]) -> None:
    """Every file's header names every column the model reads and every `--keep` column.

    Raises:
      PredictError: a file is unreadable, empty, or its header lacks a column (the first one missing is named).
    """
    for name in files:
        try:
            with open(name, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise PredictError(f"cannot read {name}: {err}") from None
        if not header:
            raise PredictError(f"{name} is empty: no header row")
        missing = sorted(target.features - set(header))
        if missing:
            raise PredictError(f"{name}: the header lacks '{missing[0]}', a feature model '{target.model}' reads")
        absent = [k for k in keep if k not in header]
        if absent:
            raise PredictError(f"{name}: the header lacks '{absent[0]}', named by --keep")


def _read_rows(file_name: str) -> Iterator[tuple[str, int, list[str], list[str]]]:
    """(file, line, header, fields) per record; `line` is where the record starts (the header is line 1)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.metrics import Metrics

    rows_in = Metrics.counter(NAMESPACE, "rows_in")
    with FileSystems.open(file_name) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        header = next(reader)
        line = reader.line_num + 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                # An unparseable record: reported as a row so the counts still add up.
                fields = [f"\0{err}"]
            if fields:
                rows_in.inc()
                yield file_name, line, header, fields
            line = reader.line_num + 1


@dataclass
class _ToExample:
    """A CSV record to (key, serialized tf.Example) or to a rejected (file, line, reason) row."""

    target: Target
    keep: tuple[str, ...]
    _skip: frozenset[str] = field(init=False, default=frozenset())
    _finite: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self):
        self._skip = frozenset(f.name for f in self.target.schema.feature) - self.target.features
        self._finite = frozenset(
            f.name
            for f in self.target.schema.feature
            if f.HasField("float_domain") and (f.float_domain.disallow_nan or f.float_domain.disallow_inf)
        )

    def reason(self, header: list[str], fields: list[str]) -> Optional[str]:
        if len(fields) == 1 and fields[0].startswith("\0"):
            return f"unparseable CSV: {fields[0][1:]}"
        if len(fields) != len(header):
            return f"{len(fields)} fields where the header has {len(header)}"
        return None

    def __call__(self, element):
        import math

        from components.examples import to_example

        file_name, line, header, fields = element
        problem = self.reason(header, fields)
        if problem is None:
            values = dict(zip(header, fields, strict=True))
            missing = sorted(f for f in self.target.required if values.get(f, "") == "")
            if missing:
                problem = f"feature '{missing[0]}': no value, and model '{self.target.model}' requires one"
        if problem is None:
            try:
                example = to_example(values, self.target.schema, skip=self._skip)
            except ValueError as err:
                problem = str(err)
        if problem is None:
            for name in self._finite & set(example.features.feature):
                if any(not math.isfinite(v) for v in example.features.feature[name].float_list.value):
                    problem = f"feature '{name}': {values[name]!r} is NaN or infinite, which the schema forbids"
                    break
        if problem is not None:
            yield beam.pvalue.TaggedOutput(REJECTED, (file_name, line, problem))
            return
        yield (file_name, line, tuple(values[k] for k in self.keep)), example.SerializeToString()


@dataclass
class _ToRow:
    """One keyed PredictionLog to an output row: the kept columns, then the model's outputs by name."""

    target: Target
    keep: tuple[str, ...]

    def __call__(self, keyed_log) -> dict:
        (_, _, kept), log = keyed_log
        row: dict[str, Any] = dict(zip(self.keep, kept, strict=True))
        if self.target.task == "regression":
            row["value"] = float(log.regress_log.response.result.regressions[0].value)
            return row
        classes = log.classify_log.response.result.classifications[0].classes
        scores = {_text(c.label): float(c.score) for c in classes}
        if self.target.task == "binary":
            row["probability"] = scores[self.target.classes[1]]
        else:
            row.update({f"score_{c}": scores[c] for c in self.target.classes})
        row["class"] = _text(max(classes, key=lambda c: c.score).label)
        return row


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _Progress(beam.DoFn):
    """Counts scored rows and says how many so far, every few seconds (per worker: each counts its own)."""

    def __init__(self, out=None):
        self._out = out
        self._scored = beam.metrics.Metrics.counter(NAMESPACE, "scored")

    def setup(self):
        self._count, self._start, self._said = 0, 0.0, 0.0

    def process(self, row):
        self._scored.inc()
        now = time.monotonic()
        if not self._count:
            # From the first row, not from setup: loading the model is not scoring.
            self._start = self._said = now
        self._count += 1
        if now - self._said >= PROGRESS_SECONDS:
            self._said = now
            rate = self._count / max(now - self._start, 1e-9)
            print(f"  scored {self._count:,} rows ({rate:,.0f} rows/s)", file=self._out or sys.stderr, flush=True)
        yield row


def _csv_line(values: Sequence[Any]) -> str:
    buf = io.StringIO()
    # repr of a Python float round-trips, so the file holds the model's float32 answers exactly.
    csv.writer(buf, lineterminator="").writerow([repr(v) if isinstance(v, float) else v for v in values])
    return buf.getvalue()


def _tf_example(row: dict) -> bytes:
    import tensorflow as tf

    example = tf.train.Example()
    for name, value in row.items():
        slot = example.features.feature[name]
        if isinstance(value, float):
            slot.float_list.value.append(value)
        else:
            slot.bytes_list.value.append(str(value).encode("utf-8"))
    return example.SerializeToString()


def _write(rows: beam.PCollection, fmt: str, prefix: str, columns: list[str], keep: Sequence[str]) -> None:
    """Writes the scored rows as `<prefix>-SSSSS-of-NNNNN.<fmt>`."""
    if fmt == "csv":
        lines = rows | "CsvLines" >> beam.Map(lambda r: _csv_line([r[c] for c in columns]))
        lines | "WriteCsv" >> beam.io.WriteToText(prefix, file_name_suffix=".csv", header=_csv_line(columns))
    elif fmt == "tfrecord":
        (
            rows
            | "Examples" >> beam.Map(_tf_example)
            | "WriteTFRecord" >> beam.io.WriteToTFRecord(prefix, file_name_suffix=".tfrecord")
        )
    else:
        import pyarrow as pa

        kept = set(keep)
        schema = pa.schema([(c, pa.string() if c in kept or c == "class" else pa.float64()) for c in columns])
        rows | "WriteParquet" >> beam.io.WriteToParquet(prefix, schema, file_name_suffix=".parquet")


def build_pipeline(
    pipeline: beam.Pipeline,
    files: Sequence[str],
    target: Target,
    keep: Sequence[str],
    out_dir: str,
    fmt: str,
    spread: bool = True,
    progress=None,
) -> None:
    """Adds the scoring to `pipeline`: read, type by the schema, RunInference, write; rejected rows to their file.

    Args:
      pipeline: the Beam pipeline to extend.
      files: the CSV files (their headers already checked with `check_headers`).
      target: the version to score with.
      keep: input columns copied into each output row.
      out_dir: the directory the files go to.
      fmt: one of FORMATS.
      spread: redistribute rows after reading (a Reshuffle), so workers other than a file's reader score them;
        the in-memory DirectRunner has one worker and gains nothing from it.
      progress: where progress lines go (default: stderr).
    """
    from tfx_bsl.public.beam.run_inference import RunInference
    from tfx_bsl.public.proto import model_spec_pb2

    keep = tuple(keep)
    records = pipeline | "Files" >> beam.Create(list(files)) | "Read" >> beam.FlatMap(_read_rows)
    if spread:
        records = records | "Spread" >> beam.Reshuffle()
    typed = records | "Type" >> beam.FlatMap(_ToExample(target, keep)).with_outputs(REJECTED, main="examples")
    # RunInference picks its output coder from the input's type: keyed, so the key travels beside the log.
    keyed = typed.examples | "Keyed" >> beam.Map(lambda e: e).with_output_types(tuple[Any, bytes])
    spec = model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(
            model_path=str(target.path), signature_name=[target.signature], tag=["serve"]
        )
    )
    rows = (
        keyed
        | "RunInference" >> RunInference(spec)
        | "Rows" >> beam.Map(_ToRow(target, keep))
        | "Progress" >> beam.ParDo(_Progress(progress))
    )
    _write(rows, fmt, os.path.join(out_dir, PREDICTIONS), [*keep, *target.output_columns()], keep)
    rejected = beam.metrics.Metrics.counter(NAMESPACE, "rejected")

    def rejected_line(row):
        rejected.inc()
        return _csv_line(row)

    (
        typed[REJECTED]
        | "RejectedLines" >> beam.Map(rejected_line)
        | "WriteRejected"
        >> beam.io.WriteToText(
            os.path.join(out_dir, REJECTED), file_name_suffix=".csv", header=_csv_line(REJECTED_HEADER)
        )
    )


@dataclass(frozen=True)
class Summary:
    """What a batch prediction did: the three counts, the time, and the files it wrote."""

    model: str
    version: int
    rows_in: int
    scored: int
    rejected: int
    seconds: float
    output: str
    predictions: tuple[str, ...]
    rejected_files: tuple[str, ...]

    @property
    def balanced(self) -> bool:
        """Every row read was either scored or rejected."""
        return self.rows_in == self.scored + self.rejected

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


def _counters(result) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    counts: dict[str, int] = {}
    for metric in found:
        value = metric.committed if metric.committed is not None else metric.attempted
        counts[metric.key.metric.name] = counts.get(metric.key.metric.name, 0) + int(value or 0)
    return counts


def check_output(output: str | Path) -> Path:
    """The output directory, refused if it already holds files (a finished run's output is never overwritten).

    Raises:
      PredictError: it exists and is not an empty directory.
    """
    path = Path(output)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise PredictError(f"--output {path} already exists; remove it or choose another directory")
    return path


def predict(
    target: Target,
    files: Sequence[str],
    output: str | Path,
    fmt: str = "csv",
    keep: Sequence[str] = (),
    beam_args: Sequence[str] = (),
    progress=None,
) -> Summary:
    """Scores `files` with `target` on Beam into `output`, which appears only once complete.

    The files are written into a hidden `.<name>.partial-<id>` directory beside `output` and renamed to it
    when the pipeline has finished, so a killed run leaves no directory that looks finished.

    Args:
      target: the version (see `load_target`).
      files: CSV files whose headers `check_headers` accepted.
      output: the directory to create; must not exist or be empty.
      fmt: one of FORMATS.
      keep: input columns copied into each output row.
      beam_args: Beam pipeline arguments, passed through unchanged.
      progress: where progress lines go (default: stderr).

    Returns:
      The summary; `summary.json` in `output` holds the same.

    Raises:
      PredictError: `output` is taken.
      Exception: whatever the Beam runner raises; the partial directory is removed first.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    final = check_output(output).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    direct_in_memory = not any(a.startswith("--runner") for a in beam_args) and any(
        a == "--direct_running_mode=in_memory" for a in beam_args
    )
    start = time.monotonic()
    try:
        pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
        build_pipeline(pipeline, files, target, keep, str(partial), fmt, spread=not direct_in_memory, progress=progress)
        result = pipeline.run()
        result.wait_until_finish()
        seconds = time.monotonic() - start
        counts = _counters(result)
        summary = Summary(
            model=target.model,
            version=target.version,
            rows_in=counts.get("rows_in", 0),
            scored=counts.get("scored", 0),
            rejected=counts.get("rejected", 0),
            seconds=seconds,
            output=str(final),
            predictions=tuple(sorted(str(final / p.name) for p in partial.glob(f"{PREDICTIONS}-*"))),
            rejected_files=tuple(sorted(str(final / p.name) for p in partial.glob(f"{REJECTED}-*"))),
        )
        fields = {k: getattr(summary, k) for k in summary.__dataclass_fields__}
        (partial / SUMMARY).write_text(json.dumps({**fields, "files": [str(f) for f in files]}, indent=1) + "\n")
        if final.is_dir():
            final.rmdir()
        os.rename(partial, final)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return summary
