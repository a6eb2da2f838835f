"""Everything a training run is made of, built from a :class:`TrainConfig`: data, sampler, network (with k-means VLAD
centers or weights of another model), DDP wrapper, optimiser, learning-rate schedule and gradient scaler."""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.augment import Augmenter, ChannelAugment, chain
from ..data.dataset import CropDataset, ShardCropDataset
from ..data.manifest import read_manifest
from ..data.shards import INDEX_NAME
from ..errors import GhostvladError
from ..features import Spectrogram
from ..inference import SpeakerModel
from ..loading import load_model
from ..models import HEADS, SpeakerEncoder
from ..models.heads import AngularPrototypicalLoss
from ..precision import Precision, resolve_precision
from .averaging import WeightAverage
from .config import TrainConfig
from .distributed import DistInfo
from .optim import OPTIMIZERS
from .sampler import SAMPLERS, Batches, SamplerError
from .schedules import SCHEDULES
from .vlad_init import KMEANS_CROPS, VLAD_INITS


class TrainError(GhostvladError):
    """A training setup problem, reported as one line."""


class Classifier(nn.Module):
    """Encoder + classification head (+ the optional prototypical loss), one module so DDP synchronises them.

    ``forward`` returns the head's logits and the weighted prototypical loss (0 without one).
    """

    def __init__(self, encoder: SpeakerEncoder, head: nn.Module, prototypical: AngularPrototypicalLoss | None = None,
                 prototypical_weight: float = 0.0) -> None:
        super().__init__()
        self.encoder, self.head, self.prototypical = encoder, head, prototypical
        self.prototypical_weight = prototypical_weight

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encoder(feats)
        extra = (self.prototypical_weight * self.prototypical(x) if self.prototypical is not None
                 else x.new_zeros((), dtype=torch.float32))
        return self.head(x, labels), extra  # both fp32: the head and the loss leave autocast


@dataclass
class Components:
    """The parts of a run; :meth:`stateful` names those a checkpoint holds."""

    dataset: CropDataset | ShardCropDataset
    speakers: list[str]
    utterances: int
    batches: Batches
    net: Classifier  # the module itself (weights, checkpoints, export)
    forward: nn.Module  # what a step calls: ``net`` wrapped by DDP and torch.compile as configured
    frontend: Spectrogram
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    precision: Precision
    fused: bool  # the optimiser skips a step itself on a device-side ``found_inf`` flag
    average: WeightAverage | None = None  # ``train.ema``: the averaged encoder

    @property
    def encoder(self) -> SpeakerEncoder:
        """The encoder a run validates and exports: the weight average with ``train.ema``, else the trained one."""
        return self.net.encoder if self.average is None else self.average.module

    def stateful(self) -> dict[str, Any]:
        """Checkpoint key -> object with ``state_dict`` / ``load_state_dict``."""
        parts = {"model": self.net, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}
        return parts if self.average is None else {**parts, "average": self.average}


def build(config: TrainConfig, data: str | os.PathLike, dist: DistInfo, *, init: str | os.PathLike | None = None,
          fresh: bool = True, bad_log: str | os.PathLike | None = None) -> Components:
    """Build a run's components on ``dist.device``. ``fresh``: a new run (no checkpoint to resume), whose VLAD centers
    ``train.vlad_init=kmeans`` sets (rank 0; DDP copies them to the others). ``bad_log``: where the dataset logs
    files that fail to decode."""
    precision = resolve_precision(config.train.precision, dist.device)
    precision.check_device(dist.device.type)
    gpu_settings(config, dist.device)
    torch.manual_seed(config.train.seed)
    dataset, speakers, size = _dataset(config, Path(data), dist)
    channels = (ChannelAugment(config.data.augment, config.train.seed, config.data.rooms, dataset.donor)
                if any(p > 0 for p in config.data.augment.values()) else None)
    dataset.augment = chain(Augmenter.from_dirs(config.data.musan, config.data.rir, config.data.augment_prob), channels)
    dataset.bad_log = None if bad_log is None else str(bad_log)
    if config.train.batch_size > size:
        raise TrainError(f"train.batch_size={config.train.batch_size} is larger than the {size} utterances of "
                         f"{data}; use a batch size of at most {size}")
    batches = _batches(config, dataset, size, dist)
    net = _classifier(config, dataset.classes, init).to(dist.device)
    frontend = Spectrogram(config.frontend).to(dist.device)
    if fresh and init is None and dist.main:  # --init and resumed runs have their centers
        VLAD_INITS.build(config.train.vlad_init, encoder=net.encoder, frontend=frontend, seed=config.train.seed,
                         crops=lambda: first_crops(dataset, KMEANS_CROPS, dist.device))
    net = training_layout(net, config)
    if config.train.sync_bn and dist.world > 1:
        if dist.device.type != "cuda":
            raise TrainError("train.sync_bn=true needs GPUs (SyncBatchNorm has no CPU implementation)")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # same parameters and buffers, in place
    average = None if config.train.ema is None else WeightAverage(net.encoder, config.train.ema)
    ddp = DistributedDataParallel(net) if dist.world > 1 else net
    fused = dist.device.type == "cuda"
    optimizer = build_optimizer(net, config, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, batches.steps))
    scaler = torch.amp.GradScaler(dist.device.type, enabled=precision.scaled)
    return Components(dataset, speakers, size, batches, net, torch.compile(ddp) if config.train.compile else ddp,
                      frontend, optimizer, scheduler, scaler, precision, fused, average)


