"""`conveyor ui`'s server: a local, read-only web view of the registry, with rollback as its one action.

A stdlib ThreadingHTTPServer. Each request opens ML Metadata afresh and reads it through
registry.runs and registry.versions, so pages show what the CLI would print at that moment. GET serves
pages; the only POST is a confirmed rollback carrying the token this server issued; any other method
is answered 405. Files are served only from inside the output directory.
"""

from __future__ import annotations

import hmac
import logging
import mimetypes
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

from components.pusher.publish import MODELS_CONFIG, list_versions, pinned_versions
from registry import ui_compare, ui_data, ui_memo, ui_pages, ui_run
from registry.lineage import open_store
from registry.runs import OUTCOMES, one_run, run_provenance, runs_of_nodes, runs_page
from registry.versions import cluster_model_dir, served_version, versions

MAX_FILE_BYTES = 2_000_000
LOOPBACK = ("127.0.0.1", "::1")  # addresses the server may be bound to
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
MAX_FORM_BYTES = 4096
CARD = Path("assets.extra") / "model_card.html"


class ActionRefused(Exception):
    """The rollback could not be done (no such version, output directory in use); the message says why."""


@dataclass
class Registry:
    """What the pages read: the config's store, names and directories, and how to roll back.

    `rollback(to)` must do what `conveyor models rollback --to` does (under the output lock) and
    return (restored, new version), raising ActionRefused with a one-line reason. `review_log` is the
    curated schema's review log and `schema_diff` what `conveyor schema diff --run` computes (see
    registry.ui_data.data_page); the CLI passes both, since the registry may not import schema/.
    """

    config: object
    output_dir: Path
    rollback: Callable[[int], tuple[int, int]]
    review_log: Optional[Path] = None
    schema_diff: Optional[ui_data.SchemaDiffer] = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    memo: ui_memo.Memo = field(default_factory=ui_memo.Memo)

    @property
    def model_dir(self) -> str:
        return self.config.serving_model_dir

    @property
    def where(self):
        """The config's store, as registry.runs and registry.versions take it (they open it per call)."""
        return self.config.output.store

    def open(self):
        """ML Metadata, opened read-only for one request."""
        return open_store(self.config.output.store)

    def statistics_runs(self) -> list:
        """Every run with its statistics and validation only (registry.runs.runs_of_nodes), read again only
        when ML Metadata or the files changed."""
        nodes = (ui_data.STATISTICS_NODE, ui_data.VALIDATION_NODE)
        return self.memo.get(("statistics", self.state()), lambda: runs_of_nodes(self.where, self.config.name, nodes))

    def versions(self) -> list:
        """registry.versions.versions for this model, read again only when ML Metadata or the files changed."""
        return self.memo.get(
            ("versions", self.state()),
            lambda: versions(self.where, self.config.name, self.model_dir, cluster_model_dir(self.config)),
        )

    def read_ahead(self) -> tuple[int, int]:
        """Reads what the pages read first, so that no person waits for it: every version with its
        evaluation per slice and thresholds, the first page of runs, every run's statistics. Fills the
        per-process file values (registry.summary.from_files) and the memo; returns (runs, versions) read.
        """
        from registry.record import evaluation_metrics, thresholds

        records = self.versions()
        for record in records:
            evaluator = record.executions.get("Evaluator")
            if evaluator is not None and evaluator.output("evaluation") is not None:
                evaluation_metrics(evaluator.output("evaluation"))
                thresholds(evaluator)
        first = runs_page(self.where, self.config.name)
        self.statistics_runs()
        return first.total, len(records)

    def state(self) -> tuple:
        """What the pages are drawn from, as registry.ui_memo compares it: ML Metadata and the files beside."""
        model_dir = Path(self.model_dir)
        # The run logs themselves, not their directory: the UI's own log lives there too.
        run_logs = tuple(sorted((self.output_dir / ui_run.LOG_DIR).glob(ui_run.LOG_GLOB)))
        files = (model_dir, model_dir.parent / MODELS_CONFIG, *run_logs)
        # The data page's `schema diff` is against the curated schema now, and links its latest reports.
        files += (Path(self.config.schema_path), self.output_dir / ui_data.SCHEMA_REVIEW_DIR)
        files += (self.review_log,) if self.review_log is not None else ()
        return ui_memo.store_state(self.open()), run_logs, ui_memo.files_state(files)


def _card_html(record) -> Optional[str]:
    """The version's model card: beside the pushed model, else the copy in ModelCardGen's `model_card`
    artifact (a version retention removed, or one a Kubeflow run pushed where this machine cannot see)."""
    card = Path(record.destination) / CARD
    if card.is_file():
        return card.read_text(encoding="utf-8")
    card_gen = record.executions.get("ModelCardGen")
    artifact = card_gen.output("model_card") if card_gen is not None else None
    copy = Path(artifact.uri) / CARD.name if artifact is not None else None
    return copy.read_text(encoding="utf-8") if copy is not None and copy.is_file() else None


