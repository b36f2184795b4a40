"""Learning-rate schedules, evaluated per optimizer step.

``LRSchedule(name, base_lr, steps_per_epoch, epochs, ...)(step) -> lr`` for step = 0, 1, ...
(the lr used by the update of that step). All schedules share an optional linear warm-up:
over the first ``warmup_steps = round(warmup_epochs * steps_per_epoch)`` steps the lr rises
as ``base_lr * (step + 1) / warmup_steps`` (or, with ``warmup_start_factor`` s, as
``base_lr * (s + (1 - s) * step / warmup_steps)``: airbench's triangle with "linear");
afterwards, with ``t = step - warmup_steps`` and ``T = total_steps - warmup_steps``:

- constant: ``base_lr``
- step:     ``base_lr * gamma ** (step // (step_size * steps_per_epoch))`` (decay every step_size epochs)
- cosine:   ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t / T)) / 2``
- linear:   ``base_lr + (min_lr - base_lr) * t / T``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULE_NAMES = ("constant", "step", "cosine", "linear")


@dataclass(frozen=True)
class LRSchedule:
    name: str
    base_lr: float
    steps_per_epoch: int
    epochs: int
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_start_factor: float | None = None

    def __post_init__(self) -> None:
        if self.name not in SCHEDULE_NAMES:
            raise ValueError(f"unknown schedule {self.name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
        if self.steps_per_epoch < 1 or self.epochs < 1:
            raise ValueError(
                f"schedule: steps_per_epoch and epochs must be >= 1, got {self.steps_per_epoch}, {self.epochs}"
            )

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def warmup_steps(self) -> int:
        return min(round(self.warmup_epochs * self.steps_per_epoch), self.total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            if self.warmup_start_factor is not None:
                start = self.warmup_start_factor
                return self.base_lr * (start + (1.0 - start) * step / self.warmup_steps)
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.name == "constant":
            return self.base_lr
        if self.name == "step":
            return self.base_lr * self.gamma ** (step // (self.step_size * self.steps_per_epoch))
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        if self.name == "cosine":
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr + (self.min_lr - self.base_lr) * progress


def schedule_from_config(config: dict, steps_per_epoch: int) -> LRSchedule:
    """The schedule a validated config describes (``schedule`` section, ``optimizer.lr``)."""
    s = config["schedule"]
    return LRSchedule(
        name=s["name"],
        base_lr=config["optimizer"]["lr"],
        steps_per_epoch=steps_per_epoch,
        epochs=config["training"]["epochs"],
        warmup_epochs=s["warmup_epochs"],
        step_size=s["step_size"],
        gamma=s["gamma"],
        min_lr=s["min_lr"],
        warmup_start_factor=s.get("warmup_start_factor"),
    )
