"""Scale: y = factor * x (any shape, dtype kept); no params."""

from __future__ import annotations

import math

from gpucnn.layers.base import Layer


class Scale(Layer):
    """Multiply by a fixed finite ``factor`` (airbench's final ``Mul(1/9)``); dx = factor * dy."""

    def __init__(self, factor: float) -> None:
        super().__init__(None)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
            raise ValueError(f"Scale: factor must be a finite number, got {factor!r}")
        self.factor = float(factor)
        self._seen_forward = False

    def forward(self, x, training: bool = True):
        self.check_input(x, None, "")
        self._seen_forward = True
        return x * x.dtype.type(self.factor)

    def backward(self, dy, input_grad: bool = True):
        if not self._seen_forward:
            raise RuntimeError(f"{self.name}: backward called before forward")
        return dy * dy.dtype.type(self.factor)

    def __repr__(self) -> str:
        return f"Scale({self.factor:g})"
