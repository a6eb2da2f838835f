"""Independent NumPy forward pass of the original Keras model (design/original.md section 3), in float64.

Works straight from Keras weights: NHWC activations (H = frequency, W = time), kernels (kh, kw, in, out),
TensorFlow padding rules. Written without torch so it cannot share a mistake with the PyTorch model.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BN_EPS = 1e-3
STEM = "conv1_1/3x3_s1"
BLOCKS = {"resnet34s": (2, 3, 3, 3), "resnet34l": (3, 3, 3, 3)}
STAGE_STRIDES = {"resnet34s": (1, 2, 2, 2), "resnet34l": (1, 2, 1, 2)}
STEM_STRIDE = {"resnet34s": 1, "resnet34l": 2}

Weights = dict[str, list[np.ndarray]]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME': output ceil(size / stride), the odd pixel of padding goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None, stride: int = 1,
           padding: str = "valid") -> np.ndarray:
    """NHWC cross-correlation with a (kh, kw, in, out) kernel, 'valid' or TensorFlow 'same' padding."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        pads = [(0, 0), same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride), (0, 0)]
        x = np.pad(x, pads)
    windows = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]  # (B, H', W', C, kh, kw)
    y = np.einsum("bhwcij,ijco->bhwo", windows, kernel, optimize=True)
    return y if bias is None else y + bias


def max_pool(x: np.ndarray, pool: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """'valid' max-pooling of NHWC input."""
    return sliding_window_view(x, pool, axis=(1, 2))[:, :: stride[0], :: stride[1]].max(axis=(-2, -1))


def batch_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return gamma * (x - mean) / np.sqrt(var + BN_EPS) + beta


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``tf.nn.l2_normalize``: epsilon 1e-12 on the squared norm."""
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=axis, keepdims=True), 1e-12))


def conv_bn(x: np.ndarray, w: Weights, name: str, stride: int = 1, padding: str = "valid") -> np.ndarray:
    return batch_norm(conv2d(x, w[name][0], stride=stride, padding=padding), *w[f"{name}/bn"])


def bottleneck(x: np.ndarray, w: Weights, prefix: str, stride: int, project: bool) -> np.ndarray:
    """Keras conv_block_2D (project) / identity_block_2D: stride on the first 1x1 and on the projection."""
    y = relu(conv_bn(x, w, f"{prefix}_1x1_reduce", stride))
    y = relu(conv_bn(y, w, f"{prefix}_3x3", padding="same"))
    y = conv_bn(y, w, f"{prefix}_1x1_increase")
    shortcut = conv_bn(x, w, f"{prefix}_1x1_proj", stride) if project else x
    return relu(y + shortcut)


def backbone(x: np.ndarray, w: Weights, name: str) -> np.ndarray:
    """(B, 257, T, 1) -> (B, 7, T', C): stem, max-pool, four stages, mpool2."""
    x = relu(conv_bn(x, w, STEM, STEM_STRIDE[name], "same"))
    x = max_pool(x, (2, 2), (2, 2))
    for stage, (blocks, stride) in enumerate(zip(BLOCKS[name], STAGE_STRIDES[name]), start=2):
        for b in range(blocks):
            x = bottleneck(x, w, f"conv{stage}_{'abc'[b]}", stride if b == 0 else 1, project=b == 0)
    return max_pool(x, (3, 1), (2, 1))


def vlad(features: np.ndarray, scores: np.ndarray, centers: np.ndarray, clusters: int) -> np.ndarray:
    """VladPooling.call: softmax over all clusters, residuals to all centers, keep the first ``clusters``."""
    a = np.exp(scores - scores.max(axis=-1, keepdims=True))
    a = a / a.sum(axis=-1, keepdims=True)  # (B, 1, T', K+G)
    residuals = features[..., None, :] - centers  # (B, 1, T', K+G, D)
    v = np.sum(a[..., None] * residuals, axis=(1, 2))[:, :clusters]  # (B, K, D)
    v = l2_normalize(v, axis=-1)
    return v.reshape(v.shape[0], -1)  # cluster-major


def keras_embed(weights: Weights, spectrogram: np.ndarray, *, backbone_name: str, pooling: str) -> np.ndarray:
    """Embedding (E,) of one normalised spectrogram (257, T), as the Keras eval model computes it."""
    w = {k: [np.asarray(a, dtype=np.float64) for a in v] for k, v in weights.items()}
    x = np.asarray(spectrogram, dtype=np.float64)[None, :, :, None]
    x = backbone(x, w, backbone_name)
    features = relu(conv2d(x, *w["x_fc"]))  # (B, 1, T', D)
    if pooling == "tap":
        pooled = features.mean(axis=(1, 2))
    else:
        scores = conv2d(x, *w[f"{pooling}_center_assignment"])
        kernel = w["fc6"][0]
        pooled = vlad(features, scores, w[f"{pooling}_pool"][0], kernel.shape[0] // features.shape[-1])
    emb = relu(pooled @ w["fc6"][0] + w["fc6"][1])
    return l2_normalize(emb)[0]
