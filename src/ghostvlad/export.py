"""Deployment export: a model as one ONNX (onnxruntime) or TorchScript file, front-end included.

Both files map ``waveform (B, N)`` float32 at 16 kHz, zero-padded, and ``lengths (B,)`` int64 to unit-norm
``embedding (B, D)``. Batch and time are dynamic, and every row equals that clip embedded alone (exact
masking, as in :class:`~ghostvlad.inference.SpeakerModel`). The front-end is in the graph: each clip's
reflect padding (and the mirror extension, when the model uses it) is a gather, and the STFT a strided
conv1d with the windowed DFT basis (within 5e-7 of ``torch.stft``; twice as fast in onnxruntime as its
STFT op). The ONNX file carries the model's config JSON in its metadata under the key ``ghostvlad``::

    import numpy as np, onnxruntime as ort  # wave: float32 16 kHz mono samples
    session = ort.InferenceSession("model.onnx")
    emb = session.run(None, {"waveform": wave[None], "lengths": np.array([len(wave)], np.int64)})[0][0]

:class:`OnnxSpeakerModel` embeds files and arrays through onnxruntime with the interface of
``SpeakerModel``; :func:`ghostvlad.inference.load_model` returns one for a ``.onnx`` path. onnx and
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
import torch.nn.functional as F
from torch import Tensor, nn

from .devices import resolve_device
from .errors import one_line
from .features import FrontEndConfig, _source_index
from .fileio import atomic_write
from .inference import Embedder, SpeakerModel, pad_batch
from .modelfile import FORMAT, METADATA_KEY, VERSION, ModelFileError
from .models import EncoderConfig
from .models.backbones import ThinResNet, _same_pad, _time_mask, _unrolled_stem

OPSET = 17
INPUTS = ("waveform", "lengths")
OUTPUT = "embedding"
TORCHSCRIPT_CONFIG = "ghostvlad.json"  # name of the config among a TorchScript file's extra files


class _FrontEnd(nn.Module):
    """:class:`~ghostvlad.features.Spectrogram` in traceable ops; widths follow the input's shape."""

    def __init__(self, config: FrontEndConfig) -> None:
        super().__init__()
        self.config = config
        self.offset = (config.n_fft - config.win_length) // 2  # torch.stft centres the window in the frame
        taps = torch.arange(config.win_length, dtype=torch.float64) + self.offset
        angle = 2 * torch.pi * torch.arange(config.n_freq, dtype=torch.float64)[:, None] * taps / config.n_fft
        window = torch.hann_window(config.win_length, periodic=True, dtype=torch.float64)
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window  # (2 * n_freq, win_length)
        self.register_buffer("basis", basis.float()[:, None, :], persistent=False)

    def forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        total = wave.shape[1]
        pad = cfg.n_fft // 2 - self.offset  # only the samples under the window
        index, valid = _source_index(lengths, (2 * total if cfg.mirror else total) + 2 * pad, pad, cfg.mirror)
        padded = wave.gather(1, index.clamp(max=total - 1)) * valid
        parts = F.conv1d(padded[:, None, :], self.basis, stride=cfg.hop_length)
        real, imag = parts[:, : cfg.n_freq], parts[:, cfg.n_freq :]
        spec = torch.sqrt(real * real + imag * imag)
        frames = 1 + (2 * lengths if cfg.mirror else lengths) // cfg.hop_length
        mean = spec.mean(dim=1, keepdim=True)
        std = spec.std(dim=1, keepdim=True, unbiased=False)
        mask = torch.arange(spec.shape[-1], device=wave.device)[None, :] < frames[:, None]
        return (spec - mean) / (std + cfg.eps) * mask[:, None, :], frames


class _Backbone(nn.Module):
    """``ThinResNet.forward`` for tracing: no data-dependent Python, one pass for any mix of lengths.

    A stride-2 'SAME' stem pads by the parity of the length; a zero frame in front of each odd-length clip
    aligns it as an even-length one, so one padding fits the whole batch.
    """

    def __init__(self, net: ThinResNet, height: int) -> None:
        super().__init__()
        self.net = net
        self.height = height

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        net, stride = self.net, self.net.spec.stem_stride
        if stride > 1:
            odd = lengths % 2 == 1
            x = torch.where(odd[:, None, None, None], F.pad(x, (1, 0)), F.pad(x, (0, 1)))
            lengths = lengths + odd.long()
            kernel = net.stem.conv.kernel_size[1]
            before = (kernel - stride) // 2  # 'SAME' time padding of an even length
            x = net.stem(F.pad(x, (before, kernel - stride - before, *_same_pad(self.height, kernel, stride))))
        else:
            x = net.stem.bn(_unrolled_stem(x, net.stem.conv))
        x = F.relu(F.max_pool2d(x, 2))
        n = (lengths + stride - 1) // stride // 2
        for spec, blocks in zip(net.spec.stages, net.stages):
            n = (n + spec.stride - 1) // spec.stride
            mask = _time_mask(n, (x.shape[-1] + spec.stride - 1) // spec.stride, x.dtype)
            for block in blocks:
                x = block(x, mask)
        return F.max_pool2d(x, (3, 1), (2, 1)), n


class _Graph(nn.Module):
    """What is exported: waveforms + lengths -> unit-norm embeddings (fp32, CPU, BatchNorm folded)."""

    def __init__(self, model: SpeakerModel) -> None:
        super().__init__()
        self.frontend = _FrontEnd(model.frontend_config)
        network = copy.deepcopy(model.network).cpu().float().to(memory_format=torch.contiguous_format)
        network.backbone = _Backbone(network.backbone, model.frontend_config.n_freq)
        self.network = network.eval()

    def forward(self, waveform: Tensor, lengths: Tensor) -> Tensor:
        return self.network.embed(*self.frontend(waveform, lengths))


def _example() -> tuple[Tensor, Tensor]:
    return torch.zeros(2, 16000), torch.tensor([16000, 12001])


def _header(model: SpeakerModel) -> str:
    return json.dumps({"format": FORMAT, "version": VERSION, **model.to_config()}, sort_keys=True)


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
        needed = self.frontend_config.n_fft // 2 // (2 if self.frontend_config.mirror else 1)
        if lengths.min() <= needed:
            raise ValueError(f"clip too short for the front-end: {lengths.min()} samples (needs > {needed})")
        return self.session.run([OUTPUT], dict(zip(INPUTS, (batch, lengths))))[0]


def load_onnx_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    min_duration: float = 0.5,
    mirror: bool | None = None,
) -> OnnxSpeakerModel:
    """:class:`OnnxSpeakerModel` with :func:`~ghostvlad.inference.load_model`'s arguments (CPU and fp32 only)."""
    if resolve_device(device).type != "cpu" or precision != "fp32":
        raise ModelFileError(f"{path}: ONNX models run in fp32 on CPU; got device {device!r}, precision {precision!r}")
    return OnnxSpeakerModel(path, min_duration=min_duration, mirror=mirror)
