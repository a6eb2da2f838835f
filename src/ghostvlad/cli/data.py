"""Data commands: prepare (manifest + optional shards), synth (synthetic corpus)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import app, err, fail, finite, out, progress_callback


@app.command()
def prepare(
    root: Path = typer.Option(
        ..., "--root", help="Corpus root: <speaker>/<video>/<file> below it (wav, flac, m4a, mp3, ogg or opus)."
    ),
    out_csv: Path = typer.Option(..., "--out", "-o", help="Manifest CSV to write (path,speaker,duration)."),
    list_file: Optional[Path] = typer.Option(
        None, "--list", help="The original's list file ('idXXXXX/<video>/<nnnnn>.wav <label>', relative to --root) "
                             "instead of scanning --root."),
    shards: Optional[Path] = typer.Option(None, "--shards", help="Also pack the data into WebDataset shards here."),
    shard_size: int = typer.Option(1000, min=1, help="Most utterances per shard."),
    shard_mb: float = typer.Option(1000.0, min=0.001, callback=finite, help="Most megabytes of audio per shard."),
    keep_original: bool = typer.Option(
        False, help="Store WAV/FLAC files in shards as they are (default: as 16-bit FLAC)."),
    seed: int = typer.Option(0, help="Seed of the shuffled shard order."),
    workers: Optional[int] = typer.Option(None, min=1, help="Decoding processes (default: all CPUs)."),
) -> None:
    """Check that every file decodes and write a training manifest; bad files are listed next to it and left out."""
    from ..audio import AudioError
    from ..data.manifest import (
        AUDIO_SUFFIXES, ManifestError, build_manifest, read_manifest, read_original_list, scan_voxceleb, speaker_of,
    )

    if not root.is_dir():
        fail(f"{root}: not a directory")
    if shards is not None and shards.exists() and not shards.is_dir():
        fail(f"{shards}: exists and is not a folder (--shards names the folder the shards go in)")
    try:
        if list_file is not None:
            files, speakers = read_original_list(list_file, root)
        else:
            files = scan_voxceleb(root)
            speakers = [speaker_of(f, root) for f in files]
    except (ManifestError, OSError) as exc:
        fail(str(exc))
    if not files:
        fail(f"{root}: no audio files found as <speaker>/<video>/<file>.({'|'.join(x[1:] for x in AUDIO_SUFFIXES)})")
    with progress_callback("decoding") as on_progress:
        report = build_manifest(files, speakers, out_csv, workers=workers, on_progress=on_progress)
    for path, reason in report.bad[:10]:
        err.print(f"bad: {path}: {reason}", highlight=False, markup=False)
    if report.n_ok == 0:
        fail(f"none of the {len(files)} files could be decoded; reasons in {report.bad_report}")
    manifest = read_manifest(out_csv)
    msg = (f"wrote {report.manifest}: {report.n_ok} utterances, {len(manifest.speaker_ids())} speakers, "
           f"{_span(float(manifest.durations.astype('float64').sum()))}")
    if report.bad:
        msg += f"; {len(report.bad)} bad file(s) left out, listed in {report.bad_report}"
    out.print(msg, highlight=False)
    if shards is not None:
        from ..data.shards import DataShardError, write_shards

        try:
            with progress_callback("packing") as on_progress:
                index = write_shards(manifest, shards, max_count=shard_size, max_mb=shard_mb, seed=seed,
                                     keep_original=keep_original, workers=workers, on_progress=on_progress)
        except (AudioError, DataShardError, OSError) as exc:
            fail(str(exc))
        size = sum(s.bytes for s in index.shards) / 1e6
        out.print(f"wrote {len(index.shards)} shard(s) ({size:.1f} MB) and {Path(index.base) / 'index.json'}",
                  highlight=False)


@app.command()
def synth(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Corpus directory (dev/, test/, trials.txt, speakers.json)."),
    speakers: int = typer.Option(40, help="Speakers in total."),
    test_speakers: int = typer.Option(10, help="Of which held out for test."),
    sessions: int = typer.Option(4, help="Sessions (videos) per speaker."),
    utterances: int = typer.Option(5, help="Utterances per session."),
    min_duration: float = typer.Option(2.0, callback=finite, help="Shortest utterance, seconds."),
    max_duration: float = typer.Option(6.0, callback=finite, help="Longest utterance, seconds."),
    trials: int = typer.Option(2000, help="Verification trials over the test speakers (half target)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives byte-identical files."),
    voices: str = typer.Option("all", help="Speaker pool: all, formant (espeak-ng's own synthesiser) or klatt "
                                           "(its Klatt synthesiser): two families for cross-domain checks."),
    channels: str = typer.Option("studio", help="Session channels: studio (rooms, noise, EQ, band limits) or field "
                                                "(adds telephone lines, speech codecs, saturation, larger rooms)."),
    drift: float = typer.Option(1.0, callback=finite, help="Scale of a session's pitch and rate drift from its "
                                                           "speaker's voice, 0 to 4 (0: one voice in every session)."),
    workers: Optional[int] = typer.Option(None, min=1, help="Synthesis processes (default: all CPUs)."),
) -> None:
    """Synthesise a VoxCeleb-layout corpus of espeak-ng speakers heard through random channels."""
    from ..data.synth import SynthConfig, synthesize_corpus
    from ..errors import GhostvladError

    config = SynthConfig(speakers=speakers, test_speakers=test_speakers, sessions=sessions, utterances=utterances,
                         min_duration=min_duration, max_duration=max_duration, trials=trials, seed=seed,
                         voices=voices, channels=channels, drift=drift)
    try:
        with progress_callback("synth (utterances)") as on_progress:
            summary = synthesize_corpus(out_dir, config, workers=workers, on_progress=on_progress)
    except (GhostvladError, OSError) as exc:
        fail(str(exc))
    out.print(f"wrote {out_dir}: {summary['utterances']} utterances ({summary['synthesized']} synthesised now) of "
              f"{summary['speakers']} speakers ({summary['dev_speakers']} dev, {summary['test_speakers']} test), "
              f"{_span(summary['audio_seconds'])} of audio, {summary['trials']} trials "
              f"({summary['target_trials']} target) in {summary['wall_seconds']:.1f} s", highlight=False)



def _span(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
