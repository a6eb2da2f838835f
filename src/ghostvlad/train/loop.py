"""The training loop: epochs of steps (mixed precision, front-end on the device, DDP-ready), logging, validation,
checkpoints and exact resume. :class:`Trainer` joins the parts: :func:`~ghostvlad.train.build.build` makes the
components, :class:`~ghostvlad.train.run_folder.RunFolder` keeps the run's files."""
from __future__ import annotations

import copy
import itertools
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import ShardCropDataset, crop_samples
from ..evaluate import evaluate
from ..inference import SpeakerModel
from ..models import SpeakerEncoder
from ..precision import AUTO, native_bf16
from . import distributed
from .build import TrainError, build
from .checkpoint import TrainState
from .config import TrainConfig
from .run_folder import RunFolder

LogRow = Callable[[dict, int], None]  # (a metrics.csv row, steps per epoch)


def _head_margin(head: nn.Module, margin: float | None) -> None:
    if margin is not None:  # only heads with a margin get one (checked by TrainConfig)
        head.margin = margin


def _validate(encoder: SpeakerEncoder, config: TrainConfig, info: distributed.DistInfo) -> tuple[float, float] | None:
    """EER and its threshold on the validation trials (whole utterances, exact batching), via :func:`evaluate`.

    Every rank embeds its share of the files; rank 0 gathers them and scores (the other ranks get None). A failure
    on any rank fails all of them.
    """
    root = Path(config.valid.wav_root or Path(config.valid.trials).parent)
    model = SpeakerModel(copy.deepcopy(encoder).float(), config.frontend, device=info.device)
    problem, result = None, None
    with tempfile.TemporaryDirectory() as cache:  # the weights change every epoch: nothing worth keeping
        try:
            result = evaluate(model, config.valid.trials, root, cache_dir=cache, ranks=info)
        except ValueError as exc:
            problem = f"validation: {exc}"
    if not distributed.all_true(problem is None, info):
        raise TrainError(problem or "validation failed on another rank")
    return None if result is None else (result.summary.eer, result.summary.threshold)


