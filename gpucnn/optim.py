"""Stochastic gradient descent with momentum, Nesterov, weight decay and param groups."""

from __future__ import annotations

from typing import Any

import numpy as np

# The optimizers a config may name (``optimizer.name``) and the param kinds groups may select.
OPTIMIZERS = ("sgd",)
PARAM_KINDS = ("weight", "bias")


class SGD:
    """SGD over a Sequential's trainable params (frozen layers and ``frozen_params`` skipped).

    Per param: g = grad + wd * param; with momentum v = momentum*v + g and
    step = g + momentum*v (nesterov) or v; param -= lr * lr_scale * step.
    Weight decay defaults to ``weight_decay`` on "weight" params and 0 on "bias" params.
    ``groups``: list of {"kind": "weight"|"bias", "layer": class name, "lr_scale": float,
    "weight_decay": float}; a param takes the first group whose given keys all match.
    ``lr`` is the base rate that schedules set.
    """

    _GROUP_KEYS = {"kind", "layer", "lr_scale", "weight_decay"}

    def __init__(self, model, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, groups=None):
        if lr < 0:
            raise ValueError(f"SGD: lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("SGD: nesterov needs momentum > 0")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay}")
        self.model = model
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.groups = [dict(g) for g in (groups or [])]
        for i, group in enumerate(self.groups):
            unknown = set(group) - self._GROUP_KEYS
            if unknown:
                raise ValueError(f"SGD: groups[{i}] has unknown keys {sorted(unknown)}; allowed {sorted(self._GROUP_KEYS)}")
            if "kind" in group and group["kind"] not in ("weight", "bias"):
                raise ValueError(f"SGD: groups[{i}].kind must be 'weight' or 'bias', got {group['kind']!r}")
        self.velocity: dict[str, Any] = {}

    def param_settings(self, layer, name: str) -> tuple[float, float]:
        """(lr scale, weight decay) of ``layer.params[name]``: its first matching group's, else the defaults."""
        kind = layer.param_kinds.get(name, "weight")
        for group in self.groups:
            if "kind" in group and group["kind"] != kind:
                continue
            if "layer" in group and group["layer"] != type(layer).__name__:
                continue
            default_wd = self.weight_decay if kind == "weight" else 0.0
            return float(group.get("lr_scale", 1.0)), float(group.get("weight_decay", default_wd))
        return 1.0, (self.weight_decay if kind == "weight" else 0.0)

    def step(self) -> None:
        for index, layer, name in self.model.parameters():
            if not layer.is_trainable(name):
                continue
            lr_scale, wd = self.param_settings(layer, name)
            key = f"layers.{index}.{name}"
            velocity = None
            if self.momentum:
                velocity = self.velocity.get(key)
                if velocity is None:
                    velocity = self.velocity[key] = layer.xp.zeros_like(layer.params[name])
            layer.backend.ops.sgd_update(
                layer.params[name], layer.grads[name], velocity, self.lr * lr_scale, self.momentum, self.nesterov, wd
            )

    def zero_grad(self) -> None:
        self.model.zero_grads()

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"velocity.{key}": np.array(self.model.layers[0].backend.to_host(v)) for key, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        params = {f"layers.{i}.{name}": (layer, name) for i, layer, name in self.model.parameters()}
        velocity = {}
        for key, value in state.items():
            if not key.startswith("velocity."):
                raise ValueError(f"SGD.load_state_dict: unexpected key {key!r} (expected 'velocity.layers.<i>.<name>')")
            pkey = key[len("velocity."):]
            if pkey not in params:
                raise ValueError(f"SGD.load_state_dict: key {key!r} names no parameter of the model")
            layer, name = params[pkey]
            value = np.asarray(value)
            if value.shape != tuple(layer.params[name].shape):
                raise ValueError(
                    f"SGD.load_state_dict: {key!r} expected shape {tuple(layer.params[name].shape)}, got {value.shape}"
                )
            velocity[pkey] = layer.backend.asarray(value.astype(layer.dtype))
        self.velocity = velocity
