"""2-D convolution layer (cross-correlation), NCHW."""

from __future__ import annotations

import numpy as np

from gpucnn.init import initialize
from gpucnn.layers.base import Layer, as_count, as_pair, as_rng
from gpucnn.layers.epilogue import EpilogueActivation


class Conv2D(EpilogueActivation, Layer):
    """y (N, O, OH, OW) = x (N, C, H, W) correlated with W (O, C, KH, KW) + b (O,).

    OH = (H + 2*ph - KH)//sh + 1. Caches the input for the backward pass. Can absorb a ReLU
    right after it into the convolution's epilogue (gpucnn.layers.epilogue).
    """

    param_kinds = {"W": "weight", "b": "bias"}

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dtype=np.float32,
        rng=None,
        bias: bool = True,
        init: str = "he",
    ) -> None:
        super().__init__(dtype)
        self.in_channels = as_count("Conv2D", "in_channels", in_channels)
        self.out_channels = as_count("Conv2D", "out_channels", out_channels)
        self.kernel_size = as_pair(kernel_size, "Conv2D kernel_size", 1)
        self.stride = as_pair(stride, "Conv2D stride", 1)
        self.padding = as_pair(padding, "Conv2D padding", 0)
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        self.param_kinds = {}
        self._new_param("W", initialize(init, shape, as_rng(rng), self.dtype), "weight")
        if bias:
            self._new_param("b", np.zeros(self.out_channels, dtype=self.dtype), "bias")
        self._x = None

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected a per-sample shape (C, H, W), got {tuple(input_shape)}")
        c, h, w = input_shape
        if c != self.in_channels:
            raise ValueError(
                f"{self.name}: expected {self.in_channels} input channels, got input of shape (N, {c}, {h}, {w})"
            )
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{self.name}: input spatial size {h}x{w} (padding {ph},{pw}) is smaller than the "
                f"{kh}x{kw} kernel; expected at least {max(kh - 2 * ph, 1)}x{max(kw - 2 * pw, 1)}"
            )
        return (self.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    def forward(self, x, training: bool = True):
        self.check_input(x, 4, "(N, C, H, W)")
        self.output_shape(tuple(x.shape[1:]))
        self._x = x
        if x.shape[0] == 0:
            return self._activated(self.empty_output(x))
        return self._activated(self.ops.conv2d_forward(x, self.params["W"], self.params.get("b"), self.stride,
                                                       self.padding, activation=self.fused_activation))

    def backward(self, dy, input_grad: bool = True):
        """Fill grads["W"], grads["b"]; return dx, or None when ``input_grad`` is False."""
        if self._x is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        x, w = self._x, self.params["W"]
        if x.shape[0] == 0:
            return self.empty_backward(tuple(x.shape), x.dtype, input_grad)
        dy = self._activation_backward(dy)
        self.grads["W"] = self.ops.conv2d_backward_filter(dy, x, w.shape, self.stride, self.padding)
        if "b" in self.params:
            self.grads["b"] = self.ops.conv2d_backward_bias(dy)
        if not input_grad:
            return None
        return self.ops.conv2d_backward_data(dy, w, x.shape, self.stride, self.padding)

    def __repr__(self) -> str:
        return (
            f"Conv2D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding})"
        )
