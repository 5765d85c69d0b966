"""A site index's metadata in one sqlite database: models, gallery items, versions, and which
version is current.

sqlite (standard library) is the embedded store: one file, transactions, a journal that
survives a crash. The vectors live in each version's folder (see ``versions.py``); a version
exists for readers only once the single transaction that inserts its rows and moves
``current`` has committed, so a reader sees the old version or the new one, never half of one.

Tables:
- ``models``: one row per model (a checkpoint file, identified by its content digest);
- ``items``: one row per gallery image ever indexed, keyed by its path below the site root,
  with pid, camid and capture time (``time_source`` says where the time came from);
- ``versions``: one row per complete set of vectors; ``model`` is the space the vectors are in,
  ``kind`` says how they were made (``build``: extracted from images; ``upgrade``: an earlier
  version mapped through a transfer), ``parent`` the version it came from;
- ``entries``: row ``r`` of version ``v``'s vectors is item ``item``, first extracted from its
  image by ``source_model`` and mapped through ``hops`` transfers since.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedreid.data.records import DataError

DB_FILE = "index.sqlite"
SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, arch TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE, dim INTEGER NOT NULL);
CREATE TABLE items (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, pid INTEGER NOT NULL,
    camid INTEGER NOT NULL, capture_time REAL NOT NULL, time_source TEXT NOT NULL);
CREATE TABLE versions (
    id INTEGER PRIMARY KEY, parent INTEGER, kind TEXT NOT NULL,
    model INTEGER NOT NULL REFERENCES models(id), dim INTEGER NOT NULL, count INTEGER NOT NULL,
    created REAL NOT NULL, alpha REAL, transfer TEXT, search TEXT NOT NULL,
    nlist INTEGER, nprobe INTEGER, recall REAL);
CREATE TABLE entries (
    version INTEGER NOT NULL REFERENCES versions(id), row INTEGER NOT NULL,
    item INTEGER NOT NULL REFERENCES items(id),
    source_model INTEGER NOT NULL REFERENCES models(id), hops INTEGER NOT NULL,
    PRIMARY KEY (version, row)) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class ModelRef:
    """A model as a writer describes it: a name for people, the checkpoint's content digest
    for checks, and its feature width."""

    name: str
    arch: str
    digest: str
    dim: int


@dataclass(frozen=True)
class ModelInfo:
    """A model the index has registered (some version is, or was, in its feature space)."""

    id: int
    name: str
    arch: str
    digest: str
    dim: int


@dataclass(frozen=True)
class ItemRecord:
    """One gallery image as the index stores it (``key``: its path below the site root)."""

    key: str
    pid: int
    camid: int
    capture_time: float
    time_source: str


@dataclass(frozen=True)
class VersionInfo:
    """One version's row. ``search`` is ``exact`` or ``ivf`` (then nlist/nprobe/recall are set)."""

    id: int
    parent: int | None
    kind: str
    model: int
    dim: int
    count: int
    created: float
    alpha: float | None
    transfer: str | None
    search: str
    nlist: int | None
    nprobe: int | None
    recall: float | None


@dataclass(frozen=True)
class NewVersion:
    """The row a writer commits with :meth:`IndexStore.commit_version` (its id taken from
    :meth:`IndexStore.next_version_id` under the writer lock)."""

    id: int
    parent: int | None
    kind: str
    model: int
    dim: int
    count: int
    alpha: float | None = None
    transfer: str | None = None
    search: str = "exact"
    nlist: int | None = None
    nprobe: int | None = None
    recall: float | None = None


