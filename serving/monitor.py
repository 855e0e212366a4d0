"""Monitoring of real serving traffic: statistics of the logged requests (TFDV on Beam), compared with the
training statistics of the version that answered them (skew), with the window of traffic before (drift)
and with the curated schema (anomalies), under the schema's own comparators, as the pipeline's data gate
compares them. The verdict is refused, not guessed, below a minimum sample size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional

from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from components.data_gate.anomalies import drift, skew
from components.request_logs import MIN_EXAMPLES, statistics
from serving.request_examples import Traffic
from serving.servable import not_served

DEFAULT_MIN_EXAMPLES = MIN_EXAMPLES
CLEAN, FINDINGS, NO_VERDICT = "clean", "findings", "no verdict"
# Finding kinds, in the order they are reported: a feature that never arrives explains the rest.
NEVER_IN_SERVING, SKEW, DRIFT, ANOMALY = "never in serving", "skew", "drift", "anomaly"
_ORDER = (NEVER_IN_SERVING, SKEW, DRIFT, ANOMALY)
# The split labels under which the data gate's skew() and drift() report.
_SKEW_SPLIT, _DRIFT_SPLIT = "training vs serving", "serving vs previous window"
MEASURES = {
    "L_INFTY": "L-infinity distance",
    "JENSEN_SHANNON_DIVERGENCE": "Jensen-Shannon divergence",
    "NORMALIZED_ABSOLUTE_DIFFERENCE": "normalized absolute difference",
}
_MEANING = {
    SKEW: "serving traffic is distributed differently from the data this version was trained on",
    DRIFT: "this window's traffic is distributed differently from the window before it",
}


@dataclass(frozen=True)
class Measurement:
    """One comparator's distance for one feature, whether or not it is past its threshold."""

    feature: str
    kind: str  # SKEW or DRIFT
    measure: str  # e.g. "L-infinity distance"
    distance: float
    threshold: float

    @property
    def exceeded(self) -> bool:
        return self.distance > self.threshold


@dataclass(frozen=True)
class Finding:
    kind: str
    feature: str
    meaning: str
    measure: str = ""
    distance: Optional[float] = None
    threshold: Optional[float] = None

    def line(self) -> str:
        """One line: the kind, the feature, the distance against its threshold, and what it means."""
        if self.distance is None:
            return f"{self.kind}: {self.feature}: {self.meaning}"
        return (
            f"{self.kind}: {self.feature}: {self.measure} {self.distance:.4g} above the threshold "
            f"{self.threshold:g}: {self.meaning}"
        )


@dataclass
class Check:
    """One monitoring check of a model's traffic: what was read, the verdict, and the findings."""

    model: str
    version: Optional[int]
    traffic: Traffic
    min_examples: int
    verdict: str = NO_VERDICT
    reason: str = ""  # why there is no verdict, or what was not compared
    findings: list[Finding] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # comparisons not made, and why
    training: Optional[statistics_pb2.DatasetFeatureStatisticsList] = None
    serving: Optional[statistics_pb2.DatasetFeatureStatisticsList] = None
    previous: Optional[statistics_pb2.DatasetFeatureStatisticsList] = None
    training_source: str = ""  # where the training statistics came from (run, path)

    def sampling(self) -> str:
        """How many requests were logged, at which rate, and what that stands for."""
        window = self.traffic.current
        rates = ", ".join(f"{rate:g}" for rate in sorted(window.rates)) or "none"
        return (
            f"{window.requests:,} requests ({len(window.examples):,} examples) logged at sampling rate {rates}, "
            f"standing for about {window.estimated_requests:,} requests served"
        )

    def to_json(self) -> dict:
        """The check as plain JSON values (`conveyor monitor --json`)."""
        t = self.traffic
        return {
            "model": self.model,
            "version": self.version,
            "verdict": self.verdict,
            "reason": self.reason,
            "window": {"start": t.current.start, "end": t.current.end},
            "sampling": {
                "requests": t.current.requests,
                "examples": len(t.current.examples),
                "rates": {f"{rate:g}": n for rate, n in sorted(t.current.rates.items())},
                "estimated_requests": t.current.estimated_requests,
                "min_examples": self.min_examples,
                "previous_window_requests": t.previous.requests,
                "previous_window_examples": len(t.previous.examples),
            },
            "left_out": t.problems(),
            "training_statistics": self.training_source,
            "findings": [asdict(f) for f in self.findings],
            "measurements": [asdict(m) | {"exceeded": m.exceeded} for m in self.measurements],
            "notes": self.notes,
        }


