"""Lookahead of the weights (airbench94's ``LookaheadState``): pull the net back to a slow copy.

A slow copy ``s`` of every float param (trainable or frozen) and float layer state (BatchNorm
running_mean/var, as airbench copies ``net.state_dict()``'s float entries) starts equal to the
model. After optimizer step t (1-based count of steps taken, T = steps of the whole run):
  every ``every`` steps (t % every == 0):  s = s + (1 - d_t) * (p - s);  p := s
  with d_t = decay * (t / T) ** power     (airbench: 0.95**5 * (t/T)**3)
  after the last step (t >= T), once more with d = 1:  p := s.
Optimizer state (momentum buffers) is left alone, as in airbench. Non-float state is untouched.
The step count comes from the caller (the Trainer's global step), so the state to checkpoint is
only the slow copy (``state()`` / ``load_state()``, like ``gpucnn.ema``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Lookahead:
    """Slow copies of ``model``'s params and float layer state; keys ``layers.{path}.{name}``."""

    def __init__(self, model, every: int, decay: float, power: float, total_steps: int) -> None:
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"Lookahead: every must be an int >= 1, got {every!r}")
        if not 0.0 <= float(decay) <= 1.0 or not np.isfinite(power) or power < 0:
            raise ValueError(f"Lookahead: need 0 <= decay <= 1 and power >= 0, got {decay!r}, {power!r}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
            raise ValueError(f"Lookahead: total_steps must be an int >= 1, got {total_steps!r}")
        self.model = model
        self.every, self.decay, self.power, self.total_steps = int(every), float(decay), float(power), int(total_steps)
        self.slow: dict[str, Any] = {key: value.copy() for key, value in self._live().items()
                                     if np.dtype(value.dtype).kind == "f"}

    def _live(self) -> dict[str, Any]:
        out = {}
        for path, layer in self.model.named_layers():
            for name, value in {**layer.params, **layer.state()}.items():
                out[f"layers.{path}.{name}"] = value
        return out

    def decay_at(self, t: int) -> float:
        """d_t = decay * (t / T) ** power."""
        return self.decay * (t / self.total_steps) ** self.power

    def after_step(self, t: int) -> None:
        """Call after optimizer step number ``t`` (1-based) of the run."""
        if t % self.every == 0:
            self.update(self.decay_at(t))
        if t >= self.total_steps:
            self.update(1.0)

    def update(self, keep: float) -> None:
        """s += (1 - keep) * (p - s), then p := s for every float param and layer state array."""
        for path, layer in self.model.named_layers():
            for name, param in layer.params.items():
                slow = self.slow[f"layers.{path}.{name}"]
                slow += (1.0 - keep) * (param - slow)
                param[...] = slow  # in place: the optimizer holds this array
            for name, value in layer.state().items():  # the layer's live arrays (BatchNorm running stats)
                if np.dtype(value.dtype).kind == "f":
                    slow = self.slow[f"layers.{path}.{name}"]
                    slow += (1.0 - keep) * (value - slow)
                    value[...] = slow  # in place, on the device: no host round trip, addresses kept

    def state(self) -> dict[str, np.ndarray]:
        """Host copies of the slow arrays by ``layers.{path}.{name}`` (for a checkpoint)."""
        to_host = self.model.backend.to_host
        return {key: np.array(to_host(value)) for key, value in self.slow.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``state()`` returned; missing or extra keys and wrong shapes raise ValueError."""
        missing, extra = sorted(set(self.slow) - set(state)), sorted(set(state) - set(self.slow))
        if missing or extra:
            raise ValueError(f"Lookahead.load_state: missing keys {missing}, unexpected keys {extra}")
        slow = {}
        for key, current in self.slow.items():
            value = np.asarray(state[key])
            if value.shape != tuple(current.shape):
                raise ValueError(f"Lookahead.load_state: {key!r} expected shape {tuple(current.shape)}, "
                                 f"got {value.shape}")
            slow[key] = self.model.backend.asarray(value.astype(current.dtype))
        self.slow = slow
