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
import socket
import time
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.manifest import ManifestError, read_manifest
from .data.trials import Trials, read_trials
from .errors import GhostvladError
from .fileio import atomic_write, atomic_write_text
from .embedding import Embedder
from .progress import Counter, OnProgress
from .scoring import as_norm, eer, min_dcf
from .scoring.asnorm import cohort_scores
from .scoring.metrics import MetricsError
from .scoring.det import plot_det
from .sharding import Shard
from .train import distributed
from .train.distributed import DistInfo

P_TARGETS = (0.01, 0.05)
_ASNORM_CELLS = 1 << 22  # score-matrix entries per AS-norm chunk (16-32 MB)
_SCORE_ROWS = 1 << 13  # trials per chunk when scoring
_PART_PREFIX = "part-"


class EvalError(GhostvladError):
    """Nothing left to score after skipping bad files, or an unusable cohort."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ghostvlad``, by default ``~/.cache/ghostvlad``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ghostvlad"


def model_key(model: Embedder) -> str:
    """The embedding cache's key for ``model`` (see :meth:`Embedder.cache_key`)."""
    return model.cache_key()


class EmbeddingCache:
    """Embeddings of audio files for one model, in part files under ``<root>/<model key[:24]>/``.

    Entries are keyed by the file's real path and valid while its size and modification time are unchanged: a
    file rewritten with other content of the same size and its old mtime restored would get the old embedding.
    With ``verify=True`` an entry is valid only while the SHA-256 of the file's content matches instead (each
    file is read once more to hash it), for archives that are rewritten in place. Every writer (process, rank,
    job-array task) only ever creates files of its own — a new ``part-*.npz`` every ``commit_every`` seconds and
    on close (also after an error or Ctrl-C), each written atomically — so there are no locks and no database
    journal: safe on network filesystems (NFS, Lustre) and for concurrent jobs, and an interrupted evaluation
    resumes where it stopped. On close the parts read at open are compacted into the new one. A part that
    cannot be written (full disk, read-only file system) sets :attr:`error` and the cache stops storing: the
    evaluation goes on. Use as a context manager.
    """

    def __init__(self, root: str | os.PathLike, key: str, dim: int, commit_every: float = 10.0,
                 verify: bool = False) -> None:
        self.folder = Path(root).expanduser() / key[:24]
        self.dim = dim
        self.commit_every = commit_every
        self.verify = verify
        self.error: str | None = None  # why new entries could not be stored (full disk, ...); set by commit()
        self._stats: dict[str, tuple[int, int, str]] = {}  # real path -> size, mtime_ns, sha256 ("" unverified)
        self._entries: dict[str, tuple[int, int, str, np.ndarray]] = {}
        self._new: dict[str, tuple[int, int, str, np.ndarray]] = {}  # entries since the last commit
        self._mine: list[Path] = []  # parts this cache wrote
        self._last_commit = time.monotonic()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._read = sorted(self.folder.glob(f"{_PART_PREFIX}*.npz"))
        except OSError as exc:
            raise EvalError(f"{self.folder}: cannot open the embedding cache ({exc})") from None
        for part in list(self._read):
            if not self._load(part):
                self._read.remove(part)  # compacted away by another process meanwhile: its entries are elsewhere

    def _load(self, part: Path) -> bool:
        try:
            with np.load(part, allow_pickle=False) as data:
                paths, sizes, mtimes, vectors = (data[k] for k in ("paths", "sizes", "mtimes", "vectors"))
                digests = data["sha256"] if "sha256" in data else np.full(len(paths), "")
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise EvalError(f"{part}: unreadable embedding cache part ({exc}); delete it") from None
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or not (
                len(paths) == len(sizes) == len(mtimes) == len(vectors) == len(digests)):
            raise EvalError(f"{part}: embedding cache part has the wrong shape; delete it")
        for path, size, mtime, digest, vector in zip(paths.tolist(), sizes.tolist(), mtimes.tolist(),
                                                     digests.tolist(), vectors):
            self._entries[path] = (size, mtime, digest, vector)
        return True

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
                digest = _sha256(real) if self.verify else ""
            except OSError:
                continue
            self._stats[real] = (st.st_size, st.st_mtime_ns, digest)
            entry = self._entries.get(real)
            if entry is None:
                continue
            if (entry[2], entry[0]) == (digest, st.st_size) if self.verify else entry[:2] == self._stats[real][:2]:
                found[path] = entry[3]
        return found

    def add(self, path: str, embedding: np.ndarray) -> None:
        """Store the embedding of a file seen by :meth:`get` (identity as it was then; others are not stored)."""
        real = os.path.realpath(path)
        if real not in self._stats:
            return
        entry = (*self._stats[real], np.asarray(embedding, dtype=np.float32))
        self._entries[real] = self._new[real] = entry
        if time.monotonic() - self._last_commit >= self.commit_every:
            self.commit()

    def _write(self, entries: dict[str, tuple[int, int, str, np.ndarray]]) -> Path:
        name = f"{_PART_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.npz"
        arrays = dict(paths=np.array(list(entries), dtype=str),
                      sizes=np.array([e[0] for e in entries.values()], dtype=np.int64),
                      mtimes=np.array([e[1] for e in entries.values()], dtype=np.int64),
                      sha256=np.array([e[2] for e in entries.values()], dtype=str),
                      vectors=np.stack([e[3] for e in entries.values()]).astype(np.float32))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        return atomic_write(self.folder / name, write)

    def commit(self) -> None:
        """Write the entries added since the last commit as a new part (unless storing failed before)."""
        if self._new and self.error is None:
            try:
                self._mine.append(self._write(self._new))
            except OSError as exc:
                self.error = f"{self.folder}: cannot write the embedding cache ({exc}); new embeddings were not cached"
        self._new = {}
        self._last_commit = time.monotonic()

    def close(self) -> None:
        """Commit, then compact: everything read or written here into one part, replacing those parts."""
        self.commit()
        old = self._read + self._mine
        if len(old) > 1 and self.error is None:
            try:
                self._write(self._entries)
            except OSError:
                return  # the parts stay as they are: still a valid cache
            for part in old:
                part.unlink(missing_ok=True)
        self._read, self._mine = [], []


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

    @classmethod
    def merge(cls, parts: Iterable[Embedded]) -> Embedded:
        """One result from the results of disjoint shards."""
        embeddings, errors, computed, cached, cache_error = {}, {}, 0, 0, None
        for part in parts:
            embeddings.update(part.embeddings)
            errors.update(part.errors)
            computed, cached = computed + part.computed, cached + part.cached
            cache_error = cache_error or part.cache_error
        return cls(embeddings, errors, computed, cached, cache_error)


