"""Logged requests back into tf.Examples: reads `conveyor serve`'s PredictionLog files for one model and
sorts each request's examples into the window being checked or the window before it, counting what
cannot be read (a corrupt or truncated file, another model's records, requests whose examples do not
parse) instead of failing on it, so what can be read is still analysed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from components.request_logs import logged_examples, parse_log, parseable, read_payloads
from serving.request_log import IN_PROGRESS_SUFFIX, LOG_SUFFIX, log_files


class LogsUnavailable(RuntimeError):
    """There are no request logs to read for the model, or none of them can be read; the message says why."""


@dataclass
class Window:
    """The logged traffic of one time window [start, end), in UTC seconds."""

    start: float
    end: float
    examples: list[bytes] = field(default_factory=list)
    requests: int = 0
    # Requests by the version that answered them, and by the sampling rate they were logged at.
    versions: Counter = field(default_factory=Counter)
    rates: Counter = field(default_factory=Counter)

    @property
    def estimated_requests(self) -> int:
        """The requests served in the window, estimated from the logged ones and their sampling rates."""
        return round(sum(count / rate for rate, count in self.rates.items() if rate > 0))


@dataclass
class Traffic:
    """What the logs hold for one model: the checked window, the one before it, and what was left out."""

    model: str
    files: int
    current: Window
    previous: Window
    version: Optional[int]  # the version whose requests `current` holds (None: no request in the window)
    other_models: int = 0  # records naming another model
    other_versions: int = 0  # requests of the window answered by another version than `version`
    bad_records: int = 0  # records that do not parse as a PredictionLog, or hold no readable examples
    bad_examples: int = 0  # logged examples that do not parse as tf.Example
    outside: int = 0  # records older than the previous window or newer than the current one
    in_progress: int = 0  # files still being written, not read
    unreadable: list[str] = field(default_factory=list)  # "<file>: <reason>" for files read in part or not at all

    def problems(self) -> list[str]:
        """One line for each kind of input left out, with its count."""
        lines = [f"{u}" for u in self.unreadable]
        for count, text in (
            (self.bad_records, "logged requests unreadable (not a PredictionLog, or no tf.Examples in it)"),
            (self.bad_examples, "logged examples that do not parse as tf.Example"),
            (self.other_models, "records of another model in this model's log directory"),
            (self.other_versions, f"requests answered by another version than {self.version} (see --version)"),
            (self.in_progress, "log files still being written (read once the server closes them)"),
        ):
            if count:
                lines.append(f"{count:,} {text}")
        return lines


@dataclass(frozen=True)
class _Record:
    timestamp: float
    version: int
    rate: float
    examples: tuple[bytes, ...]


def read_traffic(root: str | Path, model: str, start: float, end: float, version: Optional[int] = None) -> Traffic:
    """The model's logged requests in [start, end) and in the window of the same length before it.

    Args:
      root: the request-log root (`<output>/request_logs`), holding one directory per model.
      model: the model whose logs are read.
      start: the checked window's start, UTC seconds.
      end: its end, UTC seconds.
      version: keep only the requests this version answered in the checked window; default: the version
        that answered most of them. The previous window keeps every version's: drift is about traffic.

    Returns:
      The traffic of both windows and the counts of what was left out.

    Raises:
      LogsUnavailable: the model has no log directory or no finished log file, or no file can be read.
    """
    directory = Path(root) / model
    if not directory.is_dir():
        raise LogsUnavailable(f"no request logs for model '{model}' in {root} (serve with --request-log-rate)")
    files = log_files(root, model)
    in_progress = len(list(directory.glob(f"*{LOG_SUFFIX}{IN_PROGRESS_SUFFIX}")))
    if not files:
        still = f"; {in_progress} still being written" if in_progress else ""
        raise LogsUnavailable(f"no finished request-log files in {directory}{still}")
    length = end - start
    traffic = Traffic(
        model, len(files), Window(start, end), Window(start - length, start), None, in_progress=in_progress
    )
    records: list[_Record] = []
    read_any = False
    for path in files:
        payloads, error = read_payloads(path)
        read_any = read_any or bool(payloads) or error is None
        if error is not None:
            traffic.unreadable.append(f"{path.name}: {error} ({len(payloads)} records read before it)")
        for data in payloads:
            record = _record(data, model, traffic)
            if record is None:
                continue
            if traffic.previous.start <= record.timestamp < end:
                records.append(record)
            else:
                traffic.outside += 1
    if not read_any:
        raise LogsUnavailable(
            f"none of the {len(files)} request-log files in {directory} can be read: {traffic.unreadable[0]}"
        )
    current = [r for r in records if r.timestamp >= start]
    if version is None and current:
        version = Counter(r.version for r in current).most_common(1)[0][0]
    traffic.version = version
    for r in records:
        if r.timestamp < start:
            _add(traffic.previous, r)
        elif r.version == version:
            _add(traffic.current, r)
        else:
            traffic.other_versions += 1
    return traffic


def _add(window: Window, record: _Record) -> None:
    window.examples.extend(record.examples)
    window.requests += 1
    window.versions[record.version] += 1
    window.rates[record.rate] += 1


def _record(data: bytes, model: str, traffic: Traffic) -> Optional[_Record]:
    """One logged request of `model` with its examples, or None (counted in `traffic`)."""
    log = parse_log(data)
    if log is None:
        traffic.bad_records += 1
        return None
    meta = log.log_metadata
    if meta.model_spec.name != model:
        traffic.other_models += 1
        return None
    examples, bad = parseable(logged_examples(log))
    traffic.bad_examples += bad
    if not examples:
        traffic.bad_records += 1
        return None
    rate = meta.sampling_config.sampling_rate
    return _Record(float(meta.timestamp_secs), int(meta.model_spec.version.value), rate, tuple(examples))


@dataclass
class Served:
    """What the logs say one version answered: logged requests and examples, and when."""

    requests: int = 0
    examples: int = 0
    estimated_requests: float = 0.0  # each logged request counts 1 / its sampling rate
    first: Optional[float] = None
    last: Optional[float] = None


def version_traffic(root: str | Path, model: str) -> dict[int, Served]:
    """The traffic each version of the model answered, from every finished log file (unreadable records are
    skipped; a missing log directory is no traffic)."""
    served: dict[int, Served] = {}
    scratch = Traffic(model, 0, Window(0, 0), Window(0, 0), None)
    for path in log_files(root, model):
        for data in read_payloads(path)[0]:
            record = _record(data, model, scratch)
            if record is None:
                continue
            entry = served.setdefault(record.version, Served())
            entry.requests += 1
            entry.examples += len(record.examples)
            entry.estimated_requests += 1 / record.rate if record.rate > 0 else 0
            entry.first = min(entry.first or record.timestamp, record.timestamp)
            entry.last = max(entry.last or record.timestamp, record.timestamp)
    return served
