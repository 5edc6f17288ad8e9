"""The on-disk queue of events waiting for delivery: one SQLite file in the run's output folder.

Each event is stored once per destination (``sink``) that should receive it, in one transaction, before
``watch`` moves on to the next frame; a destination's delivery thread reads its oldest rows in order and
deletes each one only after the destination acknowledged it. So an event survives a broker that is down,
a webhook that fails and ``watch`` itself crashing or being killed: the next run with the same destination
delivers what is left, oldest first (at-least-once: a crash between delivery and deletion repeats one
event, which its ``id`` de-duplicates).

SQLite comes with Python; write-ahead logging with ``synchronous=NORMAL`` makes every committed event
survive a crash of the process (a power cut may lose the last moments, as for ``events.jsonl``).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from inspector.errors import InspectorError
from inspector.io import display_path

QUEUE_NAME = "event_queue.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_sink ON outbox (sink, seq);
"""


class EventQueue:
    """Events waiting per destination, oldest first; safe to use from several threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            # One connection shared by the watch loop and the delivery threads, behind one lock: every
            # statement is short (no network inside it), so nobody waits long.
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise InspectorError(
                f"{display_path(self.path)}: cannot open the event queue ({error})"
            ) from None
        self._lock = threading.Lock()

    def append(self, body: str, sinks: list[str]) -> None:
        """Queue one event (JSON text) for each of ``sinks``, all or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO outbox (sink, body) VALUES (?, ?)", [(s, body) for s in sinks]
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def oldest(self, sink: str, limit: int = 32) -> list[tuple[int, str]]:
        """Up to ``limit`` of the sink's waiting events as (sequence number, body), oldest first."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, body FROM outbox WHERE sink = ? ORDER BY seq LIMIT ?", (sink, limit)
            ).fetchall()

    def acknowledge(self, seq: int) -> None:
        """The event ``seq`` was delivered: remove it."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def waiting(self) -> dict[str, int]:
        """How many events wait, per sink (sinks of earlier runs included)."""
        with self._lock:
            rows = self._db.execute("SELECT sink, COUNT(*) FROM outbox GROUP BY sink").fetchall()
        return {sink: count for sink, count in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
