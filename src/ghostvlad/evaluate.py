"""Evaluate a model on a verification trial list, as the original ``predict.py`` does, plus minDCF and AS-norm.

Every distinct file is embedded once (batched by length; exact thanks to masking) and cached on disk per
model, so trial lists that share files (VoxCeleb1-O/E/H) share the work and a killed run resumes. Trials are
scored by cosine similarity (dot product of unit embeddings); trials naming a file that cannot be embedded are
skipped and counted.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.manifest import ManifestError, read_manifest
from .data.trials import Trials, read_trials
from .errors import GhostvladError
from .fileio import atomic_write_text
from .inference import Embedder
from .scoring import as_norm, eer, min_dcf
from .scoring.asnorm import cohort_scores
from .scoring.det import plot_det

P_TARGETS = (0.01, 0.05)
_ASNORM_CELLS = 1 << 22  # score-matrix entries per AS-norm chunk (16-32 MB)
_SCORE_ROWS = 1 << 13  # trials per chunk when scoring


class EvalError(GhostvladError):
    """Nothing left to score after skipping bad files, or an unusable cohort."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ghostvlad``, by default ``~/.cache/ghostvlad``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ghostvlad"


def model_key(model: Embedder) -> str:
    """The embedding cache's key for ``model`` (see :meth:`Embedder.cache_key`)."""
    return model.cache_key()


class EmbeddingCache:
    """Embeddings of audio files for one model, in SQLite at ``<root>/<model key[:24]>/embeddings.sqlite``.

    Entries are keyed by the file's real path and valid while its size and modification time are unchanged: a
    file rewritten with other content of the same size and its old mtime restored would get the old embedding.
    With ``verify=True`` an entry is valid only while the SHA-256 of the file's content matches instead (each
    file is read once more to hash it), for archives that are rewritten in place. New entries are committed
    every few seconds and on close (also after an error or Ctrl-C), each commit atomic, so an interrupted
    evaluation resumes where it stopped. Use as a context manager.
    """

    def __init__(self, root: str | os.PathLike, key: str, dim: int, commit_every: float = 5.0,
                 verify: bool = False) -> None:
        self.path = Path(root).expanduser() / key[:24] / "embeddings.sqlite"
        self.dim = dim
        self.commit_every = commit_every
        self.verify = verify
        self.error: str | None = None  # why new entries could not be stored (full disk, ...); set by commit()
        self._stats: dict[str, tuple[int, int, str | None]] = {}
        self._pending: list[tuple[str | bytes, int, int, bytes, str | None]] = []
        self._last_commit = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings "
                "(path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, vector BLOB NOT NULL)"
            )
            if "sha256" not in {row[1] for row in self._db.execute("PRAGMA table_info(embeddings)")}:
                self._db.execute("ALTER TABLE embeddings ADD COLUMN sha256 TEXT")  # caches made before --verify-cache
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise EvalError(f"{self.path}: cannot open the embedding cache ({exc})") from None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, paths: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached embeddings of those ``paths`` that have an up-to-date entry (missing files have none)."""
        found = {}
        for path in paths:
            real = os.path.realpath(path)
            try:
                st = os.stat(real)
                digest = _sha256(real) if self.verify else None
            except OSError:
                continue
            self._stats[real] = (st.st_size, st.st_mtime_ns, digest)
            row = self._db.execute("SELECT size, mtime_ns, vector, sha256 FROM embeddings WHERE path = ?",
                                   (_db_key(real),)).fetchone()
            if row is None or len(row[2]) != 4 * self.dim:
                continue
            if (row[3], row[0]) == (digest, st.st_size) if self.verify else (row[0], row[1]) == self._stats[real][:2]:
                found[path] = np.frombuffer(row[2], dtype=np.float32)
        return found

    def add(self, path: str, embedding: np.ndarray) -> None:
        """Store the embedding of a file seen by :meth:`get` (identity as it was then; others are not stored)."""
        real = os.path.realpath(path)
        if real not in self._stats:
            return
        size, mtime, digest = self._stats[real]
        self._pending.append((_db_key(real), size, mtime, np.asarray(embedding, dtype=np.float32).tobytes(), digest))
        if time.monotonic() - self._last_commit >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Store the pending entries. If that fails (full disk, read-only file system), :attr:`error` says why and
        the cache stops storing: the evaluation goes on, its embeddings are just not kept for next time."""
        try:
            if self.error is None and self._pending:
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO embeddings (path, size, mtime_ns, vector, sha256) "
                                         "VALUES (?, ?, ?, ?, ?)", self._pending)
        except sqlite3.Error as exc:
            self.error = f"{self.path}: cannot write the embedding cache ({exc}); new embeddings were not cached"
        self._pending.clear()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()


