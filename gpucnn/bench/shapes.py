"""Benchmark shapes: the named sets, read off the shipped configs, and the compact ``--shape`` syntax.

Named sets (``--set``): ``lenet`` (configs/lenet5.toml), ``vgg`` (configs/cifar10-vgg.toml),
``fast`` (configs/cifar10-fast.toml). Each is the distinct layer shapes of the model that
config builds for 3x32x32 CIFAR-10 images, plus the loss and one ``sgd`` shape holding the
model's parameter count, so the kernels are timed at exactly the shapes training runs.

A shape is a *family* (which ops it feeds) plus integer parameters::

    conv:N=128,C=64,H=32,W=32,O=128,K=3,S=1,P=1   conv2d_forward/backward_data/backward_filter/backward_bias
    pool:N=128,C=64,H=32,W=32,K=2,S=2,P=0         maxpool2d_* and avgpool2d_*   (S defaults to K)
    act:N=128,C=64,H=32,W=32                      relu/sigmoid/tanh/softplus/gelu/dropout forward+backward
    bn:N=128,C=64,H=32,W=32                       batchnorm2d_forward/inference/backward
    dense:N=128,I=400,O=120                       dense_forward, dense_backward
    loss:N=128,K=10                               softmax_cross_entropy_*, mse_*
    sgd:P=62006                                   sgd_update (momentum 0.9, weight decay 5e-4)

Keys are case-insensitive; K, S and P of conv/pool are square (one int for both axes).
Omitted keys take the defaults below (S=1, P=0 for conv; S=K, P=0 for pool).
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "conv": ("N", "C", "H", "W", "O", "K", "S", "P"),
    "pool": ("N", "C", "H", "W", "K", "S", "P"),
    "act": ("N", "C", "H", "W"),
    "bn": ("N", "C", "H", "W"),
    "dense": ("N", "I", "O"),
    "loss": ("N", "K"),
    "sgd": ("P",),
}
_DEFAULTS: dict[str, dict[str, int]] = {
    "conv": {"S": 1, "P": 0},
    "pool": {"P": 0},
    "act": {},
    "bn": {},
    "dense": {},
    "loss": {},
    "sgd": {},
}
_MINIMUM = {"P": 0}  # padding may be 0; every other key must be >= 1

@dataclass(frozen=True)
class Shape:
    """One benchmark shape: ``family`` (a key of FAMILY_KEYS) and its integer ``params``."""

    family: str
    params: dict[str, int] = field(hash=False)
    name: str = ""  # layer name inside a named set, e.g. "conv1"
    set_name: str = "custom"

    @property
    def label(self) -> str:
        """The shape in ``--shape`` syntax, e.g. ``conv:N=128,C=3,H=32,W=32,O=6,K=5,S=1,P=0``."""
        body = ",".join(f"{k}={self.params[k]}" for k in FAMILY_KEYS[self.family])
        return f"{self.family}:{body}"

    def with_batch(self, n: int) -> "Shape":
        """The same shape at batch size ``n`` (shapes without a batch axis are returned unchanged)."""
        if "N" not in self.params:
            return self
        return Shape(self.family, {**self.params, "N": int(n)}, self.name, self.set_name)

    # Derived sizes --------------------------------------------------------------------
    def out_hw(self) -> tuple[int, int]:
        """(OH, OW) of a conv or pool shape."""
        p = self.params
        oh = (p["H"] + 2 * p["P"] - p["K"]) // p["S"] + 1
        ow = (p["W"] + 2 * p["P"] - p["K"]) // p["S"] + 1
        return oh, ow


def parse_shape(text: str, set_name: str = "custom") -> Shape:
    """Parse ``family:KEY=INT,...`` into a Shape; raise ValueError naming what is wrong."""
    raw = text.strip()
    family, sep, body = raw.partition(":")
    family = family.strip().lower()
    if not sep or family not in FAMILY_KEYS:
        raise ValueError(
            f"--shape {text!r}: expected FAMILY:KEY=INT,... with FAMILY one of {', '.join(FAMILY_KEYS)}"
            " (e.g. conv:N=128,C=64,H=32,W=32,O=128,K=3,S=1,P=1)"
        )
    keys = FAMILY_KEYS[family]
    params: dict[str, int] = dict(_DEFAULTS[family])
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().upper()
        if not eq or key not in keys:
            raise ValueError(f"--shape {text!r}: unknown item {item!r}; {family} takes {', '.join(keys)}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"--shape {text!r}: {key} must be an integer, got {value.strip()!r}") from None
        if number < _MINIMUM.get(key, 1):
            raise ValueError(f"--shape {text!r}: {key} must be >= {_MINIMUM.get(key, 1)}, got {number}")
        params[key] = number
    if family == "pool" and "K" in params:
        params.setdefault("S", params["K"])
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"--shape {text!r}: missing {', '.join(missing)} ({family} takes {', '.join(keys)})")
    shape = Shape(family, {k: params[k] for k in keys}, "", set_name)
    if family in ("conv", "pool"):
        if params["K"] > params["H"] + 2 * params["P"] or params["K"] > params["W"] + 2 * params["P"]:
            raise ValueError(f"--shape {text!r}: kernel K={params['K']} is larger than the padded input")
        if family == "pool" and params["P"] * 2 > params["K"]:
            raise ValueError(f"--shape {text!r}: pool padding P={params['P']} must be at most K/2")
    return shape


# Set name -> the shipped config it is read off.
NAMED_SETS = {"lenet": "lenet5", "vgg": "cifar10-vgg", "fast": "cifar10-fast"}
SET_BATCHES = (128, 512)
SET_INPUT = ((3, 32, 32), 10)  # CIFAR-10 images and classes


def _layer_shape(layer, n: int, shape: tuple[int, ...], name: str, set_name: str) -> Shape | None:
    """The benchmark shape of one built layer at batch ``n`` and per-sample input ``shape``."""
    from gpucnn import layers as L

    if isinstance(layer, L.Conv2D):
        params = {"N": n, "C": shape[0], "H": shape[1], "W": shape[2], "O": layer.out_channels,
                  "K": layer.kernel_size[0], "S": layer.stride[0], "P": layer.padding[0]}
        return Shape("conv", params, name, set_name)
    if isinstance(layer, (L.MaxPool2D, L.AvgPool2D)):
        params = {"N": n, "C": shape[0], "H": shape[1], "W": shape[2], "K": layer.kernel_size[0],
                  "S": layer.stride[0], "P": layer.padding[0]}
        return Shape("pool", params, name, set_name)
    if isinstance(layer, L.BatchNorm2D):
        return Shape("bn", {"N": n, "C": shape[0], "H": shape[1], "W": shape[2]}, name, set_name)
    if isinstance(layer, (L.ActivationLayer, L.Dropout)) and len(shape) == 3:
        return Shape("act", {"N": n, "C": shape[0], "H": shape[1], "W": shape[2]}, name, set_name)
    if isinstance(layer, L.Dense):
        return Shape("dense", {"N": n, "I": layer.in_features, "O": layer.out_features}, name, set_name)
    return None


def set_model(name: str):
    """The Sequential the shipped config of set ``name`` builds (numpy backend, CIFAR-10 input)."""
    from gpucnn.backend import use_backend
    from gpucnn.build import build_model
    from gpucnn.config import load_config, validate_config

    key = name.strip().lower()
    if key not in NAMED_SETS:
        raise ValueError(f"unknown shape set {name!r}; expected one of {', '.join(NAMED_SETS)}")
    with use_backend("numpy"):
        return build_model(validate_config(load_config(NAMED_SETS[key])), *SET_INPUT)


def named_set(name: str, batches: tuple[int, ...] = SET_BATCHES) -> list[Shape]:
    """The distinct layer shapes of set ``name`` at each batch size, the loss, and one sgd_update
    shape with the model's parameter count. Layers are named by type and index, e.g. ``conv2d0``."""
    key = name.strip().lower()
    model = set_model(key)
    input_shape, classes = SET_INPUT
    shapes: list[Shape] = []
    for n in batches:
        seen: set[str] = set()
        shape = input_shape
        for index, layer in enumerate(model.layers):
            found = _layer_shape(layer, int(n), shape, f"{type(layer).__name__.lower()}{index}", key)
            if found is not None and found.label not in seen:
                seen.add(found.label)
                shapes.append(found)
            shape = tuple(layer.output_shape(shape))
        shapes.append(Shape("loss", {"N": int(n), "K": classes}, "loss", key))
    shapes.append(Shape("sgd", {"P": model.num_params()}, "params", key))
    return shapes
