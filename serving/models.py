"""The versions under a serving root, loaded as TF Serving loads them: new ones appear, removed ones go.

Each version keeps its signatures, TF Serving's description of them (read from saved_model.pb) and the
curated schema that travels in `assets.extra/schema.pbtxt`, which types plain JSON feature values.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional

from tensorflow_metadata.proto.v0 import schema_pb2

from components.pusher.publish import SCHEMA_FILE
from components.warmup import WARMUP_PATH
from serving.errors import ServingError, invalid, not_found
from serving.model_config import ConfigFile, ModelConfigError, ModelEntry, scanned
from serving.servable import SERVE_TAG, SERVING_ENVIRONMENT, LoadedVersion, not_served

# Re-exported: callers that load versions find what a loaded version is here too.
__all__ = ["SERVE_TAG", "SERVING_ENVIRONMENT", "LoadedVersion", "ModelRepository", "load_version", "not_served"]

log = logging.getLogger(__name__)

_AVAILABLE = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


def _signature_def_map(path: Path) -> dict:
    """The SignatureDefs of the `serve` MetaGraph as TF Serving's metadata API prints them."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    graph = next((g for g in saved.meta_graphs if SERVE_TAG in g.meta_info_def.tags), None)
    if graph is None:
        raise ValueError(f"{path}/saved_model.pb has no MetaGraph tagged '{SERVE_TAG}'")
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in graph.signature_def.items():
        signature_map.signature_def[key].CopyFrom(signature)
    # TF Serving prints with always_print_primitive_fields and the proto field names.
    return json_format.MessageToDict(
        signature_map, preserving_proto_field_name=True, including_default_value_fields=True
    )


def load_version(name: str, version: int, path: str | Path) -> LoadedVersion:
    """Loads one version directory (`<model dir>/<version>/`) for serving.

    Raises:
      OSError, ValueError, tf.errors.OpError: the directory is not a loadable SavedModel.
      serving.warmup.WarmupError: its warmup file cannot be replayed (TF Serving refuses such a version too).
    """
    import tensorflow as tf
    from google.protobuf import text_format

    from serving.warmup import replay_warmup

    path = Path(path)
    model = tf.saved_model.load(str(path), tags=[SERVE_TAG])
    schema = None
    schema_file = path / "assets.extra" / SCHEMA_FILE
    if schema_file.is_file():
        schema = text_format.Parse(schema_file.read_text(encoding="utf-8"), schema_pb2.Schema())
    loaded = LoadedVersion(
        name=name,
        version=version,
        path=path,
        model=model,
        signatures=dict(model.signatures),
        signature_defs=_signature_def_map(path),
        schema=schema,
        feature_types={feature.name: feature.type for feature in schema.feature} if schema else {},
        excluded=frozenset(not_served(schema)) if schema else frozenset(),
    )
    # Before the caller can serve it: a version is never available, nor the default, unwarmed.
    replay_warmup(loaded)
    return loaded


def _dir_stamp(path: Path) -> tuple:
    """Changes when a version directory's contents do, so a failed load is retried only after a change."""
    stamp = []
    for part in (path, path / "variables", path / "saved_model.pb", path / WARMUP_PATH):
        try:
            stamp.append(part.stat().st_mtime_ns)
        except OSError:
            stamp.append(None)
    return tuple(stamp)


