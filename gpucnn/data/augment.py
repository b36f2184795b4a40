"""Random flip and random crop/translation, applied on the device as one gather.

Semantics per image (as torchvision's RandomHorizontalFlip + RandomCrop(padding=p)):
mirror left-right with probability 1/2, then pad by ``p`` pixels on every side and cut a
random H x W window (top-left offset dy, dx uniform in 0..2p). Padding happens on the raw
uint8 pixels: ``"zeros"`` fills with pixel value 0 (black), ``"reflect"`` mirrors the image
without repeating the edge pixel (numpy's ``mode="reflect"``).

Parameters are drawn on the host (a few ints per image) and the batch is produced by a
single fancy-indexing gather from the uint8 data on the device, so no padded copy is made
and no Python loop runs over images or pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PADDING_MODES = ("zeros", "reflect")


@dataclass(frozen=True)
class AugmentParams:
    """Per-image draws: flip (N,) bool, dy (N,) and dx (N,) int offsets in 0..2*crop_padding."""

    flip: np.ndarray
    dy: np.ndarray
    dx: np.ndarray


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation: random horizontal flip and random crop with padding."""

    flip: bool = True
    crop_padding: int = 4
    padding_mode: str = "zeros"
    # airbench's altflip: image i is flipped at epoch e iff base_flip(seed)[i] XOR (e odd)
    alternate_flip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.alternate_flip, (bool, np.bool_)):
            raise TypeError(f"Augment: alternate_flip must be True or False, got {self.alternate_flip!r}")
        if not isinstance(self.flip, (bool, np.bool_)):
            raise TypeError(f"Augment: flip must be True or False, got {self.flip!r}")
        if not isinstance(self.crop_padding, (int, np.integer)) or isinstance(self.crop_padding, bool) \
                or self.crop_padding < 0:
            raise ValueError(f"Augment: crop_padding must be an int >= 0, got {self.crop_padding!r}")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"Augment: padding_mode must be one of {', '.join(PADDING_MODES)}, "
                             f"got {self.padding_mode!r}")

    def check_image_size(self, height: int, width: int) -> None:
        """Raise ValueError when the padding does not fit ``height`` x ``width`` images.

        Reflect padding mirrors at most size - 1 pixels (numpy's ``mode="reflect"``); zero padding
        as large as the image lets a crop hold no pixel of it at all (an all-black training image).
        """
        if self.padding_mode == "reflect" and self.crop_padding >= min(height, width):
            raise ValueError(f"Augment: reflect padding {self.crop_padding} needs images larger than that, "
                             f"got {height}x{width}")
        if self.crop_padding >= min(height, width):
            raise ValueError(f"Augment: crop padding {self.crop_padding} must be smaller than the image "
                             f"({height}x{width}), or a crop can miss the image entirely")

    def draw(self, rng: np.random.Generator, n: int) -> AugmentParams:
        """Draw the parameters of ``n`` images from ``rng`` (host side)."""
        flip = rng.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
        span = 2 * self.crop_padding + 1
        offsets = rng.integers(0, span, size=(2, n)) if self.crop_padding else np.zeros((2, n), dtype=np.int64)
        return AugmentParams(flip=flip, dy=offsets[0], dx=offsets[1])


def alternate_flips(seed: int, epoch: int, n: int) -> np.ndarray:
    """(n,) bool by *sample index*: one coin per image drawn once from ``seed``, inverted on odd epochs.

    The base draw uses its own stream (SeedSequence entropy [seed, 0, 1], never a (seed, epoch)
    pair), so the flips of epoch e depend on (seed, e) only and a resumed run repeats them."""
    base = np.random.default_rng([seed, 0, 1]).random(n) < 0.5
    return base ^ bool(epoch % 2)


def source_indices(xp, offsets, flip, size: int, padding: int, mode: str):
    """Source pixel index along one axis for each output position, and whether it is inside the image.

    offsets: (B,) ints in 0..2*padding; flip: (B,) bool or None. Returns (index (B, size)
    clipped into 0..size-1, valid (B, size) bool; all True for reflect).
    """
    pos = offsets[:, None] - padding + xp.arange(size)[None, :]
    if flip is not None:
        pos = xp.where(flip[:, None], size - 1 - pos, pos)
    if mode == "reflect":
        pos = xp.abs(pos)
        pos = xp.where(pos >= size, 2 * (size - 1) - pos, pos)
        return pos, xp.ones(pos.shape, dtype=bool)
    valid = (pos >= 0) & (pos < size)
    return xp.clip(pos, 0, size - 1), valid


def gather_augmented(xp, images, sample_idx, flip, dy, dx, padding: int, mode: str):
    """Gather ``images[sample_idx]`` flipped and cropped, as uint8 (B, C, H, W).

    images: (N, C, H, W) on the device; sample_idx, dy, dx: (B,) int; flip: (B,) bool.
    Mirroring the whole padded image and then cropping at (dy, dx) reads source column
    ``W - 1 - (dx + j - padding)``; padding is symmetric, so the pad rule is applied after.
    """
    _, channels, height, width = images.shape
    rows, row_ok = source_indices(xp, dy, None, height, padding, mode)
    cols, col_ok = source_indices(xp, dx, flip, width, padding, mode)
    out = images[
        sample_idx[:, None, None, None],
        xp.arange(channels)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    if mode == "zeros" and padding:
        out = out * (row_ok[:, None, :, None] & col_ok[:, None, None, :]).astype(out.dtype)
    return out
