"""Recordings to enrolment embeddings: embedded in input order, bad items refused or skipped, sources named."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .index import GalleryError

if TYPE_CHECKING:
    from ..audio import AudioError
    from ..embedding import AudioInput
    from ..inference import SpeakerModel


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
