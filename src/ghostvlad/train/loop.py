"""The training loop: DDP-ready, mixed precision, front-end on the device, atomic checkpoints, exact resume."""
from __future__ import annotations

import copy
import csv
import itertools
import math
import os
import tempfile
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.augment import Augmenter, ChannelAugment, chain
from ..data.dataset import CropDataset, ShardCropDataset
from ..data.manifest import read_manifest
from ..data.shards import INDEX_NAME
from ..evaluate import evaluate
from ..features import FrontEndConfig, Spectrogram
from ..fileio import atomic_write_text
from ..inference import SpeakerModel, load_model
from ..modelfile import RUN_MODEL_DIR
from ..models import HEADS, SpeakerEncoder
from ..models.heads import AngularPrototypicalLoss
from ..models.pooling import NetVLAD
from . import distributed
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .config import TrainConfig, dump_config, load_config
from .sampler import EpochBatches, SessionBatches
from .schedules import SCHEDULES

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.csv"
SPEAKERS_NAME = "speakers.txt"
METRIC_FIELDS = ["time", "epoch", "step", "global_step", "loss", "acc", "lr", "crops_per_s", "data_wait", "valid_eer"]
VLAD_INITS = ("orthogonal", "kmeans")
SAMPLERS = ("random", "sessions")
KMEANS_CROPS = 128  # training crops whose frame descriptors the k-means init clusters


class TrainError(ValueError):
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
        return self.head(x.float(), labels), extra


@dataclass
class Progress:
    epoch: int = 0
    step: int = 0  # next step within the epoch
    global_step: int = 0
    best: float = math.inf  # best validation EER (or training loss when no trials are configured)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """L2 on conv/linear kernels only, as the original (no decay on BN, biases or VLAD centers)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim > 1 and not name.endswith("centers") else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    o = config.optim
    groups = _param_groups(model, o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, eps=o.eps)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, eps=o.eps)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=True)
    raise TrainError(f"unknown optimizer {o.name!r}; choose adam, adamw or sgd")


def _lr_factor(config: TrainConfig, steps_per_epoch: int):
    main = SCHEDULES.build(config.schedule.name, epochs=config.train.epochs, config=config.schedule)
    fine = config.finetune.lr / config.optim.lr

    def factor(step: int) -> float:
        epoch = step / steps_per_epoch
        return main(epoch) if epoch < config.train.epochs else fine

    return factor


def _head_margin(head: nn.Module, margin: float | None) -> None:
    if margin is not None and hasattr(head, "margin"):
        head.margin = margin


def _validate(encoder: SpeakerEncoder, config: TrainConfig, device: torch.device) -> tuple[float, float]:
    """EER and its threshold on the validation trials (whole utterances, exact batching), via :func:`evaluate`."""
    root = Path(config.valid.wav_root or Path(config.valid.trials).parent)
    model = SpeakerModel(copy.deepcopy(encoder).float(), FrontEndConfig(), device=device)
    with tempfile.TemporaryDirectory() as cache:  # the weights change every epoch: nothing worth keeping
        try:
            summary = evaluate(model, config.valid.trials, root, cache_dir=cache).summary
        except ValueError as exc:
            raise TrainError(f"validation: {exc}") from None
    return summary["eer"], summary["threshold"]


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
        raise TrainError(f"train.vlad_init=kmeans needs vlad or gvlad pooling, not {encoder.config.pooling}")
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
        raise TrainError(f"train.vlad_init=kmeans: {len(frames)} descriptors for {clusters} clusters")
    centers = KMeans(clusters, n_init=3, random_state=seed).fit(frames.astype(np.float64)).cluster_centers_
    with torch.no_grad():
        pooling.centers.copy_(torch.from_numpy(centers))


