"""Max, average and global average pooling layers, NCHW."""

from __future__ import annotations

from gpucnn.layers.base import Layer, as_pair


class _Pool2D(Layer):
    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__(None)
        self.kernel_size = as_pair(kernel_size, f"{self.name} kernel_size", 1)
        self.stride = self.kernel_size if stride is None else as_pair(stride, f"{self.name} stride", 1)
        self.padding = as_pair(padding, f"{self.name} padding", 0)
        for p, k in zip(self.padding, self.kernel_size):
            if p > k // 2:
                raise ValueError(
                    f"{self.name}: padding {self.padding} must be at most half the kernel {self.kernel_size}"
                )
        self._x_shape = None

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected a per-sample shape (C, H, W), got {tuple(input_shape)}")
        c, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{self.name}: input spatial size {h}x{w} (padding {ph},{pw}) is smaller than the "
                f"{kh}x{kw} window; expected at least {kh - 2 * ph}x{kw - 2 * pw}"
            )
        return (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    def _check(self, x):
        self.check_input(x, 4, "(N, C, H, W)")
        self.output_shape(tuple(x.shape[1:]))
        self._x_shape = tuple(x.shape)

    def __repr__(self) -> str:
        return f"{self.name}(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class MaxPool2D(_Pool2D):
    """Max over each window (padding is -inf); caches the argmax for the backward pass."""

    def forward(self, x, training: bool = True):
        self._check(x)
        if x.shape[0] == 0:
            return self.empty_output(x)
        y, self._argmax = self.ops.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return y

    def backward(self, dy, input_grad: bool = True):
        if self._x_shape is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        if self._x_shape[0] == 0:
            return self.empty_backward(self._x_shape, dy.dtype, input_grad)
        # the window geometry lets a deterministic backend gather instead of scatter-add
        return self.ops.maxpool2d_backward(dy, self._argmax, self._x_shape, self.kernel_size, self.stride,
                                           self.padding)


class AvgPool2D(_Pool2D):
    """Mean over each window; zero padding counts, the divisor is always KH*KW."""

    def forward(self, x, training: bool = True):
        self._check(x)
        if x.shape[0] == 0:
            return self.empty_output(x)
        return self.ops.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def backward(self, dy, input_grad: bool = True):
        if self._x_shape is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        if self._x_shape[0] == 0:
            return self.empty_backward(self._x_shape, dy.dtype, input_grad)
        return self.ops.avgpool2d_backward(dy, self._x_shape, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2D(Layer):
    """(N, C, H, W) -> (N, C): the mean over each channel's plane; dx = dy / (H*W) everywhere."""

    def __init__(self) -> None:
        super().__init__(None)
        self._x_shape = None

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected a per-sample shape (C, H, W), got {tuple(input_shape)}")
        return (input_shape[0],)

    def forward(self, x, training: bool = True):
        self.check_input(x, 4, "(N, C, H, W)")
        self._x_shape = tuple(x.shape)
        return x.mean(axis=(2, 3), dtype=x.dtype)

    def backward(self, dy, input_grad: bool = True):
        if self._x_shape is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        n, c, h, w = self._x_shape
        scaled = dy.reshape(n, c, 1, 1) * dy.dtype.type(1.0 / (h * w))
        # Contiguous, as every op expects: a broadcast view would have zero strides.
        return self.xp.ascontiguousarray(self.xp.broadcast_to(scaled, self._x_shape))

    def __repr__(self) -> str:
        return "GlobalAvgPool2D()"