def _db_key(real: str) -> str | bytes:
    """A path as the cache's key: the text itself, or its bytes for a name that is not UTF-8."""
    try:
        real.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(real)
    return real


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Embedded:
    """Outcome of :func:`embed_files`."""

    embeddings: dict[str, np.ndarray]  # path -> unit embedding, for every file that could be embedded
    errors: dict[str, str]  # path -> "path: reason", for every file that could not
    computed: int  # files embedded now
    cached: int  # files found in the cache
    cache_error: str | None = None  # why new embeddings could not be cached (the results are complete)


def embed_files(
    model: Embedder, paths: Sequence[str], cache_dir: str | os.PathLike | None = None, progress: bool = False,
    verify_cache: bool = False,
) -> Embedded:
    """Embed each distinct file of ``paths`` once, reusing and filling the model's on-disk cache (entries checked
    by content hash with ``verify_cache``, see :class:`EmbeddingCache`)."""
    from rich.console import Console
    from rich.progress import Progress

    paths = list(dict.fromkeys(paths))
    errors: dict[str, str] = {}
    with EmbeddingCache(cache_dir or default_cache_dir(), model_key(model), model.embed_dim,
                        verify=verify_cache) as cache:
        found = cache.get(paths)
        cached = len(found)
        todo = [p for p in paths if p not in found]
        with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
            task = bar.add_task(f"embedding ({cached} cached)", total=len(todo))
            for r in model.iter_embeddings(todo):
                path = todo[r.index]
                if r.error is not None:
                    errors[path] = str(r.error)
                else:
                    found[path] = r.embedding
                    cache.add(path, r.embedding)
                bar.advance(task)
    return Embedded(found, errors, len(todo) - len(errors), cached, cache.error)


def read_cohort(path: str | os.PathLike) -> list[str]:
    """Audio paths of a cohort list: a manifest CSV (header ``path,speaker,duration``) or one path per line.

    Relative paths are taken relative to the list's folder; blank lines and ``#`` comments are ignored in a
    plain list.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: cannot read cohort list ({exc})") from None
    lines = [ln.strip() for ln in text.splitlines()]
    if lines and lines[0].split(",")[0].strip() == "path":
        try:
            return read_manifest(path).paths
        except ManifestError as exc:
            raise EvalError(str(exc)) from None
    base = path.absolute().parent
    paths = [os.path.join(base, ln) for ln in lines if ln and not ln.startswith("#")]
    if not paths:
        raise EvalError(f"{path}: cohort list has no files")
    return paths


@dataclass
class EvalResult:
    """Scores and metrics of one evaluation; ``summary`` is what ``summary.json`` holds."""

    summary: dict
    scores: np.ndarray  # cosine scores of the scored trials, in trial-list order
    labels: np.ndarray  # int8, 1 target / 0 non-target
    enroll: list[str]  # trial paths as written in the list
    test: list[str]
    skipped: int  # trials not scored because one of their files could not be embedded
    bad_files: dict[str, str]  # path -> "path: reason", trial and cohort files
    computed: int  # files embedded in this call
    cached: int  # files whose embedding came from the cache
    asnorm_scores: np.ndarray | None = None
    cache_error: str | None = None  # see :attr:`Embedded.cache_error`


def _metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    rate, threshold = eer(scores, labels)
    out = {"eer": rate, "threshold": threshold}
    for p in P_TARGETS:
        out[f"min_dcf_p{p:g}"] = min_dcf(scores, labels, p)[0]
    return out


def _pair_scores(emb: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products ``emb[a[i]] . emb[b[i]]`` in float64, in chunks to bound memory."""
    chunks = (slice(s, s + _SCORE_ROWS) for s in range(0, len(a), _SCORE_ROWS))
    return np.concatenate([np.einsum("ij,ij->i", emb[a[c]], emb[b[c]], dtype=np.float64) for c in chunks])


