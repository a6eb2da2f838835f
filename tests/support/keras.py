"""Write Keras 2.2.4-style HDF5 weight files of the original model (design/original.md section 7).

The layout is reproduced without Keras: ``layer_names`` lists every layer of ``model.layers`` (weightless ones
included) in Keras' topological order, each layer is a group whose ``weight_names`` attribute lists datasets named
``<layer>/<weight>:0`` relative to the group; the ``/`` in the names makes h5py nest the groups.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

STAGES = {  # (filters reduce/3x3/increase, number of blocks) of stages conv2..conv5
    "resnet34s": (((48, 48, 96), 2), ((96, 96, 128), 3), ((128, 128, 256), 3), ((256, 256, 512), 3)),
    "resnet34l": (((64, 64, 256), 3), ((128, 128, 512), 3), ((256, 256, 1024), 3), ((512, 512, 2048), 3)),
}
STEM = "conv1_1/3x3_s1"


def _ch(n: int, width: float) -> int:
    return max(1, round(n * width))


def layer_specs(backbone: str, width: float, pooling: str, clusters: int, ghost_clusters: int,
                descriptor_dim: int, embed_dim: int, num_classes: int | None = None) -> list[tuple[str, str, tuple]]:
    """``(name, kind, shape)`` for every layer in ``layer_names`` order.

    kind is ``conv`` (shape = kernel (kh, kw, in, out)), ``conv_bias``, ``bn`` (channels,), ``centers``, ``dense``,
    ``dense_nobias`` or ``none`` (weightless). With ``num_classes`` the training model is written: ``prediction``
    replaces the final ``lambda_1``.
    """
    counters = {"activation": 0, "add": 0}

    def auto(kind: str) -> tuple[str, str, tuple]:
        counters[kind] += 1
        return f"{kind}_{counters[kind]}", "none", ()

    def conv_bn(name: str, k: int, cin: int, cout: int) -> list[tuple[str, str, tuple]]:
        return [(name, "conv", (k, k, cin, cout)), (f"{name}/bn", "bn", (cout,))]

    stem = _ch(64, width)
    out = [("input", "none", ()), *conv_bn(STEM, 7, 1, stem), auto("activation"), ("max_pooling2d_1", "none", ())]
    cin = stem
    for stage, (filters, blocks) in enumerate(STAGES[backbone], start=2):
        r, m, o = (_ch(f, width) for f in filters)
        for b in range(blocks):
            p = f"conv{stage}_{'abc'[b]}"
            out += [(f"{p}_1x1_reduce", "conv", (1, 1, cin, r)), (f"{p}_1x1_reduce/bn", "bn", (r,)), auto("activation"),
                    *conv_bn(f"{p}_3x3", 3, r, m), auto("activation"), (f"{p}_1x1_increase", "conv", (1, 1, m, o))]
            if b == 0:  # conv_block_2D: the projection conv is created right after the increase conv
                out += [(f"{p}_1x1_proj", "conv", (1, 1, cin, o)), (f"{p}_1x1_increase/bn", "bn", (o,)),
                        (f"{p}_1x1_proj/bn", "bn", (o,))]
            else:
                out.append((f"{p}_1x1_increase/bn", "bn", (o,)))
            out += [auto("add"), auto("activation")]
            cin = o
    out += [("mpool2", "none", ()), ("x_fc", "conv_bias", (7, 1, cin, descriptor_dim))]
    if pooling == "tap":
        out += [("avg_pool", "none", ()), ("fc6", "dense", (descriptor_dim, embed_dim))]
    else:
        total = clusters + (ghost_clusters if pooling == "gvlad" else 0)
        out += [(f"{pooling}_center_assignment", "conv_bias", (7, 1, cin, total)),
                (f"{pooling}_pool", "centers", (total, descriptor_dim)),
                ("fc6", "dense", (clusters * descriptor_dim, embed_dim))]
    out.append(("prediction", "dense_nobias", (embed_dim, num_classes)) if num_classes else ("lambda_1", "none", ()))
    return out


def _random_weights(name: str, kind: str, shape: tuple, rng: np.random.Generator,
                    marks: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Weights in Keras order, scaled so activations stay O(1) through the random network.

    Per backbone conv, ~20 % of the channels are dead as in the released file (kernel ~1e-33, BN moving mean and
    variance exactly 0) and ~10 % are quiet (kernel x 0.03, variance ~1e-3), which makes BN's eps matter.
    """
    if kind in ("conv", "conv_bias"):
        fan_in = int(np.prod(shape[:3]))
        kernel = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        if kind == "conv_bias":
            return [kernel, rng.normal(0.0, 0.1, shape[3])]
        mark = rng.choice(3, size=shape[3], p=[0.7, 0.2, 0.1])  # 0 live, 1 dead, 2 quiet
        kernel[..., mark == 1] = 1e-33
        kernel[..., mark == 2] *= 0.03
        marks[name] = mark
        return [kernel]
    if kind == "bn":
        mark = marks[name.removesuffix("/bn")]
        gamma, beta = rng.uniform(0.4, 0.8, shape), rng.normal(0.0, 0.2, shape)
        mean, var = rng.normal(0.0, 0.2, shape), rng.uniform(0.5, 1.5, shape)
        mean[mark == 1], var[mark == 1] = 0.0, 0.0
        mean[mark == 2], var[mark == 2] = 0.0, rng.uniform(5e-4, 2e-3, int((mark == 2).sum()))
        return [gamma, beta, mean, var]
    if kind == "centers":
        return [rng.normal(0.0, 0.3, shape)]
    if kind == "dense":
        return [rng.normal(0.0, np.sqrt(2.0 / shape[0]), shape), rng.normal(0.0, 0.05, shape[1])]
    if kind == "dense_nobias":
        return [rng.normal(0.0, np.sqrt(1.0 / shape[0]), shape)]
    return []


