"""Argument checks that constructors share (optimizers, layers, EMA), matching the config schema.

Kept free of gpucnn imports so that layers, optim and the rest can all use it without a cycle.
"""

from __future__ import annotations

import math
from numbers import Real


def _allowed(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return "a finite number" + (" " + " and ".join(parts) if parts else "")


def finite_number(owner: str, name: str, value, low: float | None = None, high: float | None = None, *,
                  low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float when it is a finite real number in the range, else a one-line ValueError.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``. The message names the
    owner (a class), the argument and the allowed range, e.g.
    ``SGD: momentum must be in [0, 1), got nan``. Booleans are refused (``True`` is no rate).
    """
    allowed = _allowed(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")
    number = float(value)
    bad = not math.isfinite(number)
    if low is not None and (number <= low if low_open else number < low):
        bad = True
    if high is not None and (number >= high if high_open else number > high):
        bad = True
    if bad:
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")
    return number
