"""What `conveyor ui`'s pages cost with a long history: 300 runs and 100 pushed versions in ML Metadata.

Usage: python benchmarks/ui.py --from OUTPUT_DIR [--out DIR] [--runs 300] [--versions 100] [--requests 7]

OUTPUT_DIR is a real `conveyor run` output directory (taxi config) with a pushed run, for example the
e2e tests' (`pytest tests/registry/test_ui.py` keeps it under /tmp/pytest-of-$USER/). Its ML Metadata is
copied and its pushed run is written again through ML Metadata's own API (put_execution with the same
types, properties, contexts and events the pipeline wrote; new artifacts pointing at the same files)
until the store holds --runs runs, every third one pushing a new version (symlinked to the real pushed
directory, so its model card is there), the others not blessed. Then each page is requested --requests
times from a server in this process and the median time is printed, after the first requests: one cold (no
artifact's files read yet in the process) and three as after a change to ML Metadata (the page drawn again;
their median is printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this directory comes first on sys.path: put the project root there instead.
sys.path[0] = str(PROJECT_ROOT)


def _set(properties, name: str, value) -> None:
    """Sets a custom property keeping the kind the pipeline wrote it with."""
    slot = properties[name]
    if slot.WhichOneof("value") == "int_value" or (slot.WhichOneof("value") is None and isinstance(value, int)):
        slot.int_value = int(value)
    else:
        slot.string_value = str(value)


def clone_run(store, template, executions: dict, name: str, version=None, model_dir=None) -> None:
    """Writes `template`'s run again as run `name`: same executions and properties, new output artifacts.

    With `version`, its push published that version into model_dir; without, its model was not blessed.
    """
    from ml_metadata.proto import metadata_store_pb2

    run = metadata_store_pb2.Context(type_id=template.type_id, name=name)
    for key in template.custom_properties:
        run.custom_properties[key].CopyFrom(template.custom_properties[key])
    [run_id] = store.put_contexts([run])
    run.id = run_id
    parents = store.get_parent_contexts_by_context(template.id)
    store.put_parent_contexts([metadata_store_pb2.ParentContext(child_id=run_id, parent_id=p.id) for p in parents])
    mapped: dict[int, int] = {}
    for node in executions.values():
        execution = metadata_store_pb2.Execution()
        execution.CopyFrom(node.execution)
        execution.ClearField("id")
        execution.ClearField("create_time_since_epoch")
        execution.ClearField("last_update_time_since_epoch")
        execution.ClearField("name")
        contexts = [c for c in store.get_contexts_by_execution(node.execution.id) if c.type_id != template.type_id]
        contexts.append(run)
        pairs = []
        for ev in store.get_events_by_execution_ids([node.execution.id]):
            [artifact] = store.get_artifacts_by_id([mapped.get(ev.artifact_id, ev.artifact_id)])
            event = metadata_store_pb2.Event(type=ev.type)
            event.path.CopyFrom(ev.path)
            is_output = ev.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
            if is_output and node.state != "cached":
                fresh = metadata_store_pb2.Artifact()
                fresh.CopyFrom(artifact)
                for field in ("id", "create_time_since_epoch", "last_update_time_since_epoch", "name"):
                    fresh.ClearField(field)
                _customise(fresh, store, version, model_dir)
                pairs.append((fresh, event, ev.artifact_id))
            else:
                pairs.append((artifact, event, None))
        _, artifact_ids, _ = store.put_execution(execution, [(a, ev) for a, ev, _ in pairs], contexts)
        for (_, _, old), new in zip(pairs, artifact_ids, strict=True):
            if old is not None:
                mapped[old] = new


def _customise(artifact, store, version, model_dir) -> None:
    kind = store.get_artifact_types_by_id([artifact.type_id])[0].name
    if kind == "PushedModel":
        if version is None:
            _set(artifact.custom_properties, "pushed", 0)
            _set(artifact.custom_properties, "not_pushed_reason", "the model was not blessed")
            for key in ("pushed_version", "pushed_destination"):
                if key in artifact.custom_properties:
                    del artifact.custom_properties[key]
        else:
            _set(artifact.custom_properties, "pushed", 1)
            _set(artifact.custom_properties, "pushed_version", version)
            _set(artifact.custom_properties, "pushed_destination", str(Path(model_dir) / str(version)))
    elif kind == "ModelBlessing":
        _set(artifact.custom_properties, "blessed", 0 if version is None else 1)


def relocate(store, source: Path) -> None:
    """Points the copied store's artifacts at `source` when it was moved after the run (a copied e2e dir)."""
    from registry.lineage import custom_property

    pushed = [a for a in store.get_artifacts_by_type("PushedModel") if custom_property(a, "pushed_destination")]
    if not pushed:
        return
    old = str(Path(custom_property(pushed[0], "pushed_destination")).parents[2])
    if old == str(source):
        return
    moved = []
    for artifact in store.get_artifacts():
        where = custom_property(artifact, "pushed_destination")
        if artifact.uri.startswith(old) or (where and where.startswith(old)):
            artifact.uri = str(source) + artifact.uri[len(old) :] if artifact.uri.startswith(old) else artifact.uri
            if where and where.startswith(old):
                artifact.custom_properties["pushed_destination"].string_value = str(source) + where[len(old) :]
            moved.append(artifact)
    store.put_artifacts(moved)


