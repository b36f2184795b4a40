"""Element-wise activation layers (any input shape; dtype kept)."""

from __future__ import annotations

from gpucnn.layers.base import Layer


class _Activation(Layer):
    """Caches the output (``_cache_input = False``) or the input for its backward pass."""

    _op = ""
    _cache_input = False

    def __init__(self) -> None:
        super().__init__(None)
        self._cache = None

    def forward(self, x, training: bool = True):
        self.check_input(x, x.ndim, "")
        y = getattr(self.ops, f"{self._op}_forward")(x)
        self._cache = x if self._cache_input else y
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        return getattr(self.ops, f"{self._op}_backward")(dy, self._cache)


class ReLU(_Activation):
    _op = "relu"


class Sigmoid(_Activation):
    _op = "sigmoid"


class Tanh(_Activation):
    _op = "tanh"


class Softplus(_Activation):
    _op = "softplus"
    _cache_input = True


class GELU(_Activation):
    """x * Phi(x), exact erf form."""

    _op = "gelu"
    _cache_input = True
