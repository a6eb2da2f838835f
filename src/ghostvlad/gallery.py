"""A persistent speaker gallery: enrol speakers from recordings, identify a query among them (open set).

One SQLite file, no server. Each utterance embedding is stored, and each speaker's mean embedding
(re-normalised) is kept for search. The gallery records the model that made its embeddings
(:func:`ghostvlad.evaluate.model_key` and the model's config) and refuses any other model.

Safety: the file is marked with an SQLite ``application_id`` and schema ``user_version`` and has a ``meta``
table; anything else is refused before anything is written. It runs in WAL mode with a busy timeout, so
readers see a consistent snapshot while a writer works; every enrolment or removal is one transaction, and
audio is embedded before the transaction opens, so an interrupted or failed enrolment changes nothing.

Search is exact: the speaker means are loaded once per process into a float32 matrix ``M`` (reloaded only
when the gallery changes) and a query ``q`` is scored as ``M @ q`` with ``np.argpartition`` for the top k.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .data.manifest import speaker_name
from .errors import GhostvladError
from .scoring.calibration import Decision, DecisionRule
from .scoring.vectors import unit_rows

if TYPE_CHECKING:
    from .audio import AudioError
    from .embedding import AudioInput
    from .inference import SpeakerModel

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


class GalleryError(GhostvladError):
    """A gallery file that is missing, not ours, made by another model, empty; or a bad enrolment."""


@dataclass(frozen=True)
class SpeakerInfo:
    """An enrolled speaker; times are Unix seconds."""

    name: str
    utterances: int
    created: float
    updated: float


@dataclass(frozen=True)
class Match:
    """One ranked candidate of an identification: cosine score against the speaker's mean embedding."""

    name: str
    score: float
    utterances: int
    decision: Decision

    @property
    def accepted(self) -> bool | None:
        return self.decision.accept


def describe_model(config: dict, key: str) -> str:
    """``3f2a9c0d1e2b (resnet34s gvlad, 512-d, fp32)``: enough to tell two models apart in a message."""
    enc = {k: v.get("name", "?") if isinstance(v, dict) else v for k, v in config.get("encoder", {}).items()}
    return (f"{key[:12]} ({enc.get('backbone', '?')} {enc.get('pooling', '?')}, {enc.get('embed_dim', '?')}-d, "
            f"{config.get('precision', '?')})")


def embed_for_enrolment(model: SpeakerModel, items: Sequence[AudioInput], *, skip_bad: bool = False,
                        sample_rate: int | None = None) -> tuple[np.ndarray, list[str], list[AudioError]]:
    """``(embeddings (n, D), sources, skipped errors)`` in input order.

    Any bad item raises :class:`GalleryError` naming it unless ``skip_bad``; nothing usable raises too.
    """
    items = list(items)
    if not items:
        raise GalleryError("no recordings to enrol")
    found: dict[int, np.ndarray] = {}
    errors = []
    for r in model.iter_embeddings(items, sample_rate):
        if r.error is not None:
            errors.append(r.error)
        else:
            found[r.index] = r.embedding
    if errors and not skip_bad:
        more = f" (and {len(errors) - 1} more bad files)" if len(errors) > 1 else ""
        raise GalleryError(f"{errors[0]}{more}; nothing enrolled (--skip-bad enrols the rest)")
    if not found:
        raise GalleryError(f"none of the {len(items)} recordings could be embedded (first: {errors[0]})")
    order = sorted(found)
    sources = [_printable(Path(items[i]).absolute()) if isinstance(items[i], (str, os.PathLike)) else "<array>"
               for i in order]
    return np.stack([found[i] for i in order]), sources, errors


