"""The web UI's run page: the pipeline's graph drawn from ML Metadata's events, each component's state and
time, the failed component's error and the end of its part of the run log, the summary, every artifact.

TFX's LocalDagRunner writes no log per component: `conveyor run` writes one log per run,
`<output>/logs/run-<local time>.log`, holding every component's lines in turn. ML Metadata does not
name that file, so the log is found by the run id TFX prints into it, and a component's part is the
stretch from its "Component X is running." line to the next component's start (or the end of the file).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from registry.lineage import NodeExecution, created_ms, updated_ms
from registry.runs import ERROR_KEY, outcome
from registry.summary import RunSummary
from registry.ui_pages import artifact_link, badge, e, page, seconds, utc

LOG_DIR = "logs"
LOG_GLOB = "run-*.log"
LOG_TAIL = 60
# Read at most this much of a log from its end: a component's part that is longer is shown from here.
MAX_LOG_BYTES = 8_000_000
_STARTED = re.compile(r"Component (\S+) is running\.$")

_STATE_TAG = {"cached": "warn", "complete": "ok", "failed": "bad"}
_FILL = {"cached": "#fdf0c4", "complete": "#d4f4dd", "failed": "#fbd5d5", "nothing resolved": "#eef1f4"}


def shown_state(node_id: str, state: str) -> str:
    """A resolver that found nothing is recorded as failed by TFX; it is the normal first run."""
    return "nothing resolved" if state == "failed" and node_id.endswith("_resolver") else state


def edges(executions: dict[str, NodeExecution]) -> list[tuple[str, str]]:
    """(upstream, downstream) node pairs: an artifact one execution output and another read (ML Metadata events)."""
    producer = {a.id: node_id for node_id, n in executions.items() for arts in n.outputs.values() for a in arts}
    found = set()
    for node_id, node in executions.items():
        for artifacts in node.inputs.values():
            for a in artifacts:
                if a.id in producer and producer[a.id] != node_id:
                    found.add((producer[a.id], node_id))
    return sorted(found)


def layers(executions: dict[str, NodeExecution], links: list[tuple[str, str]]) -> list[list[str]]:
    """Nodes in DAG order, grouped by their longest distance from a source (ties: execution order)."""
    order = list(executions)  # run_executions keys them by execution id: the order they ran in
    parents: dict[str, list[str]] = {n: [] for n in order}
    for up, down in links:
        parents[down].append(up)
    depth: dict[str, int] = {}
    pending = deque(order)
    guard = len(order) ** 2 + 1
    while pending and guard:
        guard -= 1
        node = pending.popleft()
        if all(p in depth for p in parents[node]):
            depth[node] = 1 + max((depth[p] for p in parents[node]), default=-1)
        else:
            pending.append(node)
    for node in pending:  # a cycle cannot come from ML Metadata's events; drawn last if it ever did
        depth[node] = max(depth.values(), default=-1) + 1
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in order:
        out[depth[node]].append(node)
    return out


def graph_svg(executions: dict[str, NodeExecution]) -> str:
    """The run's components as an inline SVG graph: one box per execution (state, time), arrows along its events."""
    if not executions:
        return "<p>no component executions recorded for this run</p>"
    links = edges(executions)
    columns = layers(executions, links)
    box_w, box_h, gap_x, gap_y, pad = 170, 46, 40, 14, 10
    where: dict[str, tuple[float, float]] = {}
    for i, column in enumerate(columns):
        for j, node_id in enumerate(column):
            where[node_id] = (pad + i * (box_w + gap_x), pad + j * (box_h + gap_y))
    width = pad * 2 + len(columns) * (box_w + gap_x) - gap_x
    height = pad * 2 + max(len(c) for c in columns) * (box_h + gap_y) - gap_y
    out = [
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img"><title>pipeline graph</title>'
        '<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#667"/></marker></defs>'
    ]
    for up, down in links:
        (x1, y1), (x2, y2) = where[up], where[down]
        out.append(
            f'<path class="edge" data-from="{e(up)}" data-to="{e(down)}" fill="none" stroke="#889" '
            f'marker-end="url(#arrow)" d="M{x1 + box_w:.0f},{y1 + box_h / 2:.0f} C{x1 + box_w + gap_x / 2:.0f},'
            f'{y1 + box_h / 2:.0f} {x2 - gap_x / 2:.0f},{y2 + box_h / 2:.0f} {x2:.0f},{y2 + box_h / 2:.0f}"/>'
        )
    for node_id, node in executions.items():
        x, y = where[node_id]
        state = shown_state(node_id, node.state)
        took = seconds((updated_ms(node.execution) - created_ms(node.execution)) / 1000)
        label = node_id if len(node_id) <= 24 else node_id[:23] + "…"
        out.append(
            f'<g class="node" data-node="{e(node_id)}" data-state="{e(state)}"><title>{e(node_id)}: {e(state)}, '
            f'{e(took)}</title><rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" '
            f'fill="{_FILL.get(state, "#fff")}" stroke="#8a96a3"/>'
            f'<text x="{x + 8}" y="{y + 18}" font-size="12" font-weight="bold">{e(label)}</text>'
            f'<text x="{x + 8}" y="{y + 36}" font-size="11">{e(state)} · {e(took)}</text></g>'
        )
    return "".join(out) + "</svg>"


@dataclass(frozen=True)
class LogPart:
    """The end of one component's part of a run log."""

    path: Path
    lines: list[str]
    found: bool  # False: the log holds the run but no line for this component


