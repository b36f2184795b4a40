"""Optimizers (SGD, Adam, AdamW) over a Sequential's trainable params, and gradient clipping.

``Optimizer`` owns what they share: parameter groups, the per-param learning-rate scale and
weight decay, skipping frozen params, per-param state buffers and their checkpoint form
(``state_dict()`` keys ``{buffer}.layers.{i}.{name}``, which ``gpucnn.checkpoint`` stores as
``optim/...``). Subclasses only implement ``_update`` for one param.

Weight decay convention (all optimizers): ``weight_decay`` applies to "weight" params (conv and
dense weights, BatchNorm gamma) and not to "bias" params (biases, BatchNorm beta), unless a
group says otherwise. This differs from torch.optim, which decays every param it is given.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from gpucnn.checks import finite_number
from gpucnn.clip import clip_grad_norm  # noqa: F401  (re-exported: optim.clip_grad_norm)

# The param kinds optimizer groups may select (``optimizer.groups[].kind``).
PARAM_KINDS = ("weight", "bias")


OPTIMIZER_NAMES = ("sgd", "adam", "adamw")  # the one owner of optimizer names (config optimizer.name)


class Optimizer:
    """Shared bookkeeping; ``lr`` is the base rate that schedules set.

    ``groups``: list of {"kind": "weight"|"bias", "layer": class name, "lr_scale": float,
    "weight_decay": float}; a param takes the first group whose given keys all match ("layer"
    ignores case), and a group without "weight_decay" keeps the default (``weight_decay`` on
    weights, 0 on biases).
    """

    _GROUP_KEYS = {"kind", "layer", "lr_scale", "weight_decay"}
    buffer_names: tuple[str, ...] = ()  # per-param state arrays, shaped like the param
    counts_steps = False  # keep a per-param update count (``step.layers.{i}.{name}``)

    def __init__(self, model, lr: float, weight_decay: float, groups=None):
        owner = type(self).__name__
        self.model = model
        self.lr = finite_number(owner, "lr", lr, 0.0)
        self.weight_decay = finite_number(owner, "weight_decay", weight_decay, 0.0)
        self.groups = [dict(g) for g in (groups or [])]
        for i, group in enumerate(self.groups):
            unknown = set(group) - self._GROUP_KEYS
            if unknown:
                raise ValueError(
                    f"{owner}: groups[{i}] has unknown keys {sorted(unknown)}; allowed {sorted(self._GROUP_KEYS)}"
                )
            if "kind" in group and group["kind"] not in ("weight", "bias"):
                raise ValueError(f"{owner}: groups[{i}].kind must be 'weight' or 'bias', got {group['kind']!r}")
            for key in ("lr_scale", "weight_decay"):
                if key in group:
                    group[key] = finite_number(owner, f"groups[{i}].{key}", group[key], 0.0)
        self.buffers: dict[str, dict[str, Any]] = {name: {} for name in self.buffer_names}
        self.steps: dict[str, int] = {}

    def param_settings(self, layer, name: str) -> tuple[float, float]:
        """(lr scale, weight decay) of ``layer.params[name]``: its first matching group's, else the defaults."""
        kind = layer.param_kinds.get(name, "weight")
        default_wd = self.weight_decay if kind == "weight" else 0.0
        for group in self.groups:
            if "kind" in group and group["kind"] != kind:
                continue
            # case-insensitive: configs spell layer classes in lower case ("batchnorm2d")
            if "layer" in group and str(group["layer"]).lower() != type(layer).__name__.lower():
                continue
            return float(group.get("lr_scale", 1.0)), float(group.get("weight_decay", default_wd))
        return 1.0, default_wd

    def _trainable(self) -> Iterator[tuple[str, Any, str]]:
        for index, layer, name in self.model.parameters():
            if layer.is_trainable(name):
                yield f"layers.{index}.{name}", layer, name

    def _buffer(self, buffer: str, key: str, layer, name: str):
        """The state array ``buffer`` of one param, zeros (in the param's dtype) on first use."""
        store = self.buffers[buffer]
        value = store.get(key)
        if value is None:
            value = store[key] = layer.xp.zeros_like(layer.params[name])
        return value

    # Whether ``lr_source`` may be set: the update takes its rate from device memory (SGD),
    # rather than using it in host arithmetic (Adam's bias corrections).
    device_lr = False
    lr_source = None  # set by bind_device_lr

    def lr_scales(self) -> list[float]:
        """The distinct lr scales of the trainable params (sorted): one device lr slot each."""
        return sorted({self.param_settings(layer, name)[0] for _, layer, name in self._trainable()})

    def bind_device_lr(self, lr_of) -> None:
        """Take each param's rate from ``lr_of(lr_scale)`` (a (1,) float32 device array holding
        float32(lr * lr_scale), written by the caller before each step) instead of computing
        ``self.lr * lr_scale`` here; None restores the host rate. What a CUDA-graph step needs:
        a rate passed by value would be baked into the graph. ``lr`` keeps its meaning for
        schedules and checkpoints; the caller writes it to the device each step."""
        if lr_of is not None and not self.device_lr:
            raise TypeError(f"{type(self).__name__}: the update computes with the lr on the host; "
                            "it cannot read it from device memory")
        self.lr_source = lr_of

    def step(self) -> None:
        for key, layer, name in self._trainable():
            lr_scale, wd = self.param_settings(layer, name)
            if self.counts_steps:
                self.steps[key] = self.steps.get(key, 0) + 1
            lr = self.lr * lr_scale if self.lr_source is None else self.lr_source(lr_scale)
            self._update(key, layer, name, lr, wd)

    def _update(self, key: str, layer, name: str, lr: float, weight_decay: float) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        self.model.zero_grads()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies: ``{buffer}.layers.{i}.{name}`` arrays and ``step.layers.{i}.{name}`` int64 scalars."""
        to_host = self.model.backend.to_host
        out = {
            f"{buffer}.{key}": np.array(to_host(value))
            for buffer, store in self.buffers.items()
            for key, value in store.items()
        }
        out.update({f"step.{key}": np.int64(n) for key, n in self.steps.items()})
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Replace all state by ``state`` (from ``state_dict()``); wrong keys or shapes raise ValueError."""
        owner = type(self).__name__
        params = {f"layers.{i}.{name}": (layer, name) for i, layer, name in self.model.parameters()}
        prefixes = list(self.buffer_names) + (["step"] if self.counts_steps else [])
        buffers: dict[str, dict[str, Any]] = {name: {} for name in self.buffer_names}
        steps: dict[str, int] = {}
        for key, value in state.items():
            prefix, _, pkey = key.partition(".")
            if prefix not in prefixes:
                expected = " or ".join(f"'{p}.layers.<i>.<name>'" for p in prefixes) or "no keys"
                raise ValueError(f"{owner}.load_state_dict: unexpected key {key!r} (expected {expected})")
            if pkey not in params:
                raise ValueError(f"{owner}.load_state_dict: key {key!r} names no parameter of the model")
            layer, name = params[pkey]
            value = np.asarray(value)
            shape = () if prefix == "step" else tuple(layer.params[name].shape)
            if value.shape != shape:
                raise ValueError(f"{owner}.load_state_dict: {key!r} expected shape {shape}, got {value.shape}")
            if prefix == "step":
                steps[pkey] = int(value)
            else:
                buffers[prefix][pkey] = layer.backend.asarray(value.astype(layer.dtype))
        self.buffers, self.steps = buffers, steps


