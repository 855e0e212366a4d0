"""Reading TFDV anomalies and saying them in words: shared by the data gate, `data check` and the summary."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from tensorflow_metadata.proto.v0 import anomalies_pb2

SCHEMA_DIFF_HINT = (
    "See every difference with `conveyor schema diff`; if the data is right and the schema is out of date, "
    "a data engineer accepts it with `conveyor schema approve` (schema/README.md)."
)


@dataclass(frozen=True)
class Anomaly:
    split: str
    feature: str
    short: str
    description: str

    def line(self) -> str:
        return f"[{self.split}] {self.feature}: {self.short}. {self.description}"


class DataGateError(RuntimeError):
    """The data violates the curated schema; the run stops before Transform."""


def from_proto(split: str, anomalies: anomalies_pb2.Anomalies) -> list[Anomaly]:
    """One Anomaly per feature (and for the dataset as a whole), in feature order."""
    found = [
        Anomaly(split, name, info.short_description, info.description)
        for name, info in sorted(anomalies.anomaly_info.items())
    ]
    if anomalies.HasField("dataset_anomaly_info") and anomalies.dataset_anomaly_info.reason:
        info = anomalies.dataset_anomaly_info
        found.append(Anomaly(split, "(dataset)", info.short_description, info.description))
    return found


def drift(current, previous, schema, split: str) -> list[Anomaly]:
    """Drift of `current` statistics from `previous` under the schema's drift comparators only
    (schema violations are ExampleValidator's job and are not repeated here)."""
    import tensorflow_data_validation as tfdv

    found = from_proto(split, tfdv.validate_statistics(current, schema, previous_statistics=previous))
    return [a for a in found if "between current and previous" in a.description]


def skew(training, serving, schema, split: str) -> list[Anomaly]:
    """Training/serving skew under the schema's skew comparators, plus serving data's own violations
    of the schema's SERVING environment (where the label is absent and never flagged)."""
    import tensorflow_data_validation as tfdv

    found = from_proto(split, tfdv.validate_statistics(training, schema, serving_statistics=serving))
    skewed = [a for a in found if "between training and serving" in a.description]
    serving_only = from_proto(
        f"{split}: serving data", tfdv.validate_statistics(serving, schema, environment="SERVING")
    )
    return skewed + serving_only


def read_artifact(uri: str, split_names: str) -> list[Anomaly]:
    """The anomalies an ExampleValidator wrote, for every split.

    Args:
      uri: the ExampleAnomalies artifact's URI.
      split_names: its `split_names` property (a JSON list).
    """
    found: list[Anomaly] = []
    for split in json.loads(split_names):
        path = os.path.join(uri, f"Split-{split}", "SchemaDiff.pb")
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        found.extend(from_proto(split, anomalies))
    return found


def message(anomalies: list[Anomaly], where: str) -> str:
    """The one message a person reads when data breaks the schema."""
    lines = [f"{where}: {len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'} against the curated schema:"]
    lines += [f"  {a.line()}" for a in anomalies]
    lines.append(SCHEMA_DIFF_HINT)
    return "\n".join(lines)


def by_split(anomalies: list[Anomaly]) -> Mapping[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in anomalies:
        out.setdefault(a.split, []).append(f"{a.feature}: {a.short}")
    return out
