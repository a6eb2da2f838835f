"""Convert the authors' Keras HDF5 weights (``weights.h5`` of VGG-Speaker-Recognition) into a :class:`SpeakerEncoder`.

Reads both Keras layouts (``save_weights``: weights at the root; ``model.save``: under ``model_weights``) and both
string encodings (fixed-length bytes from Keras 2.2.4 / h5py 2, variable-length str from tf-keras / h5py 3).
Conversion is driven by the ``layer_names`` and ``weight_names`` attributes; weights are matched by their suffix
(``kernel:0``, ``gamma:0``, ...), so suffixed TF scopes (``x_fc_1/kernel:0``) still load. The architecture is
inferred from the file (layer names and shapes) and every shape is checked against the built model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..errors import GhostvladError
from ..models.backbones import SPECS, scaled_channels
from ..models.encoder import EncoderConfig, SpeakerEncoder

__all__ = ["KerasConversionError", "infer_keras_config", "read_keras_encoder"]

STEM = "conv1_1/3x3_s1"
CLASSIFIER = "prediction"  # Dense of the training model; not part of the encoder
PARTS = {"reduce": "1x1_reduce", "mid": "3x3", "increase": "1x1_increase", "proj": "1x1_proj"}
BN_WEIGHTS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


class KerasConversionError(GhostvladError):
    """The file is not a Keras weights file of this model, or does not match what was asked."""


@dataclass(frozen=True)
class _KerasWeights:
    path: Path
    layer_names: list[str]
    weights: dict[str, dict[str, np.ndarray]]  # layer -> weight suffix ("kernel", "gamma", ...) -> array
    keras_version: str | None
    layout: str

    def fail(self, message: str) -> KerasConversionError:
        return KerasConversionError(f"{self.path}: {message}")

    def get(self, layer: str, suffix: str) -> np.ndarray:
        if layer not in self.weights:
            raise self.fail(f"missing layer {layer!r}")
        try:
            return self.weights[layer][suffix]
        except KeyError:
            raise self.fail(f"{layer}: no '{suffix}' weight (has {', '.join(self.weights[layer])})") from None


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _strings(attrs: h5py.AttributeManager, name: str) -> list[str] | None:
    """A string-list attribute, also when Keras split it into ``name0``, ``name1``, ... (above 64 KB)."""
    if name in attrs:
        chunks = [attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in attrs:
            chunks.append(attrs[f"{name}{len(chunks)}"])
        if not chunks:
            return None
    return [_text(v) for chunk in chunks for v in np.atleast_1d(chunk)]


def _read(path: str | Path) -> _KerasWeights:
    path = Path(path)
    if not path.is_file():
        raise KerasConversionError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise KerasConversionError(f"{path}: not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            root, layout = f, "root"
            if _strings(f.attrs, "layer_names") is None and isinstance(f.get("model_weights"), h5py.Group):
                root, layout = f["model_weights"], "model_weights"
            names = _strings(root.attrs, "layer_names")
            if names is None:
                raise KerasConversionError(
                    f"{path}: no 'layer_names' attribute at the root or in 'model_weights'; not a Keras weights file")
            version = root.attrs.get("keras_version", f.attrs.get("keras_version"))
            weights = {}
            for layer in names:
                values = _read_layer(root, layer, path)
                if values:
                    weights[layer] = values
    except OSError as e:
        raise KerasConversionError(f"{path}: cannot read the HDF5 file ({e})") from None
    return _KerasWeights(path, names, weights, None if version is None else _text(version), layout)


def _read_layer(root: h5py.Group, layer: str, path: Path) -> dict[str, np.ndarray]:
    group = root.get(layer)
    if not isinstance(group, h5py.Group):
        raise KerasConversionError(f"{path}: layer {layer!r} is listed in layer_names but has no group")
    values = {}
    for name in _strings(group.attrs, "weight_names") or []:
        data = group.get(name)
        if not isinstance(data, h5py.Dataset):
            raise KerasConversionError(f"{path}: {layer}: weight {name!r} is listed in weight_names but missing")
        suffix = name.rsplit("/", 1)[-1].split(":")[0]  # "x_fc_1/kernel:0" -> "kernel"
        if suffix in values:
            raise KerasConversionError(f"{path}: {layer}: two weights named '{suffix}'")
        if data.dtype.kind not in "fiu":
            raise KerasConversionError(f"{path}: {layer}: weight {name!r} holds {data.dtype} values, not numbers")
        values[suffix] = np.asarray(data[()], dtype=np.float32)
        if not np.isfinite(values[suffix]).all():
            raise KerasConversionError(f"{path}: {layer}: weight {name!r} holds NaN or infinite values")
    return values


def _pooling(kw: _KerasWeights) -> str:
    found = [p for p in ("gvlad", "vlad") if f"{p}_center_assignment" in kw.weights or f"{p}_pool" in kw.weights]
    if len(found) > 1:
        raise kw.fail("has both gvlad_* and vlad_* layers")
    return found[0] if found else "tap"


def _channel_layers(backbone: str) -> list[tuple[str, int]]:
    """(Keras conv, channels at width 1) for the stem and the three convs of each stage's first block."""
    spec = SPECS[backbone]
    out = [(STEM, spec.stem_channels)]
    for s, stage in enumerate(spec.stages, start=2):
        out += [(f"conv{s}_a_{part}", base) for part, base in zip(("1x1_reduce", "3x3", "1x1_increase"), stage.filters)]
    return out


