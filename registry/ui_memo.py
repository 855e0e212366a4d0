"""Keeps `conveyor ui`'s rendered pages only while what they were drawn from is unchanged.

Reading a long history is slow (benchmarks/ui.py: seconds for 300 runs, most of it one ML Metadata query
per execution), so a page, once drawn, is answered again from memory while its sources stand still. What
it was drawn from is checked on every request, cheaply: the newest execution, artifact and context in ML
Metadata (any write, a run's or a rollback's, makes one of them newer) and the modification times of the
files the pages read besides (the serving directory, models.config, the review log, the run logs). Any
change there and the page is drawn again from ML Metadata and the artifacts; nothing is kept past it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ml_metadata import metadata_store

PAGES_KEPT = 256


def store_state(store: metadata_store.MetadataStore) -> tuple:
    """The newest (id, update time) of ML Metadata's executions, artifacts and contexts: 3 one-row queries."""
    newest = metadata_store.ListOptions(limit=1, order_by=metadata_store.OrderByField.UPDATE_TIME, is_asc=False)
    state = []
    for get in (store.get_executions, store.get_artifacts, store.get_contexts):
        found = get(list_options=newest)
        state.append((found[0].id, found[0].last_update_time_since_epoch) if found else None)
    return tuple(state)


def files_state(paths: Iterable[Path]) -> tuple:
    """Each path's modification time in ns (None when absent): a directory's changes when entries come or go."""
    out = []
    for path in paths:
        try:
            out.append(path.stat().st_mtime_ns)
        except OSError:
            out.append(None)
    return tuple(out)


class Memo:
    """The last PAGES_KEPT pages by (request, state of their sources); safe across the server's threads."""

    def __init__(self, kept: int = PAGES_KEPT):
        self._pages: OrderedDict[Any, Any] = OrderedDict()
        self._kept = kept
        self._lock = threading.Lock()
        self._drawing: dict[Any, threading.Event] = {}

    def get(self, key, draw: Callable[[], Any]):
        """The page kept under key, or draw() kept and returned (drawn outside the lock: pages are slow).

        A key another thread is drawing is waited for rather than drawn twice (the read-ahead and the
        first request on two cores); if that drawing fails, this thread draws it itself.
        """
        with self._lock:
            if key in self._pages:
                self._pages.move_to_end(key)
                return self._pages[key]
            drawing = self._drawing.get(key)
            if drawing is None:
                drawing = self._drawing[key] = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            drawing.wait()
            return self.get(key, draw)  # kept by the other thread, or drawn (and kept) here after its failure
        try:
            page = draw()
            with self._lock:
                self._pages[key] = page
                while len(self._pages) > self._kept:
                    self._pages.popitem(last=False)
            return page
        finally:
            with self._lock:
                del self._drawing[key]
            drawing.set()
