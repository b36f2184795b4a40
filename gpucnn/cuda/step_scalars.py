"""The per-step scalars of a CUDA-graph training step, in device memory: lrs and dropout seeds.

A captured graph bakes every by-value kernel argument in; what changes from step to step
must therefore live in device memory that the kernels read (``sgd_update_dev``,
``dropout_forward_dev``) and that the host rewrites before each replay, never inside it.

``StepScalars(backend, lr_scales, seed_paths)`` owns one uint32 device array ``words``
(L + S,): word j < L holds the float32 bits of ``lr * lr_scales[j]`` (one slot per distinct
per-param lr scale, so the kernel gets exactly the float32 the eager path passes by value),
word L + k the uint32 seed of the k-th randomized layer (``seed_paths[k]``, a
``Sequential.named_layers`` path). ``lr(scale)`` and ``seed(path)`` are 1-element views
(float32 / uint32) into it, fixed for the life of the object: a graph captures their
addresses. ``write(lr, seeds, stream)`` fills a host staging array and copies it with one
host->device copy on ``stream`` (asynchronous from pageable memory: the staging array may
be reused at once); on a CPU backend it is a NumPy assignment.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


class StepScalars:
    """Device lrs (float32, one per lr scale) and dropout seeds (uint32, one per layer path)."""

    def __init__(self, backend, lr_scales: Iterable[float], seed_paths: Iterable[int | str] = ()) -> None:
        self.backend = backend
        self.lr_scales = tuple(sorted({float(s) for s in lr_scales}))
        self.seed_paths = tuple(seed_paths)
        count = len(self.lr_scales) + len(self.seed_paths)
        self._host = np.zeros(max(count, 1), dtype=np.uint32)
        self.words = backend.xp.zeros(self._host.shape, dtype=np.uint32)
        floats = self.words.view(np.float32)
        lrs = len(self.lr_scales)
        self._lr = {scale: floats[j : j + 1] for j, scale in enumerate(self.lr_scales)}
        self._seed = {path: self.words[lrs + k : lrs + k + 1] for k, path in enumerate(self.seed_paths)}

    def lr(self, scale: float):
        """The (1,) float32 device array holding ``float32(lr * scale)`` of the current step."""
        try:
            return self._lr[float(scale)]
        except KeyError:
            raise KeyError(f"StepScalars: no lr slot for lr_scale {scale} (slots: {self.lr_scales})") from None

    def seed(self, path):
        """The (1,) uint32 device array holding the current step's seed of the layer at ``path``."""
        return self._seed[path]

    def host_words(self, lr: float, seeds: dict) -> np.ndarray:
        """The (L + S,) uint32 words for base rate ``lr`` and ``seeds`` (path -> uint32 seed)."""
        words = self._host
        lrs = len(self.lr_scales)
        words[:lrs] = np.array([lr * scale for scale in self.lr_scales], dtype=np.float32).view(np.uint32)
        for k, path in enumerate(self.seed_paths):
            words[lrs + k] = np.uint32(seeds[path])
        return words

    def write(self, lr: float, seeds: dict, stream=None) -> None:
        """Make the device words this step's: one host->device copy (on ``stream``, on the cuda backend)."""
        words = self.host_words(lr, seeds)
        if self.backend.on_device:
            self.words.set(words, stream=stream)
        else:
            self.words[...] = words