class SGD(Optimizer):
    """SGD with momentum, Nesterov and weight decay (a fused op on every backend).

    Per param: g = grad + wd * param; with momentum v = momentum*v + g and
    step = g + momentum*v (nesterov) or v; param -= lr * lr_scale * step.
    State: ``velocity`` per param (only with momentum). ``bind_device_lr`` makes the update
    read its rate from device memory (the ``sgd_update_dev`` kernel), for CUDA-graph steps.
    """

    buffer_names = ("velocity",)
    device_lr = True

    def __init__(self, model, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, groups=None):
        super().__init__(model, lr, weight_decay, groups)
        self.momentum = finite_number("SGD", "momentum", momentum, 0.0, 1.0, high_open=True)
        if nesterov and self.momentum == 0.0:
            raise ValueError("SGD: nesterov needs momentum > 0")
        self.nesterov = bool(nesterov)

    @property
    def velocity(self) -> dict[str, Any]:
        return self.buffers["velocity"]

    def _update(self, key, layer, name, lr, weight_decay):
        velocity = self._buffer("velocity", key, layer, name) if self.momentum else None
        layer.backend.ops.sgd_update(
            layer.params[name], layer.grads[name], velocity, lr, self.momentum, self.nesterov, weight_decay
        )


class Adam(Optimizer):
    """Adam (Kingma & Ba) exactly as torch.optim.Adam computes it, per param with count t:

    g = grad + wd * param (L2, coupled; AdamW instead decays the param: param *= 1 - lr * wd);
    m = beta1*m + (1-beta1)*g;  v = beta2*v + (1-beta2)*g^2;  with amsgrad vmax = max(vmax, v)
    and vmax replaces v below;  param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
    ``lr`` is the base rate times the param's group lr_scale. State per param: ``exp_avg`` (m),
    ``exp_avg_sq`` (v), ``max_exp_avg_sq`` (vmax, with amsgrad) and the step count t, which
    only advances on steps where the param is trainable (as torch's per-param ``step``).
    Runs on any backend through ``layer.xp`` array arithmetic.
    """

    counts_steps = True
    decoupled = False

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, groups=None):
        self.amsgrad = bool(amsgrad)
        self.buffer_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())
        super().__init__(model, lr, weight_decay, groups)
        owner = type(self).__name__
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(
            finite_number(owner, f"betas[{i}]", beta, 0.0, 1.0, high_open=True) for i, beta in enumerate(betas)
        )
        self.eps = finite_number(owner, "eps", eps, 0.0, low_open=True)

    def _update(self, key, layer, name, lr, weight_decay):
        xp = layer.xp
        param, grad = layer.params[name], layer.grads[name]
        beta1, beta2 = self.betas
        t = self.steps[key]
        if weight_decay:
            if self.decoupled:
                param *= 1.0 - lr * weight_decay
            else:
                grad = grad + weight_decay * param
        m = self._buffer("exp_avg", key, layer, name)
        v = self._buffer("exp_avg_sq", key, layer, name)
        m += (1.0 - beta1) * (grad - m)  # torch's lerp form of beta1*m + (1-beta1)*g
        v *= beta2
        v += (1.0 - beta2) * grad * grad
        if self.amsgrad:
            vmax = self._buffer("max_exp_avg_sq", key, layer, name)
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        denom = xp.sqrt(v)
        denom /= (1.0 - beta2**t) ** 0.5
        denom += self.eps
        param -= (lr / (1.0 - beta1**t)) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW:
    param *= 1 - lr * wd before the Adam step (default wd 1e-2, on "weight" params only)."""

    decoupled = True

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, groups=None):
        super().__init__(model, lr, betas, eps, weight_decay, amsgrad, groups)


OPTIMIZER_CLASSES = {"sgd": SGD, "adam": Adam, "adamw": AdamW}  # by OPTIMIZER_NAMES


def optimizer_from_config(config: dict, model) -> Optimizer:
    """The optimizer a validated config's ``optimizer`` section describes.

    Keys: name ("sgd" | "adam" | "adamw"), lr, weight_decay, groups (all optimizers);
    momentum, nesterov (sgd); betas, eps, amsgrad (adam, adamw; torch's defaults when absent).
    """
    opt = config["optimizer"]
    name = opt.get("name", "sgd")
    groups = opt.get("groups", [])
    if name == "sgd":
        return SGD(model, opt["lr"], momentum=opt.get("momentum", 0.0), nesterov=opt.get("nesterov", False),
                   weight_decay=opt.get("weight_decay", 0.0), groups=groups)
    if name in ("adam", "adamw"):
        cls = Adam if name == "adam" else AdamW
        return cls(model, opt["lr"], betas=tuple(opt.get("betas", (0.9, 0.999))), eps=opt.get("eps", 1e-8),
                   weight_decay=opt.get("weight_decay", 0.0), amsgrad=opt.get("amsgrad", False), groups=groups)
    raise ValueError(f"optimizer.name: unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZER_NAMES)}")
