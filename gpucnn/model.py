"""Sequential: a chain of layers with forward/backward, summary and checkpoints."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from gpucnn.atomic import atomic_open
from gpucnn.fusion import FusionPlan
from gpucnn.layers.base import Layer


def _walk(path, layer: Layer):
    yield path, layer
    for name, child in layer.sublayers():
        yield from _walk(f"{path}.{name}", child)


class Sequential:
    """Layers applied in order. Param keys are ``layers.{i}.{name}``.

    Containers (``Residual``...) expose their children through ``Layer.sublayers()``; their
    params are keyed by the child's path, ``layers.{i}.body.{j}.{name}``. A flat model's
    keys are unchanged.

    ``fuse`` (default True): a BatchNorm2D directly followed by an activation its op can apply
    (ReLU, GELU) does both in its own kernels and the activation layer passes through
    (gpucnn.fusion; the layer list, keys and outputs are unchanged). ``set_fusion(False)``
    turns that off, e.g. to debug one layer's ops.
    """

    def __init__(self, layers: list[Layer], fuse: bool = True) -> None:
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layers[{i}] is {type(layer).__name__}, not a gpucnn Layer")
        if not layers:
            raise ValueError("Sequential: needs at least one layer")
        self.layers = layers
        self.fusion = FusionPlan(fuse)
        self.fusion.refresh(self.layers)

    def set_fusion(self, enabled: bool) -> None:
        """Fuse BatchNorm2D + activation pairs (True) or run every layer's own ops (False)."""
        self.fusion.enabled = bool(enabled)
        self.fusion.refresh(self.layers)

    @property
    def backend(self):
        return self.layers[0].backend

    def forward(self, x, training: bool = True):
        # Re-planned only when the layer tree changed since the last call (a cheap walk otherwise).
        self.fusion.refresh(self.layers)
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    __call__ = forward

    def backward(self, dlogits, input_grad: bool = True):
        """Propagate dL/dlogits back through every layer (filling grads); returns dL/dx.

        ``input_grad=False`` (training loops) tells the first layer that nothing uses
        dL/dx, so it may skip computing it (Conv2D and Dense do; they return None).
        """
        d = dlogits
        for layer in reversed(self.layers[1:]):
            d = layer.backward(d)
        return self.layers[0].backward(d, input_grad=input_grad)

    def set_step_seeds(self, seed_of) -> None:
        """Give every layer of the tree that ``takes_step_seed`` the seed ``seed_of(path)`` (see ``named_layers``)."""
        for path, layer in self.named_layers():
            if layer.takes_step_seed:
                layer.set_step_seed(seed_of(path))

    def set_epoch(self, epoch: int) -> None:
        """Tell every layer of the tree that training epoch ``epoch`` (0-based) starts (``Layer.set_epoch``)."""
        for _, layer in self.named_layers():
            layer.set_epoch(epoch)

    def predict(self, x, batch_size: int = 256):
        """Logits in evaluation mode, computed batch by batch (a backend array)."""
        if batch_size < 1:
            raise ValueError(f"predict: batch_size must be >= 1, got {batch_size}")
        xp = self.backend.xp
        outs = [self.forward(x[i : i + batch_size], training=False) for i in range(0, x.shape[0], batch_size)]
        return xp.concatenate(outs, axis=0)

    def named_layers(self) -> list[tuple[int | str, Layer]]:
        """Every layer of the tree, containers before their children, as (path, layer).

        ``path`` is the int index of a top-level layer and ``"{i}.{child}"`` (e.g. "3.body.1")
        for a nested one, so ``f"layers.{path}.{param}"`` is a param's key everywhere.
        """
        return [item for i, layer in enumerate(self.layers) for item in _walk(i, layer)]

    def parameters(self) -> list[tuple[int | str, Layer, str]]:
        """(path, owning layer, param name) for every param of the tree (see ``named_layers``)."""
        return [(path, layer, name) for path, layer in self.named_layers() for name in layer.params]

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def num_trainable_params(self) -> int:
        return sum(layer.num_trainable_params() for layer in self.layers)

    def zero_grads(self) -> None:
        for _, layer in self.named_layers():
            for name, g in layer.grads.items():
                layer.grads[name] = layer.xp.zeros_like(layer.params[name])

    def summary(self, input_shape: tuple[int, ...]) -> str:
        """Keras-like table: layer, per-sample output shape, params; then the totals.

        A layer whose work the layer before it does (see ``fuse``) is marked "(fused into previous)".
        """
        rows: list[tuple[str, str, str]] = []
        self.fusion.refresh(self.layers)
        shape = tuple(input_shape)
        for i, layer in enumerate(self.layers):
            shape = _summary_rows(f"{i}", layer, shape, 0, rows)
        head = ("Layer", "Output shape", "Params")
        widths = [max(len(r[c]) for r in rows + [head]) for c in range(3)]
        line = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
        rule = "-" * (sum(widths) + 4)
        total = self.num_params()
        trainable = self.num_trainable_params()
        parts = [f"Input shape: {(None, *tuple(input_shape))}", rule, line(head), "=" * len(rule)]
        parts += [line(r) for r in rows]
        parts += [
            "=" * len(rule),
            f"Total params: {total:,}",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}",
        ]
        return "\n".join(parts)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of params and layer state, keys ``layers.{path}.{name}`` (see ``named_layers``)."""
        out: dict[str, np.ndarray] = {}
        for path, layer in self.named_layers():
            for name, value in {**layer.params, **layer.state()}.items():
                out[f"layers.{path}.{name}"] = np.array(layer.backend.to_host(value))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load params and layer state; missing or extra keys and shape mismatches raise ValueError."""
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {extra}")
        for key, current in expected.items():
            value = np.asarray(state[key])
            if value.shape != current.shape:
                raise ValueError(f"load_state_dict: {key!r} expected shape {current.shape}, got {value.shape}")
        for path, layer in self.named_layers():
            for name in layer.params:
                layer.set_param(name, state[f"layers.{path}.{name}"])
            names = list(layer.state())
            if names:
                layer.load_state({n: state[f"layers.{path}.{n}"] for n in names})

    def save(self, path) -> None:
        """Write state_dict() to an .npz file atomically (temp file + os.replace)."""
        with atomic_open(os.path.abspath(path), "wb") as f:
            np.savez(f, **self.state_dict())

    def load_params(self, path) -> None:
        """Load an .npz written by save() (no pickle)."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise FileNotFoundError(f"load_params: no such file {path!r}") from None
        except (ValueError, OSError) as exc:
            raise ValueError(f"load_params: {path!r} is not a readable .npz checkpoint ({exc})") from None
        self.load_state_dict(state)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n  {inner}\n])"


def _summary_rows(label: str, layer: Layer, shape: tuple[int, ...], depth: int, rows: list) -> tuple[int, ...]:
    """Append the row of ``layer`` and, indented below it, its children's; return its output shape.

    The children of one branch (``{branch}.{j}``) run in order from the container's input.
    """
    out_shape = tuple(layer.output_shape(shape))
    fused = " (fused into previous)" if layer.absorbed else ""
    rows.append((f"{'  ' * depth}{label}: {layer!r}{fused}", str((None, *out_shape)), f"{layer.num_params():,}"))
    branch_shapes: dict[str, tuple[int, ...]] = {}
    for name, child in layer.sublayers():
        branch = name.rsplit(".", 1)[0]
        branch_shapes[branch] = _summary_rows(name, child, branch_shapes.get(branch, shape), depth + 1, rows)
    return out_shape
