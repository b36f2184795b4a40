"""Learning-rate schedules, evaluated per optimizer step.

``LRSchedule(name, base_lr, steps_per_epoch, epochs, ...)(step) -> lr`` for step = 0, 1, ...
(the lr used by the update of that step). All schedules share an optional linear warm-up
of ``warmup_steps`` steps, given either in epochs (``warmup_steps = round(warmup_epochs *
steps_per_epoch)``) or as a fraction of the run (``warmup_steps = round(warmup_fraction *
total_steps)``, which keeps its share whatever ``--epochs`` says; not both). A warm-up in
epochs longer than the run is clamped to the whole run (``warmup_clamped`` says so; the lr
then only rises) rather than refused, so any config runs with ``--epochs 1``. During the
warm-up the lr rises as ``base_lr * (step + 1) / warmup_steps`` (or, with ``warmup_start_factor`` s, as
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

from gpucnn.checks import finite_number

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
    warmup_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.name not in SCHEDULE_NAMES:
            raise ValueError(f"unknown schedule {self.name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
        if self.steps_per_epoch < 1 or self.epochs < 1:
            raise ValueError(
                f"schedule: steps_per_epoch and epochs must be >= 1, got {self.steps_per_epoch}, {self.epochs}"
            )
        finite_number("schedule", "base_lr", self.base_lr, 0.0)
        finite_number("schedule", "warmup_epochs", self.warmup_epochs, 0.0)
        finite_number("schedule", "gamma", self.gamma, 0.0, 1.0, low_open=True)
        finite_number("schedule", "min_lr", self.min_lr, 0.0)
        if self.warmup_start_factor is not None:
            finite_number("schedule", "warmup_start_factor", self.warmup_start_factor, 0.0, 1.0)
        if self.warmup_fraction is not None:
            finite_number("schedule", "warmup_fraction", self.warmup_fraction, 0.0, 1.0)
            if self.warmup_epochs:
                raise ValueError(
                    f"schedule: give warmup_epochs ({self.warmup_epochs}) or warmup_fraction "
                    f"({self.warmup_fraction}), not both"
                )

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def _requested_warmup_steps(self) -> int:
        if self.warmup_fraction is not None:
            return round(self.warmup_fraction * self.total_steps)
        return round(self.warmup_epochs * self.steps_per_epoch)

    @property
    def warmup_steps(self) -> int:
        return min(self._requested_warmup_steps, self.total_steps)

    @property
    def warmup_clamped(self) -> bool:
        """Whether the warm-up asked for was longer than the run (and now spans all of it)."""
        return self._requested_warmup_steps > self.total_steps

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
        warmup_fraction=s.get("warmup_fraction"),
    )
