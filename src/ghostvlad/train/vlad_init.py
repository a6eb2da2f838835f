"""Initialisations of the VLAD centers of a run from scratch, by name (``train.vlad_init``)."""
from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from ..features import Spectrogram
from ..models import SpeakerEncoder
from ..models.pooling import NetVLAD
from ..registry import Registry
from ..schema import ConfigError

KMEANS_CROPS = 128  # training crops whose frame descriptors the k-means init clusters

# a factory initialises ``encoder`` in place; ``crops()`` gives training crops (drawn only when needed)
VLAD_INITS: Registry[None] = Registry("vlad_init", context=("encoder", "frontend", "crops", "seed"))


@VLAD_INITS.register("orthogonal")
def orthogonal(encoder: SpeakerEncoder, frontend: Spectrogram, crops: Callable[[], torch.Tensor], seed: int) -> None:
    """The pooling's own unit-norm orthogonal centers (the original)."""


@VLAD_INITS.register("kmeans")
def kmeans(encoder: SpeakerEncoder, frontend: Spectrogram, crops: Callable[[], torch.Tensor], seed: int) -> None:
    """A k-means clustering of the frame descriptors of the first training crops (the NetVLAD paper's)."""
    kmeans_init_centers(encoder, frontend, crops(), seed)


def kmeans_init_centers(encoder: SpeakerEncoder, frontend: Spectrogram, waves: torch.Tensor, seed: int = 0,
                        chunk: int = 32) -> None:
    """Set the VLAD centers to a k-means clustering of the frame descriptors of ``waves`` (training crops).

    The initialisation of the NetVLAD paper. With the original's unit-norm orthogonal centers, descriptors (ReLU
    outputs, norm about 7 at the start here) dwarf them, every cluster's residual sum points the same way and the
    pooling starts as a copy of one average. Descriptors come from training-mode forward passes (batch statistics);
    the BatchNorm running statistics those passes update are put back.
    """
    from sklearn.cluster import KMeans

    pooling = encoder.pooling
    if not isinstance(pooling, NetVLAD):
        raise ConfigError(f"train.vlad_init=kmeans needs vlad or gvlad pooling, not {encoder.config.pooling.name}")
    descriptors: list[torch.Tensor] = []
    hook = pooling.register_forward_hook(lambda module, args, out: descriptors.append(args[1].detach()))
    saved = copy.deepcopy(encoder.state_dict())
    training = encoder.training
    try:
        encoder.train()
        with torch.no_grad():
            for part in waves.split(chunk):
                encoder(frontend(part)[0])
    finally:
        hook.remove()
        encoder.load_state_dict(saved)
        encoder.train(training)
    frames = torch.cat([d.float().transpose(1, 2).reshape(-1, d.shape[1]) for d in descriptors]).cpu().numpy()
    clusters = pooling.centers.shape[0]
    if len(frames) < clusters:
        raise ConfigError(f"train.vlad_init=kmeans: {len(frames)} descriptors for {clusters} clusters")
    centers = KMeans(clusters, n_init=3, random_state=seed).fit(frames.astype(np.float64)).cluster_centers_
    with torch.no_grad():
        pooling.centers.copy_(torch.from_numpy(centers))