class Trainer:
    """Builds everything from a :class:`TrainConfig` and a data path; ``run()`` trains (resuming when possible)."""

    def __init__(self, config: TrainConfig, data: str | os.PathLike, out: str | os.PathLike,
                 init: str | os.PathLike | None = None, device: str | None = None, progress: bool = True) -> None:
        self.config, self.out, self.progress_bar = config, Path(out), progress
        self.dist = distributed.setup(device)
        torch.manual_seed(config.train.seed)
        self.dataset, self.speakers, size = self._dataset(Path(data))
        channels = (ChannelAugment(config.data.augment, config.train.seed, config.data.rooms, self.dataset.donor)
                    if any(p > 0 for p in config.data.augment.values()) else None)
        self.dataset.augment = chain(
            Augmenter.from_dirs(config.data.musan, config.data.rir, config.data.augment_prob), channels)
        self.batches = self._batches(size)
        encoder = SpeakerEncoder(config.model)
        if init is not None:
            self._init_from(encoder, init)
        for module in encoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = config.train.bn_momentum
        head_kwargs = {k: v for k, v in (("margin", config.head.margin), ("scale", config.head.scale)) if v is not None}
        head = HEADS.build(config.head.name, embed_dim=config.model.embed_dim, classes=self.dataset.classes,
                           **head_kwargs)
        prototypical = None
        if config.head.prototypical:
            if config.train.sampler != "sessions":
                raise TrainError("head.prototypical needs train.sampler=sessions (speaker groups in every batch)")
            prototypical = AngularPrototypicalLoss(config.train.per_speaker)
        self.net = Classifier(encoder, head, prototypical, config.head.prototypical).to(self.dist.device)
        self.frontend = Spectrogram(FrontEndConfig()).to(self.dist.device)
        if config.train.vlad_init not in VLAD_INITS:
            raise TrainError(f"unknown train.vlad_init {config.train.vlad_init!r}; choose {' or '.join(VLAD_INITS)}")
        fresh = init is None and not (self.out / CHECKPOINT_NAME).exists()  # --init and resumed runs have centers
        if config.train.vlad_init == "kmeans" and fresh and self.dist.main:  # DDP below copies rank 0's to the others
            kmeans_init_centers(encoder, self.frontend, self._first_crops(KMEANS_CROPS), config.train.seed)
        if config.train.channels_last and min(m.out_channels for m in self.net.modules() if isinstance(m, nn.Conv2d)) >= 8:
            # (oneDNN's channels-last conv backward crashes on CPU with very thin layers, e.g. width 0.125)
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ddp = DistributedDataParallel(self.net) if self.dist.world > 1 else self.net
        self.optimizer = _optimizer(self.net, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(config, self.batches.steps))
        precision = config.train.precision
        if precision not in ("fp32", "bf16", "fp16"):
            raise TrainError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
        if precision == "fp16" and self.dist.device.type != "cuda":
            raise TrainError("fp16 mixed precision needs a GPU; use bf16 on CPU")
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=precision == "fp16")
        self.state = Progress()

    # -- setup --------------------------------------------------------------------------------------
    def _dataset(self, data: Path):
        """A manifest CSV (map-style, exact resume) or a shard directory / index.json (streaming)."""
        cfg = self.config
        if data.is_dir() or data.name == INDEX_NAME:
            ds = ShardCropDataset(data, seed=cfg.train.seed, frames=cfg.data.frames,
                                  rank=self.dist.rank, world=self.dist.world, speeds=cfg.data.speeds)
            return ds, ds.speaker_ids, ds.index.utterances
        if not data.exists():
            raise TrainError(f"{data}: training data not found (give a manifest CSV or shards from `ghostvlad prepare`)")
        manifest = read_manifest(data)
        ds = CropDataset(manifest, seed=cfg.train.seed, frames=cfg.data.frames, speeds=cfg.data.speeds)
        return ds, manifest.speaker_ids(), len(manifest)

    def _batches(self, size: int) -> EpochBatches | SessionBatches:
        run = self.config.train
        if run.sampler not in SAMPLERS:
            raise TrainError(f"unknown train.sampler {run.sampler!r}; choose {' or '.join(SAMPLERS)}")
        if run.sampler == "random":
            return EpochBatches(size, run.batch_size, self.dist.rank, self.dist.world, run.seed, run.steps_per_epoch)
        if not isinstance(self.dataset, CropDataset):
            raise TrainError("train.sampler=sessions needs a manifest CSV (shards are read in stream order)")
        try:
            return SessionBatches(self.dataset.labels, self.dataset.sessions(), run.batch_size, run.per_speaker,
                                  self.dist.rank, self.dist.world, run.seed, run.steps_per_epoch)
        except ValueError as exc:
            raise TrainError(f"train.sampler=sessions: {exc}") from None

    def _first_crops(self, count: int) -> torch.Tensor:
        """Up to ``count`` training crops of epoch 0, in data order."""
        if isinstance(self.dataset, ShardCropDataset):
            crops = [wave for wave, _ in itertools.islice(iter(self.dataset), count)]
        else:
            crops = [self.dataset[i][0] for i in range(min(count, len(self.dataset)))]
        return torch.from_numpy(np.stack(crops)).to(self.dist.device)

    def _init_from(self, encoder: SpeakerEncoder, init: str | os.PathLike) -> None:
        model = load_model(init)
        if not isinstance(model, SpeakerModel):
            raise TrainError(f"{init}: --init needs a PyTorch model (directory, .safetensors or run folder)")
        source = model.encoder
        if source.config != encoder.config:
            raise TrainError(f"{init}: its network ({source.config}) differs from the config's ({encoder.config})")
        encoder.load_state_dict(source.state_dict())

    # -- checkpoints ---------------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict:
        s = self.state
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": {"epoch": s.epoch, "step": s.step, "global_step": s.global_step, "best": s.best},
            "torch_rng": torch.get_rng_state(),
        }

    def save(self) -> None:
        if self.dist.main:
            save_checkpoint(self.out / CHECKPOINT_NAME, self._checkpoint_state())

    def _resume(self) -> bool:
        path = self.out / CHECKPOINT_NAME
        if not path.exists():
            return False
        ckpt = load_checkpoint(path, map_location=self.dist.device)
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = Progress(**ckpt["progress"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        return True

    def _prepare_run_folder(self) -> None:
        config_path = self.out / CONFIG_NAME
        text = dump_config(self.config)
        if config_path.exists():
            saved = load_config(config_path)
            if saved.to_dict() != self.config.to_dict():
                diff = [f"{sec}.{k}" for sec, vals in self.config.to_dict().items()
                        for k, v in vals.items() if saved.to_dict()[sec].get(k) != v]
                raise TrainError(f"{self.out}: run exists with a different config ({', '.join(diff)}); "
                                 "use a new --out or the same settings to resume")
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in [*self.out.glob(".*.tmp"), *(self.out / RUN_MODEL_DIR).glob(".*.tmp")]:
                stale.unlink()  # half-written files of a killed run (atomic_write's temporaries)
            atomic_write_text(config_path, text)
            atomic_write_text(self.out / SPEAKERS_NAME, "\n".join(self.speakers) + "\n")

    # -- training ------------------------------------------------------------------------------------
    def _autocast(self):
        if self.config.train.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.config.train.precision == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def _loader(self, epoch: int, start: int) -> Iterable:
        """This rank's batches of ``epoch`` from step ``start`` on (same batches whatever the worker count)."""
        self.dataset.set_epoch(epoch)
        self.dataset.frames = self.config.finetune.frames if epoch >= self.config.train.epochs else self.config.data.frames
        workers = self.config.data.workers
        common = dict(num_workers=workers, pin_memory=self.dist.device.type == "cuda",
                      prefetch_factor=4 if workers else None)
        if isinstance(self.dataset, ShardCropDataset):
            per_rank = self.config.train.batch_size // self.dist.world
            loader = torch.utils.data.DataLoader(self.dataset, batch_size=per_rank, drop_last=True, **common)
            # ranks may hold a shard more or less: cycle so that every rank makes exactly `steps` steps
            stream = itertools.chain.from_iterable(itertools.repeat(loader))
            return itertools.islice(stream, start, self.batches.steps)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=self.batches.batches(epoch, start), **common)

    def _log(self, row: dict) -> None:
        if not self.dist.main:
            return
        path = self.out / METRICS_NAME
        new = not path.exists()
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})

    def _export(self, threshold: float | None) -> None:
        model = SpeakerModel(copy.deepcopy(self.net.encoder).float().cpu(), FrontEndConfig(), threshold=threshold,
                             info={"source": "ghostvlad-train", "run": self.out.name, "epoch": self.state.epoch,
                                   "global_step": self.state.global_step, "speakers": len(self.speakers)},
                             channels_last=False)
        model.save(self.out / RUN_MODEL_DIR)

    def _end_epoch(self, epoch: int, mean_loss: float) -> None:
        threshold, metric, valid_eer = None, mean_loss, None
        if self.config.valid.trials and ((epoch + 1) % self.config.valid.every == 0 or epoch + 1 == self.total_epochs):
            if self.dist.main:
                valid_eer, threshold = _validate(self.net.encoder, self.config, self.dist.device)
                metric = valid_eer
        if self.dist.main:
            if metric <= self.state.best:
                self.state.best = metric
                self._export(threshold)
            self._log({"time": f"{time.time():.0f}", "epoch": epoch, "global_step": self.state.global_step,
                       "loss": f"{mean_loss:.4f}", "valid_eer": "" if valid_eer is None else f"{valid_eer:.5f}"})

    @property
    def total_epochs(self) -> int:
        return self.config.train.epochs + self.config.finetune.epochs

    def run(self, max_steps: int | None = None, on_log=None) -> Progress:
        """Train to the end (or stop after ``max_steps`` global steps); resumes from the run folder if possible."""
        self._prepare_run_folder()
        self._resume()
        self.net.train()
        while self.state.epoch < self.total_epochs:
            epoch = self.state.epoch
            _head_margin(self.net.head, self.config.finetune.margin if epoch >= self.config.train.epochs
                         else self.config.head.margin)
            losses = []
            tick, wait, crops = time.perf_counter(), 0.0, 0
            fetch = time.perf_counter()
            for waves, labels in self._loader(epoch, self.state.step):
                wait += time.perf_counter() - fetch
                loss, acc = self._step(waves, labels)
                losses.append(loss)
                crops += len(labels) * self.dist.world
                self.state.step += 1
                self.state.global_step += 1
                if self.state.global_step % self.config.train.log_every == 0:
                    elapsed = time.perf_counter() - tick
                    row = {"time": f"{time.time():.0f}", "epoch": epoch, "step": self.state.step,
                           "global_step": self.state.global_step, "loss": f"{loss:.4f}", "acc": f"{acc:.4f}",
                           "lr": f"{self.scheduler.get_last_lr()[0]:.3g}", "crops_per_s": f"{crops / elapsed:.1f}",
                           "data_wait": f"{wait / elapsed:.3f}"}
                    self._log(row)
                    if on_log:
                        on_log(row, self.batches.steps)
                    tick, wait, crops = time.perf_counter(), 0.0, 0
                if self.state.global_step % self.config.train.checkpoint_every == 0:
                    self.save()
                if max_steps is not None and self.state.global_step >= max_steps:
                    self.save()
                    distributed.barrier(self.dist)
                    return self.state
                fetch = time.perf_counter()
            self._end_epoch(epoch, float(np.mean(losses)) if losses else math.inf)
            self.state.epoch, self.state.step = epoch + 1, 0
            self.save()
        distributed.barrier(self.dist)
        return self.state

    def _step(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        device = self.dist.device
        waves, labels = waves.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.no_grad():
            feats, _ = self.frontend(waves)
        with self._autocast():
            logits, extra = self.ddp(feats, labels)
        loss = F.cross_entropy(logits.float(), labels) + extra
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        acc = (logits.argmax(1) == labels).float().mean()
        loss_t = distributed.all_mean(loss.detach(), self.dist)
        return float(loss_t), float(acc)
