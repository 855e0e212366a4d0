"""TF Serving's model config: which models are served from where, which of their versions stay loaded, and
the version labels (`stable`, `canary`, a user's own) that name versions.

It is the `ModelServerConfig` text proto `tensorflow_model_server --model_config_file` reads; the Pusher
keeps one at `<serving root>/models.config`. Without one every model directory under the serving root is
served with all its versions, as `conveyor serve` always did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from components.pusher.publish import MODELS_CONFIG, list_versions

# TF Serving's default version policy when a config entry names none: the newest version only.
DEFAULT_LATEST = 1


class ModelConfigError(ValueError):
    """A model config that cannot be used; the message names the file or the entry and what is wrong."""


@dataclass(frozen=True)
class ModelEntry:
    """One served model: where its versions live, which of them to load, and its labels."""

    name: str
    base_path: Path
    # "all", "latest" (the newest `latest` versions) or "specific" (exactly `specific`).
    policy: str = "all"
    latest: int = DEFAULT_LATEST
    specific: frozenset[int] = frozenset()
    labels: Mapping[str, int] = field(default_factory=dict)

    def wanted(self) -> list[int]:
        """The versions on disk this entry loads, ascending."""
        present = list_versions(self.base_path) if self.base_path.is_dir() else []
        if self.policy == "specific":
            return [v for v in present if v in self.specific]
        if self.policy == "latest":
            return present[-self.latest :]
        return present


def parse(text: str, origin: str, serving_root: Path) -> dict[str, ModelEntry]:
    """The entries of a ModelServerConfig text proto.

    Args:
      text: the text proto.
      origin: where it came from, for messages (a file path, or "the reload request").
      serving_root: base paths that do not exist are looked for here, by model name, so an output
        directory that moved (or a config written on another machine) still serves.

    Raises:
      ModelConfigError: the text does not parse, or an entry is unusable.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ModelConfigError(f"{origin} is not a TF Serving model config (ModelServerConfig): {err}") from None
    return from_proto(config, origin, serving_root)


def from_proto(config, origin: str, serving_root: Path) -> dict[str, ModelEntry]:
    """The entries of a ModelServerConfig message (what HandleReloadConfigRequest carries).

    Raises:
      ModelConfigError: the config uses a custom model config, or an entry has no name, repeats a name,
        asks for a platform other than tensorflow or for a non-positive number of latest versions.
    """
    if config.WhichOneof("config") == "custom_model_config":
        raise ModelConfigError(f"{origin}: custom_model_config is not supported; use model_config_list")
    entries: dict[str, ModelEntry] = {}
    for index, entry in enumerate(config.model_config_list.config):
        where = f"{origin}, model_config_list entry {index + 1}"
        if not entry.name:
            raise ModelConfigError(f"{where}: the model has no name")
        if entry.name in entries:
            raise ModelConfigError(f"{where}: model '{entry.name}' is configured twice")
        if entry.model_platform not in ("", "tensorflow"):
            raise ModelConfigError(f"{where}: model_platform '{entry.model_platform}' (only tensorflow is served)")
        base = Path(entry.base_path) if entry.base_path else serving_root / entry.name
        if not base.is_dir() and (serving_root / entry.name).is_dir():
            base = serving_root / entry.name
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        latest = entry.model_version_policy.latest.num_versions if policy == "latest" else DEFAULT_LATEST
        if policy == "latest" and entry.model_version_policy.HasField("latest") and latest < 1:
            raise ModelConfigError(f"{where}: latest.num_versions must be at least 1, got {latest}")
        entries[entry.name] = ModelEntry(
            name=entry.name,
            base_path=base,
            policy=policy,
            latest=latest or DEFAULT_LATEST,
            specific=frozenset(int(v) for v in entry.model_version_policy.specific.versions),
            labels={label: int(version) for label, version in entry.version_labels.items()},
        )
    return entries


def scanned(serving_root: Path) -> dict[str, ModelEntry]:
    """Every model directory under the serving root with all its versions: the entries without a config."""
    if not serving_root.is_dir():
        return {}
    return {
        p.name: ModelEntry(name=p.name, base_path=p)
        for p in sorted(serving_root.iterdir())
        if p.is_dir() and p.name[0] != "."
    }


class ConfigFile:
    """A model config file read again whenever it changes, as `--model_config_file_poll_wait_seconds` does.

    `entries()` gives the last good config; a file that stops parsing keeps the previous one in force and
    reports the error once per change.
    """

    def __init__(self, serving_root: Path, path: Optional[Path] = None):
        """Args:
        serving_root: the directory of `<model>/<version>/`.
        path: the config file; by default `<serving root>/models.config`, used once it exists.
        """
        self.serving_root = serving_root
        self.path = path if path is not None else serving_root / MODELS_CONFIG
        self.explicit = path is not None
        self._stamp: Optional[tuple] = ("never read",)
        self._entries: Optional[dict[str, ModelEntry]] = None
        self.error: Optional[str] = None

    def _file_stamp(self) -> Optional[tuple]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def changed(self) -> bool:
        """Re-reads the file if it changed since the last call; True when it did.

        Raises:
          ModelConfigError: the file changed and no longer parses (the previous config stays in force).
        """
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            if self.explicit:
                self.error = f"model config file {self.path} does not exist"
                raise ModelConfigError(self.error)
            self._entries = None
            return True
        try:
            self._entries = parse(self.path.read_text(encoding="utf-8"), str(self.path), self.serving_root)
        except (OSError, UnicodeDecodeError) as err:
            self.error = f"cannot read model config file {self.path}: {err}"
            raise ModelConfigError(self.error) from None
        except ModelConfigError as err:
            self.error = str(err)
            raise
        self.error = None
        return True

    def entries(self) -> Optional[dict[str, ModelEntry]]:
        """The config's entries, or None when there is no config (serve every model directory)."""
        return self._entries