def fill(source: Path, out: Path, total_runs: int, total_versions: int):
    """Copies source's store to out and writes runs until there are total_runs, total_versions pushed."""
    from pipeline.config import load_config
    from registry.lineage import open_store, pipeline_runs, run_executions
    from registry.summary import summarize

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy(source / "metadata.sqlite", out / "metadata.sqlite")
    config = load_config(PROJECT_ROOT / "configs" / "taxi.yaml", output_dir=out)
    model_dir = Path(config.serving_model_dir)
    model_dir.mkdir(parents=True)
    shutil.copy(source / "serving_model" / "models.config", model_dir.parent / "models.config")
    store = open_store(str(out / "metadata.sqlite"), readonly=False)
    relocate(store, source)
    existing = pipeline_runs(store, config.name)
    template = None
    for run in existing:
        executions = run_executions(store, run, config.name)
        summary = summarize(run.name, executions, store, config.name)
        if summary.pushed_to:
            template, template_executions, real_version = run, executions, Path(summary.pushed_to)
    if template is None:
        raise SystemExit(f"{source} has no pushed run to copy")
    pushed = 0  # the source's own push names its directory, not out/'s: every version counted is a new one
    # The copied store's push names the source's directory; the new versions live under out/.
    first = int(real_version.name)
    (model_dir / real_version.name).symlink_to(real_version)
    to_add = total_runs - len(existing)
    for i in range(to_add):
        version = None
        if pushed < total_versions and i % max(1, to_add // (total_versions - 1)) == 0:
            version = first + 1 + i
            (model_dir / str(version)).symlink_to(real_version)
            pushed += 1
        clone_run(store, template, template_executions, f"2030-01-01T00:00:00.{i:06d}", version, model_dir)
    return config


# "After a change" is the median of this many redraws (one alone swings with the machine's other work).
REDRAWS = 3


def measure(config, out: Path, requests: int) -> list[tuple[str, float, float, float, float]]:
    """(page, cold ms, after-a-change ms, median ms of the rest, ms after the read-ahead) for every page.

    Cold: the first request in a process that has read no artifact's files yet. After a change: the page
    is drawn again (ML Metadata changed; the median of REDRAWS such requests), the files of the artifacts
    read before being known (only a new run's are read then, see registry.summary.from_files). Read ahead:
    the first request after `conveyor ui`'s read-ahead (Registry.read_ahead) in a process that had read no
    file before it. The rest are answered from registry.ui_memo.
    """
    from cli.ui import rollback_action, schema_review
    from registry.runs import runs
    from registry.summary import forget_files
    from registry.ui import Registry, make_server
    from registry.ui_memo import Memo
    from registry.versions import versions

    registry = Registry(config, out, rollback_action(config), *schema_review(config))
    server = make_server(registry, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    newest = runs(config.output.store, config.name)[0][0].name
    records = versions(config.output.store, config.name, config.serving_model_dir)
    pages = [
        "/runs",
        "/runs?outcome=pushed",
        f"/runs/{urllib.request.quote(newest)}",
        "/models",
        f"/models/{records[0].version}",
        f"/compare?a={records[-1].version}&b={records[0].version}",
        "/data",
    ]
    results = []
    try:
        for path in pages:
            times = []
            for i in range(requests + REDRAWS):
                if i <= REDRAWS:  # a page not drawn since ML Metadata changed (the first also with no file read)
                    registry.memo = Memo()
                if i == 0:
                    forget_files()
                started = time.perf_counter()
                with urllib.request.urlopen(base + path, timeout=600) as response:
                    response.read()
                times.append((time.perf_counter() - started) * 1000)
            changed = statistics.median(times[1 : REDRAWS + 1])
            forget_files()
            registry.memo = Memo()
            registry.read_ahead()
            started = time.perf_counter()
            with urllib.request.urlopen(base + path, timeout=600) as response:
                response.read()
            ahead = (time.perf_counter() - started) * 1000
            results.append((path, times[0], changed, statistics.median(times[REDRAWS + 1 :] or times), ahead))
            cold, median = times[0], results[-1][3]
            print(
                f"{path:<42} cold {cold:6.0f} ms   after a change {changed:6.0f} ms   median {median:5.0f} ms"
                f"   after the read-ahead {ahead:6.0f} ms"
            )
    finally:
        server.shutdown()
        server.server_close()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", help="a real taxi run's output directory (not with --reuse)")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "output" / "benchmarks" / "ui"))
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--requests", type=int, default=7)
    parser.add_argument("--reuse", action="store_true", help="measure the store an earlier call filled in --out")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.reuse:
        from pipeline.config import load_config

        config = load_config(PROJECT_ROOT / "configs" / "taxi.yaml", output_dir=args.out)
    else:
        config = fill(Path(args.source), Path(args.out), args.runs, args.versions)
    from registry.runs import runs
    from registry.versions import versions

    found = runs(config.output.store, config.name)
    pushed = versions(config.output.store, config.name, config.serving_model_dir)
    print(f"store: {len(found)} runs, {len(pushed)} versions (filled in {time.monotonic() - started:.0f} s)")
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cores, Python {platform.python_version()}")
    from cli.ui import rollback_action, schema_review
    from registry.summary import forget_files
    from registry.ui import Registry

    forget_files()
    started = time.perf_counter()
    Registry(config, Path(args.out), rollback_action(config), *schema_review(config)).read_ahead()
    print(f"read-ahead (conveyor ui's start, nothing read before): {time.perf_counter() - started:.1f} s")
    measure(config, Path(args.out), args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
