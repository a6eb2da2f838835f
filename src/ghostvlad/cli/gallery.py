"""Speaker gallery commands: ``enroll``, ``identify`` and ``gallery list|remove``."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from .calibrate import OperatingPointOpt, PriorOpt, ThresholdOpt, decision_rule
from .common import DeviceOpt, MinDurOpt, ModelOpt, PrecisionOpt, app, err, fail, open_model, out

DbOpt = typer.Option(..., "--db", help="Speaker gallery file (SQLite; created by the first enrolment).")

gallery_app = typer.Typer(no_args_is_help=True, help="List or edit a speaker gallery.")
app.add_typer(gallery_app, name="gallery")


def _open(db: Path, model=None):
    from ..gallery import Gallery, GalleryError

    try:
        return Gallery(db, model)
    except GalleryError as exc:
        fail(str(exc))


@app.command()
def enroll(
    name: str = typer.Argument(..., help="Speaker name (enrolling again adds recordings to the speaker)."),
    files: list[Path] = typer.Argument(..., readable=False, help="Recordings of the speaker."),
    model_path: Path = ModelOpt,
    db: Path = DbOpt,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Enrol the good recordings when some are bad (default: enrol none)."),
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    min_duration: float = MinDurOpt,
) -> None:
    """Add a speaker's recordings to the gallery, in one transaction (all embedded first)."""
    from ..gallery import GalleryError, check_name, embed_for_enrolment

    try:
        check_name(name)
    except GalleryError as exc:
        fail(str(exc))
    model = open_model(model_path, precision, device, min_duration)
    with _open(db, model) as gallery:
        try:
            embeddings, sources, skipped = embed_for_enrolment(model, [str(f) for f in files], skip_bad=skip_bad)
            for error in skipped:
                err.print(f"skipped {error}", highlight=False, markup=False)
            added = gallery.add_embeddings({name: embeddings}, {name: sources})
            total, speakers = gallery.speaker(name).utterances, len(gallery)
        except GalleryError as exc:
            fail(str(exc))
    out.print(f"enrolled {added} recording{'s' * (added != 1)} for {name} ({total} in all); "
              f"{db} holds {speakers} speaker{'s' * (speakers != 1)}", highlight=False, markup=False)


@app.command()
def identify(
    query: Path = typer.Argument(..., readable=False, help="Recording of the speaker to identify."),
    model_path: Path = ModelOpt,
    db: Path = DbOpt,
    top: int = typer.Option(5, "--top", min=1, help="How many candidates to list."),
    operating_point: Optional[str] = OperatingPointOpt,
    threshold: Optional[float] = ThresholdOpt,
    prior: float = PriorOpt,
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    min_duration: float = MinDurOpt,
) -> None:
    """Rank enrolled speakers by cosine score to the query; 'unknown' when none passes the threshold (open set)."""
    from rich.table import Table

    from ..audio import AudioError
    from ..gallery import GalleryError

    model = open_model(model_path, precision, device, min_duration)
    decision_rule(model, model_path, operating_point, threshold, prior)  # bad options fail before any work
    with _open(db, model) as gallery:
        try:
            matches = gallery.identify(query, top, operating_point=operating_point, threshold=threshold, prior=prior)
        except (GalleryError, AudioError) as exc:
            fail(str(exc))
    calibrated = matches[0].decision.llr is not None
    table = Table()
    for column in ("#", "speaker", "score", *(("LLR", "P(same)") if calibrated else ()), "accepted"):
        table.add_column(column, justify="left" if column == "speaker" else "right")
    for rank, m in enumerate(matches, 1):
        d = m.decision
        table.add_row(str(rank), m.name, f"{m.score:.4f}", *((f"{d.llr:.2f}", f"{d.p_same:.3f}") if calibrated else ()),
                      {True: "yes", False: "no", None: "-"}[d.accept])
    out.print(table)
    best = matches[0]
    if best.decision.accept is None:
        out.print(f"best match {best.name} (score {best.score:.4f}); no threshold known: calibrate the model "
                  "('ghostvlad calibrate') or give --threshold", highlight=False, markup=False)
    elif best.decision.accept:
        out.print(f"identified: {best.name} ({best.decision.explain()})", highlight=False, markup=False)
    else:
        out.print(f"unknown speaker: best match {best.name} does not pass ({best.decision.explain()})",
                  highlight=False, markup=False)


@gallery_app.command("list")
def list_(db: Path = DbOpt) -> None:
    """List enrolled speakers with their number of recordings, and the model the gallery belongs to."""
    from ..gallery import describe_model

    with _open(db) as gallery:
        speakers = gallery.speakers()
        model = describe_model(gallery.model_config, gallery.model_key) if gallery.model_key else None
    if not speakers:
        out.print(f"{db}: no speakers enrolled", highlight=False, markup=False)
        return
    width = max(len("speaker"), *(len(s.name) for s in speakers))
    lines = [f"{'speaker':<{width}}  recordings  enrolled          updated"]
    lines += [f"{s.name:<{width}}  {s.utterances:>10}  {_when(s.created)}  {_when(s.updated)}" for s in speakers]
    lines.append(f"{len(speakers)} speakers, {sum(s.utterances for s in speakers)} recordings; model {model}")
    out.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


@gallery_app.command("remove")
def remove(name: str = typer.Argument(..., help="Speaker to remove."), db: Path = DbOpt) -> None:
    """Remove a speaker and all their recordings from the gallery."""
    from ..gallery import GalleryError

    with _open(db) as gallery:
        try:
            removed = gallery.remove(name)
        except GalleryError as exc:
            fail(str(exc))
    out.print(f"removed {name} ({removed} recording{'s' * (removed != 1)}) from {db}", highlight=False, markup=False)
