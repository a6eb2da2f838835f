"""A gallery's SQLite file: schema, validation, the model that made it, transactions, read-only opening.

Safety: the file is marked with an SQLite ``application_id`` and schema ``user_version`` and has a ``meta``
table; anything else is refused before anything is written. It runs in WAL mode with a busy timeout, so
readers see a consistent snapshot while a writer works; every write is one transaction (:meth:`GalleryStore.write`),
and a ``generation`` counter in ``meta`` changes with each, so a reader knows when its cached index is stale.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.manifest import speaker_name
from ..errors import describe
from ..scoring.vectors import speaker_mean
from .index import GalleryError

APPLICATION_ID = 0x47564C47  # "GVLG" in the SQLite header
SCHEMA_VERSION = 1
FORMAT = "ghostvlad-gallery"
_CHUNK = 4096  # rows per fetch when loading the speaker matrix
_PAGE_SIZE = 16384  # several 2 KB embedding rows per page (a 4 KB page holds just one)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE speakers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, utterances INTEGER NOT NULL,
    mean BLOB NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE utterances (
    id INTEGER PRIMARY KEY, speaker_id INTEGER NOT NULL REFERENCES speakers(id),
    source TEXT NOT NULL, embedding BLOB NOT NULL, added REAL NOT NULL);
CREATE INDEX utterances_speaker ON utterances(speaker_id);
"""

Identity = tuple[str, dict]  # (model key, model config with its precision)


@dataclass(frozen=True)
class SpeakerInfo:
    """An enrolled speaker; times are Unix seconds."""

    name: str
    utterances: int
    created: float
    updated: float


def describe_model(config: dict, key: str) -> str:
    """``3f2a9c0d1e2b (resnet34s gvlad, 512-d, fp32)``, ``... (2 x resnet34s astp, 128-d, bf16)`` for a stack of
    networks: enough to tell two models apart in a message."""
    enc = {k: v.get("name", "?") if isinstance(v, dict) else v for k, v in config.get("encoder", {}).items()}
    stack = f"{enc['branches']} x " if enc.get("branches", 1) != 1 else ""
    return (f"{key[:12]} ({stack}{enc.get('backbone', '?')} {enc.get('pooling', '?')}, {enc.get('embed_dim', '?')}-d, "
            f"{config.get('precision', '?')})")


def check_name(name: str) -> str:
    """``name`` in Unicode normal form C (:func:`~ghostvlad.data.manifest.speaker_name`); :class:`GalleryError`
    unless it is usable as a speaker name."""
    if not isinstance(name, str) or not name.strip() or name != name.strip() or not name.isprintable():
        raise GalleryError(f"invalid speaker name {name!r}: use printable text without surrounding spaces")
    return speaker_name(name)


