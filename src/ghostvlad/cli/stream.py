"""The ``stream`` command: the running embedding of a recording or of live PCM on stdin, and its best match."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from .calibrate import OperatingPointOpt, PriorOpt, ThresholdOpt, decision_rule
from .common import DeviceOpt, MinDurOpt, ModelOpt, PrecisionOpt, app, fail, finite, open_model, out


def _file_blocks(path: str, block: int, real_time: bool, rate: int, min_duration: float) -> Iterator[np.ndarray]:
    """A decoded recording in blocks of ``block`` samples, paced to real time unless ``real_time`` is False."""
    from ..audio import load_audio

    wave = load_audio(path, min_duration=min_duration)
    start = time.monotonic()
    for first in range(0, len(wave), block):
        if real_time:
            time.sleep(max(0.0, start + (first + block) / rate - time.monotonic()))
        yield wave[first : first + block]


def _stdin_blocks(block: int) -> Iterator[np.ndarray]:
    """Raw PCM16 from stdin in blocks of ``block`` samples, as it arrives (the last block may be shorter)."""
    from ..streaming import pcm16_samples

    reader = sys.stdin.buffer
    while True:
        data = b""
        while len(data) < 2 * block and (more := reader.read(2 * block - len(data))):
            data += more
        if not data:
            return
        yield pcm16_samples(data, "stdin")
        if len(data) < 2 * block:
            return


@app.command()
def stream(
    source: str = typer.Argument(..., help="A recording, or - for raw 16 kHz mono 16-bit little-endian PCM on stdin."),
    model_path: Path = ModelOpt,
    db: Optional[Path] = typer.Option(None, "--db", help="Speaker gallery: print the running best match."),
    update: float = typer.Option(0.5, "--update", min=0.01, callback=finite, help="Seconds of audio between updates."),
    fast: bool = typer.Option(False, "--fast", help="Read a file as fast as possible instead of in real time."),
    operating_point: Optional[str] = OperatingPointOpt,
    threshold: Optional[float] = ThresholdOpt,
    prior: float = PriorOpt,
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    min_duration: float = MinDurOpt,
) -> None:
    """Embed audio as it arrives: after every --update seconds print the time and the running best match in the
    gallery (or, without --db, the cosine between the running embedding and the previous one).

    The running embedding equals the offline embedding of all audio so far with the mirror extension off.
    """
    from ..gallery import Gallery, GalleryError
    from ..inference import SpeakerModel

    model = open_model(model_path, precision, device, min_duration)
    if not isinstance(model, SpeakerModel):
        fail(f"{model_path}: streaming needs a PyTorch model (a model directory or .safetensors file), not ONNX")
    gallery = None
    if db is not None:
        decision_rule(model, model_path, operating_point, threshold, prior)  # bad options fail before any work
        try:
            gallery = Gallery(db, model)
        except GalleryError as exc:
            fail(str(exc))
    with gallery or nullcontext():
        if gallery is not None and not len(gallery):
            fail(f"{db}: no speakers enrolled (or no such gallery); enrol speakers first")
        _run(model, gallery, source, update, fast, min_duration,
             dict(operating_point=operating_point, threshold=threshold, prior=prior))


def _run(model, gallery, source: str, update: float, fast: bool, min_duration: float, rule: dict) -> None:
    from ..audio import AudioError
    from ..gallery import GalleryError

    rate = model.frontend_config.sample_rate
    block = max(1, round(update * rate))
    blocks = _stdin_blocks(block) if source == "-" else _file_blocks(source, block, not fast, rate, min_duration)
    running = model.stream()
    previous = None
    try:
        for samples in blocks:
            running.push(samples)
            emb = running.embedding()
            when = f"{running.duration:8.2f} s"
            if emb is None:
                out.print(f"{when}  (listening)", highlight=False, markup=False)
            elif gallery is not None:
                best = gallery.identify_embedding(emb, 1, **rule)[0]
                verdict = {True: "accepted", False: "unknown", None: "no threshold"}[best.decision.accept]
                out.print(f"{when}  {best.name}  {best.score:.4f}  {verdict}", highlight=False, markup=False)
            else:
                change = "" if previous is None else f"  cosine to previous {float(emb @ previous):.4f}"
                out.print(f"{when}  embedded{change}", highlight=False, markup=False)
                previous = emb
    except (AudioError, GalleryError) as exc:
        fail(str(exc))
    if running.embedding() is None:
        fail(f"{'stdin' if source == '-' else source}: no embedding: less than {min_duration} s of non-silent audio")
