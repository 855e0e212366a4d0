"""Fixtures of the serving tests: a private copy of the version the pipeline pushed, the rows a client
sends to it, and what the SavedModel itself answers for them."""

import base64
import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from components.examples import to_example
from serving.models import SERVING_ENVIRONMENT

ROWS = 12


@dataclass(frozen=True)
class Served:
    root: Path  # the serving root: <root>/<name>/<version>/
    name: str
    version: int

    @property
    def version_dir(self) -> Path:
        return self.root / self.name / str(self.version)


@pytest.fixture(scope="module")
def served(two_runs, e2e_config, tmp_path_factory) -> Served:
    """A private copy of the pushed model's serving root: tests here add and remove versions without
    touching the directory the other end-to-end tests assert on."""
    versions = two_runs[1]  # the versions after the first run, which pushed
    root = tmp_path_factory.mktemp("serve") / "serving_model"
    shutil.copytree(
        Path(e2e_config.serving_model_dir) / str(versions[0]), root / e2e_config.model_name / str(versions[0])
    )
    return Served(root, e2e_config.model_name, versions[0])


@pytest.fixture(scope="module")
def schema(served) -> schema_pb2.Schema:
    """The schema shipped with the pushed version, which the server types plain JSON values by."""
    return tfdv.load_schema_text(str(served.version_dir / "assets.extra" / "schema.pbtxt"))


@pytest.fixture(scope="module")
def not_served(schema) -> set[str]:
    """The label and the other columns the schema keeps out of the SERVING environment."""
    names = {f.name for f in schema.feature if SERVING_ENVIRONMENT in f.not_in_environment}
    assert names, "the curated schema should keep at least the label out of serving"
    return names


@pytest.fixture(scope="module")
def raw_rows(small_taxi_dir, not_served) -> list[dict[str, str]]:
    """Raw CSV rows without the label and the columns that give it away."""
    with open(small_taxi_dir / "data.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:ROWS]
    return [{k: v for k, v in row.items() if k not in not_served} for row in rows]


@pytest.fixture(scope="module")
def json_rows(raw_rows, schema) -> list[dict]:
    """The same rows as a client would send them: JSON numbers for numeric features, missing ones left out."""
    types = {f.name: f.type for f in schema.feature}

    def typed(name, text):
        if types[name] == schema_pb2.INT:
            return int(float(text))
        return float(text) if types[name] == schema_pb2.FLOAT else text

    return [{k: typed(k, v) for k, v in row.items() if v != ""} for row in raw_rows]


@pytest.fixture(scope="module")
def serialized(raw_rows, schema, not_served) -> list[bytes]:
    return [to_example(row, schema, skip=not_served).SerializeToString() for row in raw_rows]


@pytest.fixture(scope="module")
def b64(serialized) -> list[dict]:
    return [{"b64": base64.b64encode(s).decode("ascii")} for s in serialized]


@pytest.fixture(scope="module")
def expected(served, serialized) -> np.ndarray:
    """What the pushed SavedModel itself says for the rows, called in process."""
    model = tf.saved_model.load(str(served.version_dir))
    out = model.signatures["serving_default"](examples=tf.constant(serialized))["probabilities"].numpy()
    assert out.shape == (ROWS, 1)
    return out
