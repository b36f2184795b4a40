"""Inverted dropout with the counter-based hash every backend shares."""

from __future__ import annotations

from gpucnn.checks import finite_number
from gpucnn.layers.base import Layer, as_rng


class Dropout(Layer):
    """Zero each element with probability p in training, scale the rest by 1/(1-p).

    Each training forward draws a fresh 32-bit seed from ``rng`` (Generator, int or
    None); ``next_seed`` (settable) fixes the seed of the next call, for reproducible tests.
    ``set_step_seed`` takes an int, or a (1,) uint32 device array that the kernel reads (a
    CUDA-graph step: the host rewrites it before each replay; ``last_seed`` is then that array).
    Evaluation mode is the identity.
    """

    takes_step_seed = True

    def __init__(self, p: float = 0.5, rng=None) -> None:
        super().__init__(None)
        self.p = finite_number("Dropout", "p", p, 0.0, 1.0, high_open=True)
        self._rng = as_rng(rng)
        self.next_seed: int | None = None
        self._mask = None

    def forward(self, x, training: bool = True):
        self.check_input(x, None, "")
        if not training or self.p == 0.0:
            self._mask = None
            return x
        seed = self.next_seed if self.next_seed is not None else int(self._rng.integers(0, 2**32))
        self.next_seed = None
        self.last_seed = seed
        y, self._mask = self.ops.dropout_forward(x, self.p, seed)
        return y

    def set_step_seed(self, seed) -> None:
        self.next_seed = seed if hasattr(seed, "shape") else int(seed)

    def backward(self, dy, input_grad: bool = True):
        return dy if self._mask is None else self.ops.dropout_backward(dy, self._mask)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
