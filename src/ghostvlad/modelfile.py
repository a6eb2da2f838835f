"""The model file format: safetensors weights + a JSON config; never pickle.

A model is either a directory holding ``config.json`` and ``model.safetensors``, or a single
``*.safetensors`` file whose metadata carries the same JSON under the key ``ghostvlad``.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import GhostvladError
from .fileio import atomic_write, atomic_write_text

FORMAT = "ghostvlad-model"
# The newest format this ghostvlad reads. A file is written with the lowest version that describes it (see
# format_version), so that older readers refuse what they cannot build with a version error.
VERSION = 2
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METADATA_KEY = "ghostvlad"
RUN_MODEL_DIR = "model"  # where a training run exports its best model


class ModelFileError(GhostvladError):
    """A model path that is missing, not ours, or inconsistent."""


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ModelFileError(f"{path}: tensor {bad[0]!r} holds NaN or infinite values{more}; refusing the model")


def format_version(config: dict) -> int:
    """The format version a model ``config`` needs: 2 for a stack of networks (``encoder.branches`` > 1, which a
    ghostvlad from before stacks cannot build: it refuses the file as too new), else 1."""
    encoder = config.get("encoder")
    return 2 if isinstance(encoder, dict) and encoder.get("branches", 1) != 1 else 1


def write_model(path: str | os.PathLike, config: dict, state: dict[str, torch.Tensor]) -> Path:
    """Write ``config`` (JSON-able) and ``state`` (tensors) as a model directory or single file.

    Weights holding NaN or inf are refused (:class:`ModelFileError`) before anything is written; a failed write
    (full disk, read-only folder) is an ``OSError`` naming the file, and leaves the file it would replace as it was
    (and no model directory that did not exist before).
    """
    path = Path(path)
    header = {"format": FORMAT, "version": format_version(config), **config}
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    _check_finite(state, path)
    text = json.dumps(header, indent=2, sort_keys=True)

    def weights(tmp: str, metadata: dict | None = None) -> None:
        try:
            save_file(state, tmp, metadata=metadata)
        except SafetensorError as exc:  # safetensors reports I/O failures (ENOSPC, EIO) in its own error
            raise OSError(errno.EIO, f"cannot write the weights ({exc})") from None

    if path.suffix == ".safetensors":
        atomic_write(path, lambda tmp: weights(tmp, {METADATA_KEY: text}))
        return path
    created = not path.exists()
    try:
        atomic_write(path / WEIGHTS_NAME, weights)
        atomic_write_text(path / CONFIG_NAME, text + "\n")
    except BaseException:
        if created:  # no half model directory left behind
            shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def resolve_model_path(path: str | os.PathLike) -> Path:
    """The model a path names: itself, or for a training run folder its exported best model ``RUN/model``."""
    path = Path(path)
    if path.is_dir() and not (path / CONFIG_NAME).exists() and (path / RUN_MODEL_DIR / CONFIG_NAME).exists():
        return path / RUN_MODEL_DIR
    return path


def read_model(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a model written by :func:`write_model`: ``(config, state)``. Raises :class:`ModelFileError`.

    A training run folder is accepted too: its exported best model (``RUN/model``) is read.
    """
    path = resolve_model_path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file or directory")
    if path.is_dir():
        config_path, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        for p in (config_path, weights):
            if not p.is_file():
                raise ModelFileError(f"{path}: not a ghostvlad model directory (missing {p.name})")
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{config_path}: invalid JSON ({exc})") from None
    else:
        weights = path
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"{path}: not a safetensors model file ({exc})") from None
        if METADATA_KEY not in meta:
            raise ModelFileError(f"{path}: safetensors file without ghostvlad metadata")
        try:
            config = json.loads(meta[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{path}: invalid model metadata ({exc})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: not a ghostvlad model (its config is a JSON {type(config).__name__}, "
                             "not an object)")
    if config.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a ghostvlad model (format {config.get('format')!r})")
    version = config.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{path}: bad model format version {version!r}")
    if version > VERSION:
        raise ModelFileError(f"{path}: model format version {version} is newer than this ghostvlad")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{weights}: unreadable weights ({exc})") from None
    _check_finite(state, weights)
    return config, state