SUFFIXES = {"conv": ("kernel:0",), "conv_bias": ("kernel:0", "bias:0"), "dense": ("kernel:0", "bias:0"),
            "dense_nobias": ("kernel:0",), "centers": ("centers:0",), "none": (),
            "bn": ("gamma:0", "beta:0", "moving_mean:0", "moving_variance:0")}


def _strings(values: list[str], string_kind: str) -> np.ndarray:
    if not values:
        return np.array([], dtype=np.float64)  # what np.asarray([]) gives Keras for weightless layers
    if string_kind == "bytes":
        return np.array([v.encode("utf8") for v in values])  # fixed-length, as Keras 2.2.4 + h5py 2 wrote
    return np.array(values, dtype=h5py.string_dtype())  # variable-length, as tf-keras + h5py 3 write


def _scalar(value: str, string_kind: str) -> bytes | str:
    return value.encode("utf8") if string_kind == "bytes" else value


def write_keras_h5(path: str | Path, *, backbone: str, width: float, pooling: str, clusters: int,
                   ghost_clusters: int, descriptor_dim: int, embed_dim: int, layout: str = "root",
                   string_kind: str = "bytes", with_prediction: bool = False, seed: int = 0,
                   num_classes: int = 11) -> dict[str, list[np.ndarray]]:
    """Write random weights in the Keras layout; return ``{layer name: [weights in weight_names order]}``.

    ``layout="root"`` is ``save_weights``; ``"model_weights"`` is ``model.save`` (weights under the group
    ``model_weights``, model/training config at the root and an ``optimizer_weights`` group).
    ``string_kind="str"`` also adds the tf-keras ``top_level_model_weights`` group (not in ``layer_names``).
    """
    rng = np.random.default_rng(seed)
    specs = layer_specs(backbone, width, pooling, clusters, ghost_clusters, descriptor_dim, embed_dim,
                        num_classes if with_prediction else None)
    version = "2.2.4" if string_kind == "bytes" else "2.21.0"
    marks: dict[str, np.ndarray] = {}
    weights: dict[str, list[np.ndarray]] = {}
    with h5py.File(path, "w") as f:
        root = f
        if layout == "model_weights":
            for key, value in (("keras_version", version), ("backend", "tensorflow"),
                               ("model_config", json.dumps({"class_name": "Model", "config": {"name": "vggvox"}})),
                               ("training_config", json.dumps({"loss": "categorical_crossentropy"}))):
                f.attrs[key] = _scalar(value, string_kind)
            root = f.create_group("model_weights")
            opt = f.create_group("optimizer_weights")
            opt.attrs["weight_names"] = _strings(["Adam/iterations:0"], string_kind)
            opt.create_dataset("Adam/iterations:0", data=np.int64(0))
        elif layout != "root":
            raise ValueError(f"unknown layout {layout!r}")
        root.attrs["layer_names"] = _strings([name for name, _, _ in specs], string_kind)
        root.attrs["backend"] = _scalar("tensorflow", string_kind)
        root.attrs["keras_version"] = _scalar(version, string_kind)
        for name, kind, shape in specs:
            values = [v.astype(np.float32) for v in _random_weights(name, kind, shape, rng, marks)]
            names = [f"{name}/{suffix}" for suffix in SUFFIXES[kind]]
            group = root.create_group(name)
            group.attrs["weight_names"] = _strings(names, string_kind)
            for wname, value in zip(names, values):
                group.create_dataset(wname, data=value)
            if values:
                weights[name] = values
        if string_kind == "str":
            top = root.create_group("top_level_model_weights")
            top.attrs["weight_names"] = _strings([], string_kind)
    return weights
