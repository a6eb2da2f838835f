"""Every component slot (backbone, pooling, head, optimiser, ...) with its choices and their parameters, gathered
from the registries; ``ghostvlad info --components`` prints it."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .data.augment import STAGE_ORDER, STAGES
from .models import BACKBONES, HEADS, POOLINGS
from .precision import PRECISIONS
from .registry import Choice
from .train.optim import OPTIMIZERS
from .train.sampler import SAMPLERS
from .train.schedules import SCHEDULES
from .train.vlad_init import VLAD_INITS


@dataclass(frozen=True)
class Slot:
    """A slot: its name, the config key that chooses it, what the key holds, and its choices."""

    name: str
    key: str
    form: str
    choices: tuple[Choice, ...]


def component_slots() -> list[Slot]:
    """The slots in the order a training config lists them, each choice with its parameters and defaults."""
    component = "a name, or {name: ..., parameter: value}"
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    return [
        Slot("backbone", "model.backbone", component, tuple(BACKBONES.describe())),
        Slot("pooling", "model.pooling", component, tuple(POOLINGS.describe())),
        Slot("head", "head.name", "a name; its parameters beside it (head.margin, head.scale)",
             tuple(HEADS.describe())),
        Slot("optimiser", "optim.name", "a name; its parameters beside it (optim.eps, optim.momentum)",
             tuple(OPTIMIZERS.describe())),
        Slot("schedule", "schedule.name", "a name; settings in the schedule section", tuple(SCHEDULES.describe())),
        Slot("precision", "train.precision", "a name, or auto (also --precision of the commands that embed)",
             tuple(PRECISIONS.describe())),
        Slot("vlad_init", "train.vlad_init", "a name", tuple(VLAD_INITS.describe())),
        Slot("sampler", "train.sampler", "a name (session batches: train.per_speaker)", tuple(SAMPLERS.describe())),
        # a stage takes the crop, a generator and the stage context; its config is a probability
        Slot("augmentation", "data.augment", "stage: probability, applied in the order listed",
             tuple(replace(c, params=()) for c in sorted(STAGES.describe(),
                                                         key=lambda c: order.get(c.name, len(order))))),
    ]