class IndexStore:
    """The sqlite side of a site index at ``root`` (``root/index.sqlite``)."""

    def __init__(self, conn: sqlite3.Connection, root: Path) -> None:
        self.conn = conn
        self.root = root

    @classmethod
    def create(cls, root: Path) -> IndexStore:
        """A new, empty index at ``root`` (the folder may exist but must hold no index)."""
        path = root / DB_FILE
        if path.exists():
            raise ValueError(f"{path} already exists: open it instead of creating a new index there")
        root.mkdir(parents=True, exist_ok=True)
        conn = _connect(path)
        conn.executescript(  # one transaction: a crash leaves no half-made schema
            f"BEGIN; {_SCHEMA} INSERT INTO settings VALUES ('schema', '{SCHEMA_VERSION}'); COMMIT;"
        )
        return cls(conn, root)

    @classmethod
    def open(cls, root: Path) -> IndexStore:
        """An existing index; a missing one or another schema is a clear error."""
        path = root / DB_FILE
        if not path.is_file():
            raise DataError(
                f"{root}: no site index there ({DB_FILE} missing); fix: run "
                "`fedreid site index build` first, or pass the right --index folder"
            )
        conn = _connect(path)
        try:
            row = conn.execute("SELECT value FROM settings WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as err:
            conn.close()
            raise DataError(f"{path}: not a site index database ({err}); fix: pass the right --index folder") from err
        if row is None or row[0] != SCHEMA_VERSION:
            conn.close()
            raise DataError(
                f"{path}: index schema {row[0] if row else 'unknown'!r}, this fedreid reads "
                f"{SCHEMA_VERSION!r}; fix: rebuild the index with this version"
            )
        return cls(conn, root)

    def close(self) -> None:
        self.conn.close()

    # ---- reading ----------------------------------------------------------------------------
    def current(self) -> int | None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = 'current'").fetchone()
        return int(row[0]) if row else None

    def version(self, version_id: int) -> VersionInfo:
        row = self.conn.execute(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE id = ?",
                                (version_id,)).fetchone()
        if row is None:
            known = ", ".join(str(v.id) for v in self.versions()) or "none"
            raise ValueError(
                f"unknown index version {version_id} in {self.root} (versions: {known}); "
                "fix: pick one that `fedreid site index stats` lists"
            )
        return VersionInfo(*row)

    def versions(self) -> list[VersionInfo]:
        rows = self.conn.execute(f"SELECT {_VERSION_COLUMNS} FROM versions ORDER BY id").fetchall()
        return [VersionInfo(*row) for row in rows]

    def next_version_id(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM versions").fetchone()
        return int(row[0])

    def model(self, model_id: int) -> ModelInfo:
        row = self.conn.execute("SELECT id, name, arch, digest, dim FROM models WHERE id = ?",
                                (model_id,)).fetchone()
        if row is None:
            raise DataError(f"{self.root / DB_FILE}: model {model_id} is referenced but missing")
        return ModelInfo(*row)

    def models(self) -> list[ModelInfo]:
        rows = self.conn.execute("SELECT id, name, arch, digest, dim FROM models ORDER BY id")
        return [ModelInfo(*row) for row in rows]

    def entries(self, version_id: int, rows: Sequence[int] | None = None) -> list[tuple]:
        """``(row, item key, pid, camid, capture_time, time_source, source_model, hops)`` of
        the given rows of a version (all rows, in row order, when ``rows`` is None)."""
        sql = (
            "SELECT e.row, i.key, i.pid, i.camid, i.capture_time, i.time_source, e.source_model, "
            "e.hops FROM entries e JOIN items i ON i.id = e.item WHERE e.version = ?"
        )
        if rows is None:
            return self.conn.execute(sql + " ORDER BY e.row", (version_id,)).fetchall()
        wanted = sorted({int(r) for r in rows if r >= 0})
        found: list[tuple] = []
        for start in range(0, len(wanted), 500):  # sqlite's bound-parameter limit
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            found += self.conn.execute(f"{sql} AND e.row IN ({marks})", (version_id, *part)).fetchall()
        return found

    def version_summary(self, version_id: int) -> dict[str, float | int | None]:
        """Identities, cameras, capture-time range and how many vectors went through transfers."""
        row = self.conn.execute(
            "SELECT COUNT(DISTINCT i.pid), COUNT(DISTINCT i.camid), MIN(i.capture_time), "
            "MAX(i.capture_time), SUM(e.hops > 0), MAX(e.hops) FROM entries e "
            "JOIN items i ON i.id = e.item WHERE e.version = ?",
            (version_id,),
        ).fetchone()
        keys = ("identities", "cameras", "first_capture", "last_capture", "transferred", "max_hops")
        return dict(zip(keys, row, strict=True))

    # ---- writing (callers hold the writer lock) ---------------------------------------------
    def ensure_model(self, name: str, arch: str, digest: str, dim: int) -> int:
        """The id of the model with ``digest``, registering it first if new."""
        row = self.conn.execute("SELECT id, dim FROM models WHERE digest = ?", (digest,)).fetchone()
        if row is not None:
            if row[1] != dim:
                raise ValueError(
                    f"model {name!r} ({digest}) gives {dim}-d features but the index recorded "
                    f"{row[1]}-d for the same file; fix: check --arch"
                )
            return int(row[0])
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO models (name, arch, digest, dim) VALUES (?, ?, ?, ?)",
                (name, arch, digest, dim),
            )
        return int(cur.lastrowid)

    def commit_version(
        self,
        version: NewVersion,
        *,
        items: Iterable[ItemRecord] | None = None,
        source_model: int | None = None,
    ) -> None:
        """Insert ``version``, its entries and its items, and make it current: one transaction.

        A build passes ``items`` (row order = vector order) and ``source_model``; an upgrade
        passes neither and its entries are the parent's, with one more hop each.
        """
        with self.conn:  # BEGIN … COMMIT, or ROLLBACK on any error
            self.conn.execute(
                f"INSERT INTO versions ({_VERSION_COLUMNS}) VALUES ({','.join('?' * 13)})",
                (version.id, version.parent, version.kind, version.model, version.dim,
                 version.count, time.time(), version.alpha, version.transfer, version.search,
                 version.nlist, version.nprobe, version.recall),
            )
            if items is not None:
                self._insert_built_entries(version.id, items, source_model)
            else:
                self.conn.execute(
                    "INSERT INTO entries SELECT ?, row, item, source_model, hops + 1 "
                    "FROM entries WHERE version = ?",
                    (version.id, version.parent),
                )
            self._set_current(version.id)

    def _insert_built_entries(
        self, version_id: int, items: Iterable[ItemRecord], source_model: int | None
    ) -> None:
        if source_model is None:
            raise ValueError("a version built from images needs the id of the model that extracted it")
        records = list(items)
        self.conn.executemany(
            "INSERT INTO items (key, pid, camid, capture_time, time_source) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET pid = excluded.pid, camid = excluded.camid, "
            "capture_time = excluded.capture_time, time_source = excluded.time_source",
            ((r.key, r.pid, r.camid, r.capture_time, r.time_source) for r in records),
        )
        self.conn.executemany(
            "INSERT INTO entries VALUES (?, ?, (SELECT id FROM items WHERE key = ?), ?, 0)",
            ((version_id, row, r.key, source_model) for row, r in enumerate(records)),
        )

    def _set_current(self, version_id: int) -> None:
        self.conn.execute(
            "INSERT INTO settings VALUES ('current', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(version_id),),
        )

    def delete_versions(self, version_ids: Sequence[int]) -> None:
        """Forget old versions (never the current one) in one transaction; their folders are
        removed afterwards by the caller. Later versions keep the number of their parent."""
        current = self.current()
        if current in version_ids:
            raise ValueError(f"version {current} is current and cannot be deleted")
        with self.conn:
            for vid in version_ids:
                self.conn.execute("DELETE FROM entries WHERE version = ?", (vid,))
                self.conn.execute("DELETE FROM versions WHERE id = ?", (vid,))


_VERSION_COLUMNS = (
    "id, parent, kind, model, dim, count, created, alpha, transfer, search, nlist, nprobe, recall"
)


def _connect(path: Path) -> sqlite3.Connection:
    """Rollback-journal mode with full sync: a commit is on disk when it returns."""
    conn = sqlite3.connect(path, timeout=30.0)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")
    return conn
