"""What a loaded model version is: its signatures, TF Serving's description of them and its schema; the
ground every serving module stands on (it imports none of them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SERVING_ENVIRONMENT = "SERVING"
SERVE_TAG = "serve"


@dataclass(frozen=True)
class LoadedVersion:
    """One model version in memory: its signatures, TF Serving's description of them, and its schema."""

    name: str
    version: int
    path: Path
    # The restored object: it owns the variables the signatures read, so it lives as long as they do.
    model: Any
    signatures: Mapping[str, Any]
    # TF Serving's SignatureDefMap as JSON, read from saved_model.pb as TF Serving reads it.
    signature_defs: dict
    # The curated schema shipped in assets.extra/, or None: then only serialized tf.Examples are accepted.
    schema: Optional[Any]
    # From the schema, computed once: every feature's type, and the features not sent at serving time.
    feature_types: Mapping[str, int] = field(default_factory=dict)
    excluded: frozenset[str] = frozenset()


def not_served(schema: Any) -> set[str]:
    """The schema's features absent from the SERVING environment (the label), by TFMD's rule: a feature's
    in_environment wins, then its not_in_environment, then the schema's default_environment."""

    def served(feature: Any) -> bool:
        if feature.in_environment:
            return SERVING_ENVIRONMENT in feature.in_environment
        if SERVING_ENVIRONMENT in feature.not_in_environment:
            return False
        return not schema.default_environment or SERVING_ENVIRONMENT in schema.default_environment

    return {feature.name for feature in schema.feature if not served(feature)}
