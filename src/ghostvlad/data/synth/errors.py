"""The synthetic corpus's error: an impossible configuration or an output folder that holds something else."""
from __future__ import annotations

from ...errors import GhostvladError


class SynthError(GhostvladError, ValueError):
    """A synthesis setting or output folder that cannot be used (one line; a ValueError as before)."""
