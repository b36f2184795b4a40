"""Exponential moving average (EMA) of a model's weights, for evaluating with averaged weights.

``ema = EMA(model, decay, warmup)``; call ``ema.update()`` after every optimizer step;
evaluate inside ``with ema.averaged(): ...`` (or ``ema.swap()`` twice); checkpoint with
``ema.state()`` / ``ema.load_state()``.

Update number t (t = 0 for the first call) moves every shadow array s towards the live one p:
``s = d_t * s + (1 - d_t) * p`` with ``d_t = decay`` when ``warmup`` is 0 (the shadow starts as a
copy of the weights at construction), else ``d_t = min(decay, t / (t + warmup))``: the first
update copies the weights (as torch.optim.swa_utils.AveragedModel) and early updates forget
fast, so the average is not dragged towards the random init; ``warmup = 1`` keeps the plain
mean of the weights seen until ``t/(t+1)`` reaches ``decay`` (timm's ModelEmaV3 warm-up with
power 1 and gamma = warmup).

What is averaged: every param (trainable or frozen; frozen ones simply stay put) and every
float array of ``layer.state()``, i.e. BatchNorm's running_mean and running_var. The running
statistics are averaged too (as timm's ModelEma and AveragedModel(use_buffers=True) do)
because the live ones describe the activations of the live weights; the averaged weights
need statistics of a matching age, and averaging them with the same decay gives that
without an extra pass over the data. Non-float state is copied, not averaged.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from gpucnn.checks import finite_number


class EMA:
    """Shadow copies of ``model``'s params and float layer state (backend arrays, same dtypes).

    Keys of ``shadow`` follow ``Sequential.state_dict()``: ``layers.{i}.{name}``.
    """

    def __init__(self, model, decay: float, warmup: float = 0.0) -> None:
        self.model = model
        self.decay = finite_number("EMA", "decay", decay, 0.0, 1.0, high_open=True)
        self.warmup = finite_number("EMA", "warmup", warmup, 0.0)
        self.num_updates = 0
        self.shadow: dict[str, Any] = {key: value.copy() for key, value in self._live().items()}

    def _live(self) -> dict[str, Any]:
        """The model's current arrays by key (params, then layer state)."""
        out = {}
        for path, layer in self.model.named_layers():  # nested layers too (residual blocks)
            for name, value in {**layer.params, **layer.state()}.items():
                out[f"layers.{path}.{name}"] = value
        return out

    def decay_at(self, t: int) -> float:
        """d_t of update number t (0 for the first)."""
        if self.warmup == 0.0:
            return self.decay
        return min(self.decay, t / (t + self.warmup))

    def update(self) -> None:
        """Fold the model's current weights and running statistics into the average."""
        keep = self.decay_at(self.num_updates)
        for key, live in self._live().items():
            shadow = self.shadow[key]
            if np.dtype(shadow.dtype).kind != "f":
                shadow[...] = live
            else:
                shadow += (1.0 - keep) * (live - shadow)  # lerp: exact copy when keep == 0
        self.num_updates += 1

    def swap(self) -> None:
        """Exchange the model's arrays with the averaged ones; a second call restores them."""
        for path, layer in self.model.named_layers():
            for name, param in layer.params.items():
                shadow = self.shadow[f"layers.{path}.{name}"]
                live = param.copy()
                # in place: the optimizer and anything else holding the param array keep seeing it
                param[...] = shadow
                shadow[...] = live
            state = layer.state()
            if state:
                to_host = layer.backend.to_host
                keys = {name: f"layers.{path}.{name}" for name in state}
                averaged = {name: np.array(to_host(self.shadow[key])) for name, key in keys.items()}
                for name, key in keys.items():
                    self.shadow[key] = state[name].copy()
                layer.load_state(averaged)

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Run the body with the averaged weights in the model; the live ones are back afterwards."""
        self.swap()
        try:
            yield
        finally:
            self.swap()

    def state(self) -> dict[str, np.ndarray]:
        """Host copies for a checkpoint: the shadow arrays by ``layers.{i}.{name}`` and ``num_updates`` (int64)."""
        to_host = self.model.backend.to_host
        out = {key: np.array(to_host(value)) for key, value in self.shadow.items()}
        out["num_updates"] = np.int64(self.num_updates)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``state()`` returned; missing or extra keys and wrong shapes raise ValueError."""
        expected = set(self.shadow) | {"num_updates"}
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or extra:
            raise ValueError(f"EMA.load_state: missing keys {missing}, unexpected keys {extra}")
        shadow = {}
        for key, current in self.shadow.items():
            value = np.asarray(state[key])
            if value.shape != tuple(current.shape):
                raise ValueError(f"EMA.load_state: {key!r} expected shape {tuple(current.shape)}, got {value.shape}")
            shadow[key] = self.model.backend.asarray(value.astype(current.dtype))
        count = np.asarray(state["num_updates"])
        if count.shape != () or count.dtype.kind not in "iu" or int(count) < 0:
            raise ValueError(f"EMA.load_state: 'num_updates' must be a non-negative integer scalar, got {count!r}")
        self.shadow, self.num_updates = shadow, int(count)