def _channels(backbone: str, width: float) -> list[int]:
    """Channel counts at ``width``, as the backbone computes them."""
    return [scaled_channels(base, width) for _, base in _channel_layers(backbone)]


def _width(kw: _KerasWeights, backbone: str) -> float:
    """The channel multiplier that reproduces every stage's channel counts (:func:`scaled_channels`)."""
    pairs = [(base, kw.get(layer, "kernel").shape[-1], layer) for layer, base in _channel_layers(backbone)]

    def fits(w: float) -> bool:
        return _channels(backbone, w) == [n for _, n, _ in pairs]

    lo = max((n - 0.5) / base if n > 1 else 0.0 for base, n, _ in pairs)
    hi = min((n + 0.5) / base for base, n, _ in pairs)
    stem_width = pairs[0][1] / pairs[0][0]
    # the shortest decimal first: a file written at width 0.3 has a 19-channel stem, and 19 / 64 does not fit
    for w in (*(round((lo + hi) / 2, d) for d in range(1, 7)), stem_width, (lo + hi) / 2):
        if w > 0 and fits(w):
            return w
    w = stem_width
    base, n, layer = next(p for p in pairs if scaled_channels(p[0], w) != p[1])
    raise kw.fail(f"{layer}: {n} output channels do not fit the {pairs[0][1]}-channel stem "
                  f"(width {w:g} gives {scaled_channels(base, w)})")


def _infer(kw: _KerasWeights) -> EncoderConfig:
    backbone = "resnet34l" if "conv2_c_1x1_reduce" in kw.weights else "resnet34s"
    pooling = _pooling(kw)
    width = _width(kw, backbone)
    dim = kw.get("x_fc", "kernel").shape[-1]
    fc6 = kw.get("fc6", "kernel")
    if fc6.ndim != 2:
        raise kw.fail(f"fc6: kernel has shape {fc6.shape}, expected (inputs, units)")
    clusters = ghosts = 0
    if pooling != "tap":
        total = kw.get(f"{pooling}_center_assignment", "kernel").shape[-1]
        clusters = fc6.shape[0] // dim if pooling == "gvlad" else total
        ghosts = total - clusters if pooling == "gvlad" else 0
        if pooling == "gvlad" and (fc6.shape[0] % dim or not 0 < clusters <= total):
            raise kw.fail(f"fc6: {fc6.shape[0]} inputs are not k x {dim} descriptor channels for k in 1..{total} "
                          f"({pooling}_center_assignment has {total} outputs)")
    try:
        return EncoderConfig.from_dict(dict(backbone=backbone, width=width, pooling=pooling, clusters=clusters,
                                            ghost_clusters=ghosts, descriptor_dim=dim, embed_dim=fc6.shape[1]))
    except ValueError as e:
        raise kw.fail(f"unsupported configuration: {e}") from None


def _check_expected(kw: _KerasWeights, config: EncoderConfig, expected: dict[str, Any]) -> EncoderConfig:
    """``config`` if the file matches every key of ``expected`` (keys of :meth:`EncoderConfig.flat`; an equivalent
    asked width is kept)."""
    got = config.flat()
    unknown = set(expected) - set(got)
    if unknown:
        raise TypeError(f"unknown EncoderConfig field(s): {', '.join(sorted(unknown))}")
    backbone, pooling = expected.get("backbone", got["backbone"]), expected.get("pooling", got["pooling"])
    if backbone != got["backbone"]:
        has = "with" if got["backbone"] == "resnet34l" else "without"
        raise kw.fail(f"conv2_c_1x1_reduce: the file has a {got['backbone']} backbone ({has} conv2_c_* layers), "
                      f"{backbone} was asked")
    layer = f"{got['pooling'] if got['pooling'] != 'tap' else pooling}_center_assignment"
    if pooling != got["pooling"]:
        raise kw.fail(f"{layer}: the file has {got['pooling']} pooling, {pooling} was asked")
    want = {**got, **expected}
    width = want["width"]
    if _channels(got["backbone"], width) != _channels(got["backbone"], got["width"]):
        conv, n, m = next((conv, n, m) for (conv, _), n, m in zip(_channel_layers(got["backbone"]), _channels(
            got["backbone"], got["width"]), _channels(got["backbone"], width)) if n != m)
        raise kw.fail(f"{conv}: the file has width {got['width']:g} ({n} channels here), "
                      f"width {width:g} was asked ({m} channels)")
    # compared as asked: --ghost-clusters 2 for a NetVLAD file is a mismatch, not a no-op
    clusters, ghosts = want["clusters"], want["ghost_clusters"]
    if (clusters, ghosts) != (got["clusters"], got["ghost_clusters"]):
        if got["pooling"] == "tap":
            raise kw.fail(f"the file has tap pooling (no clusters), {clusters} + {ghosts} clusters were asked")
        if got["pooling"] == "gvlad" or ghosts:
            raise kw.fail(f"{layer}: the file has {got['clusters'] + got['ghost_clusters']} clusters "
                          f"({got['clusters']} + {got['ghost_clusters']} ghost), {clusters} + {ghosts} were asked")
        raise kw.fail(f"{layer}: the file has {got['clusters']} clusters, {clusters} were asked")
    if want["descriptor_dim"] != got["descriptor_dim"]:
        raise kw.fail(f"x_fc: the file has {got['descriptor_dim']} descriptor channels, {want['descriptor_dim']} "
                      "were asked")
    if want["embed_dim"] != got["embed_dim"]:
        raise kw.fail(f"fc6: the file has {got['embed_dim']} embedding units, {want['embed_dim']} were asked")
    return EncoderConfig.from_dict({**got, "width": width})


