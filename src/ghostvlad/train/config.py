"""Training configuration: typed sections, YAML files with ``base:`` inheritance, ``key.sub=value`` overrides."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import describe
from ..features import FrontEndConfig
from ..models import HEADS, EncoderConfig
from ..precision import check_training_precision
from ..schema import ConfigError, checked
from .optim import OPTIMIZERS
from .sampler import SAMPLERS
from .vlad_init import VLAD_INITS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SELECTIONS = ("best", "last")  # valid.select: which epoch a run exports


def _given(config: object, keys: tuple[str, ...]) -> dict[str, Any]:
    """The component arguments a config section sets (None: the component's default)."""
    return {k: getattr(config, k) for k in keys if getattr(config, k) is not None}


@dataclass
class HeadConfig:
    name: str = "softmax"  # softmax | amsoftmax | aamsoftmax (`ghostvlad info --components`)
    margin: float | None = None  # None: the head's default (0.35 AM, 0.2 AAM); only heads with a margin take one
    scale: float | None = None  # None: 30; only the margin heads take one
    # weight of an angular prototypical loss over each batch's speaker groups, added to the head's (0 = off);
    # needs train.sampler=sessions
    prototypical: float = 0.0

    def __post_init__(self) -> None:
        HEADS.resolve(self.name, self.args())  # refuses an argument the head does not take, naming it

    def args(self) -> dict[str, Any]:
        """The head's arguments this section sets."""
        return _given(self, ("margin", "scale"))


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd (`ghostvlad info --components`)
    lr: float = 1e-3
    weight_decay: float = 2e-4  # on conv/linear kernels only; coupled L2 (Keras l2(1e-4) == 2e-4) unless adamw
    momentum: float | None = None  # sgd only (nesterov); None: 0.9
    eps: float | None = None  # adam and adamw only; None: 1e-7 (Keras')

    def __post_init__(self) -> None:
        OPTIMIZERS.resolve(self.name, self.args())

    def args(self) -> dict[str, Any]:
        """The optimiser's own arguments this section sets."""
        return _given(self, ("momentum", "eps"))


@dataclass
class ScheduleConfig:
    name: str = "paper"  # paper (two-cycle step) | cosine | onecycle | constant
    warmup_ratio: float = 0.1  # paper: LR multiplier during the warm-up epochs
    warmup_epochs: float = 2.0
    min_ratio: float = 0.01  # cosine / onecycle: final LR as a fraction of lr


@dataclass
class DataConfig:
    frames: int = 250  # training crop (2.5 s)
    workers: int = 4  # DataLoader worker processes per rank
    musan: str | None = None  # MUSAN root (noise/ music/ speech/) for additive augmentation
    rir: str | None = None  # folder of room impulse responses
    augment_prob: float = 0.6  # of the MUSAN / RIR folder augmentation
    # simulated channels, no corpus needed: stage -> probability (see data.augment.STAGE_ORDER); {} = off
    augment: dict[str, float] = field(default_factory=dict)
    rooms: int = 128  # simulated rooms for the `reverb` stage
    speeds: list[float] = field(default_factory=lambda: [1.0])  # speed perturbation; each speed a new class
    prefetch: int = 4  # batches each worker prepares ahead (lowered when /dev/shm cannot hold them)
    # files that fail to decode are logged in RUN/bad_files.txt and replaced by another utterance of the same
    # speaker; the run stops once more than this fraction of the training files are bad
    max_bad_fraction: float = 0.001


@dataclass
class RunConfig:
    epochs: int = 128
    batch_size: int = 160  # global batch, split across ranks
    steps_per_epoch: int | None = None  # None: one pass over the data
    # at least this many steps over train.epochs: a small corpus is passed over several times per epoch (steps per
    # epoch = max(one pass, ceil(min_steps / epochs))); a large one is unaffected. Not with steps_per_epoch.
    min_steps: int | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (mixed precision; fp16 only on GPU) | auto (see precision.py)
    seed: int = 0
    checkpoint_every: int = 500  # steps (plus every epoch end)
    log_every: int = 20  # steps
    channels_last: bool = True
    bn_momentum: float = 0.01  # PyTorch convention; 0.01 = Keras' 0.99. Short runs need more (e.g. 0.1)
    # decay of an exponential moving average of the encoder's weights (train/averaging.py): the model validated and
    # exported; None: the last step's weights (the original)
    ema: float | None = None
    # VLAD centers of a run from scratch: orthogonal (the original) | kmeans (of the first crops' frame descriptors)
    vlad_init: str = "orthogonal"
    sampler: str = "random"  # random (permutations) | sessions (per_speaker utterances a speaker, across sessions)
    per_speaker: int = 2  # sessions sampler: utterances of each speaker in a batch
    # GPU settings (no effect on CPU): TF32 tensor cores for the fp32 matmuls/convs, cuDNN autotuning for the
    # fixed-shape crops, torch.compile of the network (one compilation per crop length), SyncBatchNorm across ranks
    tf32: bool = True
    cudnn_benchmark: bool = True
    compile: bool = False
    sync_bn: bool = False
    dist_timeout: float = 1800.0  # seconds a rank waits in a collective (validation, checkpoints) before failing

    def __post_init__(self) -> None:
        check_training_precision(self.precision)
        VLAD_INITS.get(self.vlad_init)
        SAMPLERS.get(self.sampler)
        if self.min_steps is not None and (self.min_steps < 1 or self.steps_per_epoch is not None):
            raise ConfigError(f"train.min_steps={self.min_steps}: must be at least 1, and not given with "
                              f"train.steps_per_epoch (which fixes the steps)")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ConfigError(f"train.ema={self.ema}: the decay must lie strictly between 0 and 1 (e.g. 0.99), "
                              "or null for no averaging")


@dataclass
class ValidConfig:
    trials: str | None = None  # trial list scored at each epoch end to pick the best checkpoint
    wav_root: str | None = None
    every: int = 1  # epochs
    # which epoch's weights RUN/model holds: best (the lowest validation EER, or mean training loss without trials)
    # | last (the latest epoch's; validation is then only logged, e.g. when the trials are the test set itself)
    select: str = "best"

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ConfigError(f"valid.select={self.select!r}: choose one of: {', '.join(SELECTIONS)}")


@dataclass
class FinetuneConfig:
    """Large-margin fine-tuning: extra epochs with longer crops, a larger margin and a small constant LR."""

    epochs: int = 0
    frames: int = 600
    margin: float | None = None
    lr: float = 1e-5


# numeric settings and the values that make sense: (lowest, highest, whether the lowest itself is excluded)
RANGES: dict[str, tuple[float, float | None, bool]] = {
    "optim.lr": (0, None, True),
    "optim.weight_decay": (0, None, False),
    "schedule.warmup_ratio": (0, 1, True),
    "schedule.warmup_epochs": (0, None, False),
    "schedule.min_ratio": (0, 1, False),
    "data.frames": (1, None, False),
    "data.workers": (0, None, False),
    "data.augment_prob": (0, 1, False),
    "data.rooms": (1, None, False),
    "data.prefetch": (1, None, False),
    "data.max_bad_fraction": (0, 1, False),
    "train.epochs": (1, None, False),
    "train.batch_size": (1, None, False),
    "train.steps_per_epoch": (1, None, False),
    "train.checkpoint_every": (1, None, False),
    "train.log_every": (1, None, False),
    "train.bn_momentum": (0, 1, True),
    "train.per_speaker": (1, None, False),
    "train.dist_timeout": (0, None, True),
    "valid.every": (1, None, False),
    "finetune.epochs": (0, None, False),
    "finetune.frames": (1, None, False),
    "finetune.lr": (0, None, True),
}


def _check_range(key: str, value: float) -> None:
    low, high, open_low = RANGES[key]
    if (value > low if open_low else value >= low) and (high is None or value <= high):
        return
    rule = f"{'>' if open_low else '>='} {low}" if high is None else f"in {'(' if open_low else '['}{low}, {high}]"
    raise ConfigError(f"{key}={value}: must be {rule}")


@dataclass
class TrainConfig:
    model: EncoderConfig = field(default_factory=EncoderConfig)
    # the spectrogram: frontend.max_freq (Hz) keeps the bins up to it (None: all 257); saved in the model file
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: RunConfig = field(default_factory=RunConfig)
    valid: ValidConfig = field(default_factory=ValidConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        for key in RANGES:
            section, name = key.split(".")
            if (value := getattr(getattr(self, section), name)) is not None:
                _check_range(key, value)
        fixed = [f"frontend.{k}" for k, v in dataclasses.asdict(self.frontend).items()
                 if k != "max_freq" and v != getattr(FrontEndConfig, k)]
        if fixed:
            raise ConfigError(f"{', '.join(fixed)}: training uses the original front-end (mirror is chosen when "
                              "embedding: ghostvlad embed --mirror); only frontend.max_freq may be set")
        if self.model.branches != 1:
            raise ConfigError(f"model.branches={self.model.branches}: a run trains one network; train the branches "
                              "as runs of their own (other train.seed) and stack them with 'ghostvlad ensemble'")
        if self.finetune.margin is not None and "margin" not in {p.name for p in HEADS.params(self.head.name)}:
            raise ConfigError(f"finetune.margin: head {self.head.name!r} has no margin; choose a margin head "
                              "(amsoftmax, aamsoftmax) or leave finetune.margin unset")

    def to_dict(self) -> dict:
        return {f.name: section.to_dict() if isinstance(section := getattr(self, f.name), EncoderConfig)
                else dataclasses.asdict(section) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "TrainConfig":
        """Sections from ``data``, every value checked against its field's type (:class:`ConfigError` naming the
        key, e.g. ``train.epochs``); ``where`` names the source in messages about the whole mapping."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
        sections = {f.name: f for f in fields(cls)}
        unknown = set(map(str, data)) - set(sections)
        if unknown:
            raise ConfigError(f"{where}: unknown config sections: {', '.join(sorted(unknown))}")
        kwargs = {}
        for name, value in data.items():
            section_type = sections[name].default_factory  # type: ignore[misc]
            try:
                if section_type is EncoderConfig:
                    kwargs[name] = EncoderConfig.from_dict(value or {}, name)
                else:
                    kwargs[name] = section_type(**checked(section_type, value or {}, name))
            except ConfigError:
                raise
            except (TypeError, ValueError) as exc:  # a section's own checks
                raise ConfigError(str(exc) if str(exc).startswith(name) else f"{name}: {exc}") from None
        return cls(**kwargs)


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_yaml(name_or_path: str, seen: tuple[str, ...] = ()) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown config {name_or_path!r}; shipped: {', '.join(shipped_configs())}, or give a YAML path")
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if str(path) in seen:
        raise ConfigError(f"{path}: circular 'base' chain")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({describe(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(_read_yaml(base, (*seen, str(path))), data)


def _merge(base: dict, top: dict, depth: int = 0) -> dict:
    """``top`` over ``base``, mappings merged key by key; a component (``{name: ..., ...}`` inside a section)
    of another name replaces the base's, whose parameters mean nothing to it."""
    out = dict(base)
    for k, v in top.items():
        old = out.get(k)
        both = isinstance(v, dict) and isinstance(old, dict)
        other = both and depth > 0 and v.get("name", old.get("name")) != old.get("name")
        out[k] = _merge(old, v, depth + 1) if both and not other else v
    return out


def parse_override(text: str) -> dict:
    """``optim.lr=0.01`` -> ``{'optim': {'lr': 0.01}}`` (values parsed as YAML scalars)."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"bad override {text!r}: use section.key=value, e.g. optim.lr=0.01")
    return {parts[0]: {parts[1]: yaml.safe_load(value)}}


def load_config(name_or_path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """A shipped config name (``paper``, ``demo``, ...) or a YAML path, then command-line overrides."""
    data: dict[str, Any] = _read_yaml(str(name_or_path))
    for text in overrides:
        data = _merge(data, parse_override(text))
    return TrainConfig.from_dict(data)


def load_run_config(path: Path) -> TrainConfig:
    """A run folder's saved config. Run folders of versions before per-optimiser arguments hold ``optim.momentum``
    and ``optim.eps`` for every optimiser; the one its optimiser does not take is dropped (it had no effect)."""
    data = _read_yaml(str(path))
    optim = data.get("optim")
    name = optim.get("name", OptimConfig.name) if isinstance(optim, dict) else None
    if isinstance(name, str) and name in OPTIMIZERS:
        taken = {p.name for p in OPTIMIZERS.params(name)}
        data["optim"] = {k: v for k, v in optim.items() if k not in ("momentum", "eps") or k in taken}
    return TrainConfig.from_dict(data, str(path))


def run_differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """The ``section.key`` settings in which two configs make different runs (an optimiser argument left unset
    equals its default given explicitly)."""
    da, db = a.to_dict(), b.to_dict()
    for d, c in ((da, a), (db, b)):
        d["optim"].update(OPTIMIZERS.resolve(c.optim.name, c.optim.args()).args)
    return [f"{sec}.{k}" for sec, vals in db.items() for k, v in vals.items() if da[sec].get(k) != v]


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
