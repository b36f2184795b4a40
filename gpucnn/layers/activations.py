"""Element-wise activation layers (any input shape; dtype kept), one per ``gpucnn.ops.ACTIVATIONS`` entry.

Each class (``ReLU``, ``Sigmoid``, ``Tanh``, ``Softplus``, ``GELU``, ``SiLU``) is made from
its op-table entry, so a new activation needs no edit here.
"""

from __future__ import annotations

from gpucnn.layers.base import Layer
from gpucnn.ops import ACTIVATIONS, Activation


# What an absorbed layer's forward leaves for its backward (no array: nothing to cache).
_PASSED_THROUGH = object()


class ActivationLayer(Layer):
    """Caches the output or the input (as ``activation.cached`` says) for its backward pass.

    Absorbed (``set_absorbed(True)``, by the layer before it applying this activation in its
    own kernels: BatchNorm2D, or Conv2D/Dense in their GEMM's epilogue) it passes through:
    forward returns x, backward returns dy (the absorbing layer's backward already multiplied
    by the activation's derivative).
    """

    activation: Activation

    def __init__(self) -> None:
        super().__init__(None)
        self._cache = None

    @property
    def elementwise_activation(self) -> Activation:
        return self.activation

    def set_absorbed(self, absorbed: bool) -> None:
        self.absorbed = bool(absorbed)
        # A forward of the other mode must not be paired with a backward of this one.
        self._cache = None

    def forward(self, x, training: bool = True):
        self.check_input(x, None, "")
        if self.absorbed:
            self._cache = _PASSED_THROUGH
            return x
        forward, _ = self.activation.ops
        y = getattr(self.ops, forward)(x)
        self._cache = x if self.activation.cached == "input" else y
        return y

    def backward(self, dy, input_grad: bool = True):
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        if self._cache is _PASSED_THROUGH:  # as its forward was: the previous layer did the work
            return dy
        _, backward = self.activation.ops
        return getattr(self.ops, backward)(dy, self._cache)


# Config type name ("relu") -> layer class (ReLU).
ACTIVATION_LAYERS: dict[str, type[ActivationLayer]] = {
    a.name: type(a.layer, (ActivationLayer,), {"activation": a, "__module__": __name__,
                                               "__doc__": f"{a.layer} activation (ops {a.ops[0]}/{a.ops[1]})."})
    for a in ACTIVATIONS
}
globals().update({cls.__name__: cls for cls in ACTIVATION_LAYERS.values()})
