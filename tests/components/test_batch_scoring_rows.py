"""Batch scoring's chunk typing: the fast columnar path gives the same tf.Examples as the row-by-row path."""

from __future__ import annotations

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from components.batch_scoring import Target
from components.batch_scoring_rows import Chunk, ToExamples
from tests.conftest import PROJECT_ROOT

HEADER = ("fare", "trip_miles", "payment_type", "company", "trip_start_hour", "pickup_latitude", "row_id")
ROWS = [
    "9.69,2.66,Cash,Choice Taxi Association,12,41.968007,a",
    "26.97,12.19,Credit Card,,22,,b",
    "5,0,Cash,Flash Cab,0,-87.5e0,c",
    ".5,1.,No Charge,x,23,41.9,d",
]


def _target() -> Target:
    schema = text_format.Parse((PROJECT_ROOT / "schema" / "taxi" / "schema.pbtxt").read_text(), schema_pb2.Schema())
    required = frozenset({"fare", "trip_miles", "payment_type", "trip_start_hour"})
    optional = frozenset({"company", "pickup_latitude"})
    return Target("taxi", 1, PROJECT_ROOT, "classification", "binary", ("0", "1"), schema, required, optional)


def _row_by_row(typer: ToExamples, chunk: Chunk):
    steps = typer._row_by_row(chunk)
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value


def test_the_fast_path_types_a_chunk_as_to_example_does_row_by_row():
    typer = ToExamples(_target(), ("row_id",))
    chunk = Chunk("t.csv", 2, HEADER, ("\r\n".join(ROWS) + "\r\n").encode())
    fast = typer._fast(chunk)
    assert fast is not None, "a clean chunk takes the fast path"
    slow = _row_by_row(typer, chunk)
    assert fast.kept == slow.kept == [["a", "b", "c", "d"]]
    assert [tf.train.Example.FromString(e) for e in fast.examples] == [
        tf.train.Example.FromString(e) for e in slow.examples
    ]


def test_a_chunk_the_fast_path_cannot_vouch_for_goes_row_by_row():
    typer = ToExamples(_target(), ("row_id",))
    for bad in ("9.69,2.66,Cash,x,12,41.9", "1,2,Cash,x,12,1,e\n\n", '1,2,"Cash",x,12,1,e', "1,2,Cash,x,,1,e"):
        assert typer._fast(Chunk("t.csv", 2, HEADER, (ROWS[0] + "\n" + bad).encode())) is None, bad