class ModelRepository:
    """The models under a serving root, each version loaded when its directory appears and unloaded when it
    goes, as TF Serving's file system source does; which models and versions, and their labels, follow the
    model config (`models.config`) when there is one. Thread-safe."""

    def __init__(self, serving_root: str | Path, config_file: Optional[str | Path] = None):
        """Args:
        serving_root: the directory of `<model>/<version>/`.
        config_file: a TF Serving model config; by default `<serving root>/models.config` once it exists.
        """
        self.root = Path(serving_root)
        self.config = ConfigFile(self.root, Path(config_file) if config_file else None)
        self._lock = threading.Lock()  # guards _loaded, _failed and _labels; never held while loading
        self._refresh_lock = threading.Lock()  # one scan at a time, so a version is never loaded twice
        self._loaded: dict[str, dict[int, LoadedVersion]] = {}
        self._failed: dict[tuple[str, int], tuple[tuple, str]] = {}  # (dir stamp, error) of versions that failed
        self._labels: dict[str, dict[str, int]] = {}
        # A config given by HandleReloadConfigRequest: in force until the config file changes.
        self._reloaded: Optional[dict[str, ModelEntry]] = None

    def _entries(self) -> dict[str, ModelEntry]:
        try:
            if self.config.changed():
                self._reloaded = None
        except ModelConfigError as err:
            log.warning("%s; the previous model config stays in force", err)
        if self._reloaded is not None:
            return self._reloaded
        configured = self.config.entries()
        return configured if configured is not None else scanned(self.root)

    def refresh(self) -> None:
        """Loads the versions that appeared (or that the model config now asks for) since the last call and
        unloads those whose directory is gone or that the config no longer wants.

        A version that fails to load is reported by `status` and retried when its directory changes.

        Raises:
          OSError: the serving root cannot be listed.
        """
        with self._refresh_lock:
            entries = self._entries()
            present = {name: entry.wanted() for name, entry in entries.items()}
            with self._lock:
                self._labels = {name: dict(entry.labels) for name, entry in entries.items()}
                for name, versions in list(self._loaded.items()):
                    for version in [v for v in versions if v not in present.get(name, ())]:
                        del versions[version]
                        log.info("unloaded %s version %d: its directory is gone or the config drops it", name, version)
                    if not versions:
                        del self._loaded[name]
                self._failed = {key: value for key, value in self._failed.items() if key[1] in present.get(key[0], ())}
            for name, versions in present.items():
                # Newest first: it becomes the default version, so it should be ready soonest.
                for version in sorted(versions, reverse=True):
                    self._load(name, version, entries[name].base_path / str(version))

    def reload_config(self, entries: dict[str, ModelEntry]) -> None:
        """Serves `entries` from now on (TF Serving's HandleReloadConfigRequest), until the config file changes.

        Raises:
          OSError: a base path cannot be listed.
        """
        self._reloaded = entries
        self.refresh()

    def _load(self, name: str, version: int, path: Path) -> None:
        stamp = _dir_stamp(path)
        with self._lock:
            if version in self._loaded.get(name, {}) or self._failed.get((name, version), (None,))[0] == stamp:
                return
        try:
            loaded = load_version(name, version, path)
        except Exception as err:  # a model can fail to load in many ways; report it and serve the others
            log.exception("cannot load %s version %d from %s", name, version, path)
            with self._lock:
                self._failed[(name, version)] = (stamp, f"{type(err).__name__}: {err}")
            return
        with self._lock:
            self._loaded.setdefault(name, {})[version] = loaded
            self._failed.pop((name, version), None)
        log.info("loaded %s version %d", name, version)

    def served(self) -> dict[str, list[int]]:
        """Each model's available versions, ascending."""
        with self._lock:
            return {name: sorted(versions) for name, versions in sorted(self._loaded.items())}

    def version_for_label(self, name: str, label: str) -> int:
        """The version a label names in the model config.

        Raises:
          ServingError: 400 with TF Serving's message when the model has no such label.
        """
        with self._lock:
            version = self._labels.get(name, {}).get(label)
        if version is None:
            raise invalid(f"Unrecognized servable version label: {label}")
        return version

    def labels(self, name: str) -> dict[str, int]:
        """The model's version labels (label: version), from the model config."""
        with self._lock:
            return dict(self._labels.get(name, {}))

    def _find(self, name: str, version: Optional[int]) -> LoadedVersion:
        with self._lock:
            versions = self._loaded.get(name, {})
            if version is None and versions:
                return versions[max(versions)]
            if version in versions:
                return versions[version]
        if version is None:
            raise not_found(f"Servable not found for request: Latest({name})")
        raise not_found(f"Servable not found for request: Specific({name}, {version})")

    def get(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> LoadedVersion:
        """The requested version (or the one `label` names), or the highest available one when neither is given.

        On a miss the directory is scanned once more, so a version pushed a moment ago is served rather
        than refused until the next poll.

        Raises:
          ServingError: 404 with TF Serving's message when there is no such model or version, 400 for a label
            the model config does not define.
        """
        try:
            return self._find(name, self.version_for_label(name, label) if label else version)
        except ServingError:
            self.refresh()
        return self._find(name, self.version_for_label(name, label) if label else version)

    def _states(self, name: str) -> dict[int, dict]:
        with self._lock:
            states = {version: _AVAILABLE for version in self._loaded.get(name, {})}
            for (model, version), (_, error) in self._failed.items():
                if model == name:
                    states[version] = {"state": "END", "status": {"error_code": "UNKNOWN", "error_message": error}}
        return states

    def status(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> dict:
        """TF Serving's GetModelStatusResponse as JSON: one entry per version, newest first.

        Raises:
          ServingError: 404 when the model or the version is unknown, 400 for an unknown label.
        """
        if label:
            version = self.version_for_label(name, label)
        states = self._states(name)
        if not states or (version is not None and version not in states):
            self.refresh()
            states = self._states(name)
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        elif not states:
            raise not_found(f"Could not find any versions of model {name}")
        return {"model_version_status": [{"version": str(v), **states[v]} for v in sorted(states, reverse=True)]}
