"""``ghostvlad export``: a model as one ONNX or TorchScript file for deployment."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .common import MirrorOpt, ModelOpt, app, fail, open_model, out


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


@app.command()
def export(
    model_path: Path = ModelOpt,
    fmt: ExportFormat = typer.Option(..., "--format", "-f", help="onnx or torchscript."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output file (.onnx; .pt for TorchScript)."),
    mirror: Optional[bool] = MirrorOpt,
) -> None:
    """Export a model with its front-end: waveform (B, N) float32 16 kHz + lengths (B,) int64 -> embedding (B, D).

    The ONNX file runs in onnxruntime with no PyTorch, carries the model config in its metadata, and works
    as --model for embed and verify.
    """
    from ..export import export_onnx, export_torchscript
    from ..inference import SpeakerModel

    if fmt is ExportFormat.onnx and out_path.suffix != ".onnx":
        fail(f"{out_path}: an ONNX export must end in .onnx (ghostvlad recognises ONNX models by the suffix)")
    model = open_model(model_path, "fp32", "cpu", mirror=mirror)
    if not isinstance(model, SpeakerModel):
        fail(f"{model_path}: export needs a ghostvlad model directory or .safetensors file")
    writer = export_onnx if fmt is ExportFormat.onnx else export_torchscript
    try:
        writer(model, out_path)
    except OSError as exc:
        fail(f"{out_path}: cannot write ({exc.strerror or exc})")
    mb = out_path.stat().st_size / 2**20
    out.print(f"wrote {out_path} ({fmt.value}, {mb:.1f} MB, {model.embed_dim}-d embeddings, "
              f"mirror {'on' if model.frontend_config.mirror else 'off'})", highlight=False)
