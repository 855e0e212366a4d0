"""preprocessing_fn through real tf.Transform on a handful of rows, with the values checked."""

import functools

import numpy as np
import pytest
import tensorflow_data_validation as tfdv
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata

from components.preprocessing import preprocessing_fn
from pipeline.config import FeatureConfig, load_config
from tests.conftest import TAXI_CONFIG

FEATURES = (
    FeatureConfig("trip_seconds", "numeric"),
    FeatureConfig("payment_type", "categorical_string", top_k=2, oov_buckets=1),
    FeatureConfig("trip_start_hour", "categorical_int", top_k=5),
    FeatureConfig("fare", "bucketized", buckets=2),
)
LABEL = "big_tipper"

# trip_seconds is optional in the curated schema (a VarLen column): row 3 has no value.
ROWS = [
    {"trip_seconds": [100], "payment_type": [b"Cash"], "trip_start_hour": [9], "fare": [5.0], LABEL: [0]},
    {"trip_seconds": [300], "payment_type": [b"Cash"], "trip_start_hour": [9], "fare": [7.0], LABEL: [1]},
    {"trip_seconds": [], "payment_type": [b"Credit Card"], "trip_start_hour": [17], "fare": [30.0], LABEL: [1]},
    {"trip_seconds": [200], "payment_type": [b"Mobile"], "trip_start_hour": [17], "fare": [40.0], LABEL: [0]},
]


def _schema():
    """The curated taxi schema, restricted to the columns these rows carry."""
    schema = tfdv.load_schema_text(load_config(TAXI_CONFIG).schema_path)
    keep = {f.name for f in FEATURES} | {LABEL}
    kept = [f for f in schema.feature if f.name in keep]
    del schema.feature[:]
    schema.feature.extend(kept)
    return schema


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    custom_config = {"label": LABEL, "features": [f.__dict__ for f in FEATURES], "model": {}}
    schema = _schema()
    with tft_beam.Context(temp_dir=str(tmp_path_factory.mktemp("tft"))):
        (data, _), _ = (ROWS, dataset_metadata.DatasetMetadata(schema)) | tft_beam.AnalyzeAndTransformDataset(
            functools.partial(preprocessing_fn, custom_config=custom_config)
        )
    return data


def test_numeric_is_imputed_with_the_mean_then_z_scored_with_a_missing_flag(transformed):
    values = np.array([r["trip_seconds_xf"] for r in transformed], dtype=float)
    missing = [r["trip_seconds_missing"] for r in transformed]
    assert missing == [0.0, 0.0, 1.0, 0.0]
    # present values 100, 300, 200 have mean 200; the imputed row is exactly the mean: z = 0.
    assert values[2] == pytest.approx(0.0, abs=1e-6)
    assert values[0] < 0 < values[1]
    assert values[0] == pytest.approx(-values[1], rel=1e-5)


def test_categorical_string_vocabulary_keeps_top_k_and_sends_the_rest_to_oov(transformed):
    index = [r["payment_type_xf"] for r in transformed]
    # Cash is most frequent -> 0; with top_k=2 one of the singletons is kept, the other is OOV (2).
    assert index[0] == index[1] == 0
    assert sorted(index[2:]) == [1, 2]


def test_categorical_int_vocabulary(transformed):
    index = [r["trip_start_hour_xf"] for r in transformed]
    assert index[0] == index[1]
    assert index[2] == index[3]
    assert index[0] != index[2]
    assert set(index) <= {0, 1}


def test_bucketized_numeric_is_ordered(transformed):
    buckets = [r["fare_xf"] for r in transformed]
    assert buckets[0] <= buckets[1] <= buckets[2] <= buckets[3]
    assert buckets[0] == 0 and buckets[3] == 1


def test_label_is_carried_as_int(transformed):
    assert [r["big_tipper_xf"] for r in transformed] == [0, 1, 1, 0]


