"""Reading TFDV anomalies and saying them in words: shared by the data gate, `data check` and the summary."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Optional

from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

SCHEMA_DIFF_HINT = (
    "See every difference with `conveyor schema diff`; if the data is right and the schema is out of date, "
    "a data engineer accepts it with `conveyor schema approve` (schema/README.md)."
)
# TFDV's reasons for a float feature holding NaN or infinity where the schema's float_domain forbids them.
NON_FINITE = frozenset({"FLOAT_TYPE_HAS_NAN", "FLOAT_TYPE_HAS_INF"})
NON_FINITE_HINT = (
    "NaN and infinity are data errors: the curated schema forbids them in these features (float_domain "
    "disallow_nan / disallow_inf). Fix the rows at the source; if the values are meaningful, a data engineer "
    "allows them for one feature with `conveyor schema approve --feature NAME` (schema/README.md)."
)


@dataclass(frozen=True)
class Anomaly:
    split: str
    feature: str
    short: str
    description: str
    # TFDV's reason types (anomalies_pb2.AnomalyInfo.Type names), e.g. FLOAT_TYPE_HAS_NAN.
    reasons: tuple[str, ...] = ()

    @property
    def non_finite(self) -> bool:
        """The feature holds NaN or infinity the schema forbids."""
        return bool(NON_FINITE & set(self.reasons))

    def line(self) -> str:
        return f"[{self.split}] {self.feature}: {self.short}. {self.description}"


class DataGateError(RuntimeError):
    """The data violates the curated schema; the run stops before Transform."""


def from_proto(split: str, anomalies: anomalies_pb2.Anomalies) -> list[Anomaly]:
    """One Anomaly per feature (and for the dataset as a whole), in feature order."""
    found = [
        Anomaly(
            split,
            name,
            info.short_description,
            info.description,
            tuple(anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason),
        )
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


def non_finite_counts(
    statistics: statistics_pb2.DatasetFeatureStatisticsList, feature: str
) -> Optional[tuple[int, int, int]]:
    """(NaN values, infinite values, values) of a numeric feature, from TFDV's standard histogram, which
    counts NaN apart and puts each infinity in a bucket of its own; None when the feature has no numbers."""
    for dataset in statistics.datasets:
        for f in dataset.features:
            name = f.path.step[0] if f.path.step else f.name
            if name != feature or not f.HasField("num_stats"):
                continue
            standard = next((h for h in f.num_stats.histograms if h.type == statistics_pb2.Histogram.STANDARD), None)
            if standard is None:
                return None
            infinite = sum(
                b.sample_count for b in standard.buckets if math.isinf(b.low_value) and b.low_value == b.high_value
            )
            values = f.num_stats.common_stats.num_non_missing
            return int(standard.num_nan), round(infinite), int(values)
    return None


def count_non_finite(
    found: list[Anomaly], statistics_of: Callable[[str], Optional[statistics_pb2.DatasetFeatureStatisticsList]]
) -> list[Anomaly]:
    """The anomalies, with how many NaN and infinite values each NaN/Inf anomaly stands for.

    Args:
      found: anomalies, e.g. from `read_artifact`.
      statistics_of: the statistics of a split, by the anomaly's split name (None when unknown).
    """
    out = []
    for a in found:
        stats = statistics_of(a.split) if a.non_finite else None
        counts = non_finite_counts(stats, a.feature) if stats is not None else None
        if counts is not None:
            nan, inf, values = counts
            a = replace(a, description=f"{a.description} ({nan:,} NaN and {inf:,} infinite of {values:,} values)")
        out.append(a)
    return out


def message(anomalies: list[Anomaly], where: str) -> str:
    """The one message a person reads when data breaks the schema."""
    lines = [f"{where}: {len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'} against the curated schema:"]
    lines += [f"  {a.line()}" for a in anomalies]
    if any(a.non_finite for a in anomalies):
        lines.append(NON_FINITE_HINT)
    lines.append(SCHEMA_DIFF_HINT)
    return "\n".join(lines)


def by_split(anomalies: list[Anomaly]) -> Mapping[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in anomalies:
        out.setdefault(a.split, []).append(f"{a.feature}: {a.short}")
    return out