def training_layout(net: nn.Module, config: TrainConfig) -> nn.Module:
    """``net`` in the memory layout it trains in: channels-last with ``train.channels_last`` (not for layers thinner
    than 8 channels: oneDNN's channels-last conv backward crashes on CPU with those, e.g. width 0.125)."""
    if config.train.channels_last and min(m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)) >= 8:
        return net.to(memory_format=torch.channels_last)
    return net


def gpu_settings(config: TrainConfig, device: torch.device) -> None:
    """cuDNN autotuning and the TF32 policy (process-wide settings; only on a GPU)."""
    if device.type != "cuda":
        return
    run = config.train
    torch.backends.cudnn.benchmark = run.cudnn_benchmark
    policy = "tf32" if run.tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = policy
    torch.backends.cudnn.conv.fp32_precision = policy


def _dataset(config: TrainConfig, data: Path, dist: DistInfo):
    """A manifest CSV (map-style, exact resume) or a shard directory / index.json (streaming)."""
    if data.is_dir() or data.name == INDEX_NAME:
        ds = ShardCropDataset(data, seed=config.train.seed, frames=config.data.frames, rank=dist.rank, world=dist.world,
                              speeds=config.data.speeds)
        return ds, ds.speaker_ids, ds.index.utterances
    if not data.exists():
        raise TrainError(f"{data}: training data not found (give a manifest CSV or shards from `ghostvlad prepare`)")
    manifest = read_manifest(data)
    ds = CropDataset(manifest, seed=config.train.seed, frames=config.data.frames, speeds=config.data.speeds)
    return ds, manifest.speaker_ids(), len(manifest)


def _batches(config: TrainConfig, dataset: CropDataset | ShardCropDataset, size: int, dist: DistInfo) -> Batches:
    """The run's sampler; with ``train.min_steps``, epochs of a small corpus hold more than one pass."""
    run = config.train
    try:
        batches = SAMPLERS.build(run.sampler, dataset=dataset, size=size, batch_size=run.batch_size,
                                 per_speaker=run.per_speaker, rank=dist.rank, world=dist.world, seed=run.seed,
                                 steps=run.steps_per_epoch)
    except SamplerError as exc:
        raise TrainError(f"train.sampler={run.sampler}: {exc}") from None
    if run.min_steps is not None and batches.steps * run.epochs < run.min_steps:
        batches.steps = math.ceil(run.min_steps / run.epochs)
    return batches


def _classifier(config: TrainConfig, classes: int, init: str | os.PathLike | None) -> Classifier:
    """Encoder (from ``init``'s weights when given), head and the optional prototypical loss."""
    encoder = SpeakerEncoder(config.model, config.frontend.n_freq)
    if init is not None:
        _init_from(encoder, init)
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = config.train.bn_momentum
    head = HEADS.build(config.head.name, embed_dim=config.model.embed_dim, classes=classes, **config.head.args())
    prototypical = None
    if config.head.prototypical:
        if config.train.sampler != "sessions":
            raise TrainError("head.prototypical needs train.sampler=sessions (speaker groups in every batch)")
        prototypical = AngularPrototypicalLoss(config.train.per_speaker)
    return Classifier(encoder, head, prototypical, config.head.prototypical)


def _init_from(encoder: SpeakerEncoder, init: str | os.PathLike) -> None:
    model = load_model(init)
    if not isinstance(model, SpeakerModel):
        raise TrainError(f"{init}: --init needs a PyTorch model (directory, .safetensors or run folder)")
    source = model.saved_encoder
    if source.config != encoder.config:
        raise TrainError(f"{init}: its network ({source.config}) differs from the config's ({encoder.config})")
    if source.freq_bins != encoder.freq_bins:
        raise TrainError(f"{init}: it reads {source.freq_bins} frequency bins (its frontend.max_freq "
                         f"{model.frontend_config.max_freq}), the config {encoder.freq_bins}")
    encoder.load_state_dict(source.state_dict())


def first_crops(dataset: CropDataset | ShardCropDataset, count: int, device: torch.device) -> torch.Tensor:
    """Up to ``count`` training crops of epoch 0, in data order."""
    if isinstance(dataset, ShardCropDataset):
        crops = [wave for wave, _ in itertools.islice(iter(dataset), count)]
    else:
        crops = [dataset[i][0] for i in range(min(count, len(dataset)))]
    return torch.from_numpy(np.stack(crops)).to(device)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """L2 on conv/linear kernels only, as the original (no decay on BN, biases or VLAD centers)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim > 1 and not name.endswith("centers") else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """``fused``: one kernel per step that also skips the step on a device-side ``found_inf`` flag (no host sync)."""
    o = config.optim
    return OPTIMIZERS.build(o.name, params=param_groups(model, o.weight_decay), lr=o.lr, fused=fused, **o.args())


def lr_factor(config: TrainConfig, steps_per_epoch: int):
    """The learning-rate factor of a global step: the main schedule over ``train.epochs``, then fine-tuning's."""
    main = SCHEDULES.build(config.schedule.name, epochs=config.train.epochs, config=config.schedule)
    fine = config.finetune.lr / config.optim.lr

    def factor(step: int) -> float:
        epoch = step / steps_per_epoch
        return main(epoch) if epoch < config.train.epochs else fine

    return factor
