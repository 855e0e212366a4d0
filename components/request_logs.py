"""TF Serving's request logs read back: `PredictionLog` TFRecord files (as `conveyor serve` writes them under
`<output>/request_logs/<model>/`, serving/request_log.py) into the serialized tf.Examples the requests
carried, and TFDV's statistics of those examples on Beam. Shared by the data gate (`data.serving_root`
naming a request-log directory) and `conveyor monitor`, so both read traffic the same way."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import apache_beam as beam

# serving/request_log.py's layout: finished files end in .tfrecord, files being written add .inprogress.
LOG_GLOB, IN_PROGRESS_GLOB = "*.tfrecord", "*.tfrecord.inprogress"
# The request input holding serialized tf.Examples in a logged Predict request (serving_default's).
EXAMPLES_INPUT = "examples"
# The fewest logged examples a skew or drift verdict is given on: fewer would raise false alarms.
MIN_EXAMPLES = 100


def is_log_directory(path: str | Path) -> bool:
    """The directory holds request-log files (finished or being written), not CSV."""
    path = Path(path)
    return path.is_dir() and (any(path.glob(LOG_GLOB)) or any(path.glob(IN_PROGRESS_GLOB)))


def finished_files(directory: str | Path) -> list[Path]:
    """The directory's finished request-log files, oldest first (their names start with the UTC time)."""
    return sorted(Path(directory).glob(LOG_GLOB))


def read_payloads(path: Path) -> tuple[list[bytes], Optional[str]]:
    """A TFRecord file's records and, when it cannot be read to its end (truncated, corrupt), why."""
    import tensorflow as tf

    errors = (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError)
    try:  # in batches: a record at a time costs tf.data some 0.1 ms each
        return [data for batch in tf.data.TFRecordDataset(str(path)).batch(4096) for data in batch.numpy()], None
    except errors:  # read again one record at a time, to keep every record before the damage
        pass
    payloads: list[bytes] = []
    try:
        for data in tf.data.TFRecordDataset(str(path)):
            payloads.append(data.numpy())
    except errors as err:
        return payloads, f"{type(err).__name__}: {err.message.splitlines()[0] if err.message else err}"
    return payloads, None


def parse_log(data: bytes) -> Optional[Any]:
    """A PredictionLog, or None when the bytes are not one."""
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    try:
        return prediction_log_pb2.PredictionLog.FromString(data)
    except DecodeError:
        return None


def logged_examples(log: Any) -> list[bytes]:
    """The serialized tf.Examples a logged request carried: a Predict request's `examples` input, or the
    Input of a Classify, Regress or MultiInference request, each example merged over the list's context
    as TF Serving merges them (the example's own features win). Empty when it carried none."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        inputs = log.predict_log.request.inputs
        return list(inputs[EXAMPLES_INPUT].string_val) if EXAMPLES_INPUT in inputs else []
    part = {"classify_log": log.classify_log, "regress_log": log.regress_log}.get(kind)
    if part is None and kind == "multi_inference_log":
        part = log.multi_inference_log
    given = part.request.input if part is not None else None
    which = given.WhichOneof("kind") if given is not None else None
    if which == "example_list":
        return [e.SerializeToString() for e in given.example_list.examples]
    if which != "example_list_with_context":
        return []
    context, out = given.example_list_with_context.context, []
    for example in given.example_list_with_context.examples:
        merged = type(example)()
        merged.MergeFrom(context)
        merged.MergeFrom(example)  # a map merge replaces the context's value of a feature both name
        out.append(merged.SerializeToString())
    return out


def parseable(serialized: Sequence[bytes]) -> tuple[list[bytes], int]:
    """The items that parse as tf.Example, and how many do not."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    good = []
    for item in serialized:
        try:
            example_pb2.Example.FromString(item)
        except DecodeError:
            continue
        good.append(item)
    return good, len(serialized) - len(good)


class _DecodeExamples(beam.DoFn):
    """Serialized tf.Examples to an Arrow RecordBatch, as TFX's TFXIO reads them for StatisticsGen."""

    def setup(self):
        from tfx_bsl.coders import example_coder

        self._decoder = example_coder.ExamplesToRecordBatchDecoder()

    def process(self, batch):
        yield self._decoder.DecodeBatch(list(batch))


def statistics(examples: Mapping[str, Sequence[bytes]], beam_args: Sequence[str] = ()) -> dict[str, Any]:
    """TFDV's statistics of each set of serialized tf.Examples, in one Beam pipeline (StatisticsGen's
    default options, so they compare with the training statistics it made).

    Args:
      examples: a name for each set, and its serialized examples (sets without any are skipped).
      beam_args: Beam pipeline options (default: the DirectRunner in process).

    Returns:
      The statistics (DatasetFeatureStatisticsList) of each non-empty set, by name.
    """
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    wanted = {name: list(items) for name, items in examples.items() if items}
    if not wanted:
        return {}
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="conveyor-request-logs-") as scratch:
        paths = {name: str(Path(scratch) / f"{name}.pb") for name in wanted}
        # Through a TFRecord file, not beam.Create: Create encodes every element into the pipeline, ten
        # times slower at 100,000 examples than reading them back as TFDV reads its own input.
        records = {name: str(Path(scratch) / f"{name}.tfrecord") for name in wanted}
        for name, items in wanted.items():
            with tf.io.TFRecordWriter(records[name]) as writer:
                for item in items:
                    writer.write(item)
        with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
            for name in wanted:
                _ = (
                    pipeline
                    | f"Read {name}" >> beam.io.ReadFromTFRecord(records[name])
                    | f"Batch {name}" >> beam.BatchElements(min_batch_size=64, max_batch_size=1000)
                    | f"Decode {name}" >> beam.ParDo(_DecodeExamples())
                    | f"Statistics {name}" >> tfdv.GenerateStatistics(tfdv.StatsOptions())
                    | f"Write {name}" >> tfdv.WriteStatisticsToBinaryFile(paths[name])
                )
        return {name: tfdv.load_stats_binary(path) for name, path in paths.items()}


def directory_statistics(directory: str | Path, min_examples: int = MIN_EXAMPLES) -> tuple[Optional[Any], str]:
    """The statistics of every example logged in a request-log directory's finished files, for the data
    gate's skew check; None below `min_examples` readable examples.

    Returns:
      (statistics or None, one line saying what was read and what was left out).
    """
    examples: list[bytes] = []
    files, requests, unreadable = finished_files(directory), 0, 0
    for path in files:
        payloads, error = read_payloads(path)
        unreadable += error is not None
        for data in payloads:
            log = parse_log(data)
            found, bad = parseable(logged_examples(log) if log is not None else [])
            unreadable += bad + (not found)
            requests += bool(found)
            examples.extend(found)
    said = f"{requests:,} logged requests ({len(examples):,} examples) in {len(files)} file(s) of {directory}"
    said += f", {unreadable:,} unreadable file(s) or record(s) left out" if unreadable else ""
    if len(examples) < min_examples:
        return None, f"{said}: fewer than {min_examples:,} examples, skew not checked"
    return statistics({"serving": examples})["serving"], said