def run_log(output_dir: Path, run_name: str, since_ms: int) -> Optional[Path]:
    """The `conveyor run` log holding this run: TFX prints the run id into it (`string_value: "<id>"`).

    Only logs written to after the run began are read, so a long history costs one or two files.
    """
    folder = output_dir / LOG_DIR
    if not folder.is_dir():
        return None
    needle = f'string_value: "{run_name}"'.encode()
    candidates = [p for p in folder.glob(LOG_GLOB) if p.stat().st_mtime * 1000 >= since_ms - 5000]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime):
        with open(path, "rb") as f:
            for line in f:
                if needle in line:
                    return path
    return None


def log_part(path: Path, node_id: str, tail: int = LOG_TAIL) -> LogPart:
    """The last `tail` lines of node_id's part of the log: from its last start line to the next start."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - MAX_LOG_BYTES))
        text = f.read().decode("utf-8", "replace")
    part: Optional[deque] = None
    kept: Optional[deque] = None
    for line in text.splitlines():
        started = _STARTED.search(line)
        if started and started.group(1) == node_id:
            part = deque(maxlen=tail)
        elif started and part is not None:
            kept, part = part, None  # the component's part ends where the next one starts
        if part is not None:
            part.append(line)
    found = part if part is not None else kept
    return LogPart(path, list(found or []), found is not None)


def show_lines(run, executions: dict[str, NodeExecution], summary: RunSummary, provenance: dict) -> list[str]:
    """The lines `conveyor runs show RUN` prints (tests/registry/test_ui.py holds the two equal)."""
    result = outcome(executions, summary)
    out = [f"status: {result.status}", *(f"  {key}: {value}" for key, value in provenance.items())]
    if result.failed is not None:
        out.append(f"  failed component: {result.failed.node_id}")
        out.append(f"  error: {error_text(result.failed)}")
    return out + summary.lines()


def error_text(node: NodeExecution) -> str:
    """The error `conveyor run` recorded on a failed execution (TFX records only the FAILED state)."""
    error = node.execution.custom_properties.get(ERROR_KEY)
    return error.string_value if error else "(not recorded; see the run log)"


def _log_block(log: Optional[LogPart], node_id: str, output_dir: Path) -> str:
    if log is None:
        return (
            f"<p class='log-missing'>No log of this run under {e(output_dir / LOG_DIR)}: TFX writes no log per "
            "component, and <code>conveyor run</code> writes one per run there (a run started another way, or "
            "with its logs elsewhere, leaves none).</p>"
        )
    where = artifact_link(str(log.path))
    if not log.found:
        return f"<p class='log-missing'>The run's log {where} has no line for {e(node_id)}.</p>"
    return (
        f"<p>The end of {e(node_id)}'s part of the run's log {where} (last {len(log.lines)} lines):</p>"
        f"<pre class='log'>{e(chr(10).join(log.lines))}</pre>"
    )


def run_page(run, executions: dict[str, NodeExecution], summary: RunSummary, provenance: dict, output_dir: Path) -> str:
    """One run: outcome, provenance, its graph, the failed component's error and log, components, summary."""
    result = outcome(executions, summary)
    parts = [f"<p>{badge(result, summary)}"]
    if summary.pushed_to:
        version = Path(summary.pushed_to).name
        parts.append(f' &middot; <a id="version" href="/models/{quote(version)}">version {e(version)}</a>')
    parts.append("</p><table id='provenance'>")
    parts.extend(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in provenance.items())
    parts.append("</table>")
    if result.failed is not None:
        node_id = result.failed.node_id
        log = run_log(output_dir, run.name, created_ms(run))
        parts.append(f"<h2>Failed: {e(node_id)}</h2><pre class='error'>{e(error_text(result.failed))}</pre>")
        parts.append(_log_block(log_part(log, node_id) if log else None, node_id, output_dir))
    parts.append(f"<h2>Graph</h2><div style='overflow:auto'>{graph_svg(executions)}</div>")
    rows = []
    for node_id, node in executions.items():
        start, end = created_ms(node.execution), updated_ms(node.execution)
        state = shown_state(node_id, node.state)
        outputs = "<br>".join(
            f"{e(key)}: {artifact_link(a.uri)}" for key, artifacts in node.outputs.items() for a in artifacts
        )
        log = f'<a href="/runs/{quote(run.name)}/log/{quote(node_id)}">log</a>'
        rows.append(
            f'<tr><td>{e(node_id)}</td><td><span class="tag {_STATE_TAG.get(state, "")}">{e(state)}</span></td>'
            f"<td>{e(utc(start))}</td><td>{e(seconds((end - start) / 1000))}</td><td>{outputs}</td><td>{log}</td></tr>"
        )
    parts.append("<h2>Components</h2><table id='components'><tr><th>component</th><th>state</th>")
    parts.append("<th>started (UTC)</th><th>time</th><th>artifacts</th><th></th></tr>" + "".join(rows) + "</table>")
    shown = chr(10).join(show_lines(run, executions, summary, provenance))
    parts.append(f"<h2>Summary (<code>conveyor runs show</code>)</h2><pre id='summary'>{e(shown)}</pre>")
    return page(f"Run {run.name}", "".join(parts))


def log_page(run, node_id: str, output_dir: Path) -> str:
    """One component's part of the run's log (its last 400 lines)."""
    log = run_log(output_dir, run.name, created_ms(run))
    body = _log_block(log_part(log, node_id, 400) if log else None, node_id, output_dir)
    return page(f"Log of {node_id} in run {run.name}", body + f'<p><a href="/runs/{quote(run.name)}">run</a></p>')
