"""The Layer base class and the argument checks every layer shares.

A layer owns ``params`` and ``grads`` (dicts of backend arrays with equal keys and shapes),
caches in ``forward`` only what its ``backward`` needs, and is bound to the backend that
was current when it was built (``self.backend``); its arrays live there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpucnn.backend import Backend, get_backend

IntPair = tuple[int, int]


def as_pair(value: Any, what: str, minimum: int = 0) -> IntPair:
    """Normalize an int or an (h, w) pair of ints to a tuple, checking each is >= minimum."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value!r}")
    return pair


def as_count(owner: str, what: str, value: Any) -> int:
    """``value`` as an int >= 1 (a channel or feature count), else a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {what} must be an int >= 1, got {value!r}")
    return int(value)


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed, or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


class Layer:
    """Base class: forward(x, training) -> y, backward(dy) -> dx, params/grads dicts.

    Subclasses set ``param_kinds`` (param name -> "weight" or "bias"); the optimizer applies
    weight decay to "weight" params only and may give each kind its own learning rate.
    ``frozen`` layers keep their params out of the optimizer; ``frozen_params`` (a set of
    param names) does the same for single params, e.g. ``{"gamma"}`` on a BatchNorm2D.
    """

    param_kinds: dict[str, str] = {}

    def __init__(self, dtype=None) -> None:
        """``dtype`` None: a parameter-free layer that keeps whatever float dtype it is given."""
        self.backend: Backend = get_backend()
        self.dtype = None if dtype is None else np.dtype(dtype)
        if self.dtype is not None:
            if self.dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}: dtype must be a float type, got {self.dtype.name}")
            self.backend.check_dtype(self.dtype, type(self).__name__)
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.frozen = False
        self.frozen_params: set[str] = set()
        # param name -> epochs it is trained for (then frozen), applied by set_epoch; e.g. {"b": 3}
        self.train_epochs: dict[str, int] = {}

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def ops(self):
        return self.backend.ops

    @property
    def xp(self):
        return self.backend.xp

    # Layers that draw randomness per training step (Dropout) say so; the training loop
    # then hands them a seed derived from (run seed, epoch, step, layer index) each step,
    # which makes an interrupted-and-resumed run repeat the uninterrupted one exactly.
    takes_step_seed = False

    def forward(self, x, training: bool = True):
        raise NotImplementedError

    def backward(self, dy, input_grad: bool = True):
        """Fill ``grads`` and return dL/dx. ``input_grad=False``: dL/dx is not needed (the
        first layer of a training step); a layer may then skip computing it and return None."""
        raise NotImplementedError

    def set_step_seed(self, seed: int) -> None:
        """The uint32 seed of the next training forward (only called when ``takes_step_seed``)."""

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every training epoch (0-based): a param of ``train_epochs`` is
        in ``frozen_params`` from epoch ``train_epochs[name]`` on (no update, no weight decay)."""
        for name, epochs in self.train_epochs.items():
            if epoch < epochs:
                self.frozen_params.discard(name)
            else:
                self.frozen_params.add(name)

    # Fusion (gpucnn.fusion plans it): a layer may do the work of the activation layer right
    # after it in a chain, in its own kernels, e.g. BatchNorm2D applies the ReLU/GELU that
    # follows it, Conv2D/Dense the ReLU in their GEMM's epilogue. The absorbed layer stays in
    # the tree (params, keys, export unchanged) and passes through. Defaults: nothing fuses.

    # Names of the ops.ACTIVATIONS this layer's forward op can apply itself (its op's
    # ``activation=`` argument); the absorbed entry, or None, is ``_activation``.
    absorbable_activations: tuple[str, ...] = ()
    _activation = None

    @property
    def elementwise_activation(self):
        """The ``gpucnn.ops.ACTIVATIONS`` entry this layer applies element-wise, else None."""
        return None

    def can_absorb(self, following: Layer) -> bool:
        """Whether this layer can also do ``following``'s work (``following`` comes right after it)."""
        activation = following.elementwise_activation
        return activation is not None and activation.name in self.absorbable_activations

    def absorb(self, following: Layer | None) -> None:
        """Do ``following``'s work from the next forward on (None: stop; only when ``can_absorb``)."""
        if following is not None and not self.can_absorb(following):
            fuses = f": it fuses only {', '.join(self.absorbable_activations)}" if self.absorbable_activations else ""
            raise TypeError(f"{self.name} cannot absorb {following.name}{fuses}")
        self._activation = None if following is None else following.elementwise_activation
        self.forget_forward()

    @property
    def fused_activation(self) -> str | None:
        """The name of the absorbed activation this layer's op applies ("relu"...), or None."""
        return None if self._activation is None else self._activation.name

    def forget_forward(self) -> None:
        """Drop what the last forward cached for its backward (a forward of the other fusion
        mode must not be paired with a backward of this one). Layers that fuse override it."""

    # True while the previous layer does this layer's work: forward returns x, backward dy.
    absorbed = False

    def set_absorbed(self, absorbed: bool) -> None:
        """Pass through (True) because the previous layer absorbed this one, or work again (False)."""
        if absorbed:
            raise TypeError(f"{self.name} cannot be absorbed into the layer before it")

    def __call__(self, x, training: bool = True):
        return self.forward(x, training=training)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input shape (no batch axis)."""
        return tuple(input_shape)

    def sublayers(self) -> list[tuple[str, Layer]]:
        """A container's child layers as (name, layer), e.g. ("body.0", conv); [] for a leaf.

        Names are dotted ``{branch}.{j}``: the children of one branch are applied in order
        to the container's input. A Sequential walks this tree for params, optimizer groups,
        state_dict keys (``layers.{i}.{name}.{param}``) and its summary.
        """
        return []

    def num_params(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def is_trainable(self, name: str) -> bool:
        """Whether the optimizer updates param ``name`` (not frozen, layer or param)."""
        return not self.frozen and name not in self.frozen_params

    def num_trainable_params(self) -> int:
        return int(sum(int(np.prod(p.shape)) for n, p in self.params.items() if self.is_trainable(n)))

    def state(self) -> dict[str, Any]:
        """Arrays besides params that a checkpoint must keep (running statistics...): the live
        arrays, so that writing into them (Lookahead, EMA) updates the layer."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``state()`` returned."""

    def set_param(self, name: str, value) -> None:
        """Replace a parameter's values, keeping its shape, dtype and backend."""
        current = self.params[name]
        host = np.asarray(value)
        if host.shape != tuple(current.shape):
            raise ValueError(
                f"{self.name}.params[{name!r}]: expected shape {tuple(current.shape)}, got {host.shape}"
            )
        self.params[name][...] = self.backend.asarray(host.astype(self.dtype, copy=False))

    def _new_param(self, name: str, host_value: np.ndarray, kind: str) -> None:
        self.params[name] = self.backend.asarray(np.ascontiguousarray(host_value, dtype=self.dtype))
        self.grads[name] = self.xp.zeros_like(self.params[name])
        self.param_kinds = {**self.param_kinds, name: kind}

    def check_input(self, x, expected_rank: int | None, layout: str) -> None:
        """Reject non-arrays (TypeError), non-float arrays and wrong ranks (``expected_rank`` None:
        any) with the layer's name and the shapes."""
        # Lists are refused rather than converted: a silent host->device copy per call would hide
        # a slow path, and the dtype a list should become is the caller's choice.
        if not isinstance(x, self.backend_array_types()):
            raise TypeError(
                f"{self.name}: expected an array of the {self.backend.name} backend, got {type(x).__name__}; "
                f"convert it first, e.g. np.asarray(x, dtype=np.float32)"
            )
        dtype = np.dtype(x.dtype)
        if dtype.kind in "iub":
            raise ValueError(
                f"{self.name}: got an integer array ({dtype.name}); convert images to float first, "
                f"e.g. x.astype(np.float32) / 255"
            )
        if self.dtype is not None and dtype != self.dtype:
            raise ValueError(f"{self.name}: expected {self.dtype.name} input, got {dtype.name}")
        if expected_rank is not None and x.ndim != expected_rank:
            raise ValueError(
                f"{self.name}: expected a {expected_rank}-d input {layout}, got shape {tuple(x.shape)}"
            )

    def backend_array_types(self) -> tuple[type, ...]:
        """The array classes of this layer's backend (numpy.ndarray; cupy.ndarray on cuda)."""
        return (self.xp.ndarray,)

    # An empty batch (N = 0) never reaches the ops: they need not handle it, no kernel is
    # launched on a zero-sized grid, and no uninitialised buffer is handed back.
    def empty_output(self, x):
        """The forward result of an empty batch x (0, ...): zeros (0, *output_shape) of x's dtype."""
        return self.xp.zeros((0, *self.output_shape(tuple(x.shape[1:]))), dtype=x.dtype)

    def empty_backward(self, input_shape: tuple[int, ...], dtype, input_grad: bool = True):
        """The backward of an empty batch: every parameter gradient zero (a sum over no samples),
        and an empty dL/dx of ``input_shape`` (None when ``input_grad`` is False)."""
        for name, param in self.params.items():
            self.grads[name] = self.xp.zeros_like(param)
        return self.xp.zeros(input_shape, dtype=dtype) if input_grad else None

    def __repr__(self) -> str:
        return f"{self.name}()"