def labels(model_dir: str) -> dict[str, int]:
    """The version labels `models.config` gives this model (stable, canary and any a person added)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = Path(model_dir).parent / MODELS_CONFIG
    if not path.is_file():
        return {}
    parsed = text_format.Parse(path.read_text(encoding="utf-8"), model_server_config_pb2.ModelServerConfig())
    entry = next((c for c in parsed.model_config_list.config if c.name == Path(model_dir).name), None)
    return dict(entry.version_labels) if entry is not None else {}


class Handler(BaseHTTPRequestHandler):
    """Routes a request to its page; the server's `registry` attribute holds what pages read."""

    server_version = "conveyor-ui"

    @property
    def registry(self) -> Registry:
        return self.server.registry

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        logging.getLogger("conveyor.ui").info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: str | bytes, content_type: str = "text/html; charset=utf-8") -> None:
        if getattr(self, "_drawn", None) is not None:  # a page being drawn for the memo: kept, sent after
            self._drawn.append((status, body, content_type))
            return
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        # The pages need nothing from elsewhere; the browser is told to fetch nothing from elsewhere.
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: HTTPStatus, text: str) -> None:
        self._send(status, ui_pages.message_page(f"{status.value} {status.phrase}", text))

    def _trusted(self) -> bool:
        """False (and answered 403) for a request another site's page made through a name it points at this
        machine (DNS rebinding): on a loopback address only loopback names are served, and a POST's Origin,
        when sent, must be this server itself."""
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        bound = self.server.server_address[0]
        if bound in LOOPBACK and name not in LOOPBACK_NAMES:
            self._error(HTTPStatus.FORBIDDEN, f"this server answers to 127.0.0.1 or localhost, not {host!r}")
            return False
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin is not None and urlsplit(origin).netloc.lower() != host:
            self._error(HTTPStatus.FORBIDDEN, "the rollback must come from this server's own page")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._trusted():
            return
        url = urlsplit(self.path)
        # Files are read as they are; the confirmation carries a token; both are cheap. Pages are kept.
        if url.path.strip("/") in ("", "files") or url.path.endswith("/rollback"):
            self._route(url)
            return
        try:
            key = (self.path, self.registry.state())
        except FileNotFoundError as err:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))
            return

        def draw():
            self._drawn = []
            try:
                self._route(url)
                return self._drawn[0]
            finally:
                self._drawn = None

        self._send(*self.registry.memo.get(key, draw))

    def _route(self, url) -> None:
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        query = parse_qs(url.query)
        try:
            if not parts:
                self.send_response(HTTPStatus.FOUND)
                self.send_header("Location", "/runs")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif parts == ["runs"]:
                self._runs((query.get("outcome") or [None])[0], (query.get("page") or ["1"])[0])
            elif parts[0] == "runs" and len(parts) == 2:
                self._run(parts[1])
            elif parts[0] == "runs" and len(parts) == 4 and parts[2] == "log":
                self._run(parts[1], parts[3])
            elif parts == ["compare"]:
                self._compare(query)
            elif parts == ["data"]:
                self._data((query.get("statistics") or [None])[0])
            elif parts == ["models"]:
                self._models()
            elif parts[0] == "models" and len(parts) == 2 and parts[1].isdigit():
                self._version(int(parts[1]))
            elif parts[0] == "models" and len(parts) == 3 and parts[1].isdigit() and parts[2] == "rollback":
                self._confirm(int(parts[1]))
            elif parts == ["files"]:
                self._file((query.get("path") or [""])[0])
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no page {url.path}")
        except FileNotFoundError as err:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))

    def do_POST(self) -> None:  # noqa: N802
        if not self._trusted():
            return
        parts = [p for p in urlsplit(self.path).path.strip("/").split("/") if p]
        if not (len(parts) == 3 and parts[0] == "models" and parts[1].isdigit() and parts[2] == "rollback"):
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "this page is read-only")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FORM_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "form too large")
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        if not hmac.compare_digest(token.encode(), self.registry.token.encode()):
            self._error(HTTPStatus.FORBIDDEN, "the rollback needs the confirmation page's token; open it again")
            return
        try:
            restored, new = self.registry.rollback(int(parts[1]))
        except ActionRefused as err:
            self._error(HTTPStatus.CONFLICT, str(err))
            return
        self._send(HTTPStatus.OK, ui_pages.done_page(restored, new))

    def _refuse(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "this page is read-only")

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse  # noqa: N815

    def _runs(self, selected: Optional[str], page: str) -> None:
        if selected is not None and selected not in OUTCOMES:
            self._error(HTTPStatus.BAD_REQUEST, f"outcome must be one of: {', '.join(OUTCOMES)}")
            return
        if not page.isdigit() or int(page) < 1:
            self._error(HTTPStatus.BAD_REQUEST, "page must be a number from 1")
            return
        # Only the runs shown are read (registry.runs.runs_page), 50 a page.
        found = runs_page(self.registry.where, self.registry.config.name, selected, int(page))
        body = ui_pages.runs_page(found.rows, selected, self.registry.config.name, (found.page, found.pages))
        self._send(HTTPStatus.OK, body)

    def _run(self, run_id: str, log_of: Optional[str] = None) -> None:
        output_dir = self.registry.output_dir
        found = one_run(self.registry.where, self.registry.config.name, run_id)
        if found is None:
            self._error(HTTPStatus.NOT_FOUND, f"no run {run_id!r}; see /runs")
            return
        run, executions, summary = found
        if log_of is None:
            self._send(
                HTTPStatus.OK, ui_run.run_page(run, executions, summary, run_provenance(run, executions), output_dir)
            )
        elif log_of in executions:
            self._send(HTTPStatus.OK, ui_run.log_page(run, log_of, output_dir))
        else:
            self._error(HTTPStatus.NOT_FOUND, f"run {run_id!r} has no component {log_of!r}")

    def _compare(self, query: dict) -> None:
        records = {r.version: r for r in self._records()}
        chosen = [(query.get(k) or [""])[0] for k in ("a", "b")]
        if not all(v.isdigit() and int(v) in records for v in chosen):
            known = ", ".join(map(str, sorted(records))) or "none"
            self._error(HTTPStatus.NOT_FOUND, f"compare needs two pushed versions as ?a=V1&b=V2 (versions: {known})")
            return
        a, b = (records[int(v)] for v in chosen)
        form = ui_pages.compare_form(sorted(records), a.version, b.version)
        self._send(HTTPStatus.OK, ui_compare.compare_page(a, b, self.registry.config.model_name, form))

    def _data(self, uri: Optional[str]) -> None:
        found = ui_data.span_statistics(self.registry.open(), self.registry.statistics_runs())
        chosen = next((s for s in found if s.uri == uri), None) if uri else (found[0] if found else None)
        if uri and chosen is None:
            self._error(HTTPStatus.NOT_FOUND, "no run computed those statistics; see /data")
            return
        body = ui_data.data_page(
            found, chosen, self.registry.review_log, self.registry.output_dir, self.registry.schema_diff
        )
        self._send(HTTPStatus.OK, body)

    def _records(self):
        return self.registry.versions()

    def _models(self) -> None:
        model_dir = self.registry.model_dir
        body = ui_pages.models_page(
            self._records(),
            served_version(model_dir),
            set(list_versions(model_dir)),
            labels(model_dir),
            pinned_versions(model_dir),
        )
        self._send(HTTPStatus.OK, body)

    def _version(self, version: int) -> None:
        records = self._records()
        record = next((r for r in records if r.version == version), None)
        older = max((r.version for r in records if r.version < version), default=None)
        if record is None:
            self._error(HTTPStatus.NOT_FOUND, f"version {version} was never pushed to {self.registry.model_dir}")
            return
        card_html = _card_html(record)
        present = list_versions(self.registry.model_dir)
        rollback_ok = version in present and version != served_version(self.registry.model_dir)
        known = tuple(r.version for r in records)
        store = self.registry.open()
        reviews = ui_data.read_reviews(self.registry.review_log)
        body = ui_pages.version_page(record, self.registry.config, store, card_html, rollback_ok, older, known, reviews)
        self._send(HTTPStatus.OK, body)

    def _confirm(self, version: int) -> None:
        if version not in list_versions(self.registry.model_dir):
            self._error(HTTPStatus.NOT_FOUND, f"version {version} is not in {self.registry.model_dir}")
            return
        served = served_version(self.registry.model_dir)
        self._send(HTTPStatus.OK, ui_pages.confirm_page(version, served, self.registry.token))

    def _file(self, raw: str) -> None:
        root = self.registry.output_dir.resolve()
        # Relative paths are the output directory's; resolving follows `..` and symlinks before the check.
        path = (root / raw).resolve()
        if not raw or "\0" in raw or not path.is_relative_to(root):
            self._error(HTTPStatus.FORBIDDEN, f"only files inside the output directory {root} are shown")
            return
        if path.is_dir():
            entries = sorted(path.iterdir())
            items = "".join(
                f'<li><a href="/files?path={quote(str(p))}">{ui_pages.e(p.name)}</a>{"/" if p.is_dir() else ""}</li>'
                for p in entries
            )
            self._send(HTTPStatus.OK, ui_pages.page(str(path), f"<ul>{items}</ul>"))
        elif path.is_file():
            if path.stat().st_size > MAX_FILE_BYTES:
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{path} is over {MAX_FILE_BYTES:,} bytes")
                return
            kind = mimetypes.guess_type(path.name)[0] or ""
            # Shown as text or as an image, never as a page of its own that could run something.
            shown = kind if kind.startswith("image/") and kind != "image/svg+xml" else "text/plain; charset=utf-8"
            self._send(HTTPStatus.OK, path.read_bytes(), shown)
        else:
            self._error(HTTPStatus.NOT_FOUND, f"{path} does not exist")


def make_server(registry: Registry, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0: any free port) that answers with the registry's pages.

    Raises:
      OSError: the address is in use or cannot be bound.
    """
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.registry = registry
    return server