def _run(rows, features, schema_text, custom, tmp_path):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = text_format.Parse(schema_text, schema_pb2.Schema())
    config = {"features": [f.__dict__ for f in features], "model": {}, **custom}
    with tft_beam.Context(temp_dir=str(tmp_path)):
        (data, _), _ = (rows, dataset_metadata.DatasetMetadata(schema)) | tft_beam.AnalyzeAndTransformDataset(
            functools.partial(preprocessing_fn, custom_config=config)
        )
    return data


_CITY_AND_LABEL = """
feature { name: "city" type: BYTES presence { min_fraction: 1.0 } shape { dim { size: 1 } } }
feature { name: "label" type: %s presence { min_fraction: 1.0 } shape { dim { size: 1 } } }
"""


def test_hashed_categorical_and_string_labels_become_class_indices(tmp_path):
    rows = [
        {"city": [c], "label": [y]} for c, y in [(b"Oslo", b"b"), (b"Lima", b"c"), (b"Oslo", b"a"), (b"Pune", b"z")]
    ]
    features = (FeatureConfig("city", "hashed", hash_buckets=50),)
    out = _run(
        rows,
        features,
        _CITY_AND_LABEL % "BYTES",
        {"label": "label", "task": "multiclass", "classes": ["a", "b", "c"]},
        tmp_path,
    )
    hashed = [r["city_xf"] for r in out]
    assert hashed[0] == hashed[2] and all(0 <= h < 50 for h in hashed)
    # Class order is the configured one; a value not listed is -1 (the run's preflight refuses it).
    assert [r["label_xf"] for r in out] == [1, 2, 0, -1]


def test_integer_labels_map_through_their_text_and_regression_keeps_the_value(tmp_path):
    rows = [{"city": [b"Oslo"], "label": [y]} for y in (3, 1, 3)]
    features = (FeatureConfig("city", "hashed", hash_buckets=10),)
    out = _run(
        rows,
        features,
        _CITY_AND_LABEL % "INT",
        {"label": "label", "task": "multiclass", "classes": ["1", "3"]},
        tmp_path / "a",
    )
    assert [r["label_xf"] for r in out] == [1, 0, 1]

    rows = [{"city": [b"Oslo"], "label": [y]} for y in (2.5, -1.0)]
    out = _run(
        rows,
        features,
        _CITY_AND_LABEL % "FLOAT",
        {"label": "label", "task": "regression", "classes": []},
        tmp_path / "b",
    )
    assert [r["label_xf"] for r in out] == pytest.approx([2.5, -1.0])


_OPTIONAL_CATEGORICALS = """
feature { name: "color" type: BYTES }
feature { name: "weekday" type: INT }
feature { name: "label" type: INT presence { min_fraction: 1.0 } shape { dim { size: 1 } } }
"""


def test_missing_categorical_values_go_to_the_oov_bucket_not_into_the_vocabulary(tmp_path):
    rows = [
        {"color": [b"red"], "weekday": [1], "label": [0]},
        {"color": [b"red"], "weekday": [1], "label": [1]},
        {"color": [], "weekday": [2], "label": [0]},
        {"color": [b"blue"], "weekday": [], "label": [1]},
        {"color": [], "weekday": [], "label": [0]},
    ]
    features = (
        FeatureConfig("color", "categorical_string", top_k=3, oov_buckets=1),
        FeatureConfig("weekday", "categorical_int", top_k=3, oov_buckets=1),
    )
    out = _run(rows, features, _OPTIONAL_CATEGORICALS, {"label": "label", "task": "binary"}, tmp_path)
    # Two real values each, so indices 0 and 1 are the vocabulary and 2 is the OOV bucket; a missing
    # value (twice, the most frequent "value") must not take a vocabulary place from a real one.
    assert [r["color_xf"] for r in out] == [0, 0, 2, 1, 2]
    assert [r["weekday_xf"] for r in out] == [0, 0, 1, 2, 2]
