"""Timing: CUDA events on the GPU, ``time.perf_counter`` on the CPU; median and spread.

Every measurement runs ``warmup`` untimed calls, then ``repeats`` timed samples. A sample
times ``inner`` back-to-back calls and reports the mean per call, so that kernels much
shorter than the event/launch resolution are still measured: ``inner`` is chosen from the
warm-up so that one sample lasts at least ``min_sample_ms`` (capped at ``max_inner``).
GPU clocks come from ``backend.xp.cuda.Event`` (CuPy) or ``torch.cuda.Event`` for the
PyTorch peers; this module never imports CuPy itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass
class Timing:
    """Per-call milliseconds over ``repeats`` samples: median, quartiles, min, max."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    inner: int
    clock: str  # "cuda-event" | "torch-cuda-event" | "perf_counter"

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(samples_ms: list[float], inner: int, clock: str) -> Timing:
    """Median/quartiles/min/max of per-call times (``samples_ms`` are already per call)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return Timing(float(med), float(q1), float(q3), float(a.min()), float(a.max()), len(a), inner, clock)


class Clock:
    """Times ``inner`` calls of a function; subclasses pick the clock source."""

    name = "perf_counter"

    def sample(self, fn: Callable[[], object], inner: int) -> float:
        """Milliseconds for ``inner`` consecutive calls of ``fn`` (work finished included)."""
        self.sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        self.sync()
        return (time.perf_counter() - start) * 1e3

    def sync(self) -> None:
        """Wait for queued work (no-op on the CPU)."""


class EventClock(Clock):
    """Times with a pair of CUDA events (``start``/``end``) recorded on the current stream."""

    def sample(self, fn, inner):
        self.start.record()
        for _ in range(inner):
            fn()
        self.end.record()
        self.end.synchronize()
        return self.elapsed_ms()

    def elapsed_ms(self) -> float:
        """Milliseconds between the recorded start and end events."""
        raise NotImplementedError


class CupyEventClock(EventClock):
    """CUDA events from the backend's array module (``xp.cuda.Event``)."""

    name = "cuda-event"

    def __init__(self, xp) -> None:
        self.xp = xp
        self.start = xp.cuda.Event()
        self.end = xp.cuda.Event()

    def sync(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def elapsed_ms(self) -> float:
        return float(self.xp.cuda.get_elapsed_time(self.start, self.end))


class TorchEventClock(EventClock):
    """CUDA events of PyTorch's current stream (for the torch peers on the GPU)."""

    name = "torch-cuda-event"

    def __init__(self, torch) -> None:
        self.torch = torch
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def elapsed_ms(self) -> float:
        return float(self.start.elapsed_time(self.end))


def clock_for_backend(backend) -> Clock:
    """CUDA events for the cuda backend, perf_counter otherwise."""
    if backend.on_device:
        return CupyEventClock(backend.xp)
    return Clock()


def measure(
    fn: Callable[[], object],
    clock: Clock,
    repeats: int,
    warmup: int,
    min_sample_ms: float = 1.0,
    max_inner: int = 64,
) -> Timing:
    """Warm up, pick the calls per sample, then time ``repeats`` samples of ``fn``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    probe = clock.sample(fn, 1)  # also the first call when warmup == 0
    inner = 1
    if 0 < probe < min_sample_ms:
        inner = int(min(max_inner, max(1, math.ceil(min_sample_ms / probe))))
    elif probe <= 0:
        inner = max_inner
    samples = [clock.sample(fn, inner) / inner for _ in range(repeats)]
    return summarize(samples, inner, clock.name)