def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` (if it exists) and create files beside it (SQLite's WAL files)."""
    return os.access(path.absolute().parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


class GalleryStore:
    """The SQLite file ``path``; ``identity``: the model whose embeddings go in (checked against the file's, and
    recorded by the first write). A file that does not exist yet is created by the first write."""

    def __init__(self, path: str | os.PathLike, identity: Identity | None, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.identity = identity
        self.timeout = timeout
        self._db: sqlite3.Connection | None = None
        self._ready = False  # the schema exists (and was validated)
        self._meta: dict[str, str] = {}
        self.read_only = False  # an existing gallery this process cannot write: opened read-only
        if self.path.is_dir():
            raise GalleryError(f"{self.path}: is a folder, not a gallery file")
        if self.path.exists():
            self._db = self._connect(create=False)
            try:
                self._ready = self._validate()
            except BaseException:
                self.close()
                raise

    @property
    def exists(self) -> bool:
        return self._db is not None

    # -- opening and checking ----------------------------------------------------------------------------------------
    def _connect(self, create: bool) -> sqlite3.Connection:
        """Open read-write (creating the file if ``create``); an existing gallery this process cannot write (read-only
        file or folder) opens read-only, as immutable when no writer's WAL file is beside it."""
        mode = "rwc" if create else "rw"
        if not create and not _writable(self.path):
            self.read_only = True
            wal = self.path.with_name(self.path.name + "-wal")
            mode = "ro" if wal.exists() else "ro&immutable=1"
        elif create:
            try:
                self.path.absolute().parent.mkdir(parents=True, exist_ok=True)  # as every other output's folder
            except OSError as exc:
                raise GalleryError(f"{self.path}: cannot create the gallery's folder ({describe(exc)})") from None
            if not _writable(self.path):
                raise GalleryError(f"{self.path}: cannot create the gallery: no write permission on its folder")
        uri = f"{self.path.absolute().as_uri()}?mode={mode}"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise GalleryError(f"{self.path}: cannot open the gallery ({exc})") from None
        if self.read_only:
            return db
        try:
            db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable commits without an fsync each
        except sqlite3.DatabaseError as exc:
            db.close()
            raise self._unreadable(exc) from None
        return db

    def _unreadable(self, exc: sqlite3.DatabaseError) -> GalleryError:
        """The error for a file SQLite could not read: not a database, or (disk full, I/O error) not readable now."""
        if isinstance(exc, sqlite3.OperationalError):
            return GalleryError(f"{self.path}: cannot open the gallery ({exc})")
        return GalleryError(f"{self.path}: not a ghostvlad gallery (not an SQLite database)")

    def _validate(self) -> bool:
        """True when the file holds our schema (model checked), False for an empty database; else raises."""
        try:
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None
        if app_id == 0 and version == 0 and tables == 0:
            return False
        if app_id != APPLICATION_ID:
            raise GalleryError(f"{self.path}: not a ghostvlad gallery (an SQLite database of another application)")
        if version > SCHEMA_VERSION:
            raise GalleryError(f"{self.path}: gallery schema {version} is newer than this ghostvlad supports")
        try:
            self._meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path}: damaged gallery ({exc})") from None
        if self._meta.get("format") != FORMAT:
            raise GalleryError(f"{self.path}: damaged gallery (format {self._meta.get('format')!r})")
        self._check_model()
        return True

    def ready(self) -> bool:
        """Whether the schema exists; re-checked while it does not (another process may create it)."""
        if self._db is not None and not self._ready:
            self._ready = self._validate()
        return self._ready

    def _check_model(self) -> None:
        if self.identity is None:
            return
        key, config = self.identity
        if key != self._meta["model_key"]:
            ours = describe_model(json.loads(self._meta["model"]), self._meta["model_key"])
            raise GalleryError(f"{self.path}: gallery was enrolled with model {ours}, not with this model "
                               f"{describe_model(config, key)}; use that model or another gallery")

    @property
    def model_key(self) -> str | None:
        """Key of the model that made the gallery (None before the first enrolment)."""
        return self._meta.get("model_key")

    @property
    def model_config(self) -> dict | None:
        return json.loads(self._meta["model"]) if "model" in self._meta else None

    @property
    def dim(self) -> int | None:
        return int(self._meta["dim"]) if "dim" in self._meta else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- writing -----------------------------------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (the file and schema created on first use): everything in it is committed, or
        nothing."""
        if self.read_only:
            raise GalleryError(f"{self.path}: cannot write the gallery: it is read-only (no write permission on the "
                               "file or its folder)")
        new_file = self._db is None and not self.path.exists()
        if self._db is None:
            self._db = self._connect(create=True)
        db = self._db
        fresh = False
        try:
            if not self.ready():  # before the first write: neither can change later
                db.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            if not self._validate():  # re-read under the write lock: another process may have written
                fresh = True
                self._create(db)
            yield db
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if fresh:
                self._meta = {}
            if isinstance(exc, sqlite3.OperationalError):  # disk full, I/O error, read-only file system, ...
                self._forget(new_file)
                raise GalleryError(f"{self.path}: cannot write the gallery ({exc}); nothing was changed") from None
            raise
        self._ready = True

    def _forget(self, new_file: bool) -> None:
        """After a failed first write into a file this call created: close, and remove the file if it is empty."""
        if not new_file:
            return
        self.close()
        with suppress(OSError):
            if self.path.stat().st_size == 0:
                self.path.unlink()

    def _create(self, db: sqlite3.Connection) -> None:
        if self.identity is None:
            raise GalleryError(f"{self.path}: a new gallery needs a model")
        key, config = self.identity
        for statement in filter(str.strip, _SCHEMA.split(";")):  # executescript would commit first
            db.execute(statement)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._meta = {"format": FORMAT, "model_key": key, "model": json.dumps(config, sort_keys=True),
                      "dim": str(config["encoder"]["embed_dim"]), "generation": "0",
                      "created": str(time.time()), "ghostvlad": __version__}
        db.executemany("INSERT INTO meta VALUES (?, ?)", self._meta.items())

    @staticmethod
    def add_speaker(db: sqlite3.Connection, name: str, emb: np.ndarray, sources: list[str]) -> None:
        """Inside :meth:`write`: add unit embeddings ``emb`` to speaker ``name`` (created if new), updating its mean."""
        now = time.time()
        row = db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
        if row is None:
            sid = db.execute("INSERT INTO speakers (name, utterances, mean, created, updated) VALUES (?, ?, ?, ?, ?)",
                             (name, len(emb), speaker_mean(emb).tobytes(), now, now)).lastrowid
        else:
            sid = row[0]
            blobs = [r[0] for r in db.execute("SELECT embedding FROM utterances WHERE speaker_id = ?", (sid,))]
            old = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
            db.execute("UPDATE speakers SET utterances = ?, mean = ?, updated = ? WHERE id = ?",
                       (len(old) + len(emb), speaker_mean(np.concatenate([old, emb])).tobytes(), now, sid))
        db.executemany("INSERT INTO utterances (speaker_id, source, embedding, added) VALUES (?, ?, ?, ?)",
                       [(sid, s, e.tobytes(), now) for s, e in zip(sources, emb)])

    def remove(self, name: str) -> int:
        """Remove a speaker and all their utterances; returns how many utterances were removed."""
        if not self.ready():
            raise GalleryError(f"{self.path}: no speaker named {name!r} (the gallery is empty)")
        with self.write() as db:
            row = db.execute("SELECT id, utterances FROM speakers WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise GalleryError(f"{self.path}: no speaker named {name!r}")
            db.execute("DELETE FROM utterances WHERE speaker_id = ?", (row[0],))
            db.execute("DELETE FROM speakers WHERE id = ?", (row[0],))
        return int(row[1])

    # -- reading -----------------------------------------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot even while another process writes."""
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    def speakers(self) -> list[SpeakerInfo]:
        """Every enrolled speaker, by name."""
        if not self.ready():
            return []
        with self._read() as db:
            rows = db.execute("SELECT name, utterances, created, updated FROM speakers ORDER BY name").fetchall()
        return [SpeakerInfo(*r) for r in rows]

    def count(self) -> int:
        """Number of enrolled speakers."""
        if not self.ready():
            return 0
        with self._read() as db:
            return db.execute("SELECT count(*) FROM speakers").fetchone()[0]

    def speaker(self, name: str) -> SpeakerInfo | None:
        """One enrolled speaker, or None."""
        if not self.ready():
            return None
        with self._read() as db:
            row = db.execute("SELECT name, utterances, created, updated FROM speakers WHERE name = ?",
                             (name,)).fetchone()
        return None if row is None else SpeakerInfo(*row)

    def means(self, known: int | None = None) -> tuple[int, list[str], np.ndarray, np.ndarray] | None:
        """``(generation, names, utterance counts, (speakers, dim) float32 means)`` in enrolment order, read in one
        snapshot; None when the generation is still ``known`` (nothing changed)."""
        if not self.ready():
            where = "no such gallery" if self._db is None else "the gallery is empty"
            raise GalleryError(f"{self.path}: {where}; enrol speakers first")
        with self._read() as db:
            generation = int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
            if generation == known:
                return None
            count = db.execute("SELECT count(*) FROM speakers").fetchone()[0]
            matrix = np.empty((count, self.dim), dtype=np.float32)
            counts = np.empty(count, dtype=np.int64)
            names: list[str] = []
            cursor = db.execute("SELECT name, utterances, mean FROM speakers ORDER BY id")
            while rows := cursor.fetchmany(_CHUNK):
                start = len(names)
                names.extend(r[0] for r in rows)
                counts[start:len(names)] = [r[1] for r in rows]
                matrix[start:len(names)] = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(len(rows), -1)
        return generation, names, counts, matrix