def check(
    traffic: Traffic,
    schema: schema_pb2.Schema,
    training: Optional[statistics_pb2.DatasetFeatureStatisticsList],
    min_examples: int = DEFAULT_MIN_EXAMPLES,
    beam_args: Sequence[str] = (),
    training_source: str = "",
) -> Check:
    """Compares a window of logged traffic with the version's training statistics, the previous window and
    the schema; with fewer than `min_examples` examples in the window it refuses a verdict.

    Args:
      traffic: the logged requests (serving.request_examples.read_traffic).
      schema: the curated schema, with its SERVING environment and skew/drift comparators.
      training: the training statistics of the version that answered (None: skew is not checked, and
        the check says so).
      min_examples: the fewest logged examples in a window a verdict is given on (both windows for drift).
      beam_args: Beam pipeline options for the statistics.
      training_source: where `training` came from, for the report.

    Returns:
      The check: verdict, findings (features never arriving in serving first), every measured distance.

    Raises:
      ValueError: min_examples is below 1.
    """
    if min_examples < 1:
        raise ValueError(f"--min-examples must be at least 1, got {min_examples}")
    result = Check(traffic.model, traffic.version, traffic, min_examples)
    result.training, result.training_source = training, training_source
    current, previous = traffic.current.examples, traffic.previous.examples
    if len(current) < min_examples:
        result.reason = (
            f"no verdict: {len(current):,} logged examples in the window, fewer than the {min_examples:,} needed "
            "(--min-examples); a smaller sample would raise false alarms"
        )
        return result
    sets = {"serving": current}
    if len(previous) >= min_examples:
        sets["previous"] = previous
    else:
        result.notes.append(
            f"drift not checked: the previous window holds {len(previous):,} logged examples, "
            f"fewer than {min_examples:,}"
        )
    stats = statistics(sets, beam_args)
    result.serving, result.previous = stats["serving"], stats.get("previous")
    found: list[Finding] = []
    if training is not None:
        found += never_in_serving(training, result.serving, schema)
        skewed = skew(training, result.serving, schema, _SKEW_SPLIT)
        result.measurements += _measurements(training, schema, SKEW, serving=result.serving)
        found += _findings(skewed, result.measurements, SKEW)
    else:
        result.notes.append("skew not checked: no training statistics for this version")
        found += _findings(_schema_only(result.serving, schema), [], ANOMALY)
    if result.previous is not None:
        drifted = drift(result.serving, result.previous, schema, _DRIFT_SPLIT)
        result.measurements += _measurements(result.serving, schema, DRIFT, previous=result.previous)
        found += _findings(drifted, result.measurements, DRIFT)
    called_out = {f.feature for f in found if f.kind == NEVER_IN_SERVING}
    # TFDV says a never-sent feature's column is missing too; the call-out above already says it.
    found = [f for f in found if f.kind == NEVER_IN_SERVING or not (f.kind == ANOMALY and f.feature in called_out)]
    result.findings = sorted(found, key=lambda f: (_ORDER.index(f.kind), f.feature))
    result.verdict = FINDINGS if result.findings else CLEAN
    return result


def _schema_only(serving, schema):
    import tensorflow_data_validation as tfdv

    from components.data_gate.anomalies import from_proto

    return from_proto(f"{_SKEW_SPLIT}: serving data", tfdv.validate_statistics(serving, schema, environment="SERVING"))


def _feature_stats(statistics: statistics_pb2.DatasetFeatureStatisticsList) -> dict[str, object]:
    features = {}
    for dataset in statistics.datasets[:1]:
        for f in dataset.features:
            features[f.path.step[0] if f.path.step else f.name] = f
    return features


def _present(feature) -> tuple[int, int]:
    """(examples with a value, examples without) of one feature's statistics."""
    kind = feature.WhichOneof("stats")
    common = getattr(feature, kind).common_stats if kind else None
    return (int(common.num_non_missing), int(common.num_missing)) if common is not None else (0, 0)


def never_in_serving(
    training: statistics_pb2.DatasetFeatureStatisticsList,
    serving: statistics_pb2.DatasetFeatureStatisticsList,
    schema: schema_pb2.Schema,
) -> list[Finding]:
    """Features present in every training example and in no served one (the schema's SERVING
    environment excepted): the TFX paper's most telling skew, an input a client stopped sending."""
    train, served = _feature_stats(training), _feature_stats(serving)
    excluded = not_served(schema)
    examples = serving.datasets[0].num_examples if serving.datasets else 0
    found = []
    for name, feature in sorted(train.items()):
        with_value, without = _present(feature)
        if name in excluded or not with_value or without:
            continue
        if name not in served or _present(served[name])[0] == 0:
            found.append(
                Finding(
                    NEVER_IN_SERVING,
                    name,
                    f"present in all {with_value:,} training examples, absent from all {examples:,} served ones: "
                    "clients stopped sending it (the model sees it as missing)",
                )
            )
    return found


def _measurements(statistics, schema, kind: str, serving=None, previous=None) -> list[Measurement]:
    """Every distance the schema's comparators measure, read from TFDV's drift_skew_info."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    anomalies = tfdv.validate_statistics(statistics, schema, serving_statistics=serving, previous_statistics=previous)
    out = []
    for info in anomalies.drift_skew_info:
        name = ".".join(info.path.step)
        for m in info.skew_measurements if kind == SKEW else info.drift_measurements:
            measure = MEASURES.get(anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(m.type), "distance")
            out.append(Measurement(name, kind, measure, float(m.value), float(m.threshold)))
    return out


def _findings(anomalies, measurements: list[Measurement], kind: str) -> list[Finding]:
    """The data gate's anomalies as findings, each comparator's with its distance and threshold."""
    found = []
    for a in anomalies:
        if not a.split.endswith(("vs serving", "previous window")):  # serving data against the schema itself
            found.append(Finding(ANOMALY, a.feature, f"{a.short}. {a.description}"))
            continue
        exceeded = [m for m in measurements if m.kind == kind and m.feature == a.feature and m.exceeded]
        worst = max(exceeded, key=lambda m: m.distance / m.threshold if m.threshold else m.distance, default=None)
        moved = _largest_difference(a.description)
        meaning = f"{_MEANING[kind]} ({moved})" if moved else _MEANING[kind]
        if worst is None:
            found.append(Finding(kind, a.feature, f"{a.short}. {a.description}"))
        else:
            found.append(Finding(kind, a.feature, meaning, worst.measure, worst.distance, worst.threshold))
    return found


def _largest_difference(description: str) -> str:
    """The value that moved most, as TFDV names it for a categorical feature ('most changed: Cash'); ''."""
    marker = "The feature value with maximum difference is: "
    if marker in description:
        return "most changed: " + description.split(marker, 1)[1].strip().rstrip(".")
    return ""
