"""Typed CSV columns to serialized tf.Examples, whole columns at a time, and the split each goes to.

The bytes are the deterministic serialization of the tf.Example that TFX's CsvExampleGen builds
for the same row (features in name order; a missing value is an empty list of the column's type,
and a column with no value anywhere is a `tf.train.Feature()` with no kind). Those are also the
bytes TFX hashes to choose a row's split, so one encoding serves both. tfx_bsl's
RecordBatchToExamplesEncoder builds the same messages, but serializes them in its hash map's
order, which differs from message to message, so its bytes could not be hashed to TFX's splits.

The encoding is written out by hand over numpy and Arrow arrays: for each column the protobuf
wire bytes of its map entries (key, length-delimited Feature), joined row by row.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The column types of tfx_bsl's csv_decoder.ColumnType, whose order is the inference's order.
UNKNOWN, INT, FLOAT, STRING = -1, 0, 1, 2


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes each unsigned value takes as a protobuf varint."""
    values = values.astype(np.uint64, copy=False)
    lengths = np.ones(len(values), np.int64)
    for k in range(1, 10):
        lengths += values >= np.uint64(1 << (7 * k))
    return lengths


def _varints(values: np.ndarray) -> pa.LargeBinaryArray:
    """Each value as a protobuf varint (negative int64 as their 10-byte two's complement)."""
    values = np.ascontiguousarray(values).astype(np.int64, copy=False).view(np.uint64)
    lengths = _varint_lengths(values)
    matrix = np.empty((len(values), 10), np.uint8)
    for k in range(10):
        low = ((values >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        matrix[:, k] = low | np.where(lengths > k + 1, 0x80, 0).astype(np.uint8)
    return _from_rows(matrix, lengths)


def _from_rows(matrix: np.ndarray, lengths: np.ndarray) -> pa.LargeBinaryArray:
    """One binary value per row of `matrix`: its first `lengths[i]` bytes."""
    data = matrix[np.arange(matrix.shape[1]) < lengths[:, None]]
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    )


def _join(*parts) -> pa.LargeBinaryArray:
    scalars = [pa.scalar(p, pa.large_binary()) if isinstance(p, bytes) else p for p in parts]
    return pc.binary_join_element_wise(*scalars, pa.scalar(b"", pa.large_binary()))


def _lengths(array: pa.Array) -> np.ndarray:
    return pc.binary_length(array).to_numpy(zero_copy_only=False).astype(np.int64)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def feature_bytes(column_type: int, values: pa.Array | np.ndarray | None, present: np.ndarray) -> pa.Array:
    """Each row's serialized tf.train.Feature for one column.

    Args:
        column_type: INT, FLOAT, STRING or UNKNOWN (no value in the whole split).
        values: int64 or float32 numpy values, or an Arrow binary array; ignored where not present
            and for UNKNOWN.
        present: bool per row: the CSV cell was not empty.

    Returns:
        A large_binary Arrow array: the Feature's wire bytes per row.
    """
    rows = len(present)
    if column_type == UNKNOWN:
        return pa.array([b""] * rows, pa.large_binary())
    mask = pa.array(present)
    if column_type == INT:
        ints = np.where(present, values, 0)
        packed = _varints(ints)
        lengths = _lengths(packed)
        # Feature.int64_list (field 3) > Int64List.value (field 1, packed); both lengths fit one byte.
        full = _join(b"\x1a", _varints(lengths + 2), b"\x0a", _varints(lengths), packed)
        return pc.if_else(mask, full, pa.scalar(b"\x1a\x00", pa.large_binary()))
    if column_type == FLOAT:
        floats = np.where(present, values, 0).astype("<f4")
        matrix = np.empty((rows, 8), np.uint8)
        matrix[:, :4] = np.frombuffer(b"\x12\x06\x0a\x04", np.uint8)
        matrix[:, 4:] = floats.view(np.uint8).reshape(rows, 4)
        full = _from_rows(matrix, np.full(rows, 8, np.int64))
        return pc.if_else(mask, full, pa.scalar(b"\x12\x00", pa.large_binary()))
    values = values.cast(pa.large_binary())
    lengths = _lengths(values)
    # Feature.bytes_list (field 1) > BytesList.value (field 1).
    inner = 1 + _varint_lengths(lengths) + lengths
    full = _join(b"\x0a", _varints(inner), b"\x0a", _varints(lengths), values)
    return pc.if_else(mask, full, pa.scalar(b"\x0a\x00", pa.large_binary()))


def examples_bytes(features: dict[str, pa.Array]) -> pa.LargeBinaryArray:
    """Serialized tf.Examples, row by row, from each feature's serialized tf.train.Feature.

    Args:
        features: feature name to a large_binary array of its Feature bytes per row.

    Returns:
        The deterministic serialization of each row's tf.Example (map entries sorted by name).
    """
    entries = []
    for name in sorted(features, key=lambda n: n.encode("utf-8")):
        feature = features[name]
        key = name.encode("utf-8")
        # Map entry: key (field 1), value (field 2, the Feature).
        head = b"\x0a" + _varint_bytes(len(key)) + key + b"\x12"
        feature_lengths = _lengths(feature)
        entry_lengths = len(head) + _varint_lengths(feature_lengths) + feature_lengths
        entries.append(_join(b"\x0a", _varints(entry_lengths), head, _varints(feature_lengths), feature))
    # Example.features (field 1) > Features.feature (field 1, repeated map entries).
    body = _join(*entries) if len(entries) > 1 else entries[0]
    return _join(b"\x0a", _varints(_lengths(body)), body)


def split_indices(keys: pa.Array, buckets: list[int]) -> np.ndarray:
    """The output split of each row, as TFX's ExampleGen picks it: sha256 of the key, taken as a
    big-endian integer modulo the total of the hash buckets, placed by the cumulative buckets.

    Args:
        keys: the bytes TFX hashes per row (the serialized example, or the partition feature).
        buckets: cumulative hash buckets per output split, as TFX builds them.

    Returns:
        The split's index per row.
    """
    total = buckets[-1]
    digests = b"".join([hashlib.sha256(k).digest() for k in keys.to_pylist()])
    words = np.frombuffer(digests, ">u8").reshape(-1, 4).astype(np.uint64)
    if total < 1 << 16:
        # Horner over the four 64-bit words; every product stays below 2**32.
        step, bucket = np.uint64((1 << 64) % total), np.zeros(len(words), np.uint64)
        for i in range(4):
            bucket = (bucket * step + words[:, i] % np.uint64(total)) % np.uint64(total)
    else:
        bucket = np.array([int.from_bytes(digests[32 * i : 32 * i + 32], "big") % total for i in range(len(words))])
    return np.searchsorted(np.asarray(buckets), bucket.astype(np.int64), side="right")
