"""The diarize command: who spoke when, as RTTM."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOpt, ModelOpt, PrecisionOpt, app, err, fail, open_model, out


@app.command()
def diarize(
    audio: Path = typer.Argument(..., readable=False, help="Recording to diarize (wav, flac, m4a, mp3, ...)."),
    model_path: Path = ModelOpt,
    speakers: Optional[int] = typer.Option(None, "--speakers", "-n", min=1,
                                           help="Number of speakers (default: estimated)."),
    max_speakers: int = typer.Option(8, min=1, help="Upper bound when the number of speakers is estimated."),
    threshold: Optional[float] = typer.Option(
        None, help="Same-speaker cosine threshold for estimating the number of speakers "
                   "(default: the model's stored threshold; without one, the spectral eigengap)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="RTTM file to write (default: print to stdout)."),
    window: float = typer.Option(2.0, help="Embedding window (seconds)."),
    hop: float = typer.Option(0.5, help="Hop between windows (seconds)."),
    file_id: Optional[str] = typer.Option(None, help="RTTM file id (default: the file name without extension)."),
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
) -> None:
    """Diarize one recording: energy speech detection, window embeddings, spectral clustering, RTTM."""
    from ..audio import AudioError
    from ..diarize import DiarizeError
    from ..diarize import diarize as run_diarization
    from ..errors import GhostvladError
    from ..diarize import rttm_lines, write_rttm

    file_id = file_id or audio.stem
    try:
        rttm_lines([], file_id)
    except DiarizeError as exc:
        fail(f"{audio}: {exc} (use --file-id)")
    model = open_model(model_path, precision, device)
    threshold = model.threshold if threshold is None else threshold
    try:
        segments = run_diarization(model, audio, speakers, max_speakers=max_speakers, window=window, hop=hop,
                                   threshold=threshold)
    except AudioError as exc:
        fail(str(exc))
    except GhostvladError as exc:  # DiarizeError, WindowError: settings this recording cannot use
        fail(f"{audio}: {exc}")
    if not segments:
        err.print(f"{audio}: no speech found", highlight=False, markup=False)
    found = len({s.speaker for s in segments})
    if speakers is not None and 0 < found < speakers:
        err.print(f"{audio}: only {found} of the {speakers} speakers asked for could be told apart: the speech gives too "
                  f"few {window:g} s windows (each window is one speaker)", highlight=False, markup=False)
    if out_path is None:
        for line in rttm_lines(segments, file_id):
            out.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    write_rttm(segments, out_path, file_id)
    how = ("given" if speakers is not None else "estimated with the eigengap" if threshold is None
           else f"estimated with threshold {threshold:.3f}")
    err.print(f"wrote {len(segments)} segments of {found} speaker(s) ({how}) to {out_path}", highlight=False,
              markup=False)
