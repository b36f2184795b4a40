"""Max and average pooling on NumPy. x (N, C, H, W) -> y (N, C, OH, OW).

Max-pool pads with -inf and records, per output, the flat index ``h*W + w`` of the
window's maximum inside its input plane (int32; ties: first maximum in row-major
window order). Average pooling pads with zeros and always divides by KH*KW.
"""

from __future__ import annotations

import numpy as np

from gpucnn.ops.np_conv import output_size, pad_spatial, window_view


def _windows(x, kernel, stride, padding, pad_value):
    n, c, h, w = x.shape
    oh = output_size(h, kernel[0], stride[0], padding[0])
    ow = output_size(w, kernel[1], stride[1], padding[1])
    return window_view(pad_spatial(x, padding, pad_value), kernel, stride, (oh, ow)), oh, ow


def maxpool2d_forward(x, kernel, stride, padding):
    """(y (N, C, OH, OW), argmax int32 (N, C, OH, OW) flat plane index of each maximum).

    One pass per kernel offset in row-major order; a later offset wins only when
    strictly greater, so ties keep the first maximum.
    """
    n, c, h, w = x.shape
    kh, kw = kernel
    windows, oh, ow = _windows(x, kernel, stride, padding, -np.inf)
    y = windows[..., 0, 0].copy()
    offset_in_plane = np.zeros(y.shape, dtype=np.int32)  # i*W + j of the best offset so far
    better = np.empty(y.shape, dtype=bool)
    for offset in range(1, kh * kw):
        i, j = divmod(offset, kw)
        v = windows[..., i, j]
        np.greater(v, y, out=better)
        np.putmask(offset_in_plane, better, i * w + j)
        np.maximum(y, v, out=y)
    corner = (np.arange(oh, dtype=np.int32) * stride[0] - padding[0])[:, None] * w + (
        np.arange(ow, dtype=np.int32) * stride[1] - padding[1]
    )[None, :]
    offset_in_plane += corner
    return y, offset_in_plane


def maxpool2d_backward(dy, argmax, x_shape, kernel=None, stride=None, padding=None):
    """dx (N, C, H, W): each dy added at its window's argmax (overlapping windows add up).

    The window geometry (kernel, stride, padding) is optional and unused here: the sums are
    float64 in row-major output order, rounded once, and deterministic without it.
    """
    n, c, h, w = x_shape
    plane = h * w
    index = argmax.reshape(n * c, -1).astype(np.int64) + (np.arange(n * c) * plane)[:, None]
    dx = np.bincount(index.ravel(), weights=dy.ravel(), minlength=n * c * plane)
    return dx.astype(dy.dtype, copy=False).reshape(x_shape)


def avgpool2d_forward(x, kernel, stride, padding):
    """y (N, C, OH, OW): window sums (zero padded) divided by KH*KW."""
    windows, _, _ = _windows(x, kernel, stride, padding, 0.0)
    return windows.sum(axis=(4, 5)) * x.dtype.type(1.0 / (kernel[0] * kernel[1]))


def avgpool2d_backward(dy, x_shape, kernel, stride, padding):
    """dx (N, C, H, W): each dy spread uniformly (dy / (KH*KW)) over its window."""
    n, c, h, w = x_shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    oh, ow = dy.shape[2:]
    share = dy * dy.dtype.type(1.0 / (kh * kw))
    dx = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += share
    if ph or pw:
        dx = np.ascontiguousarray(dx[:, :, ph : ph + h, pw : pw + w])
    return dx