class Trainer:
    """A training run of ``config`` on ``data`` in the run folder ``out``; ``run()`` trains, resuming when possible.

    Prints nothing: :meth:`run` reports every logged row to its ``on_log`` callback, and :attr:`notices` holds the
    setup adjustments worth telling the user.
    """

    def __init__(self, config: TrainConfig, data: str | os.PathLike, out: str | os.PathLike,
                 init: str | os.PathLike | None = None, device: str | None = None) -> None:
        self.config = config
        self.notices: list[str] = []  # setup adjustments worth telling the user (the CLI prints them)
        self.dist = distributed.setup(device, config.train.dist_timeout)
        self.folder = RunFolder(out, config, self.dist)
        self.parts = build(config, data, self.dist, init=init, fresh=not self.folder.checkpoint.exists(),
                           bad_log=self.folder.bad_files)
        requested, used = config.train.precision, self.parts.precision.name
        if requested == AUTO and used != "bf16":
            self.notices.append(f"train.precision=auto: {used} (this {self.dist.device.type} has no native bfloat16)")
        elif requested == "bf16" and not native_bf16(self.dist.device):
            self.notices.append(f"train.precision=bf16: this {self.dist.device.type} emulates bfloat16, several times "
                                "slower than fp32; train.precision=auto chooses by the device")
        # what a forward pass may change besides the weights (BatchNorm statistics): restored when a step is skipped
        self._buffers = [b for b in self.parts.net.buffers() if b.is_floating_point() or b.dtype == torch.long]
        self.state = TrainState()

    @property
    def total_epochs(self) -> int:
        return self.config.train.epochs + self.config.finetune.epochs

    def save(self) -> None:
        """Checkpoint the run as it stands (main rank)."""
        self.folder.save(self.parts.stateful(), self.state)

    def run(self, max_steps: int | None = None, on_log: LogRow | None = None) -> TrainState:
        """Train to the end, or stop after ``max_steps`` global steps counted from the start of the run (with a
        checkpoint; running again continues exactly as if never stopped: the schedule depends on the config only).
        Resumes from the run folder if possible; one process at a time per run folder.

        Loss and accuracy stay on the device between log steps (no host sync per step); each log row (written to
        ``metrics.csv`` and passed to ``on_log(row, steps_per_epoch)``) holds their means over the steps since the
        previous row, and the number of steps skipped for a non-finite loss or gradient.
        """
        with self.folder.lock():
            return self._train(max_steps, on_log)

    # -- the loop --------------------------------------------------------------------------------------------------
    def _autocast(self):
        return self.parts.precision.autocast(self.dist.device.type)

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

    def _loader(self, epoch: int, start: int) -> Iterable:
        """This rank's batches of ``epoch`` from step ``start`` on (same batches whatever the worker count)."""
        dataset, batches = self.parts.dataset, self.parts.batches
        dataset.set_epoch(epoch)
        dataset.frames = self.config.finetune.frames if epoch >= self.config.train.epochs else self.config.data.frames
        workers = self.config.data.workers
        common = dict(num_workers=workers, pin_memory=self.dist.device.type == "cuda",
                      prefetch_factor=self._prefetch(workers) if workers else None)
        if isinstance(dataset, ShardCropDataset):
            per_rank = self.config.train.batch_size // self.dist.world
            loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank, drop_last=True, **common)
            # ranks may hold a shard more or less: cycle so that every rank makes exactly `steps` steps
            stream = itertools.chain.from_iterable(itertools.repeat(loader))
            return itertools.islice(stream, start, batches.steps)
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches.batches(epoch, start), **common)

    def _end_epoch(self, epoch: int, mean_loss: float) -> None:
        """Validate (when due), export the model if it is the best so far (or every epoch with ``valid.select:
        last``), log the epoch row."""
        threshold, metric, valid_eer = None, mean_loss, None
        if self.config.valid.trials and ((epoch + 1) % self.config.valid.every == 0 or epoch + 1 == self.total_epochs):
            found = _validate(self.parts.encoder, self.config, self.dist)
            if found is not None:
                valid_eer, threshold = found
                metric = valid_eer
        if self.dist.main:
            better = metric <= self.state.best
            if better:
                self.state.best = metric
            if better or self.config.valid.select == "last":
                self.folder.export(self.parts.encoder, threshold, self.state, len(self.parts.speakers))
            self.folder.log({"time": f"{time.time():.0f}", "epoch": epoch, "global_step": self.state.global_step,
                             "loss": f"{mean_loss:.4f}", "valid_eer": "" if valid_eer is None else f"{valid_eer:.5f}"})

    def _train(self, max_steps: int | None, on_log: LogRow | None) -> TrainState:
        self.folder.prepare(self.parts.speakers)
        self.state = self.folder.resume(self.parts.stateful()) or self.state
        if max_steps is not None and self.state.global_step >= max_steps:
            return self.state  # already there: nothing to do (not one step more)
        self.parts.net.train()
        device = self.dist.device
        while self.state.epoch < self.total_epochs:
            epoch = self.state.epoch
            _head_margin(self.parts.net.head, self.config.finetune.margin if epoch >= self.config.train.epochs
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
                           "lr": f"{self.parts.scheduler.get_last_lr()[0]:.3g}", "crops_per_s": f"{crops / elapsed:.1f}",
                           "data_wait": f"{wait / elapsed:.3f}", "skipped": int(steps - finite_steps)}
                    self.folder.log(row)
                    self.folder.check_bad_files(self.parts.utterances)
                    if on_log:
                        on_log(row, self.parts.batches.steps)
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
            feats, _ = self.parts.frontend(waves)
            before = [b.clone() for b in self._buffers]
        with self._autocast():
            logits, extra = self.parts.forward(feats, labels)  # fp32: the head and the loss leave autocast
        loss = F.cross_entropy(logits, labels) + extra
        self.parts.optimizer.zero_grad(set_to_none=True)
        self.parts.scaler.scale(loss).backward()
        self.parts.scaler.unscale_(self.parts.optimizer)  # (no-op without fp16) gradients as they are, for the check below
        grads = [p.grad for p in self.parts.net.parameters() if p.grad is not None]
        bad = (~torch.isfinite(loss.detach())).float() + (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).float()
        bad = distributed.all_sum(bad, self.dist)  # gradients are all-reduced already; the loss is per rank
        finite = bad == 0
        with torch.no_grad():  # a skipped step leaves no trace, not even in the running statistics (no host sync)
            for buffer, kept in zip(self._buffers, before):
                buffer.copy_(torch.where(finite, buffer, kept))
        if self.parts.scaler.is_enabled():
            self.parts.scaler.step(self.parts.optimizer)  # skips the step itself on non-finite gradients
        elif self.parts.fused:
            self.parts.optimizer.found_inf = bad.float().reshape(())  # the fused step skips itself: no sync
            self.parts.optimizer.step()
            del self.parts.optimizer.found_inf
        elif bool(finite):  # CPU: a sync costs nothing there
            self.parts.optimizer.step()
        self.parts.scaler.update()
        if self.state.global_step == 0:  # a skipped first step (fp16 scaler, non-finite loss) is not a call-order bug
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                self.parts.scheduler.step()
        else:
            self.parts.scheduler.step()
        if self.parts.average is not None:
            self.parts.average.update(self.parts.net.encoder)
        acc = (logits.argmax(1) == labels).float().mean()
        return loss.detach(), acc, finite
