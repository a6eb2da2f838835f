"""A training run's folder: its lock, resolved config and speaker list, the CSV metrics log, checkpoints (saved and
resumed) and the best model export. Written by the main rank only; every rank may resume from it."""
from __future__ import annotations

import copy
import csv
import dataclasses
import fcntl
import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..data.dataset import read_bad_files
from ..errors import describe
from ..fileio import atomic_write_text
from ..inference import SpeakerModel
from ..modelfile import RUN_MODEL_DIR
from ..models import SpeakerEncoder
from . import distributed
from .build import TrainError
from .checkpoint import CHECKPOINT_NAME, CheckpointError, TrainState, load_checkpoint, save_checkpoint
from .config import TrainConfig, dump_config, load_run_config, run_differences

CONFIG_NAME = "config.yaml"
LOCK_NAME = "train.lock"  # held (flock) by the training process using the run folder; holds its pid
METRICS_NAME = "metrics.csv"
SPEAKERS_NAME = "speakers.txt"
BAD_FILES_NAME = "bad_files.txt"
METRIC_FIELDS = ["time", "epoch", "step", "global_step", "loss", "acc", "lr", "crops_per_s", "data_wait", "valid_eer",
                 "skipped"]


class RunFolder:
    """The folder ``path`` of a run of ``config`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, config: TrainConfig, dist: distributed.DistInfo) -> None:
        self.path, self.config, self.dist = Path(path), config, dist
        if self.path.exists() and not self.path.is_dir():
            raise TrainError(f"{self.path}: exists and is not a folder (--out names the run folder)")

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def bad_files(self) -> Path:
        """Training files that failed to decode (``path<TAB>reason`` lines, appended by the dataset)."""
        return self.path / BAD_FILES_NAME

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder (main rank); a second process fails at once, naming the holder."""
        if not self.dist.main:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_NAME, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                raise TrainError(f"{self.path}: run folder in use by another training process (pid {holder})") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield  # closing the file releases the lock (also when the process dies)

    def prepare(self, speakers: list[str]) -> None:
        """Refuse a folder of a run with another config; write the config and speaker list; drop the half-written
        files of a killed run."""
        config_path = self.path / CONFIG_NAME
        if config_path.exists():
            diff = run_differences(load_run_config(config_path), self.config)
            if diff:
                raise TrainError(f"{self.path}: run exists with a different config ({', '.join(diff)}); "
                                 "use a new --out or the same settings to resume")
        distributed.check_shared_folder(self.path, self.dist)
        if self.dist.main:
            self.path.mkdir(parents=True, exist_ok=True)
            for stale in [*self.path.glob(".*.tmp"), *(self.path / RUN_MODEL_DIR).glob(".*.tmp")]:
                stale.unlink()  # atomic_write's temporaries
            atomic_write_text(config_path, dump_config(self.config))
            atomic_write_text(self.path / SPEAKERS_NAME, "\n".join(speakers) + "\n")

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def save(self, stateful: Mapping[str, Any], state: TrainState) -> None:
        """Checkpoint ``stateful`` (key -> object with ``state_dict``; ``model`` is checked finite), the state and
        the torch RNG (main rank)."""
        if not self.dist.main:
            return
        ckpt = {key: obj.state_dict() for key, obj in stateful.items()}
        self._check_finite(ckpt["model"], state)
        save_checkpoint(self.checkpoint, {**ckpt, "progress": dataclasses.asdict(state),
                                          "torch_rng": torch.get_rng_state()})

    def resume(self, stateful: Mapping[str, Any]) -> TrainState | None:
        """Load the checkpoint into ``stateful`` and the torch RNG, and drop the metrics rows logged after it;
        returns its state, or None without a checkpoint."""
        if not self.checkpoint.exists():
            return None
        ckpt = load_checkpoint(self.checkpoint, map_location=self.dist.device)
        try:
            for key, obj in stateful.items():
                obj.load_state_dict(ckpt[key])
            state = TrainState(**ckpt["progress"])
            torch.set_rng_state(ckpt["torch_rng"].cpu())
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{self.checkpoint}: not a checkpoint of this run ({describe(exc)[:300]})") from None
        self._trim_metrics(state)
        return state

    def _check_finite(self, weights: Mapping[str, torch.Tensor], state: TrainState) -> None:
        """Refuse to go on (and to save) once a weight or BatchNorm statistic is NaN or infinite."""
        bad = [name for name, t in weights.items() if t.is_floating_point() and not bool(t.isfinite().all())]
        if bad:
            raise TrainError(f"{self.path}: non-finite values in {', '.join(bad[:3])}"
                             f"{f' (+{len(bad) - 3} more)' if len(bad) > 3 else ''} at step {state.global_step}; "
                             "not saved (the last checkpoint is kept)")

    def export(self, encoder: SpeakerEncoder, threshold: float | None, state: TrainState, speakers: int) -> None:
        """Write ``encoder`` (checked finite) as the run's model, with its threshold."""
        self._check_finite(encoder.state_dict(), state)
        model = SpeakerModel(copy.deepcopy(encoder).float().cpu(), self.config.frontend, threshold=threshold,
                             info={"source": "ghostvlad-train", "run": self.path.name, "epoch": state.epoch,
                                   "global_step": state.global_step, "speakers": speakers},
                             channels_last=False)
        model.save(self.path / RUN_MODEL_DIR)

    # -- metrics ---------------------------------------------------------------------------------------------------
    def log(self, row: Mapping[str, Any]) -> None:
        """Append a row of :data:`METRIC_FIELDS` to ``metrics.csv`` (main rank)."""
        if not self.dist.main:
            return
        path = self.path / METRICS_NAME
        new = not path.exists()
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})

    def _trim_metrics(self, state: TrainState) -> None:
        """Drop the metrics rows logged after the checkpoint being resumed (a killed run logged steps that it now
        runs again), so that ``metrics.csv`` reads as one uninterrupted run."""
        path = self.path / METRICS_NAME
        if not self.dist.main or not path.exists():
            return
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        try:  # step rows up to the checkpoint's step; epoch-end rows of the epochs it has finished
            keep = [r for r in rows
                    if (int(r["global_step"]) <= state.global_step if r["step"] else int(r["epoch"]) < state.epoch)]
        except (KeyError, TypeError, ValueError):
            return  # not our format: leave it alone
        if len(keep) < len(rows):
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(keep)
            atomic_write_text(path, buffer.getvalue())

    def check_bad_files(self, utterances: int) -> None:
        """Stop (every rank) once more than ``data.max_bad_fraction`` of the training files failed to decode."""
        bad = read_bad_files(self.bad_files)
        limit = self.config.data.max_bad_fraction
        if not distributed.all_true(len(bad) <= limit * utterances, self.dist):
            first = next(iter(bad.values()), "another rank's")
            raise TrainError(f"{len(bad)} of {utterances} training files failed to decode (more than "
                             f"data.max_bad_fraction={limit:g}); see {self.bad_files}; first: {first}")
