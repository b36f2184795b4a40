"""Benchmark shapes: the named sets (``lenet``, ``vgg``) and the compact ``--shape`` syntax.

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

FAMILY_OPS: dict[str, tuple[str, ...]] = {
    "conv": ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter", "conv2d_backward_bias"),
    "pool": ("maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward"),
    "act": (
        "relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward",
        "tanh_forward", "tanh_backward", "softplus_forward", "softplus_backward",
        "gelu_forward", "gelu_backward", "dropout_forward", "dropout_backward",
    ),
    "bn": ("batchnorm2d_forward", "batchnorm2d_inference", "batchnorm2d_backward"),
    "dense": ("dense_forward", "dense_backward"),
    "loss": (
        "softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "mse_forward", "mse_backward",
    ),
    "sgd": ("sgd_update",),
}


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


def _conv(name, n, c, hw, o, k, s=1, p=0, set_name=""):
    return Shape("conv", {"N": n, "C": c, "H": hw, "W": hw, "O": o, "K": k, "S": s, "P": p}, name, set_name)


def _pool(name, n, c, hw, k=2, s=2, p=0, set_name=""):
    return Shape("pool", {"N": n, "C": c, "H": hw, "W": hw, "K": k, "S": s, "P": p}, name, set_name)


def _lenet(n: int) -> list[Shape]:
    """CIFAR-10 LeNet-5: conv5x5(3->6) pool, conv5x5(6->16) pool, dense 400-120-84-10 (62,006 params)."""
    s = "lenet"
    return [
        _conv("conv1", n, 3, 32, 6, 5, set_name=s),
        Shape("act", {"N": n, "C": 6, "H": 28, "W": 28}, "relu1", s),
        _pool("pool1", n, 6, 28, set_name=s),
        _conv("conv2", n, 6, 14, 16, 5, set_name=s),
        _pool("pool2", n, 16, 10, set_name=s),
        Shape("dense", {"N": n, "I": 400, "O": 120}, "fc1", s),
        Shape("dense", {"N": n, "I": 120, "O": 84}, "fc2", s),
        Shape("dense", {"N": n, "I": 84, "O": 10}, "fc3", s),
        Shape("loss", {"N": n, "K": 10}, "loss", s),
    ]


def _vgg(n: int) -> list[Shape]:
    """VGG-style 3x3 convs (pad 1), 64-256 channels, 32x32 down to 8x8, with BN/ReLU/pool."""
    s = "vgg"
    return [
        _conv("conv1_1", n, 3, 32, 64, 3, 1, 1, s),
        _conv("conv1_2", n, 64, 32, 64, 3, 1, 1, s),
        Shape("bn", {"N": n, "C": 64, "H": 32, "W": 32}, "bn1", s),
        Shape("act", {"N": n, "C": 64, "H": 32, "W": 32}, "act1", s),
        _pool("pool1", n, 64, 32, set_name=s),
        _conv("conv2_1", n, 64, 16, 128, 3, 1, 1, s),
        _conv("conv2_2", n, 128, 16, 128, 3, 1, 1, s),
        _pool("pool2", n, 128, 16, set_name=s),
        _conv("conv3_1", n, 128, 8, 256, 3, 1, 1, s),
        _conv("conv3_2", n, 256, 8, 256, 3, 1, 1, s),
        Shape("bn", {"N": n, "C": 256, "H": 8, "W": 8}, "bn3", s),
        Shape("loss", {"N": n, "K": 10}, "loss", s),
    ]


NAMED_SETS = {"lenet": _lenet, "vgg": _vgg}
SET_BATCHES = (128, 512)
# Whole-model parameter counts, for the sgd_update rows of each set.
SET_PARAMS = {"lenet": 62006, "vgg": 1_150_000}


def named_set(name: str, batches: tuple[int, ...] = SET_BATCHES) -> list[Shape]:
    """The shapes of a named set at each batch size, plus one sgd_update shape for the model."""
    key = name.strip().lower()
    if key not in NAMED_SETS:
        raise ValueError(f"unknown shape set {name!r}; expected one of {', '.join(NAMED_SETS)}")
    shapes = [shape for n in batches for shape in NAMED_SETS[key](int(n))]
    shapes.append(Shape("sgd", {"P": SET_PARAMS[key]}, "params", key))
    return shapes
