"""Time one LeNet-5 SGD step (batch 128, 3x32x32) on the numpy backend against PyTorch CPU.

The two steps alternate, so both see the same machine load; the result holds the
median milliseconds of each and their ratio (ours / torch).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from gpucnn import losses, optim
from gpucnn.backend import use_backend
from gpucnn.zoo import lenet5


@dataclass
class CpuStepResult:
    batch_size: int
    repeats: int
    numpy_ms: float
    torch_ms: float | None
    torch_threads: int | None

    @property
    def ratio(self) -> float | None:
        return None if self.torch_ms is None else self.numpy_ms / self.torch_ms

    def format(self) -> str:
        text = f"LeNet-5 SGD step, batch {self.batch_size}, 3x32x32, median of {self.repeats}: numpy {self.numpy_ms:.2f} ms"
        if self.torch_ms is not None:
            text += f", torch CPU ({self.torch_threads} threads) {self.torch_ms:.2f} ms, ratio {self.ratio:.2f}x"
        else:
            text += " (torch not importable: no comparison)"
        return text


def _numpy_step(batch_size: int, seed: int):
    model = lenet5(rng=seed)
    loss_fn = losses.SoftmaxCrossEntropy()
    opt = optim.SGD(model, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch_size)

    def step():
        loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    return step


def _torch_step(batch_size: int, seed: int):
    try:
        import torch
    except ImportError:
        return None, None
    nn = torch.nn
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step, torch.get_num_threads()


def _time_ms(step) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1e3


def time_cpu_step(batch_size: int = 128, repeats: int = 30, warmup: int = 3, seed: int = 0) -> CpuStepResult:
    """Median ms of one LeNet-5 training step, ours (numpy backend) vs PyTorch CPU."""
    with use_backend("numpy"):
        ours = _numpy_step(batch_size, seed)
        theirs, threads = _torch_step(batch_size, seed)
        for _ in range(warmup):
            ours()
            if theirs:
                theirs()
        ours_ms, theirs_ms = [], []
        for _ in range(repeats):
            ours_ms.append(_time_ms(ours))
            if theirs:
                theirs_ms.append(_time_ms(theirs))
    return CpuStepResult(
        batch_size,
        repeats,
        statistics.median(ours_ms),
        statistics.median(theirs_ms) if theirs_ms else None,
        threads,
    )
