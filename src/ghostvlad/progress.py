"""How long-running library functions report progress: an ``on_progress(done, total)`` callback.

Library code never draws anything; a function that may run for a while takes ``on_progress: OnProgress | None``
and calls it with the number of items finished so far (cumulative; the first call, made before any work, may
be above 0 when some was done already, e.g. cached) and the number expected (``None`` when unknown). The CLI turns the calls into a progress bar (:func:`ghostvlad.cli.common.progress_callback`);
API users pass any callable, or nothing.
"""
from __future__ import annotations

from collections.abc import Callable

OnProgress = Callable[[int, int | None], None]
"""``on_progress(done, total)``: ``done`` items finished so far, out of ``total`` (``None`` if unknown)."""


class Counter:
    """Counts finished items and reports the running total to an optional :data:`OnProgress` callback (once at
    creation, then at every :meth:`advance`)."""

    def __init__(self, on_progress: OnProgress | None, total: int | None, done: int = 0) -> None:
        self.on_progress, self.total, self.done = on_progress, total, done
        self.advance(0)

    def advance(self, n: int = 1) -> None:
        """``n`` more items finished."""
        self.done += n
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)
