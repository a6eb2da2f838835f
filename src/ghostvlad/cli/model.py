"""Commands that use a model: convert-keras, embed, merge, ensemble, verify, info."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (DeviceOpt, MinDurOpt, MirrorOpt, ModelOpt, PrecisionOpt, app, err, fail, open_model, out, progress_bar,
                     refuse_input_as_output, resolve_auto, start_ranks)


@app.command("convert-keras")
def convert_keras(
    weights: Path = typer.Argument(..., readable=False,
                                   help="The authors' Keras weights.h5 (or a checkpoint of the original code)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output model directory (or .safetensors file)."),
    backbone: Optional[str] = typer.Option(None, help="Expected backbone (resnet34s/resnet34l); checked against the file."),
    pooling: Optional[str] = typer.Option(None, help="Expected aggregation (vlad/gvlad/tap); checked."),
    clusters: Optional[int] = typer.Option(None, help="Expected number of VLAD clusters; checked."),
    ghost_clusters: Optional[int] = typer.Option(None, help="Expected number of ghost clusters; checked."),
    embed_dim: Optional[int] = typer.Option(None, help="Expected embedding size; checked."),
    mirror: bool = typer.Option(True, "--mirror/--no-mirror", help="Store the original's test-time 'wav + reversed wav' extension."),
) -> None:
    """Convert the authors' Keras weights into a ghostvlad model (configuration inferred from the file)."""
    from ..convert.keras import KerasConversionError, read_keras_encoder
    from ..features import FrontEndConfig
    from ..inference import SpeakerModel

    expected = {k: v for k, v in dict(backbone=backbone, pooling=pooling, clusters=clusters,
                                       ghost_clusters=ghost_clusters, embed_dim=embed_dim).items() if v is not None}
    try:
        encoder, info = read_keras_encoder(weights, **expected)
    except KerasConversionError as exc:
        fail(str(exc))
    model = SpeakerModel(encoder, FrontEndConfig(mirror=mirror), info={"source": "keras", "file": Path(weights).name,
                                                                       "keras_version": info.get("keras_version")})
    model.save(out_path)
    cfg = encoder.config.flat()
    out.print(f"wrote {out_path}: {cfg['backbone']} width {cfg['width']:g}, {cfg['pooling']} "
              f"{cfg['clusters']}+{cfg['ghost_clusters']}, descriptor {cfg['descriptor_dim']}, "
              f"embedding {cfg['embed_dim']}"
              + (f" (skipped: {', '.join(info['skipped_layers'])})" if info["skipped_layers"] else ""))


