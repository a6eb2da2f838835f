"""Deployment export: a model as one ONNX (onnxruntime) or TorchScript file, front-end included.

Both files map ``waveform (B, N)`` float32 at 16 kHz, zero-padded, and ``lengths (B,)`` int64 to unit-norm
``embedding (B, D)``. Batch and time are dynamic, and every row equals that clip embedded alone (exact
masking, as in :class:`~ghostvlad.inference.SpeakerModel`). The graph is the model's own forward pass, traced:
the front-end :class:`~ghostvlad.features.Spectrogram` with its ``stft="conv"`` option (the STFT as a strided
conv1d with the windowed DFT basis, within 5e-7 of ``torch.stft``; twice as fast in onnxruntime as its STFT
op) and the BatchNorm-folded encoder. The ONNX file carries the model's config JSON in its metadata under the
key ``ghostvlad``::

    import numpy as np, onnxruntime as ort  # wave: float32 16 kHz mono samples
    session = ort.InferenceSession("model.onnx")
    emb = session.run(None, {"waveform": wave[None], "lengths": np.array([len(wave)], np.int64)})[0][0]

:class:`OnnxSpeakerModel` embeds files and arrays through onnxruntime with the interface of
``SpeakerModel``; :func:`ghostvlad.loading.load_model` returns one for a ``.onnx`` path. onnx and
onnxruntime are imported only when used.
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .devices import resolve_device
from .embedding import Embedder, pad_batch
from .errors import one_line
from .features import FrontEndConfig, Spectrogram
from .fileio import atomic_write
from .inference import SpeakerModel
from .modelfile import FORMAT, METADATA_KEY, VERSION, ModelFileError, format_version
from .models import EncoderConfig

OPSET = 17
INPUTS = ("waveform", "lengths")
OUTPUT = "embedding"
TORCHSCRIPT_CONFIG = "ghostvlad.json"  # name of the config among a TorchScript file's extra files


class _Graph(nn.Module):
    """What is exported: waveforms + lengths -> unit-norm embeddings (fp32, CPU, BatchNorm folded)."""

    def __init__(self, model: SpeakerModel) -> None:
        super().__init__()
        self.frontend = Spectrogram(model.frontend_config, stft="conv")
        encoder = copy.deepcopy(model.fused_encoder).cpu().float().to(memory_format=torch.contiguous_format)
        self.encoder = encoder.eval()

    def forward(self, waveform: Tensor, lengths: Tensor) -> Tensor:
        return self.encoder.embed(*self.frontend(waveform, lengths))


def _example() -> tuple[Tensor, Tensor]:
    return torch.zeros(2, 16000), torch.tensor([16000, 12001])


def _header(model: SpeakerModel) -> str:
    config = model.to_config()
    return json.dumps({"format": FORMAT, "version": format_version(config), **config}, sort_keys=True)


def export_onnx(model: SpeakerModel, path: str | os.PathLike) -> Path:
    """Write ``model`` as an ONNX file (opset 17, dynamic batch and time, config in the metadata)."""
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated, but exports this model in ~2 s where the
        # torch.export-based one needs ~20 s and onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1")  # a dynamic slice stays a Slice
        torch.onnx.export(
            _Graph(model), _example(), buffer, dynamo=False, opset_version=OPSET,
            input_names=list(INPUTS), output_names=[OUTPUT],
            dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {METADATA_KEY: _header(model)})
    proto.doc_string = "ghostvlad: waveform (B, N) float32 16 kHz + lengths (B,) int64 -> embedding (B, D)"
    return atomic_write(path, lambda tmp: onnx.save(proto, tmp))


def export_torchscript(model: SpeakerModel, path: str | os.PathLike) -> Path:
    """Write ``model`` as traced TorchScript for ``torch.jit.load``; config in the extra file ``ghostvlad.json``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(_Graph(model), _example(), check_trace=False)
        extra = {TORCHSCRIPT_CONFIG: _header(model)}
        return atomic_write(path, lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))


