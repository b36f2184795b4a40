"""Test-only reference models, written out layer by layer, independently of configs/*.toml.

The shipped configs are the only model definitions gpucnn has; these Python twins exist so
tests can check that a config builds the intended network (and to drive the PyTorch twins)."""

from __future__ import annotations

import numpy as np

from gpucnn import layers
from gpucnn.layers.base import as_rng
from gpucnn.model import Sequential


def lenet5(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, rng=None, dtype=np.float32) -> Sequential:
    """LeNet-5: conv5x5 C->6, ReLU, maxpool2, conv5x5 6->16, ReLU, maxpool2, Flatten,
    Dense->120, ReLU, Dense 120->84, ReLU, Dense 84->num_classes."""
    rng = as_rng(rng)
    side = ((image_size - 4) // 2 - 4) // 2
    if image_size < 16 or side < 1:
        raise ValueError(f"lenet5: image_size must be at least 16, got {image_size}")
    return Sequential(
        [
            layers.Conv2D(in_channels, 6, 5, dtype=dtype, rng=rng),
            layers.ReLU(),
            layers.MaxPool2D(2),
            layers.Conv2D(6, 16, 5, dtype=dtype, rng=rng),
            layers.ReLU(),
            layers.MaxPool2D(2),
            layers.Flatten(),
            layers.Dense(16 * side * side, 120, dtype=dtype, rng=rng),
            layers.ReLU(),
            layers.Dense(120, 84, dtype=dtype, rng=rng),
            layers.ReLU(),
            layers.Dense(84, num_classes, dtype=dtype, rng=rng),
        ]
    )


def cifar10_fast(
    rng=None,
    whitening_images=None,
    widths: tuple[int, int, int] = (64, 256, 256),
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    batchnorm_momentum: float = 0.4,
    batchnorm_eps: float = 1e-12,
    whitening_kernel: int = 2,
    whitening_eps: float = 5e-4,
    scale: float = 1 / 9,
    dtype=np.float32,
) -> Sequential:
    """airbench94's network: whitening conv + GELU, three conv groups, maxpool3, Dense, Scale.

    Layers: Conv2D whitening_kernel x whitening_kernel, in_channels -> 2*in_channels*k*k with bias,
    weight frozen (``frozen_params = {"W"}``) and set by ``whitening_filters(whitening_images)``
    when images (N, C, H, W, normalized float) are given; GELU; then per width w:
    Conv3x3(pad 1, no bias, dirac) -> MaxPool2 -> BatchNorm -> GELU -> Conv3x3 -> BatchNorm -> GELU;
    MaxPool3; Flatten; Dense(widths[2] -> num_classes, no bias); Scale(scale).
    BatchNorm uses PyTorch's momentum convention (airbench's "0.6" is momentum 0.4 here),
    eps 1e-12, and trains only beta (``frozen_params = {"gamma"}``, gamma stays 1).
    """
    from gpucnn.whitening import whitening_filters

    rng = as_rng(rng)
    if len(widths) != 3 or min(widths) < 1:
        raise ValueError(f"cifar10_fast: widths must be three ints >= 1, got {widths!r}")
    side = image_size - whitening_kernel + 1
    for _ in range(3):
        side //= 2
    if side < 3:
        raise ValueError(f"cifar10_fast: image_size must be at least {whitening_kernel - 1 + 24}, got {image_size}")
    whiten_width = 2 * in_channels * whitening_kernel**2
    whiten = layers.Conv2D(in_channels, whiten_width, whitening_kernel, dtype=dtype, rng=rng, bias=True,
                           init="fan_in_uniform")
    if whitening_images is not None:
        whiten.set_param("W", whitening_filters(whitening_images, whitening_kernel, whitening_eps))
    whiten.frozen_params = {"W"}

    def batchnorm(width: int) -> layers.BatchNorm2D:
        bn = layers.BatchNorm2D(width, eps=batchnorm_eps, momentum=batchnorm_momentum, dtype=dtype)
        bn.frozen_params = {"gamma"}
        return bn

    def conv(c_in: int, c_out: int) -> layers.Conv2D:
        return layers.Conv2D(c_in, c_out, 3, padding=1, dtype=dtype, rng=rng, bias=False, init="dirac")

    net: list = [whiten, layers.GELU()]
    c_in = whiten_width
    for width in widths:
        net += [conv(c_in, width), layers.MaxPool2D(2), batchnorm(width), layers.GELU(),
                conv(width, width), batchnorm(width), layers.GELU()]
        c_in = width
    net += [layers.MaxPool2D(3), layers.Flatten(),
            layers.Dense(c_in * (side // 3) ** 2, num_classes, dtype=dtype, rng=rng, bias=False, init="fan_in_uniform"),
            layers.Scale(scale)]
    return Sequential(net)
