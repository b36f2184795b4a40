"""Patch-whitening initialisation of a first convolution (as airbench94).

For images x (N, C, H, W) and a kh x kw kernel, every stride-1 patch is a vector of
length D = C*kh*kw (ordered like a conv filter (C, kh, kw)). With the uncentred patch
covariance S = P^T P / n = V diag(lam) V^T (eigenvalues in descending order), the
filters are ``F_k = V[:, k] / sqrt(lam_k + eps)`` followed by their negatives, giving
2*D filters (2*D, C, kh, kw). A conv with the first D filters maps the patches to
outputs whose covariance is diag(lam / (lam + eps)), i.e. the identity up to eps.
"""

from __future__ import annotations

import numpy as np

from gpucnn.layers.base import as_pair
from gpucnn.layers.conv import Conv2D

# Patches per covariance chunk: bounds the float64 buffer to ~ chunk * D * 8 bytes.
_CHUNK_PATCHES = 1 << 18


def image_patches(images: np.ndarray, kernel_size) -> np.ndarray:
    """All stride-1 patches of ``images`` (N, C, H, W) as rows (N*OH*OW, C*kh*kw), float64."""
    kh, kw = kernel_size
    windows = np.lib.stride_tricks.sliding_window_view(images, (kh, kw), axis=(2, 3))  # N, C, OH, OW, kh, kw
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1] * kh * kw).astype(np.float64)


def patch_covariance(images: np.ndarray, kernel_size) -> np.ndarray:
    """Uncentred covariance P^T P / n (D, D) of all stride-1 patches, float64, in chunks of images."""
    n, c, h, w = images.shape
    kh, kw = kernel_size
    per_image = (h - kh + 1) * (w - kw + 1)
    step = max(1, _CHUNK_PATCHES // per_image)
    d = c * kh * kw
    total = np.zeros((d, d))
    for start in range(0, n, step):
        p = image_patches(images[start : start + step], kernel_size)
        total += p.T @ p
    return total / (n * per_image)


def whitening_filters(images, kernel_size, eps: float = 5e-4) -> np.ndarray:
    """Whitening conv filters (2*C*kh*kw, C, kh, kw), float64, from images (N, C, H, W).

    Rows 0..D-1 are the covariance eigenvectors (descending eigenvalue) scaled by
    1/sqrt(eigenvalue + eps); rows D..2D-1 are their negatives.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"whitening_filters: expected non-empty images (N, C, H, W), got shape {images.shape}")
    if images.dtype.kind != "f":
        raise ValueError(
            f"whitening_filters: expected float images (normalized as the network sees them), got {images.dtype.name}"
        )
    kh, kw = as_pair(kernel_size, "whitening_filters kernel_size", 1)
    if images.shape[2] < kh or images.shape[3] < kw:
        raise ValueError(
            f"whitening_filters: images {images.shape[2]}x{images.shape[3]} are smaller than the {kh}x{kw} kernel"
        )
    if not eps > 0:
        raise ValueError(f"whitening_filters: eps must be > 0, got {eps}")
    c = images.shape[1]
    eigenvalues, eigenvectors = np.linalg.eigh(patch_covariance(images, (kh, kw)))
    order = np.argsort(eigenvalues)[::-1]
    lam = np.clip(eigenvalues[order], 0.0, None)  # round-off can leave tiny negatives
    scaled = eigenvectors[:, order].T / np.sqrt(lam + eps)[:, None]
    filters = scaled.reshape(-1, c, kh, kw)
    return np.concatenate([filters, -filters], axis=0)


def whitening_conv(images, in_channels: int, kernel_size=2, eps: float = 5e-4, bias: bool = True,
                   dtype=np.float32) -> Conv2D:
    """A Conv2D (in_channels -> 2*in_channels*kh*kw, no padding) initialised by ``whitening_filters``
    with its weight frozen (``frozen_params = {"W"}``); the bias, if any, starts at zero and trains.
    ``images``: (N, in_channels, H, W) float host array, normalized like the training inputs."""
    kh, kw = as_pair(kernel_size, "whitening_conv kernel_size", 1)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != in_channels:
        raise ValueError(
            f"whitening_conv: expected images (N, {in_channels}, H, W), got shape {images.shape}"
        )
    conv = Conv2D(in_channels, 2 * in_channels * kh * kw, (kh, kw), dtype=dtype, bias=bias,
                  init="fan_in_uniform", rng=0)
    conv.set_param("W", whitening_filters(images, (kh, kw), eps))
    conv.frozen_params = {"W"}
    return conv


def normalized_images(x_uint8: np.ndarray, mean, std, count: int) -> np.ndarray:
    """The first ``count`` images of x_uint8 (N, C, H, W) as the network sees them:
    float32 ``(x/255 - mean) / std`` with per-channel mean, std (C,) in [0, 1] units
    (what ``BatchLoader.normalize`` computes), for ``whitening_filters``."""
    x = np.asarray(x_uint8[:count], dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std
