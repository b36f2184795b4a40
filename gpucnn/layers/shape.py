"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...)."""

from __future__ import annotations

import math

from gpucnn.layers.base import Layer


class Flatten(Layer):
    def __init__(self) -> None:
        super().__init__(None)
        self._x_shape = None

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training: bool = True):
        self.check_input(x, None, "")
        if x.ndim < 2:
            raise ValueError(f"{self.name}: expected an input with a batch axis (N, ...), got shape {tuple(x.shape)}")
        self._x_shape = tuple(x.shape)
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: that is ambiguous when N = 0

    def backward(self, dy, input_grad: bool = True):
        if self._x_shape is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        return dy.reshape(self._x_shape)
