"""What a training config may contain: every key, its type, its allowed range, its default.

``SCHEMA`` maps section -> key -> ``Field``; ``LAYER_FIELDS`` maps a layer type (the
``type`` of an entry in ``model.layers``) to the keys that entry may hold. ``check_*``
functions return the normalized value or raise ``ConfigError`` naming the dotted key,
the value received and what is allowed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from gpucnn.backend import DEVICE_CHOICES
from gpucnn.data import DATASETS
from gpucnn.errors import ConfigError
from gpucnn.init import INIT_NAMES
from gpucnn.layers import ACTIVATION_LAYERS, PARAMETRIC_LAYERS
from gpucnn.optim import OPTIMIZER_NAMES, PARAM_KINDS
from gpucnn.precision import PRECISIONS
from gpucnn.schedules import SCHEDULE_NAMES


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}: expected {allowed}, got {value!r}")


@dataclass(frozen=True)
class Field:
    """One config value: ``check(key, value) -> normalized value``; ``default`` None = required."""

    check: Callable[[str, Any], Any]
    default: Any = None
    required: bool = False


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str, Any], int]:
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, value, _range_text("an integer", minimum, maximum))
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise _fail(key, value, _range_text("an integer", minimum, maximum))
        return value

    return check


def number(minimum: float | None = None, maximum: float | None = None, *, above: bool = False,
           below: bool = False) -> Callable[[str, Any], float]:
    """A float (ints accepted); ``above``/``below`` make the bounds strict."""
    low = "> " if above else ">= "
    high = "< " if below else "<= "
    parts = [f"{low}{minimum:g}"] if minimum is not None else []
    parts += [f"{high}{maximum:g}"] if maximum is not None else []
    allowed = "a number" + (" " + " and ".join(parts) if parts else "")

    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(key, value, allowed)
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise _fail(key, value, "a finite number")
        if minimum is not None and (value <= minimum if above else value < minimum):
            raise _fail(key, value, allowed)
        if maximum is not None and (value >= maximum if below else value > maximum):
            raise _fail(key, value, allowed)
        return value

    return check


def boolean(key, value):
    if not isinstance(value, bool):
        raise _fail(key, value, "true or false")
    return value


def string(key, value):
    if not isinstance(value, str):
        raise _fail(key, value, "a string")
    return value


def choice(*options: str) -> Callable[[str, Any], str]:
    def check(key, value):
        if not isinstance(value, str) or value.lower() not in options:
            raise _fail(key, value, "one of " + ", ".join(repr(o) for o in options))
        return value.lower()

    return check


def int_or_pair(minimum: int) -> Callable[[str, Any], Any]:
    """An int or an [h, w] pair of ints, each >= minimum; pairs come back as lists."""
    allowed = f"an integer >= {minimum} or a pair [h, w] of them"

    def check(key, value):
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) != 2:
            raise _fail(key, value, allowed)
        for v in items:
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise _fail(key, value, allowed)
        return list(value) if isinstance(value, list) else value

    return check


def _range_text(what: str, minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"{what} in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"{what} >= {minimum}"
    if maximum is not None:
        return f"{what} <= {maximum}"
    return what


def table(fields: dict[str, Field]) -> Callable[[str, Any], dict]:
    def check(key, value):
        return check_table(key, value, fields)

    return check


def pair_of(item_check: Callable[[str, Any], Any]) -> Callable[[str, Any], list]:
    def check(key, value):
        if not isinstance(value, list) or len(value) != 2:
            raise _fail(key, value, "a pair [a, b]")
        return [item_check(f"{key}[{i}]", v) for i, v in enumerate(value)]

    return check


def list_of(item_check: Callable[[str, Any], Any]) -> Callable[[str, Any], list]:
    def check(key, value):
        if not isinstance(value, list):
            raise _fail(key, value, "a list")
        return [item_check(f"{key}[{i}]", v) for i, v in enumerate(value)]

    return check


def check_table(key: str, value: Any, fields: dict[str, Field]) -> dict:
    """Validate a table: no unknown keys, required keys present, defaults filled in."""
    if not isinstance(value, dict):
        raise _fail(key, value, "a table")
    prefix = f"{key}." if key else ""
    for name in value:
        if name not in fields:
            raise unknown_key(f"{prefix}{name}", name, fields)
    out = {}
    for name, field in fields.items():
        if name in value:
            out[name] = field.check(f"{prefix}{name}", value[name])
        elif field.required:
            raise ConfigError(f"{prefix}{name}: missing; this key is required")
        elif field.default is not None:
            out[name] = field.check(f"{prefix}{name}", field.default)
    return out


def unknown_key(dotted: str, name: str, fields) -> ConfigError:
    close = difflib.get_close_matches(name, list(fields), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{dotted}: unknown key{hint}; allowed keys here: {', '.join(fields)}")


_INIT = Field(choice(*INIT_NAMES), "he")
_BIAS = Field(boolean, True)

LAYER_FIELDS: dict[str, dict[str, Field]] = {
    "conv2d": {
        "out_channels": Field(integer(1), required=True),
        "kernel_size": Field(int_or_pair(1), required=True),
        "stride": Field(int_or_pair(1), 1),
        "padding": Field(int_or_pair(0), 0),
        "bias": _BIAS,
        "init": _INIT,
    },
    "dense": {"out_features": Field(integer(1), required=True), "bias": _BIAS, "init": _INIT},
    "maxpool2d": {
        "kernel_size": Field(int_or_pair(1), required=True),
        "stride": Field(int_or_pair(1)),
        "padding": Field(int_or_pair(0), 0),
    },
    "avgpool2d": {
        "kernel_size": Field(int_or_pair(1), required=True),
        "stride": Field(int_or_pair(1)),
        "padding": Field(int_or_pair(0), 0),
    },
    "batchnorm2d": {
        "eps": Field(number(0.0, above=True), 1e-5),
        "momentum": Field(number(0.0, 1.0, above=True), 0.1),
        "affine": Field(boolean, True),
        "train_gamma": Field(boolean, True),  # false: gamma stays 1 (frozen_params), as airbench
    },
    "whitening_conv2d": {  # first layer only: C -> 2*C*kh*kw, weight frozen, from the training images
        "kernel_size": Field(int_or_pair(1), 2),
        "eps": Field(number(0.0, above=True), 5e-4),
        "bias": _BIAS,
        "images": Field(integer(1), 5000),
        # > 0: the bias is trained during the first bias_epochs epochs only, then frozen (airbench: 3)
        "bias_epochs": Field(integer(0), 0),
    },
    "dropout": {"p": Field(number(0.0, 1.0, below=True), 0.5)},
    "scale": {"factor": Field(number(), required=True)},
    "flatten": {},
    **{name: {} for name in ACTIVATION_LAYERS},
}


def check_layer(key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise _fail(key, value, 'a table such as {type = "relu"}')
    kind = value.get("type")
    if not isinstance(kind, str) or kind.lower() not in LAYER_FIELDS:
        raise _fail(f"{key}.type", kind, "one of " + ", ".join(LAYER_FIELDS))
    kind = kind.lower()
    rest = {k: v for k, v in value.items() if k != "type"}
    return {"type": kind, **check_table(key, rest, LAYER_FIELDS[kind])}


def check_layers(key: str, value: Any) -> list:
    layers = list_of(check_layer)(key, value)
    if not layers:
        raise ConfigError(f"{key}: expected at least one layer, got an empty list")
    return layers


# ----------------------------------------------------------------------------- residual nets
def check_branch(key: str, value: Any) -> list:
    """A residual branch: a list of layer tables, each validated like ``model.layers`` (may be empty)."""
    return list_of(check_layer)(key, value)


def check_body(key: str, value: Any) -> list:
    layers = check_branch(key, value)
    if not layers:
        raise ConfigError(f"{key}: expected at least one layer, got an empty list")
    return layers


# body(x) + shortcut(x); shortcut omitted or [] is the identity. Keys nest: model.layers[3].body[1].stride
LAYER_FIELDS["residual"] = {"body": Field(check_body, required=True), "shortcut": Field(check_branch, [])}
LAYER_FIELDS["globalavgpool2d"] = {}  # (C, H, W) -> (C,)
# option-A shortcut: every stride-th pixel, zero channels up to out_channels; no params
LAYER_FIELDS["subsample_pad"] = {"out_channels": Field(integer(1), required=True), "stride": Field(int_or_pair(1), 2)}


GROUP_FIELDS = {
    "kind": Field(choice(*PARAM_KINDS)),
    "layer": Field(choice(*(cls.__name__.lower() for cls in PARAMETRIC_LAYERS))),
    "lr_scale": Field(number(0.0), 1.0),
    "weight_decay": Field(number(0.0)),
}

SCHEMA: dict[str, dict[str, Field]] = {
    "model": {
        "layers": Field(check_layers, required=True),
        # data-parallel ranks: BatchNorm statistics over the global batch (all-reduced) instead of each rank's
        "sync_batchnorm": Field(boolean, False),
        # a batchnorm2d directly followed by an activation its op can apply (relu, gelu) does both in
        # its kernels (one launch less forward and backward, docs/fusion.md); false: every layer apart
        "fuse_batchnorm_activation": Field(boolean, True),
    },
    "data": {
        "dataset": Field(choice(*DATASETS), "cifar10"),
        "data_dir": Field(string, ""),
        "download": Field(boolean, True),
        "label_mode": Field(choice("fine", "coarse"), "fine"),  # cifar100: 100 fine or 20 coarse classes
        "path": Field(string, ""),  # folder: DIR with train/ and val/ (or test/) class folders
        "image_size": Field(int_or_pair(1), 32),  # folder: images are resized to this
        "skip_bad_images": Field(boolean, False),  # folder: skip unreadable images (counted) instead of failing
        # held out of the training set (class-stratified, seeded) to choose best.npz; datasets
        # that ship a validation split use theirs; 0 = no validation set
        "val_fraction": Field(number(0.0, 1.0, below=True), 0.1),
        "batch_size": Field(integer(1), 64),
        "eval_batch_size": Field(integer(1), 256),
        "normalize": Field(boolean, True),
        "augment": Field(
            table({"flip": Field(boolean, False), "crop_padding": Field(integer(0), 0),
                   "padding_mode": Field(choice("zeros", "reflect"), "zeros"),
                   # one flip per image drawn once per run, inverted on odd epochs (airbench's altflip)
                   "alternate_flip": Field(boolean, False)}),
            {"flip": False, "crop_padding": 0, "padding_mode": "zeros", "alternate_flip": False},
        ),
    },
    "optimizer": {
        "name": Field(choice(*OPTIMIZER_NAMES), "sgd"),
        "lr": Field(number(0.0, above=True), 0.01),
        "momentum": Field(number(0.0, 1.0, below=True), 0.9),
        "nesterov": Field(boolean, False),
        "weight_decay": Field(number(0.0), 0.0),
        "groups": Field(list_of(table(GROUP_FIELDS)), []),
        "betas": Field(pair_of(number(0.0, 1.0, below=True)), [0.9, 0.999]),  # adam, adamw
        "eps": Field(number(0.0, above=True), 1e-8),  # adam, adamw
        "amsgrad": Field(boolean, False),  # adam, adamw
    },
    "loss": {"label_smoothing": Field(number(0.0, 1.0, below=True), 0.0)},
    "schedule": {
        "name": Field(choice(*SCHEDULE_NAMES), "constant"),
        "warmup_epochs": Field(number(0.0), 0.0),  # longer than the run: the whole run warms up
        "warmup_fraction": Field(number(0.0, 1.0)),  # optional: warm-up as a share of the run's steps
        "warmup_start_factor": Field(number(0.0, 1.0)),  # optional: lr rises linearly from this x base
        "step_size": Field(integer(1), 10),
        "gamma": Field(number(0.0, 1.0, above=True), 0.1),
        "min_lr": Field(number(0.0), 0.0),
    },
    "training": {
        "epochs": Field(integer(1), 10),
        "seed": Field(integer(0, 2**32 - 1), 0),
        "device": Field(choice(*DEVICE_CHOICES), "auto"),
        # GEMM precision: auto (tf32 on GPUs with tensor cores, else fp32), fp32, tf32, bf16
        "precision": Field(choice(*PRECISIONS), "auto"),
        "eval_every": Field(integer(1), 1),
        # stop when ``metric`` has not improved for ``patience`` epochs; patience 0 = never
        "early_stopping": Field(
            table({"metric": Field(choice("val_acc", "val_loss", "train_acc", "train_loss"), "val_acc"),
                   "patience": Field(integer(0), 0)}),
            {"metric": "val_acc", "patience": 0},
        ),
        "log_every": Field(integer(1), 50),
        "clip_grad_norm": Field(number(0.0), 0.0),  # > 0: scale gradients to this global L2 norm at most
        "curves": Field(boolean, True),  # draw --out/curves.png after each epoch (needs matplotlib)
        # bit-identical GPU runs: fixed-order reductions, max-pool backward as a gather (no atomics)
        "deterministic": Field(boolean, False),
        # exponential moving average of the weights, evaluated and saved beside them; decay 0 = off
        "ema": Field(table({"decay": Field(number(0.0, 1.0, below=True), 0.0),
                            "warmup": Field(number(0.0), 0.0)}), {"decay": 0.0, "warmup": 0.0}),
        # airbench's Lookahead: every `every` steps (0 = off) lerp a slow copy towards the weights by
        # 1 - decay * (t/T)**power and load it back; the run ends on the slow copy (gpucnn.lookahead)
        "lookahead": Field(table({"every": Field(integer(0, 10**6), 0),
                                  "decay": Field(number(0.0, 1.0), 0.7737809375),
                                  "power": Field(number(0.0, 100.0), 3.0)}),
                           {"every": 0, "decay": 0.7737809375, "power": 3.0}),
        # test-time augmentation of the last epoch's test evaluation, reported as test_acc_tta
        "tta": Field(choice("none", "mirror", "mirror_translate"), "none"),
        # the step as one CUDA graph: auto = where capturable (cuda, raw kernels only), on, off
        # the training step as a replayed CUDA graph: auto = where nothing blocks it (cuda), on = or
        # an error naming the blocker, off = eager; emulated runs the capturable step eagerly
        # (docs/cuda_graphs.md, gpucnn.cuda.graph)
        "cuda_graph": Field(choice("auto", "on", "off"), "auto"),
    },
}

