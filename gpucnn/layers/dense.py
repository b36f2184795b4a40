"""Fully connected layer: y (N, O) = x (N, I) @ W.T + b, W (O, I), b (O,)."""

from __future__ import annotations

import numpy as np

from gpucnn.init import initialize
from gpucnn.layers.base import Layer, as_count, as_rng
from gpucnn.layers.epilogue import EpilogueActivation


class Dense(EpilogueActivation, Layer):
    """Fully connected layer; caches its input for the backward pass. Can absorb a ReLU right
    after it into the GEMM's epilogue (gpucnn.layers.epilogue)."""

    param_kinds = {"W": "weight", "b": "bias"}

    def __init__(
        self, in_features: int, out_features: int, dtype=np.float32, rng=None, bias: bool = True, init: str = "he"
    ) -> None:
        super().__init__(dtype)
        self.in_features = as_count("Dense", "in_features", in_features)
        self.out_features = as_count("Dense", "out_features", out_features)
        self.param_kinds = {}
        self._new_param(
            "W", initialize(init, (self.out_features, self.in_features), as_rng(rng), self.dtype), "weight"
        )
        if bias:
            self._new_param("b", np.zeros(self.out_features, dtype=self.dtype), "bias")
        self._x = None

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(
                f"{self.name}: expected per-sample input shape ({self.in_features},), got {tuple(input_shape)}"
            )
        return (self.out_features,)

    def forward(self, x, training: bool = True):
        self.check_input(x, 2, "(N, features)")
        self.output_shape(tuple(x.shape[1:]))
        self._x = x
        if x.shape[0] == 0:
            return self._activated(self.empty_output(x))
        return self._activated(self.ops.dense_forward(x, self.params["W"], self.params.get("b"),
                                                      activation=self.fused_activation))

    def backward(self, dy, input_grad: bool = True):
        """Fill grads["W"], grads["b"]; return dx (None when ``input_grad`` is False)."""
        if self._x is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        if self._x.shape[0] == 0:
            return self.empty_backward(tuple(self._x.shape), self._x.dtype, input_grad)
        dy = self._activation_backward(dy)
        dx, dw, db = self.ops.dense_backward(dy, self._x, self.params["W"])
        self.grads["W"] = dw
        if "b" in self.params:
            self.grads["b"] = db
        return dx if input_grad else None

    def __repr__(self) -> str:
        return f"Dense({self.in_features}, {self.out_features})"
