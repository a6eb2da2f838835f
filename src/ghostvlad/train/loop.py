"""The training loop: DDP-ready, mixed precision, front-end on the device, atomic checkpoints, exact resume."""
from __future__ import annotations

import copy
import csv
import dataclasses
import fcntl
import io
import itertools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.augment import Augmenter, ChannelAugment, chain
from ..data.dataset import CropDataset, ShardCropDataset, crop_samples, read_bad_files
from ..data.manifest import read_manifest
from ..data.shards import INDEX_NAME
from ..errors import GhostvladError, describe
from ..evaluate import evaluate
from ..features import FrontEndConfig, Spectrogram
from ..fileio import atomic_write_text
from ..inference import SpeakerModel, load_model
from ..modelfile import RUN_MODEL_DIR
from ..models import HEADS, SpeakerEncoder
from ..models.heads import AngularPrototypicalLoss
from ..models.pooling import NetVLAD
from . import distributed
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig, dump_config, load_config
from .sampler import EpochBatches, SessionBatches
from .schedules import SCHEDULES

CONFIG_NAME = "config.yaml"
LOCK_NAME = "train.lock"  # held (flock) by the training process using the run folder; holds its pid
METRICS_NAME = "metrics.csv"
SPEAKERS_NAME = "speakers.txt"
BAD_FILES_NAME = "bad_files.txt"
METRIC_FIELDS = ["time", "epoch", "step", "global_step", "loss", "acc", "lr", "crops_per_s", "data_wait", "valid_eer",
                 "skipped"]