def _printable(path: Path) -> str:
    """A path as text SQLite can store: bytes of a name that is not UTF-8 written as ``\\xNN``."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` (if it exists) and create files beside it (SQLite's WAL files)."""
    return os.access(path.absolute().parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _unit_mean(embeddings: np.ndarray) -> np.ndarray:
    """Mean of unit embeddings, re-normalised to unit length."""
    return unit_rows(embeddings.astype(np.float64).mean(axis=0), "mean embedding", np.float32)


def top_matches(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row indices, scores)`` of the ``k`` highest ``matrix @ query``, best first (exact)."""
    scores = matrix @ query
    k = min(k, len(scores))
    idx = np.argpartition(scores, len(scores) - k)[len(scores) - k:]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx, scores[idx]


@dataclass
class _Snapshot:
    generation: int
    names: list[str]
    counts: np.ndarray
    matrix: np.ndarray  # (speakers, dim) float32 unit rows


class Gallery:
    """A speaker gallery in one SQLite file. Use as a context manager.

    ``model`` embeds audio and must be the model that made the gallery. Without one, an existing gallery
    can still be listed, searched with embeddings and edited with :meth:`add_embeddings` (the caller vouches
    that they come from the gallery's model). The file is created by the first enrolment.
    """

    def __init__(self, path: str | os.PathLike, model: SpeakerModel | None = None, *, timeout: float = 30.0):
        self.path = Path(path)
        self.model = model
        self.timeout = timeout
        self._identity = model.identity() if model is not None else None
        self._db: sqlite3.Connection | None = None
        self._ready = False  # the schema exists (and was validated)
        self._meta: dict[str, str] = {}
        self._snapshot: _Snapshot | None = None
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
        elif model is None:
            raise GalleryError(f"{self.path}: no such gallery")

    # -- opening and checking ------------------------------------------------------------------------
    def _connect(self, create: bool) -> sqlite3.Connection:
        """Open read-write (creating the file if ``create``); an existing gallery this process cannot write (read-only
        file or folder) opens read-only, as immutable when no writer's WAL file is beside it."""
        mode = "rwc" if create else "rw"
        if not create and not _writable(self.path):
            self.read_only = True
            wal = self.path.with_name(self.path.name + "-wal")
            mode = "ro" if wal.exists() else "ro&immutable=1"
        elif create and not _writable(self.path):
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
        except sqlite3.DatabaseError:
            db.close()
            raise GalleryError(f"{self.path}: not a ghostvlad gallery (not an SQLite database)") from None
        return db

    def _validate(self) -> bool:
        """True when the file holds our schema (model checked), False for an empty database; else raises."""
        try:
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError:
            raise GalleryError(f"{self.path}: not a ghostvlad gallery (not an SQLite database)") from None
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

    def _check_ready(self) -> bool:
        """Whether the schema exists; re-checked while it does not (another process may create it)."""
        if self._db is not None and not self._ready:
            self._ready = self._validate()
        return self._ready

    def _check_model(self) -> None:
        if self._identity is None:
            return
        key, config = self._identity
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

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (created on first use): everything in it is committed, or nothing."""
        if self.read_only:
            raise GalleryError(f"{self.path}: cannot write the gallery: it is read-only (no write permission on the "
                               "file or its folder)")
        if self._db is None:
            self._db = self._connect(create=True)
        db = self._db
        if not self._check_ready():  # before the first write: neither can change later
            db.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        fresh = False
        try:
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
                raise GalleryError(f"{self.path}: cannot write the gallery ({exc}); nothing was changed") from None
            raise
        self._ready = True

    def _create(self, db: sqlite3.Connection) -> None:
        if self._identity is None:
            raise GalleryError(f"{self.path}: a new gallery needs a model")
        key, config = self._identity
        for statement in filter(str.strip, _SCHEMA.split(";")):  # executescript would commit first
            db.execute(statement)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._meta = {"format": FORMAT, "model_key": key, "model": json.dumps(config, sort_keys=True),
                      "dim": str(config["encoder"]["embed_dim"]), "generation": "0",
                      "created": str(time.time()), "ghostvlad": __version__}
        db.executemany("INSERT INTO meta VALUES (?, ?)", self._meta.items())

    def enroll(self, name: str, items: Sequence[AudioInput], *, skip_bad: bool = False,
               sample_rate: int | None = None) -> int:
        """Embed ``items`` and add them to speaker ``name`` (created if new); returns utterances added.

        A bad recording refuses the whole enrolment (:class:`GalleryError` naming it) unless ``skip_bad``.
        """
        model = self._require_model("enrol")
        check_name(name)
        embeddings, sources, _ = embed_for_enrolment(model, items, skip_bad=skip_bad, sample_rate=sample_rate)
        return self.add_embeddings({name: embeddings}, {name: sources})

    def add_embeddings(self, speakers: Mapping[str, np.ndarray],
                       sources: Mapping[str, Sequence[str]] | None = None) -> int:
        """Add ``(n, D)`` embeddings per speaker name, all in one transaction; returns utterances added."""
        batch = []
        for name, emb in speakers.items():
            name, given = check_name(name), name
            emb = np.asarray(emb, dtype=np.float32)
            emb = emb[None] if emb.ndim == 1 else emb
            if emb.ndim != 2 or not len(emb) or not np.isfinite(emb).all() or not np.linalg.norm(emb, axis=1).all():
                raise GalleryError(f"{name}: embeddings must be a non-empty (n, D) array of finite non-zero rows")
            names = list((sources or {}).get(given) or ["<array>"] * len(emb))
            if len(names) != len(emb):
                raise GalleryError(f"{name}: {len(emb)} embeddings but {len(names)} sources")
            batch.append((name, unit_rows(emb, name, np.float32), names))
        if not batch:
            return 0
        with self._transaction() as db:
            dim = self.dim
            for name, emb, names in batch:
                if emb.shape[1] != dim:
                    raise GalleryError(f"{name}: {emb.shape[1]}-d embeddings, the gallery holds {dim}-d")
                self._add_speaker(db, name, emb, names)
        return sum(len(emb) for _, emb, _ in batch)

    @staticmethod
    def _add_speaker(db: sqlite3.Connection, name: str, emb: np.ndarray, sources: list[str]) -> None:
        now = time.time()
        row = db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
        if row is None:
            sid = db.execute("INSERT INTO speakers (name, utterances, mean, created, updated) VALUES (?, ?, ?, ?, ?)",
                             (name, len(emb), _unit_mean(emb).tobytes(), now, now)).lastrowid
        else:
            sid = row[0]
            blobs = [r[0] for r in db.execute("SELECT embedding FROM utterances WHERE speaker_id = ?", (sid,))]
            old = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
            db.execute("UPDATE speakers SET utterances = ?, mean = ?, updated = ? WHERE id = ?",
                       (len(old) + len(emb), _unit_mean(np.concatenate([old, emb])).tobytes(), now, sid))
        db.executemany("INSERT INTO utterances (speaker_id, source, embedding, added) VALUES (?, ?, ?, ?)",
                       [(sid, s, e.tobytes(), now) for s, e in zip(sources, emb)])

    def remove(self, name: str) -> int:
        """Remove a speaker and all their utterances; returns how many utterances were removed."""
        name = speaker_name(name)
        if not self._check_ready():
            raise GalleryError(f"{self.path}: no speaker named {name!r} (the gallery is empty)")
        with self._transaction() as db:
            row = db.execute("SELECT id, utterances FROM speakers WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise GalleryError(f"{self.path}: no speaker named {name!r}")
            db.execute("DELETE FROM utterances WHERE speaker_id = ?", (row[0],))
            db.execute("DELETE FROM speakers WHERE id = ?", (row[0],))
        return int(row[1])

    # -- reading -------------------------------------------------------------------------------------
    def _require_model(self, action: str) -> SpeakerModel:
        if self.model is None:
            raise GalleryError(f"{self.path}: to {action} audio the gallery needs a model")
        return self.model

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
        if not self._check_ready():
            return []
        with self._read() as db:
            rows = db.execute("SELECT name, utterances, created, updated FROM speakers ORDER BY name").fetchall()
        return [SpeakerInfo(*r) for r in rows]

    def __len__(self) -> int:
        """Number of enrolled speakers."""
        if not self._check_ready():
            return 0
        with self._read() as db:
            return db.execute("SELECT count(*) FROM speakers").fetchone()[0]

    def speaker(self, name: str) -> SpeakerInfo | None:
        """One enrolled speaker, or None."""
        name = speaker_name(name)
        if not self._check_ready():
            return None
        with self._read() as db:
            row = db.execute("SELECT name, utterances, created, updated FROM speakers WHERE name = ?",
                             (name,)).fetchone()
        return None if row is None else SpeakerInfo(*row)

    def _load(self) -> _Snapshot:
        """The speaker matrix, reloaded only when the gallery changed since the last call."""
        if not self._check_ready():
            where = "no such gallery" if self._db is None else "the gallery is empty"
            raise GalleryError(f"{self.path}: {where}; enrol speakers first")
        with self._read() as db:
            generation = int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
            if self._snapshot is None or self._snapshot.generation != generation:
                self._snapshot = self._fetch(db, generation)
        return self._snapshot

    def _fetch(self, db: sqlite3.Connection, generation: int) -> _Snapshot:
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
        return _Snapshot(generation, names, counts, matrix)

    def _nonempty(self) -> _Snapshot:
        snapshot = self._load()
        if not snapshot.names:
            raise GalleryError(f"{self.path}: the gallery is empty; enrol speakers first")
        return snapshot

    def identify(self, query: AudioInput, top: int = 5, *, operating_point: str | None = None,
                 threshold: float | None = None, prior: float = 0.5, sample_rate: int | None = None) -> list[Match]:
        """The ``top`` enrolled speakers closest to a recording, best first, each with a decision.

        Decisions use the model's calibration (see :class:`~ghostvlad.scoring.calibration.DecisionRule`);
        when the best match is not accepted the query is an unknown speaker (open set). Calibrations are fitted
        on one-recording-per-side trials, and an unknown query gets one chance per enrolled speaker to pass:
        its false-accept rate is about ``1 - (1 - far) ** len(gallery)``, so large galleries need stricter points.
        """
        model = self._require_model("identify")
        self._nonempty()  # fail before embedding
        rule = DecisionRule.for_model(model, operating_point, threshold=threshold, prior=prior)
        return self._search(model.embed(query, sample_rate), top, rule)

    def identify_embedding(self, embedding: np.ndarray, top: int = 5, *, operating_point: str | None = None,
                           threshold: float | None = None, prior: float = 0.5) -> list[Match]:
        """As :meth:`identify`, for an embedding of the gallery's model."""
        rule = DecisionRule.for_model(self.model, operating_point, threshold=threshold, prior=prior)
        return self._search(embedding, top, rule)

    def _search(self, embedding: np.ndarray, top: int, rule: DecisionRule) -> list[Match]:
        if top < 1:
            raise GalleryError(f"top must be at least 1, got {top}")
        snapshot = self._nonempty()
        q = np.asarray(embedding, dtype=np.float32)
        if q.shape != (snapshot.matrix.shape[1],) or not np.isfinite(q).all() or not np.linalg.norm(q) > 0:
            raise GalleryError(f"query embedding must be a finite non-zero vector of {snapshot.matrix.shape[1]} "
                               f"values, got shape {q.shape}")
        idx, scores = top_matches(snapshot.matrix, unit_rows(q, "query", np.float32), top)
        return [Match(snapshot.names[i], float(s), int(snapshot.counts[i]), rule(s)) for i, s in zip(idx, scores)]


def check_name(name: str) -> str:
    """``name`` in Unicode normal form C (:func:`~ghostvlad.data.manifest.speaker_name`); :class:`GalleryError`
    unless it is usable as a speaker name."""
    if not isinstance(name, str) or not name.strip() or name != name.strip() or not name.isprintable():
        raise GalleryError(f"invalid speaker name {name!r}: use printable text without surrounding spaces")
    return speaker_name(name)
