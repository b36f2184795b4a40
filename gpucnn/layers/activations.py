"""Element-wise activation layers (any input shape; dtype kept), one per ``gpucnn.ops.ACTIVATIONS`` entry.

Each class (``ReLU``, ``Sigmoid``, ``Tanh``, ``Softplus``, ``GELU``, ``SiLU``) is made from
its op-table entry, so a new activation needs no edit here.
"""

from __future__ import annotations

from gpucnn.layers.base import Layer
from gpucnn.ops import ACTIVATIONS, Activation


class ActivationLayer(Layer):
    """Caches the output or the input (as ``activation.cached`` says) for its backward pass."""

    activation: Activation

    def __init__(self) -> None:
        super().__init__(None)
        self._cache = None

    def forward(self, x, training: bool = True):
        self.check_input(x, None, "")
        forward, _ = self.activation.ops
        y = getattr(self.ops, forward)(x)
        self._cache = x if self.activation.cached == "input" else y
        return y

    def backward(self, dy, input_grad: bool = True):
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        _, backward = self.activation.ops
        return getattr(self.ops, backward)(dy, self._cache)


# Config type name ("relu") -> layer class (ReLU).
ACTIVATION_LAYERS: dict[str, type[ActivationLayer]] = {
    a.name: type(a.layer, (ActivationLayer,), {"activation": a, "__module__": __name__,
                                               "__doc__": f"{a.layer} activation (ops {a.ops[0]}/{a.ops[1]})."})
    for a in ACTIVATIONS
}
globals().update({cls.__name__: cls for cls in ACTIVATION_LAYERS.values()})