def _read_list(path: Path) -> list[str]:
    """One path per line, exactly as written (spaces kept); blank lines and ``#`` comment lines skipped."""
    try:
        lines = path.read_text(encoding="utf-8-sig", errors="surrogateescape").splitlines()  # a BOM is not a path
    except OSError as exc:
        fail(f"{path}: cannot read the file list ({exc.strerror or exc})")
    return [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


@app.command()
def embed(
    files: list[Path] = typer.Argument(None, readable=False, help="Audio files (wav, flac, ogg, m4a, mp3, ...)."),
    model_path: Path = ModelOpt,
    out_path: Path = typer.Option(..., "--out", "-o", help="Output .npz with 'embeddings' (N, D) and 'paths' (N,); "
                                  "with --window also 'starts' and 'ends' (N,) in seconds."),
    list_file: Optional[Path] = typer.Option(None, "--list", "-l", help="Text file with one audio path per line, taken "
                                             "exactly (spaces kept); blank lines and lines starting with # are skipped."),
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    min_duration: float = MinDurOpt,
    mirror: Optional[bool] = MirrorOpt,
    batch_frames: int = typer.Option(3200, min=1, help="Cap on padded frames per batch (measured fastest on CPU: ~3200)."),
    workers: int = typer.Option(2, min=1, help="Threads reading metadata and decoding audio."),
    window: Optional[float] = typer.Option(None, help="Embed every window of this many seconds, not whole files."),
    hop: Optional[float] = typer.Option(None, help="Seconds between window starts, with --window (default 0.5)."),
    shard: Optional[str] = typer.Option(None, help="k/n: embed only every n-th file from the k-th (a job-array "
                                        "task) and write a part for `ghostvlad merge`."),
) -> None:
    """Embed audio files into unit-norm speaker embeddings (batched by length; bad files reported and skipped).

    With --window, one embedding per window (the last one of a file may be shorter) and its start/end times.
    Under `torchrun --nproc_per_node N -m ghostvlad embed ...` every rank embeds its share of the files on its own
    GPU and rank 0 writes the merged file, equal to a single-process run's.
    """
    import numpy as np

    from ..sharding import Shard, ShardError, job_key, merge_parts, write_npz
    from ..train.distributed import barrier, gather_to_main, teardown
    from ..windows import WindowError, Windows, iter_windows, window_samples

    paths = [str(p) for p in files or []] + (_read_list(list_file) if list_file else [])
    if not paths:
        fail("no input files (give paths or --list)")
    refuse_input_as_output(out_path, [*paths, *([list_file] if list_file else [])])
    if hop is not None and window is None:
        fail("--hop needs --window")
    try:
        part = None if shard is None else Shard.parse(shard)
    except ShardError as exc:
        fail(str(exc))
    ranks = start_ranks()
    if ranks is not None:
        if part is not None:
            fail("--shard is for separate jobs; under torchrun the ranks share the files already")
        part, device = Shard(ranks.rank, ranks.world), str(ranks.device) if device == "auto" else device
    main = ranks is None or ranks.main
    device, precision = resolve_auto(device, precision)
    model = open_model(model_path, precision, device, min_duration, mirror, batch_frames)
    if main:
        err.print(f"embedding on {device}, {precision}"
                  + (f", {ranks.world} ranks" if ranks else f", shard {part}" if part else ""), highlight=False)
    if window is not None:
        hop = 0.5 if hop is None else hop
        try:
            window_samples(model, window, hop)
        except WindowError as exc:
            fail(str(exc))
    positions = list(range(len(paths))) if part is None else part.take(range(len(paths)))
    mine = [paths[i] for i in positions]
    found: dict[int, np.ndarray | Windows] = {}
    failures = []
    with progress_bar() as bar:
        task = bar.add_task("embedding", total=len(mine), visible=main)
        results = (model.iter_embeddings(mine, workers=workers) if window is None
                   else iter_windows(model, mine, window, hop))
        for r in results:
            if r.error is not None:
                failures.append(r.error)
                err.print(f"skipped {r.error}", highlight=False, markup=False)
            else:
                found[r.index] = r.embedding if window is None else r.windows
            bar.advance(task)
    if not found and part is None:
        fail(f"none of the {len(paths)} files could be embedded")
    order = sorted(found)
    dim = model.embed_dim
    if window is None:
        rows = [1] * len(order)
        matrix = np.stack([found[i] for i in order]) if order else np.zeros((0, dim), np.float32)
        arrays = dict(embeddings=matrix, paths=np.array([mine[i] for i in order], dtype=str))
    else:
        rows = [len(found[i]) for i in order]
        matrix = (np.concatenate([found[i].embeddings for i in order]) if order else np.zeros((0, dim), np.float32))
        arrays = dict(embeddings=matrix, paths=np.array([mine[i] for i in order for _ in range(len(found[i]))], dtype=str),
                      starts=np.concatenate([found[i].starts for i in order] or [np.zeros(0)]),
                      ends=np.concatenate([found[i].ends for i in order] or [np.zeros(0)]))
    if part is not None:
        arrays.update(index=np.repeat(np.array([positions[i] for i in order], dtype=np.int64), rows),
                      shard=np.array(str(part)), job=np.array(job_key(paths, model.cache_key())))
    target = out_path if ranks is None else out_path.with_name(f".{out_path.name}.part{ranks.rank}")
    write_npz(target, arrays)  # an OSError is one line naming the file (the CLI's error handling)
    if ranks is not None:  # rank 0 merges every rank's part (next to --out: a folder all ranks see) into --out
        barrier(ranks)
        counts = gather_to_main(len(failures), ranks)
        teardown()
        if main:
            parts = [out_path.with_name(f".{out_path.name}.part{r}") for r in range(ranks.world)]
            try:
                arrays = merge_parts(parts)
            except ShardError as exc:
                fail(f"{out_path}: cannot merge the ranks' parts ({exc})")
            for p in parts:
                p.unlink(missing_ok=True)
            if len(arrays["embeddings"]) == 0:
                fail(f"none of the {len(paths)} files could be embedded")
            write_npz(out_path, arrays)
            _report(out_path, arrays, window, len(paths), sum(counts))
        return
    what = f"shard {part} of {len(paths)} files: " if part is not None else ""
    out.print(what, end="", highlight=False)
    _report(out_path, arrays, window, len(mine), len(failures))


def _report(out_path: Path, arrays: dict, window: Optional[float], total: int, failed: int) -> None:
    matrix = arrays["embeddings"]
    files = len(set(arrays["paths"].tolist()))
    what = f"{len(matrix)} window embeddings of {files} files" if window is not None else f"{len(matrix)} embeddings"
    msg = f"wrote {what} ({matrix.shape[1]}-d) to {out_path}"
    if failed:
        msg += f"; {failed} of {total} files failed"
    out.print(msg, highlight=False)


@app.command()
def merge(
    parts: list[Path] = typer.Argument(..., readable=False,
                                       help="The parts written by `embed --shard k/n` (all n of them)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="The merged .npz (as one `embed` over all files writes)."),
) -> None:
    """Merge the parts of a sharded `embed` (job arrays) into one file, rows in input order."""
    from ..sharding import ShardError, merge_parts, write_npz

    refuse_input_as_output(out_path, parts)
    try:
        arrays = merge_parts(parts)
        write_npz(out_path, arrays)
    except ShardError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{out_path}: cannot write ({exc})")
    out.print(f"merged {len(parts)} parts: {len(arrays['embeddings'])} embeddings to {out_path}", highlight=False)


@app.command()
def ensemble(
    models: list[Path] = typer.Argument(..., readable=False, help="Two or more models (directories, .safetensors "
                                        "files or run folders) with the same network and front-end."),
    out_path: Path = typer.Option(..., "--out", "-o", help="The ensemble model (directory, or .safetensors file)."),
) -> None:
    """Stack separately trained models into one model whose cosine score is the mean of theirs."""
    from ..inference import ensemble as stack_models
    from ..modelfile import resolve_model_path

    target = out_path.resolve()
    seen: dict[Path, Path] = {}
    for path in models:
        source = resolve_model_path(path).resolve()
        if source in seen:
            fail(f"{path}: given twice (as {seen[source]} too); each model is one branch")
        seen[source] = path
        if target == source or source in target.parents or target in source.parents:
            fail(f"{out_path}: would overwrite or contain the input model {path}; choose another --out")
    model = stack_models([open_model(path, "fp32", "cpu") for path in models])
    model.save(out_path)
    out.print(f"wrote {out_path}: {len(models)} models as {model.config.branches} branches, {model.embed_dim}-d "
              "embeddings (no threshold yet: run 'ghostvlad calibrate' on it)", highlight=False)


@app.command()
def verify(
    first: Path = typer.Argument(..., readable=False, help="First recording."),
    second: Path = typer.Argument(..., readable=False, help="Second recording."),
    model_path: Path = ModelOpt,
    threshold: Optional[float] = typer.Option(None, help="Decision threshold on the cosine score (instead of an operating point)."),
    operating_point: Optional[str] = typer.Option(
        None, "--operating-point", help="eer, far@0.01, ... (stored by 'ghostvlad calibrate'), or bayes (P(same) >= 1/2 "
        "at --prior). Default: eer when calibrated, else the model's stored threshold."),
    prior: float = typer.Option(0.5, "--prior", help="Prior probability of the same speaker, for P(same) and bayes."),
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    min_duration: float = MinDurOpt,
) -> None:
    """Cosine score of two recordings; a decision (and LLR, P(same) when calibrated) at the stated operating point."""
    from ..audio import AudioError
    from .calibrate import decision_rule

    model = open_model(model_path, precision, device, min_duration)
    rule = decision_rule(model, model_path, operating_point, threshold, prior)
    try:
        score = model.score(first, second)
    except AudioError as exc:
        fail(str(exc))
    decision = rule(score)
    verdict = {True: "same speaker ", False: "different speakers ", None: ""}[decision.accept]
    explained = f"  {verdict}({decision.explain()})" if decision.explain() else ""
    out.print(f"score {score:.4f}{explained}", highlight=False)


@app.command()
def info(
    model_path: Optional[Path] = typer.Argument(None, readable=False,
                                                help="Model directory, .safetensors, .onnx file or run folder."),
    components: bool = typer.Option(False, "--components", help="List every component slot (backbone, pooling, "
                                    "head, optimiser, ...) with its choices, their parameters and defaults."),
) -> None:
    """Print a model's configuration and parameter count, or (--components) the components a config can choose."""
    import json

    if components:
        _print_components()
        return
    if model_path is None:
        fail("give a model path, or --components")
    model = open_model(model_path, "fp32", "cpu")
    summary = model.to_config()
    if hasattr(model, "saved_encoder"):  # ONNX models carry no parameter tensors we can count
        summary["parameters"] = sum(p.numel() for p in model.saved_encoder.parameters())
    out.print_json(json.dumps(summary))


def _print_components() -> None:
    from ..components import component_slots

    for slot in component_slots():
        out.print(f"{slot.name}: {slot.key} = {slot.form}", markup=False, highlight=False)
        width = max(len(c.name) for c in slot.choices)
        for choice in slot.choices:
            params = ", ".join(p.name + (f"={p.default!r}" if not p.required else " (required)") for p in choice.params)
            line = f"  {choice.name:<{width}}  {choice.summary}" + (f"  [{params}]" if params else "")
            out.print(line, markup=False, highlight=False)