def embed_files(
    model: Embedder, paths: Sequence[str], cache_dir: str | os.PathLike | None = None,
    on_progress: OnProgress | None = None, *, workers: int = 2, shard: Shard | None = None,
    verify_cache: bool = False,
) -> Embedded:
    """Embed each distinct file of ``paths`` once, reusing and filling the model's on-disk cache (entries checked
    by content hash with ``verify_cache``, see :class:`EmbeddingCache`).

    ``shard`` restricts the work to one shard of the distinct files (see :class:`Shard`); ``workers`` threads read
    metadata and decode audio. ``on_progress(files done, distinct files)`` reports the work, cached files counting
    as done from the start (see :mod:`ghostvlad.progress`).
    """
    paths = list(dict.fromkeys(paths))
    if shard is not None:
        paths = shard.take(paths)
    errors: dict[str, str] = {}
    with EmbeddingCache(cache_dir or default_cache_dir(), model_key(model), model.embed_dim,
                        verify=verify_cache) as cache:
        found = cache.get(paths)
        cached = len(found)
        todo = [p for p in paths if p not in found]
        counter = Counter(on_progress, len(paths), done=cached)
        for r in model.iter_embeddings(todo, workers=workers):
            path = todo[r.index]
            if r.error is not None:
                errors[path] = str(r.error)
            else:
                found[path] = r.embedding
                cache.add(path, r.embedding)
            counter.advance()
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


@dataclass(frozen=True)
class Metrics:
    """Verification metrics of one set of trial scores."""

    eer: float  # equal error rate, a fraction
    threshold: float  # the score at the EER
    min_dcf: dict[float, float]  # P_target -> minimum normalised detection cost (C_miss = C_fa = 1)

    @classmethod
    def of(cls, scores: np.ndarray, labels: np.ndarray) -> Metrics:
        """EER and minDCF at each of :data:`P_TARGETS`; :class:`MetricsError` without both kinds of trial."""
        rate, threshold = eer(scores, labels)
        return cls(float(rate), float(threshold), {p: float(min_dcf(scores, labels, p)[0]) for p in P_TARGETS})

    def to_dict(self) -> dict:
        """``{"eer", "threshold", "min_dcf_p0.01", ...}``: the keys ``summary.json`` has always used."""
        return {"eer": self.eer, "threshold": self.threshold,
                **{f"min_dcf_p{p:g}": cost for p, cost in self.min_dcf.items()}}


@dataclass(frozen=True)
class AsNormMetrics(Metrics):
    """Metrics of the AS-norm scores, with the cohort they were normalised over."""

    top_k: int  # cohort scores averaged per side
    cohort_size: int  # cohort files that could be embedded
    cohort_bad_files: int  # cohort files that could not

    def to_dict(self) -> dict:
        return {**super().to_dict(), "top_k": self.top_k, "cohort_size": self.cohort_size,
                "cohort_bad_files": self.cohort_bad_files}


@dataclass(frozen=True)
class EvalSummary(Metrics):
    """The outcome of :func:`evaluate` in numbers: cosine-score metrics, counts, and AS-norm metrics if asked for.

    :meth:`to_dict` is what ``summary.json`` holds.
    """

    trials: str | None  # the trial list's path, None for an in-memory :class:`Trials`
    n_trials: int  # trials scored
    n_skipped: int  # trials not scored: a file of theirs could not be embedded
    n_target: int
    n_nontarget: int
    n_files: int  # distinct trial files embedded
    n_bad_files: int  # distinct trial files that could not be
    precision: str
    asnorm: AsNormMetrics | None = None

    def to_dict(self) -> dict:
        counts = {k: getattr(self, k) for k in ("n_trials", "n_skipped", "n_target", "n_nontarget", "n_files",
                                                "n_bad_files", "precision")}
        return {"trials": self.trials, **super().to_dict(), **counts,
                **({"asnorm": self.asnorm.to_dict()} if self.asnorm is not None else {})}


