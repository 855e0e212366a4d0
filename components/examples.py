"""Raw feature values to serialized tf.Example, typed by the curated schema (what serving clients send)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2


def record_compression(files: list[str]) -> str:
    """The `compression_type` for tf.data.TFRecordDataset over example files, from their names:
    TFX's own components write gzip (`.gz`), CsvExampleGen here writes uncompressed files."""
    return "GZIP" if files and all(f.endswith(".gz") for f in files) else ""


def to_example(values: Mapping[str, Any], schema: schema_pb2.Schema, skip: Iterable[str] = ()) -> tf.train.Example:
    """Builds a tf.Example from one row of raw values; empty strings and None count as missing.

    Args:
      values: column name to value (a scalar or a list), e.g. a csv.DictReader row.
      schema: the curated schema, which gives each column's type.
      skip: columns to leave out (the label, for serving).

    Returns:
      The example, holding only the schema's columns.

    Raises:
      ValueError: a value cannot be read as its column's type (the column is named).
    """
    skipped = set(skip)
    example = tf.train.Example()
    for feature in schema.feature:
        if feature.name in skipped or feature.name not in values:
            continue
        raw = values[feature.name]
        items = [v for v in (raw if isinstance(raw, (list, tuple)) else [raw]) if v is not None and v != ""]
        slot = example.features.feature[feature.name]
        try:
            if feature.type == schema_pb2.INT:
                slot.int64_list.value.extend(int(float(v)) if isinstance(v, str) else int(v) for v in items)
            elif feature.type == schema_pb2.FLOAT:
                slot.float_list.value.extend(float(v) for v in items)
            else:
                slot.bytes_list.value.extend(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in items)
        except (TypeError, ValueError) as err:
            kind = schema_pb2.FeatureType.Name(feature.type)
            raise ValueError(f"feature '{feature.name}': {raw!r} is not a valid {kind} value ({err})") from None
    return example
