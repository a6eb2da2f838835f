"""A persistent speaker gallery: enrol speakers from recordings, identify a query among them (open set).

One SQLite file, no server (:mod:`~ghostvlad.gallery.store`). Each utterance embedding is stored, and each
speaker's mean embedding (re-normalised) is kept for search. The gallery records the model that made its
embeddings (:func:`ghostvlad.evaluate.model_key` and the model's config) and refuses any other model. Audio is
embedded (:mod:`~ghostvlad.gallery.enrol`) before a write transaction opens, so an interrupted or failed
enrolment changes nothing.

Search is exact (:mod:`~ghostvlad.gallery.index`): the speaker means are loaded once per process into a float32
matrix ``M`` (reloaded only when the gallery changes) and a query ``q`` is scored as ``M @ q`` with
``np.argpartition`` for the top k.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.manifest import speaker_name
from ..scoring.calibration import DecisionRule
from ..scoring.vectors import unit_rows
from .enrol import embed_for_enrolment
from .index import GalleryError, Match, SpeakerIndex, top_matches
from .store import APPLICATION_ID, FORMAT, SCHEMA_VERSION, GalleryStore, SpeakerInfo, check_name, describe_model

if TYPE_CHECKING:
    from ..embedding import AudioInput
    from ..inference import SpeakerModel

__all__ = ["APPLICATION_ID", "FORMAT", "SCHEMA_VERSION", "Gallery", "GalleryError", "Match", "SpeakerInfo",
           "check_name", "describe_model", "embed_for_enrolment", "top_matches"]


class Gallery:
    """A speaker gallery in one SQLite file. Use as a context manager.

    ``model`` embeds audio and must be the model that made the gallery. Without one, an existing gallery
    can still be listed, searched with embeddings and edited with :meth:`add_embeddings` (the caller vouches
    that they come from the gallery's model). The file is created by the first enrolment.
    """

    def __init__(self, path: str | os.PathLike, model: SpeakerModel | None = None, *, timeout: float = 30.0):
        self.path = Path(path)
        self.model = model
        self._store = GalleryStore(self.path, model.identity() if model is not None else None, timeout)
        self._index: SpeakerIndex | None = None
        if not self._store.exists and model is None:
            raise GalleryError(f"{self.path}: no such gallery")

    @property
    def read_only(self) -> bool:
        """An existing gallery this process cannot write: opened read-only."""
        return self._store.read_only

    @property
    def model_key(self) -> str | None:
        """Key of the model that made the gallery (None before the first enrolment)."""
        return self._store.model_key

    @property
    def model_config(self) -> dict | None:
        return self._store.model_config

    @property
    def dim(self) -> int | None:
        return self._store.dim

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------------------------
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
        with self._store.write() as db:
            dim = self.dim
            for name, emb, names in batch:
                if emb.shape[1] != dim:
                    raise GalleryError(f"{name}: {emb.shape[1]}-d embeddings, the gallery holds {dim}-d")
                self._store.add_speaker(db, name, emb, names)
        return sum(len(emb) for _, emb, _ in batch)

    def remove(self, name: str) -> int:
        """Remove a speaker and all their utterances; returns how many utterances were removed."""
        return self._store.remove(speaker_name(name))

    # -- reading -----------------------------------------------------------------------------------------------------
    def _require_model(self, action: str) -> SpeakerModel:
        if self.model is None:
            raise GalleryError(f"{self.path}: to {action} audio the gallery needs a model")
        return self.model

    def speakers(self) -> list[SpeakerInfo]:
        """Every enrolled speaker, by name."""
        return self._store.speakers()

    def __len__(self) -> int:
        """Number of enrolled speakers."""
        return self._store.count()

    def speaker(self, name: str) -> SpeakerInfo | None:
        """One enrolled speaker, or None."""
        return self._store.speaker(speaker_name(name))

    def _nonempty(self) -> SpeakerIndex:
        """The speaker index, reloaded only when the gallery changed since the last call; never empty."""
        fresh = self._store.means(None if self._index is None else self._index.generation)
        if fresh is not None:
            self._index = SpeakerIndex(*fresh)
        if not self._index.names:
            raise GalleryError(f"{self.path}: the gallery is empty; enrol speakers first")
        return self._index

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
        return self._nonempty().search(model.embed(query, sample_rate), top, rule)

    def identify_embedding(self, embedding: np.ndarray, top: int = 5, *, operating_point: str | None = None,
                           threshold: float | None = None, prior: float = 0.5) -> list[Match]:
        """As :meth:`identify`, for an embedding of the gallery's model."""
        rule = DecisionRule.for_model(self.model, operating_point, threshold=threshold, prior=prior)
        return self._nonempty().search(embedding, top, rule)