class OnnxSpeakerModel(Embedder):
    """A model exported by :func:`export_onnx`, run by onnxruntime on CPU; the interface of ``SpeakerModel``.

    ``mirror`` may only confirm the front-end baked into the file. onnxruntime uses as many threads as
    PyTorch would (``torch.get_num_threads()``) unless ``threads`` is given.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        min_duration: float = 0.5,
        batch_frames: int = 3200,
        mirror: bool | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such ONNX model file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's errors share no base class below Exception
            reason = one_line(exc).rpartition(" failed:")[2]  # drop "[ONNXRuntimeError] ... Load model from P"
            raise ModelFileError(f"{self.path}: not a readable ONNX model ({reason})") from None
        self._config = self._read_config()
        self._check_weights()
        self.config = EncoderConfig.from_dict(self._config["encoder"])
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != self.config.embed_dim:
            raise ModelFileError(f"{self.path}: the graph gives {width}-d embeddings, its metadata says "
                                 f"{self.config.embed_dim}")
        self.frontend_config = FrontEndConfig(**self._config["frontend"])
        if mirror is not None and mirror != self.frontend_config.mirror:
            raise ModelFileError(f"{self.path}: the mirror extension is fixed in an ONNX file (this one: "
                             f"mirror={self.frontend_config.mirror}); export again with --mirror/--no-mirror")
        self.threshold = self._config.get("threshold")
        self.info = dict(self._config.get("info") or {})
        self.calibration = self._config.get("calibration")
        self.precision = "fp32"
        self.min_duration = min_duration
        self.batch_frames = batch_frames

    def _read_config(self) -> dict:
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUTS or [o.name for o in self.session.get_outputs()] != [OUTPUT]:
            raise ModelFileError(f"{self.path}: not a ghostvlad export (inputs {', '.join(names)})")
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if text is None:
            raise ModelFileError(f"{self.path}: ONNX file without ghostvlad metadata")
        try:
            config = json.loads(text)
            if config.get("format") != FORMAT:
                raise ValueError(f"format {config.get('format')!r}")
            if config.get("version", 0) > VERSION:
                raise ValueError(f"format version {config['version']} is newer than this ghostvlad")
            EncoderConfig.from_dict(config["encoder"])
            FrontEndConfig(**config["frontend"])
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{self.path}: bad ghostvlad metadata ({one_line(exc)})") from None
        return config

    def _check_weights(self) -> None:
        """Refuse a graph whose weights hold NaN or inf (as :func:`~ghostvlad.modelfile.read_model` does)."""
        import onnx
        from onnx import numpy_helper

        for tensor in onnx.load(str(self.path)).graph.initializer:
            values = numpy_helper.to_array(tensor)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise ModelFileError(f"{self.path}: tensor {tensor.name!r} holds NaN or infinite values; "
                                     "refusing the model")

    def to_config(self) -> dict:
        return {k: v for k, v in self._config.items() if k not in ("format", "version")}

    def _hash_weights(self, digest) -> None:
        with open(self.path, "rb") as fh:  # the graph holds the weights
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)

    def embed_waveforms(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Embed validated 16 kHz mono waveforms as one padded batch: ``(N, embed_dim)`` float32."""
        batch, lengths = pad_batch(waves)
        self.frontend_config.check_length(int(lengths.min()))
        return self.session.run([OUTPUT], dict(zip(INPUTS, (batch, lengths))))[0]


def load_onnx_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device,
    precision: str,
    min_duration: float,
    mirror: bool | None,
    batch_frames: int,
) -> OnnxSpeakerModel:
    """:class:`OnnxSpeakerModel` with :func:`~ghostvlad.loading.load_model`'s arguments (CPU and fp32 only)."""
    if resolve_device(device).type != "cpu" or precision != "fp32":
        raise ModelFileError(f"{path}: ONNX models run in fp32 on CPU; got device {device!r}, precision {precision!r}")
    return OnnxSpeakerModel(path, min_duration=min_duration, batch_frames=batch_frames, mirror=mirror)
