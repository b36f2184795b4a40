"""Branching containers: Add (sum of parallel branches) and Residual (body + shortcut),
and SubsamplePad, the parameter-free shortcut of He et al.'s CIFAR nets (option A).

Each branch is a list of layers applied in order to the container's input; an empty
branch is the identity. The outputs of all branches must have the same shape and are
summed; backward sends dy down every branch and sums the input gradients.
"""

from __future__ import annotations

from gpucnn.layers.base import Layer, as_pair


def _chain_shape(branch: list[Layer], shape: tuple[int, ...]) -> tuple[int, ...]:
    for layer in branch:
        shape = tuple(layer.output_shape(shape))
    return tuple(shape)


class Add(Layer):
    """y = sum_k branch_k(x) for any input shape; branches named ``branch0``, ``branch1``, ...

    Child layers are exposed through ``sublayers()`` as ``("{branch}.{j}", layer)``, so a
    Sequential's param keys read ``layers.{i}.{branch}.{j}.{param}``. Setting ``frozen``
    freezes every child.
    """

    def __init__(self, *branches: list[Layer], names: tuple[str, ...] | None = None) -> None:
        super().__init__(None)
        if len(branches) < 1:
            raise ValueError(f"{self.name}: needs at least one branch (a list of layers; [] is the identity)")
        names = tuple(f"branch{k}" for k in range(len(branches))) if names is None else tuple(names)
        if len(names) != len(branches):
            raise ValueError(f"{self.name}: got {len(branches)} branches but {len(names)} names")
        checked = []
        for name, branch in zip(names, branches):
            if branch is None:
                branch = []
            if not isinstance(branch, (list, tuple)):
                raise TypeError(f"{self.name}: {name} must be a list of layers, got {type(branch).__name__}")
            for j, layer in enumerate(branch):
                if not isinstance(layer, Layer):
                    raise TypeError(f"{self.name}: {name}[{j}] is {type(layer).__name__}, not a gpucnn Layer")
            checked.append(list(branch))
        self.branch_names = names
        self.branches = checked
        self._seen_forward = False

    # ------------------------------------------------------------------ the layer tree

    def sublayers(self) -> list[tuple[str, Layer]]:
        return [(f"{name}.{j}", layer) for name, branch in zip(self.branch_names, self.branches)
                for j, layer in enumerate(branch)]

    @property
    def frozen(self) -> bool:
        return getattr(self, "_frozen", False)

    @frozen.setter
    def frozen(self, value: bool) -> None:
        # The optimizer asks each leaf whether it is trainable, so freezing a block freezes its children.
        self._frozen = bool(value)
        children = self.sublayers() if hasattr(self, "branches") else []  # Layer.__init__ sets it first
        for _, layer in children:
            layer.frozen = bool(value)

    def num_params(self) -> int:
        return super().num_params() + sum(layer.num_params() for _, layer in self.sublayers())

    def num_trainable_params(self) -> int:
        return super().num_trainable_params() + sum(layer.num_trainable_params() for _, layer in self.sublayers())

    # ------------------------------------------------------------------ shapes, forward, backward

    def branch_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Per-sample output shape of each branch for a per-sample input shape."""
        return [_chain_shape(branch, tuple(input_shape)) for branch in self.branches]

    def output_shape(self, input_shape):
        shapes = self.branch_shapes(input_shape)
        if any(s != shapes[0] for s in shapes):
            given = ", ".join(f"{n} gives {s}" for n, s in zip(self.branch_names, shapes))
            raise ValueError(
                f"{self.name}: the branches must give equal shapes to be added, but for input {tuple(input_shape)} "
                f"{given}"
            )
        return shapes[0]

    def forward(self, x, training: bool = True):
        self.check_input(x, None, "")
        outputs = []
        for branch in self.branches:
            y = x
            for layer in branch:
                y = layer.forward(y, training=training)
            outputs.append(y)
        if any(y.shape != outputs[0].shape for y in outputs):
            self.output_shape(tuple(x.shape[1:]))  # raises, naming every branch's shape
        # A lone identity branch is copied: the caller may overwrite the output, never its input.
        total = x.copy() if len(outputs) == 1 and outputs[0] is x else outputs[0]
        for y in outputs[1:]:
            total = total + y
        self._seen_forward = True
        return total

    def backward(self, dy, input_grad: bool = True):
        if not self._seen_forward:
            raise RuntimeError(f"{self.name}: backward called before forward")
        grads = []
        for branch in self.branches:
            d = dy
            for layer in reversed(branch):
                d = layer.backward(d)
            grads.append(d)
        total = dy.copy() if len(grads) == 1 and grads[0] is dy else grads[0]
        for d in grads[1:]:
            total = total + d
        return total

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}={len(b)}" for n, b in zip(self.branch_names, self.branches))
        return f"{self.name}({sizes})"


class Residual(Add):
    """y = body(x) + shortcut(x); ``shortcut`` None or [] is the identity (He et al. 2016).

    Children are ``body.{j}`` and ``shortcut.{j}``. A projection shortcut (1x1 conv with
    the body's stride, then BatchNorm2D) is what makes the shapes agree where the body
    changes channels or resolution.
    """

    def __init__(self, body: list[Layer], shortcut: list[Layer] | None = None) -> None:
        if not isinstance(body, (list, tuple)) or not body:
            raise ValueError(f"Residual: body must be a non-empty list of layers, got {body!r}")
        super().__init__(list(body), list(shortcut or []), names=("body", "shortcut"))

    @property
    def body(self) -> list[Layer]:
        return self.branches[0]

    @property
    def shortcut(self) -> list[Layer]:
        return self.branches[1]

    def output_shape(self, input_shape):
        body, shortcut = self.branch_shapes(input_shape)
        if body != shortcut:
            kind = "identity shortcut" if not self.shortcut else "shortcut"
            raise ValueError(
                f"Residual: the body gives {body} but the {kind} gives {shortcut} for input {tuple(input_shape)}; "
                f"the two must agree (use a projection shortcut, e.g. a 1x1 Conv2D with the body's stride)"
            )
        return body

    def __repr__(self) -> str:
        shortcut = f"{len(self.shortcut)} layers" if self.shortcut else "identity"
        return f"Residual(body={len(self.body)} layers, shortcut={shortcut})"


class SubsamplePad(Layer):
    """Option-A shortcut: (N, C, H, W) -> (N, out_channels, ceil(H/sh), ceil(W/sw)), no params.

    Keeps every ``stride``-th pixel (the positions a 1x1 conv with that stride reads) and adds
    zero channels, (out_channels - C) // 2 before and the rest after, as the common CIFAR
    ResNet code does (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``).
    """

    def __init__(self, out_channels: int, stride=2) -> None:
        super().__init__(None)
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"SubsamplePad: out_channels must be an int >= 1, got {out_channels!r}")
        self.out_channels = out_channels
        self.in_channels: int | None = None  # known once a shape has gone through (output_shape)
        self.stride = as_pair(stride, "SubsamplePad stride", 1)
        self._x_shape = None

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected a per-sample shape (C, H, W), got {tuple(input_shape)}")
        c, h, w = input_shape
        self.in_channels = int(c)  # what an exporter needs to place the zero channels
        if c > self.out_channels:
            raise ValueError(f"{self.name}: out_channels {self.out_channels} must be at least the input's {c} channels")
        (sh, sw) = self.stride
        return (self.out_channels, (h - 1) // sh + 1, (w - 1) // sw + 1)

    def forward(self, x, training: bool = True):
        self.check_input(x, 4, "(N, C, H, W)")
        c_out, oh, ow = self.output_shape(tuple(x.shape[1:]))
        self._x_shape = tuple(x.shape)
        front = (c_out - x.shape[1]) // 2
        y = self.xp.zeros((x.shape[0], c_out, oh, ow), dtype=x.dtype)
        y[:, front:front + x.shape[1]] = x[:, :, :: self.stride[0], :: self.stride[1]]
        return y

    def backward(self, dy, input_grad: bool = True):
        if self._x_shape is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        c = self._x_shape[1]
        front = (self.out_channels - c) // 2
        dx = self.xp.zeros(self._x_shape, dtype=dy.dtype)
        dx[:, :, :: self.stride[0], :: self.stride[1]] = dy[:, front:front + c]
        return dx

    def __repr__(self) -> str:
        return f"SubsamplePad({self.out_channels}, stride={self.stride})"
