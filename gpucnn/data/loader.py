"""Mini-batches straight from device memory: shuffle, augment and normalize on the device.

The uint8 images are copied to the device once. Each epoch draws its permutation (and
augmentation parameters) on the host from a NumPy Generator seeded with (seed, epoch),
sends them to the device in one copy, and every batch is then one gather from the
resident data, a cast to float32 and a per-channel normalization ``(x/255 - mean) / std``.
The same (seed, epoch) gives the same batches, bit for bit on the numpy backend.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from gpucnn.backend import Backend, get_backend
from gpucnn.data.augment import Augment, AugmentParams, alternate_flips, gather_augmented
from gpucnn.distributed.slicing import shard_slice


class BatchLoader:
    """Iterate (x float32 (B, C, H, W) normalized, y int32 (B,)) batches on ``backend``.

    x_uint8: (N, C, H, W) uint8 host array; y: (N,) integer labels; mean, std: (C,) in
    [0, 1] units (see ``channel_stats``). ``len(loader)`` is the number of batches; the
    last one is smaller unless ``drop_last``. Each ``iter()`` runs the epoch ``loader.epoch``
    and then advances it by one; ``set_epoch(e)`` chooses the epoch the next iteration runs.
    """

    def __init__(
        self,
        x_uint8: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        backend: Backend | None = None,
        mean=None,
        std=None,
        shuffle: bool = True,
        seed: int = 0,
        augment: Augment | None = None,
        drop_last: bool = False,
    ) -> None:
        x_uint8 = np.asarray(x_uint8)
        y = np.asarray(y)
        if x_uint8.dtype != np.uint8 or x_uint8.ndim != 4 or x_uint8.shape[0] == 0:
            raise ValueError(
                f"BatchLoader: x must be non-empty (N, C, H, W) uint8, got {x_uint8.shape} {x_uint8.dtype}"
            )
        n, channels, height, width = x_uint8.shape
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise ValueError(f"BatchLoader: y must be ({n},) integers, got {y.shape} {y.dtype}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"BatchLoader: batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"BatchLoader: seed must be an int >= 0, got {seed!r}")
        if augment is not None:
            if not isinstance(augment, Augment):
                raise TypeError(f"BatchLoader: augment must be an Augment or None, got {type(augment).__name__}")
            augment.check_image_size(height, width)
        if drop_last and n < batch_size:
            raise ValueError(f"BatchLoader: drop_last with batch_size {batch_size} leaves no batch of {n} samples")
        mean = np.zeros(channels) if mean is None else np.asarray(mean, dtype=np.float64)
        std = np.ones(channels) if std is None else np.asarray(std, dtype=np.float64)
        for what, value in (("mean", mean), ("std", std)):
            if value.shape != (channels,) or not np.all(np.isfinite(value)):
                raise ValueError(f"BatchLoader: {what} must be ({channels},) finite values, got {value.shape}")
        if np.any(std <= 0):
            raise ValueError(f"BatchLoader: std must be > 0 per channel, got {std.tolist()}")

        self.backend = backend if backend is not None else get_backend()
        xp = self.backend.xp
        self.num_samples = n
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.augment = augment
        self.drop_last = drop_last
        self.epoch = 0
        self.x = self.backend.asarray(np.ascontiguousarray(x_uint8))
        self.y = self.backend.asarray(y.astype(np.int32))
        self._mean = self.backend.asarray(mean.astype(np.float32).reshape(1, channels, 1, 1))
        self._std = self.backend.asarray(std.astype(np.float32).reshape(1, channels, 1, 1))
        self._xp = xp
        self.shard: tuple[int, int] | None = None

    def set_shard(self, rank: int, size: int) -> None:
        """Serve only ``rank``'s slice of every batch (gpucnn.distributed.slicing); ``len`` is unchanged."""
        from gpucnn.distributed.slicing import check_rank

        check_rank(rank, size)
        self.shard = None if size == 1 else (rank, size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run epoch ``epoch`` (shuffle/augment drawn from (seed, epoch))."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"BatchLoader: epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def epoch_plan(self, epoch: int):
        """Host arrays for one epoch: (order (N,) int64, AugmentParams in that order or None)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        params = self.augment.draw(rng, self.num_samples) if self.augment is not None else None
        if params is not None and self.augment.flip and self.augment.alternate_flip:
            # crops stay drawn per epoch; the flip of sample i is alternate_flips(...)[i], in batch order
            flips = alternate_flips(self.seed, epoch, self.num_samples)[order]
            params = AugmentParams(flip=flips, dy=params.dy, dx=params.dx)
        return order.astype(np.int64), params

    def normalize(self, batch_uint8):
        """uint8 (B, C, H, W) on the device -> float32 ``(x/255 - mean) / std``."""
        x = batch_uint8.astype(self._xp.float32)
        x /= np.float32(255.0)
        x -= self._mean
        x /= self._std
        return x

    def __iter__(self) -> Iterator[tuple]:
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int):
        order, params = self.epoch_plan(epoch)
        to_device = self.backend.asarray
        order_dev = to_device(order)
        if params is not None:
            flip_dev, dy_dev, dx_dev = to_device(params.flip), to_device(params.dy), to_device(params.dx)
        for b in range(len(self)):
            part = slice(b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples))
            if self.shard is not None:
                part = shard_slice(part, *self.shard)
            idx = order_dev[part]
            if params is None:
                images = self.x[idx]
            else:
                images = gather_augmented(self._xp, self.x, idx, flip_dev[part], dy_dev[part], dx_dev[part],
                                          self.augment.crop_padding, self.augment.padding_mode)
            yield self.normalize(images), self.y[idx]
