"""The embedded store's snapshot: every live entry in one SQLite file.

Written on shutdown to a temporary file that then replaces the old one, so a
crash mid-write leaves the previous snapshot intact. Rows are kept in
least-recently-used order (oldest first) so the order survives a restart.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

from semcache.model import Entry

_COLUMNS = "id, ns, key, prompt, vec, resp, created, expires, upstream"
_SCHEMA = """CREATE TABLE entries (
    seq INTEGER PRIMARY KEY, id TEXT, ns TEXT, key TEXT, prompt TEXT,
    vec BLOB, resp BLOB, created REAL, expires REAL, upstream REAL)"""


def save(path: Path, entries: Iterable[Entry]) -> int:
    """Write ``entries`` (least recently used first); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    rows = (
        (e.entry_id, e.namespace, e.exact_key, e.prompt_text, e.vector, e.response,
         e.created_at, e.expires_at, e.upstream_seconds)
        for e in entries
    )  # fmt: skip
    with closing(sqlite3.connect(tmp)) as db:
        db.execute(_SCHEMA)
        cursor = db.executemany(
            f"INSERT INTO entries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows
        )
        count = cursor.rowcount
        db.commit()
    os.replace(tmp, path)
    return count


def load(path: Path, now: float) -> list[Entry]:
    """The unexpired entries of a snapshot, least recently used first; [] if none."""
    if not path.exists():
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE expires > ? ORDER BY seq", (now,)
        ).fetchall()
    return [
        Entry(i, ns, key, prompt, bytes(vec), bytes(resp), created, expires, upstream)
        for i, ns, key, prompt, vec, resp, created, expires, upstream in rows
    ]