@dataclass
class EvalResult:
    """Scores and metrics of one evaluation."""

    summary: EvalSummary
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
    on_progress: OnProgress | None = None,
    workers: int = 2,
    ranks: DistInfo | None = None,
    verify_cache: bool = False,
) -> EvalResult | None:
    """Embed, score and measure a trial list whose paths are relative to ``wav_root``.

    ``cohort`` (a cohort list file, see :func:`read_cohort`, or a sequence of audio paths) adds AS-norm
    results over the ``top_k`` closest cohort embeddings. ``verify_cache`` trusts cached embeddings only
    while the file's content hash matches (:class:`EmbeddingCache`). Raises :class:`EvalError` when no trial can be
    scored, when the scored trials lack targets or non-targets, or when fewer than 2 cohort files embed.
    ``on_progress`` reports the embedding of the files (see :func:`embed_files`).

    ``ranks`` (the process group of ``torchrun``, see :func:`ghostvlad.train.distributed.setup`): every rank
    embeds its shard of the files, rank 0 gathers the embeddings and scores; the other ranks return None. The
    result equals a single-process run's.
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
    files = [*full.values(), *cohort_paths]
    if ranks is not None and ranks.world > 1:
        mine = embed_files(model, files, cache_dir, on_progress if ranks.main else None, workers=workers,
                           shard=Shard(ranks.rank, ranks.world), verify_cache=verify_cache)
        parts = distributed.gather_to_main(mine, ranks)
        if parts is None:
            return None
        done = Embedded.merge(parts)
    else:
        done = embed_files(model, files, cache_dir, on_progress, workers=workers, verify_cache=verify_cache)

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
        cosine = Metrics.of(scores, labels)
    except MetricsError as exc:
        raise EvalError(f"{where}: {exc} (after skipping {skipped} trials)") from None

    asnorm_scores, asnorm = None, None
    if cohort is not None:
        distinct = list(dict.fromkeys(cohort_paths))
        usable = [done.embeddings[p] for p in distinct if p in done.embeddings]
        if len(usable) < 2:
            label = cohort if isinstance(cohort, (str, os.PathLike)) else "cohort"
            first = next((done.errors[p] for p in distinct if p in done.errors), None)
            raise EvalError(f"{label}: only {len(usable)} of {len(distinct)} cohort files could be embedded; "
                            "AS-norm needs at least 2" + (f" (first: {first})" if first else ""))
        asnorm_scores = _as_norm(scores, emb, a, b, np.stack(usable), top_k)
        asnorm = AsNormMetrics(**vars(Metrics.of(asnorm_scores, labels)), top_k=min(top_k, len(usable)),
                               cohort_size=len(usable), cohort_bad_files=len(distinct) - len(usable))
    summary = EvalSummary(**vars(cosine), trials=name, n_trials=len(scores), n_skipped=skipped,
                          n_target=int(labels.sum()), n_nontarget=int(len(labels) - labels.sum()), n_files=len(good),
                          n_bad_files=len(full) - len(good), precision=model.precision, asnorm=asnorm)
    return EvalResult(summary, scores, labels, enroll, test, skipped, done.errors, done.computed, done.cached,
                      asnorm_scores, done.cache_error)


def _score_lines(scores: np.ndarray, result: EvalResult) -> str:
    return "".join(f"{s:.6f} {y} {e} {t}\n" for s, y, e, t in zip(scores, result.labels, result.enroll, result.test))


def write_outputs(result: EvalResult, out_dir: str | os.PathLike, json_path: str | os.PathLike | None = None
                  ) -> list[Path]:
    """Write ``scores.txt`` (``<score> <label> <enroll> <test>`` per scored trial; ``scores_asnorm.txt`` too with
    AS-norm), ``det.png`` and ``summary.json`` into ``out_dir`` (and the summary to ``json_path``, first: when that
    fails, ``out_dir`` is left as it was), each file atomically.
    """
    out_dir = Path(out_dir)
    text = json.dumps(result.summary.to_dict(), indent=2) + "\n"
    written = [] if json_path is None else [atomic_write_text(json_path, text)]
    written.append(atomic_write_text(out_dir / "scores.txt", _score_lines(result.scores, result)))
    curves = {"cosine": (result.scores, result.labels)}
    if result.asnorm_scores is not None:
        written.append(atomic_write_text(out_dir / "scores_asnorm.txt", _score_lines(result.asnorm_scores, result)))
        curves["AS-norm"] = (result.asnorm_scores, result.labels)
    title = Path(result.summary.trials).name if result.summary.trials else None
    plot_det(curves, out_dir / "det.png", title=title)
    written.append(out_dir / "det.png")
    written.append(atomic_write_text(out_dir / "summary.json", text))
    return written