def _source(key: str, pooling: str) -> tuple[str, str]:
    """(Keras layer, weight suffix) holding the SpeakerEncoder parameter ``key``."""
    *module, param = key.split(".")
    if module[:2] == ["backbone", "stem"]:
        layer = STEM
    elif module[:2] == ["backbone", "stages"] and len(module) == 6:
        _, _, stage, block, part, _ = module
        layer = f"conv{int(stage) + 2}_{'abc'[int(block)]}_{PARTS[part]}"
    else:
        heads = {"descriptor": "x_fc", "pooling.assignment": f"{pooling}_center_assignment",
                 "pooling": f"{pooling}_pool", "embedding": "fc6"}
        if ".".join(module) not in heads:
            raise RuntimeError(f"the Keras converter does not know the SpeakerEncoder parameter {key!r}")
        return heads[".".join(module)], {"weight": "kernel", "bias": "bias", "centers": "centers"}[param]
    if module[-1] == "bn":
        return f"{layer}/bn", BN_WEIGHTS[param]
    return layer, "kernel"


def _to_torch(array: np.ndarray, suffix: str) -> np.ndarray:
    """Keras kernel -> PyTorch weight: conv (kh, kw, in, out) -> (out, in, kh, kw), dense (in, out) -> (out, in)."""
    if suffix != "kernel":
        return array
    return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T


def _keras_shape(shape: tuple[int, ...], suffix: str) -> tuple[int, ...]:
    """The Keras shape of a PyTorch parameter of ``shape`` (inverse of :func:`_to_torch`)."""
    if suffix != "kernel":
        return shape
    return (shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4 else shape[::-1]


def _state_dict(kw: _KerasWeights, encoder: SpeakerEncoder) -> tuple[dict[str, torch.Tensor], set[str]]:
    state, used = encoder.state_dict(), set()
    for key, target in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        layer, suffix = _source(key, encoder.config.pooling.name)
        value = kw.get(layer, suffix)
        needed = _keras_shape(tuple(target.shape), suffix)
        if value.shape != needed:
            raise kw.fail(f"{layer}: '{suffix}' has shape {value.shape} in the file, the inferred model needs {needed}")
        state[key] = torch.from_numpy(np.ascontiguousarray(_to_torch(value, suffix)))
        used.add(layer)
    return state, used


def infer_keras_config(path: str | Path) -> EncoderConfig:
    """The :class:`EncoderConfig` of a Keras weights file, from its layer names and weight shapes alone."""
    return _infer(_read(path))


def read_keras_encoder(path: str | Path, **expected: Any) -> tuple[SpeakerEncoder, dict[str, Any]]:
    """Load a Keras ``weights.h5`` into a :class:`SpeakerEncoder` (in eval mode).

    ``expected`` may state any :class:`EncoderConfig` field; a mismatch with the file raises
    :class:`KerasConversionError` naming the layer. The info dict holds ``config``, ``keras_version``, ``layout``
    (``"root"`` or ``"model_weights"``), ``layer_count`` (entries of ``layer_names``), ``weighted_layer_count`` and
    ``skipped_layers`` (weighted layers that are not part of the encoder: the training classifier ``prediction``).
    """
    kw = _read(path)
    config = _infer(kw)
    config = _check_expected(kw, config, expected)
    encoder = SpeakerEncoder(config)
    state, used = _state_dict(kw, encoder)
    skipped = sorted(set(kw.weights) - used)
    unknown = [layer for layer in skipped if layer != CLASSIFIER]
    if unknown:
        raise kw.fail(f"{unknown[0]}: layer with weights that is not part of a {config.backbone.name} "
                      f"{config.pooling.name} encoder")
    encoder.load_state_dict(state, strict=True)
    encoder.eval()
    info = {"config": config, "keras_version": kw.keras_version, "layout": kw.layout,
            "layer_count": len(kw.layer_names), "weighted_layer_count": len(kw.weights), "skipped_layers": skipped}
    return encoder, info