VLAD_INITS = ("orthogonal", "kmeans")
SAMPLERS = ("random", "sessions")
KMEANS_CROPS = 128  # training crops whose frame descriptors the k-means init clusters


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
class Progress:
    epoch: int = 0
    step: int = 0  # next step within the epoch
    global_step: int = 0
    best: float = math.inf  # best validation EER (or training loss when no trials are configured)
    loss_sum: float = 0.0  # this epoch's losses so far (kept across a resume, for the epoch's mean loss)
    loss_steps: int = 0


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """L2 on conv/linear kernels only, as the original (no decay on BN, biases or VLAD centers)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim > 1 and not name.endswith("centers") else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _optimizer(model: nn.Module, config: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """``fused``: one kernel per step that also skips the step on a device-side ``found_inf`` flag (no host sync)."""
    o = config.optim
    groups = _param_groups(model, o.weight_decay)
    extra = {"fused": True} if fused else {}
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, eps=o.eps, **extra)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, eps=o.eps, **extra)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=True, **extra)
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


def _validate(encoder: SpeakerEncoder, config: TrainConfig, info: distributed.DistInfo) -> tuple[float, float] | None:
    """EER and its threshold on the validation trials (whole utterances, exact batching), via :func:`evaluate`.

    Every rank embeds its share of the files; rank 0 gathers them and scores (the other ranks get None). A failure
    on any rank fails all of them.
    """
    root = Path(config.valid.wav_root or Path(config.valid.trials).parent)
    model = SpeakerModel(copy.deepcopy(encoder).float(), FrontEndConfig(), device=info.device)
    problem, result = None, None
    with tempfile.TemporaryDirectory() as cache:  # the weights change every epoch: nothing worth keeping
        try:
            result = evaluate(model, config.valid.trials, root, cache_dir=cache, ranks=info)
        except ValueError as exc:
            problem = f"validation: {exc}"
    if not distributed.all_true(problem is None, info):
        raise TrainError(problem or "validation failed on another rank")
    return None if result is None else (result.summary.eer, result.summary.threshold)


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
        if self.out.exists() and not self.out.is_dir():
            raise TrainError(f"{self.out}: exists and is not a folder (--out names the run folder)")
        for key in ("batch_size", "checkpoint_every", "log_every"):
            if getattr(config.train, key) < 1:
                raise TrainError(f"train.{key} must be at least 1, got {getattr(config.train, key)}")
        self.notices: list[str] = []  # setup adjustments worth telling the user (the CLI prints them)
        self.dist = distributed.setup(device, config.train.dist_timeout)
        self._gpu_settings()
        torch.manual_seed(config.train.seed)
        self.dataset, self.speakers, size = self._dataset(Path(data))
        channels = (ChannelAugment(config.data.augment, config.train.seed, config.data.rooms, self.dataset.donor)
                    if any(p > 0 for p in config.data.augment.values()) else None)
        self.dataset.augment = chain(
            Augmenter.from_dirs(config.data.musan, config.data.rir, config.data.augment_prob), channels)
        self.dataset.bad_log = str(self.out / BAD_FILES_NAME)
        if config.train.batch_size > size:
            raise TrainError(f"train.batch_size={config.train.batch_size} is larger than the {size} utterances of "
                             f"{data}; use a batch size of at most {size}")
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
        if config.train.sync_bn and self.dist.world > 1:
            if self.dist.device.type != "cuda":
                raise TrainError("train.sync_bn=true needs GPUs (SyncBatchNorm has no CPU implementation)")
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)  # same parameters and buffers, in place
        self.ddp = DistributedDataParallel(self.net) if self.dist.world > 1 else self.net
        self.forward = torch.compile(self.ddp) if config.train.compile else self.ddp
        self._fused = self.dist.device.type == "cuda"
        self.optimizer = _optimizer(self.net, config, fused=self._fused)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(config, self.batches.steps))
        precision = config.train.precision
        if precision not in ("fp32", "bf16", "fp16"):
            raise TrainError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
        if precision == "fp16" and self.dist.device.type != "cuda":
            raise TrainError("fp16 mixed precision needs a GPU; use bf16 on CPU")
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=precision == "fp16")
        self.state = Progress()

    # -- setup --------------------------------------------------------------------------------------
    def _gpu_settings(self) -> None:
        """cuDNN autotuning and the TF32 policy (process-wide settings; only on a GPU)."""
        if self.dist.device.type != "cuda":
            return
        run = self.config.train
        torch.backends.cudnn.benchmark = run.cudnn_benchmark
        policy = "tf32" if run.tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = policy
        torch.backends.cudnn.conv.fp32_precision = policy

    def _prefetch(self, workers: int) -> int:
        """Batches each worker prepares ahead, lowered until the node's /dev/shm holds every rank's (with a note)."""
        wanted = self.config.data.prefetch
        per_rank = self.config.train.batch_size // self.dist.world
        frames = max(self.config.data.frames, self.config.finetune.frames if self.config.finetune.epochs else 0)
        batch_bytes = per_rank * crop_samples(frames) * 4
        try:
            free = shutil.disk_usage("/dev/shm").free
        except OSError:
            return wanted
        fits = int(free * 0.8) // max(1, batch_bytes * workers * self.dist.local_world)
        depth = max(1, min(wanted, fits))
        if depth < wanted:
            need = batch_bytes * workers * wanted * self.dist.local_world
            self.notices.append(f"/dev/shm has {free / 1e9:.2f} GB free, {need / 1e9:.2f} GB needed for "
                                f"data.prefetch={wanted}; using {depth}" + (" (still too small: enlarge /dev/shm or "
                                "lower data.workers)" if fits < 1 else ""))
        return depth

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
            "progress": dataclasses.asdict(s),
            "torch_rng": torch.get_rng_state(),
        }

    def _check_finite(self) -> None:
        """Refuse to go on (and to save) once a weight or BatchNorm statistic is NaN or infinite."""
        bad = [name for name, t in self.net.state_dict().items() if t.is_floating_point() and not bool(t.isfinite().all())]
        if bad:
            raise TrainError(f"{self.out}: non-finite values in {', '.join(bad[:3])}"
                             f"{f' (+{len(bad) - 3} more)' if len(bad) > 3 else ''} at step {self.state.global_step}; "
                             "not saved (the last checkpoint is kept)")

    def save(self) -> None:
        if self.dist.main:
            self._check_finite()
            save_checkpoint(self.out / CHECKPOINT_NAME, self._checkpoint_state())

    def _resume(self) -> bool:
        path = self.out / CHECKPOINT_NAME
        if not path.exists():
            return False
        ckpt = load_checkpoint(path, map_location=self.dist.device)
        try:
            self.net.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.state = Progress(**ckpt["progress"])
            torch.set_rng_state(ckpt["torch_rng"].cpu())
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a checkpoint of this run ({describe(exc)[:300]})") from None
        self._trim_metrics()
        return True

    def _trim_metrics(self) -> None:
        """Drop the metrics rows logged after the checkpoint being resumed (a killed run logged steps that it now
        runs again), so that ``metrics.csv`` reads as one uninterrupted run."""
        path = self.out / METRICS_NAME
        if not self.dist.main or not path.exists():
            return
        s = self.state
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        try:  # step rows up to the checkpoint's step; epoch-end rows of the epochs it has finished
            keep = [r for r in rows
                    if (int(r["global_step"]) <= s.global_step if r["step"] else int(r["epoch"]) < s.epoch)]
        except (KeyError, TypeError, ValueError):
            return  # not our format: leave it alone
        if len(keep) < len(rows):
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(keep)
            atomic_write_text(path, buffer.getvalue())

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
        distributed.check_shared_folder(self.out, self.dist)
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
                      prefetch_factor=self._prefetch(workers) if workers else None)
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

    def _check_bad_files(self) -> None:
        """Stop (every rank) once more than ``data.max_bad_fraction`` of the training files failed to decode."""
        bad = read_bad_files(self.out / BAD_FILES_NAME)
        size = self.dataset.index.utterances if isinstance(self.dataset, ShardCropDataset) else len(self.dataset)
        if not distributed.all_true(len(bad) <= self.config.data.max_bad_fraction * size, self.dist):
            first = next(iter(bad.values()), "another rank's")
            raise TrainError(f"{len(bad)} of {size} training files failed to decode (more than data.max_bad_fraction="
                             f"{self.config.data.max_bad_fraction:g}); see {self.out / BAD_FILES_NAME}; first: {first}")

    def _export(self, threshold: float | None) -> None:
        self._check_finite()
        model = SpeakerModel(copy.deepcopy(self.net.encoder).float().cpu(), FrontEndConfig(), threshold=threshold,
                             info={"source": "ghostvlad-train", "run": self.out.name, "epoch": self.state.epoch,
                                   "global_step": self.state.global_step, "speakers": len(self.speakers)},
                             channels_last=False)
        model.save(self.out / RUN_MODEL_DIR)

    def _end_epoch(self, epoch: int, mean_loss: float) -> None:
        threshold, metric, valid_eer = None, mean_loss, None
        if self.config.valid.trials and ((epoch + 1) % self.config.valid.every == 0 or epoch + 1 == self.total_epochs):
            found = _validate(self.net.encoder, self.config, self.dist)
            if found is not None:
                valid_eer, threshold = found
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

    @contextmanager
    def _run_folder_lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run folder (main rank); a second process fails at once, naming the holder."""
        if not self.dist.main:
            yield
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOCK_NAME, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                raise TrainError(f"{self.out}: run folder in use by another training process (pid {holder})") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield  # closing the file releases the lock (also when the process dies)

    def run(self, max_steps: int | None = None, on_log=None) -> Progress:
        """Train to the end, or stop after ``max_steps`` global steps counted from the start of the run (with a
        checkpoint; running again continues exactly as if never stopped: the schedule depends on the config only).
        Resumes from the run folder if possible; one process at a time per run folder.

        Loss and accuracy stay on the device between log steps (no host sync per step); each log row holds their
        means over the steps since the previous row, and the number of steps skipped for a non-finite loss or
        gradient.
        """
        with self._run_folder_lock():
            return self._train(max_steps, on_log)

    def _train(self, max_steps: int | None, on_log) -> Progress:
        self._prepare_run_folder()
        self._resume()
        if max_steps is not None and self.state.global_step >= max_steps:
            return self.state  # already there: nothing to do (not one step more)
        self.net.train()
        device = self.dist.device
        while self.state.epoch < self.total_epochs:
            epoch = self.state.epoch
            _head_margin(self.net.head, self.config.finetune.margin if epoch >= self.config.train.epochs
                         else self.config.head.margin)
            window = torch.zeros(4, device=device)  # loss sum, correct-crop fraction sum, finite steps, steps
            epoch_sums = torch.zeros(2, device=device)  # loss sum, finite steps
            tick, wait, crops = time.perf_counter(), 0.0, 0
            fetch = time.perf_counter()
            for waves, labels in self._loader(epoch, self.state.step):
                wait += time.perf_counter() - fetch
                loss, acc, finite = self._step(waves, labels)
                kept = finite.float()
                window += torch.stack([torch.where(finite, loss, 0.0), torch.where(finite, acc, 0.0), kept,
                                       torch.ones_like(kept)])
                epoch_sums += torch.stack([torch.where(finite, loss, 0.0), kept])
                crops += len(labels) * self.dist.world
                self.state.step += 1
                self.state.global_step += 1
                if self.state.global_step % self.config.train.log_every == 0:
                    loss_sum, acc_sum, finite_steps, steps = distributed.all_sum(window, self.dist).tolist()
                    elapsed = time.perf_counter() - tick
                    mean = (lambda x: f"{x / finite_steps:.4f}") if finite_steps else (lambda x: "nan")
                    row = {"time": f"{time.time():.0f}", "epoch": epoch, "step": self.state.step,
                           "global_step": self.state.global_step, "loss": mean(loss_sum), "acc": mean(acc_sum),
                           "lr": f"{self.scheduler.get_last_lr()[0]:.3g}", "crops_per_s": f"{crops / elapsed:.1f}",
                           "data_wait": f"{wait / elapsed:.3f}", "skipped": int(steps - finite_steps)}
                    self._log(row)
                    self._check_bad_files()
                    if on_log:
                        on_log(row, self.batches.steps)
                    window.zero_()
                    tick, wait, crops = time.perf_counter(), 0.0, 0
                if self.state.global_step % self.config.train.checkpoint_every == 0:
                    self._fold_epoch_loss(epoch_sums)
                    self.save()
                if max_steps is not None and self.state.global_step >= max_steps:
                    self._fold_epoch_loss(epoch_sums)
                    self.save()
                    distributed.barrier(self.dist)
                    return self.state
                fetch = time.perf_counter()
            self._fold_epoch_loss(epoch_sums)
            s = self.state
            self._end_epoch(epoch, s.loss_sum / s.loss_steps if s.loss_steps else math.inf)
            s.epoch, s.step, s.loss_sum, s.loss_steps = epoch + 1, 0, 0.0, 0
            self.save()
        distributed.barrier(self.dist)
        return self.state

    def _fold_epoch_loss(self, sums: torch.Tensor) -> None:
        """Move the epoch's device-side loss sums (all ranks) into the checkpointed state, so that the epoch loss
        survives a resume. Every rank calls it at the same step (a collective)."""
        loss_sum, finite_steps = distributed.all_sum(sums, self.dist).tolist()
        self.state.loss_sum += loss_sum
        self.state.loss_steps += int(finite_steps)
        sums.zero_()

    def _step(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimisation step. Returns this rank's loss, accuracy and whether the step was taken (a non-finite
        loss or gradient on any rank skips it everywhere), all as device tensors: no host sync on a GPU."""
        device = self.dist.device
        waves, labels = waves.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.no_grad():
            feats, _ = self.frontend(waves)
        with self._autocast():
            logits, extra = self.forward(feats, labels)  # fp32: the head and the loss leave autocast
        loss = F.cross_entropy(logits, labels) + extra
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # (no-op without fp16) gradients as they are, for the check below
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        bad = (~torch.isfinite(loss.detach())).float() + (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).float()
        bad = distributed.all_sum(bad, self.dist)  # gradients are all-reduced already; the loss is per rank
        finite = bad == 0
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips the step itself on non-finite gradients
        elif self._fused:
            self.optimizer.found_inf = bad.float().reshape(())  # the fused step skips itself: no sync
            self.optimizer.step()
            del self.optimizer.found_inf
        elif bool(finite):  # CPU: a sync costs nothing there
            self.optimizer.step()
        self.scaler.update()
        self.scheduler.step()
        acc = (logits.argmax(1) == labels).float().mean()
        return loss.detach(), acc, finite