def _cohort_top(emb: np.ndarray, cohort: np.ndarray, k: int) -> np.ndarray:
    """(files, k): the k highest cosine scores of each embedding against the cohort, in chunks of files."""
    rows = max(1, _ASNORM_CELLS // len(cohort))
    return np.concatenate([
        np.partition(cohort_scores(emb[s:s + rows], cohort), len(cohort) - k, axis=1)[:, -k:]
        for s in range(0, len(emb), rows)
    ])


def _as_norm(scores: np.ndarray, emb: np.ndarray, a: np.ndarray, b: np.ndarray, cohort: np.ndarray,
             top_k: int) -> np.ndarray:
    """AS-norm of trial scores. ``as_norm`` only uses each side's top-k cohort scores, so these are found
    once per file and the trials are normalised in chunks over those (trials, k) rows.
    """
    k = min(top_k, len(cohort))
    top = _cohort_top(emb, cohort, k)
    rows = max(1, _ASNORM_CELLS // k)
    return np.concatenate([
        as_norm(scores[s:s + rows], top[a[s:s + rows]], top[b[s:s + rows]], top_k=k)
        for s in range(0, len(scores), rows)
    ])


def evaluate(
    model: Embedder,
    trials: Trials | str | os.PathLike,
    wav_root: str | os.PathLike,
    *,
    cohort: str | os.PathLike | Sequence[str] | None = None,
    top_k: int = 300,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    verify_cache: bool = False,
) -> EvalResult:
    """Embed, score and measure a trial list whose paths are relative to ``wav_root``.

    ``cohort`` (a cohort list file, see :func:`read_cohort`, or a sequence of audio paths) adds AS-norm
    results over the ``top_k`` closest cohort embeddings. ``verify_cache`` trusts cached embeddings only
    while the file's content hash matches (:class:`EmbeddingCache`). Raises :class:`EvalError` when no trial can be
    scored, when the scored trials lack targets or non-targets, or when fewer than 2 cohort files embed.
    """
    name = None
    if not isinstance(trials, Trials):
        name = str(trials)
        trials = read_trials(trials)
    where = name or "trials"
    if cohort is not None and top_k < 2:
        raise EvalError(f"AS-norm needs top_k >= 2, got {top_k}")
    cohort_paths = [] if cohort is None else (
        read_cohort(cohort) if isinstance(cohort, (str, os.PathLike)) else list(map(str, cohort)))
    full = {f: os.path.join(wav_root, f) for f in trials.files()}
    done = embed_files(model, [*full.values(), *cohort_paths], cache_dir, progress, verify_cache)

    good = [f for f in full if full[f] in done.embeddings]
    index = {f: i for i, f in enumerate(good)}
    keep = np.array([e in index and t in index for e, t in zip(trials.enroll, trials.test)])
    skipped = int((~keep).sum())
    if not keep.any():
        first = next(iter(done.errors.values()))
        raise EvalError(f"{where}: all {len(trials)} trials skipped: {len(full) - len(good)} of {len(full)} "
                        f"files could not be embedded (first: {first})")
    enroll = [e for e, k in zip(trials.enroll, keep) if k]
    test = [t for t, k in zip(trials.test, keep) if k]
    labels = trials.labels[keep]
    emb = np.stack([done.embeddings[full[f]] for f in good])
    a = np.array([index[f] for f in enroll])
    b = np.array([index[f] for f in test])
    scores = _pair_scores(emb, a, b)
    try:
        summary = {"trials": name, **_metrics(scores, labels)}
    except ValueError as exc:
        raise EvalError(f"{where}: {exc} (after skipping {skipped} trials)") from None
    summary.update(n_trials=len(scores), n_skipped=skipped, n_target=int(labels.sum()),
                   n_nontarget=int(len(labels) - labels.sum()), n_files=len(good),
                   n_bad_files=len(full) - len(good), precision=model.precision)

    asnorm_scores = None
    if cohort is not None:
        distinct = list(dict.fromkeys(cohort_paths))
        usable = [done.embeddings[p] for p in distinct if p in done.embeddings]
        if len(usable) < 2:
            label = cohort if isinstance(cohort, (str, os.PathLike)) else "cohort"
            raise EvalError(f"{label}: only {len(usable)} of {len(distinct)} cohort files could be embedded; "
                            "AS-norm needs at least 2")
        asnorm_scores = _as_norm(scores, emb, a, b, np.stack(usable), top_k)
        summary["asnorm"] = {**_metrics(asnorm_scores, labels), "top_k": min(top_k, len(usable)),
                             "cohort_size": len(usable), "cohort_bad_files": len(distinct) - len(usable)}
    return EvalResult(summary, scores, labels, enroll, test, skipped, done.errors, done.computed, done.cached,
                      asnorm_scores, done.cache_error)


def _score_lines(scores: np.ndarray, result: EvalResult) -> str:
    return "".join(f"{s:.6f} {y} {e} {t}\n" for s, y, e, t in zip(scores, result.labels, result.enroll, result.test))


def write_outputs(result: EvalResult, out_dir: str | os.PathLike, json_path: str | os.PathLike | None = None
                  ) -> list[Path]:
    """Write ``scores.txt`` (``<score> <label> <enroll> <test>`` per scored trial; ``scores_asnorm.txt`` too with
    AS-norm), ``det.png`` and ``summary.json`` into ``out_dir`` (and the summary to ``json_path``), atomically.
    """
    out_dir = Path(out_dir)
    written = [atomic_write_text(out_dir / "scores.txt", _score_lines(result.scores, result))]
    curves = {"cosine": (result.scores, result.labels)}
    if result.asnorm_scores is not None:
        written.append(atomic_write_text(out_dir / "scores_asnorm.txt", _score_lines(result.asnorm_scores, result)))
        curves["AS-norm"] = (result.asnorm_scores, result.labels)
    title = Path(result.summary["trials"]).name if result.summary.get("trials") else None
    plot_det(curves, out_dir / "det.png", title=title)
    written.append(out_dir / "det.png")
    text = json.dumps(result.summary, indent=2) + "\n"
    written.append(atomic_write_text(out_dir / "summary.json", text))
    if json_path is not None:
        written.append(atomic_write_text(json_path, text))
    return written
