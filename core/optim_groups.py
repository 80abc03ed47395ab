"""Per-parameter-group optimizer settings: what a model declares, what the trainer builds from it.

A model may need some of its parameters trained differently from the rest: DCTDP's noise budgets
(``rhos``/``locs``) with their own Adam at lr 0.1 and no weight decay (TFace ``dctdp/``), MinusFace's
generator at 0.1x the recognizer's learning rate. Each such part is an :class:`OptimizerGroup`
(parameter-name prefix + settings); everything else uses the trainer's settings. Groups whose optimizer
type differs from the trainer's get an optimizer of their own, so one training loop steps them all.

The settings live beside the optimizers (:class:`GroupSchedule`), not inside ``param_groups``: a
checkpoint's optimizer state overwrites ``param_groups``' entries on load, but never these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

OptimizerName = Literal["sgd", "adam", "adamw"]


@dataclass(frozen=True)
class OptimizerGroup:
    """Optimizer settings for the trainable parameters whose names start with ``prefix``.

    ``None`` fields take the trainer's value. ``lr`` is absolute; without it the group's learning rate
    is the trainer's times ``lr_scale``. ``schedule="stage"`` follows the stage's warm-up/decay
    schedule (the multiplier applies to the group's own lr); ``"constant"`` keeps the lr fixed.
    """

    prefix: str
    optimizer: OptimizerName | None = None
    lr: float | None = None
    lr_scale: float = 1.0
    weight_decay: float | None = None
    schedule: Literal["stage", "constant"] = "stage"


@dataclass(frozen=True)
class GroupSchedule:
    """One built parameter group's base learning rate and whether the stage schedule scales it."""

    base_lr: float
    follows_stage: bool


@dataclass(frozen=True)
class TrainerOptimizer:
    """The trainer's own optimizer settings (used where a group says nothing)."""

    name: OptimizerName
    lr: float
    weight_decay: float
    momentum: float = 0.9


def _build(name: OptimizerName, groups: list[dict], momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=groups[0]["lr"])
    return torch.optim.AdamW(groups, lr=groups[0]["lr"])


def build_optimizers(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    declared: Sequence[OptimizerGroup],
    trainer: TrainerOptimizer,
    extra_groups: Sequence[list[nn.Parameter]] = (),
) -> tuple[list[torch.optim.Optimizer], list[list[GroupSchedule]]]:
    """Optimizers (the trainer's type first) and each one's per-group schedule, in a fixed order.

    Each trainable parameter joins the declared group with the longest matching prefix, or the default
    group. ``extra_groups`` (e.g. Partial FC's class centres) join the trainer's optimizer with its
    settings, after the model's groups. Group order is fixed (default first, then declaration order),
    so a checkpoint's optimizer state matches on resume.
    """
    by_length = sorted(declared, key=lambda g: -len(g.prefix))
    members: dict[OptimizerGroup | None, list[nn.Parameter]] = {None: []}
    members.update({g: [] for g in declared})
    for name, param in named_parameters:
        if param.requires_grad:
            group = next((g for g in by_length if name.startswith(g.prefix)), None)
            members[group].append(param)
    built: dict[OptimizerName, tuple[list[dict], list[GroupSchedule]]] = {trainer.name: ([], [])}
    for group, params in [*members.items(), *((None, list(extra)) for extra in extra_groups)]:
        if not params:
            continue
        settings = group or OptimizerGroup(prefix="")
        name = settings.optimizer or trainer.name
        lr = settings.lr if settings.lr is not None else trainer.lr * settings.lr_scale
        decay = settings.weight_decay if settings.weight_decay is not None else trainer.weight_decay
        groups, schedules = built.setdefault(name, ([], []))
        groups.append({"params": params, "lr": lr, "weight_decay": decay})
        schedules.append(GroupSchedule(lr, settings.schedule == "stage"))
    optimizers, schedules = [], []
    for name, (groups, group_schedules) in built.items():
        if groups:
            optimizers.append(_build(name, groups, trainer.momentum))
            schedules.append(group_schedules)
    return optimizers, schedules


def set_learning_rates(
    optimizers: Sequence[torch.optim.Optimizer],
    schedules: Sequence[Sequence[GroupSchedule]],
    factor: float | Callable[[], float],
) -> None:
    """Set every group's lr to its base lr times the stage factor (or its base lr if constant)."""
    value = factor() if callable(factor) else factor
    for optimizer, group_schedules in zip(optimizers, schedules, strict=True):
        for group, schedule in zip(optimizer.param_groups, group_schedules, strict=True):
            group["lr"] = schedule.base_lr * (value if schedule.follows_stage else 1.0)
