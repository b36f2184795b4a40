"""The one place a validated config (and optionally a checkpoint) becomes a run.

``build_run(config, dataset, checkpoint=None)`` returns a ``Run``: model, optimizer with its
param groups, loss, learning-rate schedule, normalization and the data loaders. ``train``,
``evaluate``, ``bench --train`` and the tests all call it, so they cannot drift apart.

``build_model`` turns the ``model.layers`` list into a Sequential. Each entry's ``in_channels`` / ``in_features`` / ``num_features`` is inferred from the
per-sample shape flowing out of the previous layer (starting at the dataset's (C, H, W)),
so a config names only output sizes. Shape problems (a kernel larger than its input at
that depth, a dense layer fed an image, a last layer that does not give one logit per
class) are ``ConfigError``s naming the entry, e.g. ``model.layers[3].kernel_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpucnn import layers as L
from gpucnn.backend import get_backend
from gpucnn.cuda.graph import check_cuda_graph_setting
from gpucnn.ema import EMA
from gpucnn.errors import ConfigError
from gpucnn.losses import SoftmaxCrossEntropy
from gpucnn.model import Sequential
from gpucnn.optim import Optimizer, optimizer_from_config
from gpucnn.schedules import LRSchedule, schedule_from_config
from gpucnn.whitening import normalized_images, whitening_filters

_SIMPLE = {**L.ACTIVATION_LAYERS, "flatten": L.Flatten, "globalavgpool2d": L.GlobalAvgPool2D}


def _spatial_check(key: str, spec: dict, shape: tuple[int, ...], what: str) -> None:
    """Reject a kernel/window that does not fit in the (padded) input of this layer."""
    if len(shape) != 3:
        raise ConfigError(
            f"{key}: a {spec['type']} layer needs an image input (C, H, W), but the previous layers give "
            f"{shape}; put it before the flatten layer"
        )
    kh, kw = _pair(spec["kernel_size"])
    ph, pw = _pair(spec.get("padding", 0))
    h, w = shape[1], shape[2]
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ConfigError(
            f"{key}.kernel_size: got {spec['kernel_size']!r}, but the {what} input at this depth is {h}x{w}"
            + (f" (padded to {h + 2 * ph}x{w + 2 * pw})" if ph or pw else "")
            + f"; use a kernel of at most {h + 2 * ph}x{w + 2 * pw}, more padding, or less downsampling before it"
        )


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def build_layer(spec: dict, shape: tuple[int, ...], key: str, rng: np.random.Generator, dtype=np.float32,
                whitening_images=None):
    """One layer for ``spec`` given the per-sample input ``shape``.

    ``whitening_images`` (N, C, H, W) normalized float: what a whitening_conv2d is fitted to
    (None leaves its weight at the default draw, e.g. before loading a checkpoint).
    """
    kind = spec["type"]
    if kind == "whitening_conv2d":
        _spatial_check(key, spec, shape, "whitening_conv2d")
        kh, kw = _pair(spec["kernel_size"])
        conv = L.Conv2D(shape[0], 2 * shape[0] * kh * kw, (kh, kw), dtype=dtype, rng=rng, bias=spec["bias"],
                        init="fan_in_uniform")
        if whitening_images is not None:
            conv.set_param("W", whitening_filters(whitening_images[: spec["images"]], (kh, kw), spec["eps"]))
        conv.frozen_params = {"W"}
        if spec.get("bias_epochs", 0) and spec["bias"]:
            conv.train_epochs = {"b": spec["bias_epochs"]}
        return conv
    if kind == "conv2d":
        _spatial_check(key, spec, shape, "conv2d")
        return L.Conv2D(shape[0], spec["out_channels"], spec["kernel_size"], stride=spec["stride"],
                        padding=spec["padding"], dtype=dtype, rng=rng, bias=spec["bias"], init=spec["init"])
    if kind in ("maxpool2d", "avgpool2d"):
        _spatial_check(key, spec, shape, kind)
        cls = L.MaxPool2D if kind == "maxpool2d" else L.AvgPool2D
        return cls(spec["kernel_size"], stride=spec.get("stride"), padding=spec["padding"])
    if kind == "dense":
        if len(shape) != 1:
            raise ConfigError(
                f"{key}: a dense layer needs a flat input, but the previous layers give {shape}; "
                f'add {{type = "flatten"}} before it'
            )
        return L.Dense(shape[0], spec["out_features"], dtype=dtype, rng=rng, bias=spec["bias"], init=spec["init"])
    if kind == "batchnorm2d":
        if len(shape) != 3:
            raise ConfigError(f"{key}: batchnorm2d needs an image input (C, H, W), but the previous layers give {shape}")
        bn = L.BatchNorm2D(shape[0], eps=spec["eps"], momentum=spec["momentum"], affine=spec["affine"],
                           dtype=dtype)
        if spec.get("affine", True) and not spec.get("train_gamma", True):
            bn.frozen_params = {"gamma"}
        return bn
    if kind == "dropout":
        return L.Dropout(spec["p"], rng=rng)
    if kind == "scale":
        return L.Scale(spec["factor"])
    if kind == "residual":
        return build_residual(spec, shape, key, rng, dtype)
    if kind == "subsample_pad":
        return L.SubsamplePad(spec["out_channels"], stride=spec["stride"])
    return _SIMPLE[kind]()


def build_branch(specs: list[dict], shape: tuple[int, ...], key: str, rng: np.random.Generator,
                 dtype=np.float32) -> tuple[list, tuple[int, ...]]:
    """The layers of one residual branch (``key`` e.g. ``model.layers[3].body``) and its output shape.

    Each layer's input sizes come from the shape flowing through the branch, as in build_model.
    """
    built = []
    for j, spec in enumerate(specs):
        where = f"{key}[{j}]"
        if spec["type"] == "whitening_conv2d":
            raise ConfigError(f"{where}: whitening_conv2d must be the first layer of the model, not inside a block")
        try:
            layer = build_layer(spec, shape, where, rng, dtype)
            shape = tuple(layer.output_shape(shape))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        built.append(layer)
    return built, shape


def build_residual(spec: dict, shape: tuple[int, ...], key: str, rng: np.random.Generator, dtype=np.float32):
    """``{type = "residual", body = [...], shortcut = [...]}``: body(x) + shortcut(x), weights body first."""
    body, body_shape = build_branch(spec["body"], shape, f"{key}.body", rng, dtype)
    shortcut, shortcut_shape = build_branch(spec.get("shortcut", []), shape, f"{key}.shortcut", rng, dtype)
    if body_shape != shortcut_shape:
        what = "the identity shortcut passes" if not shortcut else "the shortcut gives"
        raise ConfigError(
            f"{key}.shortcut: the body gives {body_shape} but {what} {shortcut_shape} for input {shape}; "
            f"they are added, so they must agree: give a projection shortcut, a 1x1 conv2d with "
            f"out_channels = {body_shape[0] if body_shape else '?'} and the body's stride, then a batchnorm2d"
        )
    return L.Residual(body, shortcut)


def whitening_input(config: dict, x_train: np.ndarray, mean, std):
    """The normalized training images a first whitening_conv2d layer is fitted to, or None."""
    specs = config["model"]["layers"]
    if not specs or specs[0]["type"] != "whitening_conv2d":
        return None
    return normalized_images(x_train, mean, std, specs[0]["images"])


def build_model(config: dict, input_shape: tuple[int, ...], num_classes: int, seed: int | None = None,
                whitening_images=None) -> Sequential:
    """The model of a validated config for per-sample ``input_shape`` (C, H, W).

    Weights are drawn in layer order from ``np.random.default_rng(seed)`` (``seed`` defaults
    to ``training.seed``), so the same config and seed give the same initial model.
    """
    rng = np.random.default_rng(config["training"]["seed"] if seed is None else seed)
    shape = tuple(int(s) for s in input_shape)
    built = []
    specs = config["model"]["layers"]
    for i, spec in enumerate(specs):
        key = f"model.layers[{i}]"
        if spec["type"] == "whitening_conv2d" and i != 0:
            raise ConfigError(f"{key}: whitening_conv2d must be the first layer (it is fitted to the input images)")
        try:
            layer = build_layer(spec, shape, key, rng, whitening_images=whitening_images)
            shape = tuple(layer.output_shape(shape))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{key}: {exc}") from None
        built.append(layer)
    if shape != (num_classes,):
        last = len(specs) - 1
        if specs[last]["type"] == "dense" and len(shape) == 1:
            raise ConfigError(
                f"model.layers[{last}].out_features: got {shape[0]}, but the dataset has {num_classes} classes; "
                f"the last layer must give one logit per class"
            )
        raise ConfigError(
            f"model.layers[{last}]: the model must end in one logit per class, shape ({num_classes},), "
            f"but it gives {shape}; end with {{type = \"dense\", out_features = {num_classes}}}"
        )
    return Sequential(built, fuse=config["model"]["fuse_batchnorm_activation"])


@dataclass
class Run:
    """Everything one training or evaluation run is made of.

    ``mean``/``std``: (C,) per-channel normalization in [0, 1] units (the checkpoint's when
    resuming). ``train_loader``/``schedule`` are None for an evaluation-only run.
    """

    config: dict
    dataset: object
    model: Sequential
    optimizer: Optimizer
    loss_fn: SoftmaxCrossEntropy
    mean: np.ndarray
    std: np.ndarray
    train_loader: object | None
    test_loader: object
    schedule: LRSchedule | None
    checkpoint: object | None = None
    val_loader: object | None = None  # None when the dataset has no validation set
    ema: object | None = None  # gpucnn.ema.EMA when training.ema.decay > 0
    lookahead: object | None = None  # gpucnn.lookahead.Lookahead when training.lookahead.every > 0
    parallel: object | None = None  # gpucnn.distributed.DataParallel when built for a world


def build_dataset(config: dict, progress: bool = False, echo=None):
    """The Dataset of ``config["data"]``: loaded with the options its dataset takes, with the
    validation split of ``data.val_fraction`` (seeded by ``training.seed``). ``echo`` gets the
    dataset's notes (e.g. how many bad images were skipped)."""
    from gpucnn.data import DATASET_SPECS, load_dataset

    data = config["data"]
    spec = DATASET_SPECS[data["dataset"]]
    options = {name: data[name] for name in spec.options if name in data}
    if "path" in options:
        options["path"] = options["path"] or None
    dataset = load_dataset(data["dataset"], data_dir=data["data_dir"] or None, download=data["download"],
                           progress=progress, **options)
    dataset = dataset.with_validation(data["val_fraction"], seed=config["training"]["seed"])
    for note in dataset.notes:
        if echo is not None:
            echo(f"note: {note}")
    return dataset


def fit_classifier(config: dict, num_classes: int) -> tuple[dict, str | None]:
    """``config`` with its last dense layer giving ``num_classes`` logits, and a note saying so
    (None when it already did). For ``--dataset`` switching a shipped model to a dataset with
    another class count (resnet20 on cifar100); a model whose head is not its last dense layer
    is left alone for ``build_model`` to report."""
    specs = config["model"]["layers"]
    last = max((i for i, spec in enumerate(specs) if spec["type"] == "dense"), default=None)
    if last is None or specs[last]["out_features"] == num_classes:
        return config, None
    was = specs[last]["out_features"]
    layers = [dict(spec) for spec in specs]
    layers[last]["out_features"] = num_classes
    config = {**config, "model": {**config["model"], "layers": layers}}
    return config, f"model.layers[{last}].out_features: {was} -> {num_classes}, one logit per class of the dataset"


def normalization(config: dict, x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) in [0, 1] units: the training set's when ``data.normalize``, else (0, 1)."""
    from gpucnn.data import channel_stats

    if config["data"]["normalize"]:
        return channel_stats(x_train)
    channels = x_train.shape[1]
    return np.zeros(channels), np.ones(channels)


def build_optimizer(config: dict, model: Sequential) -> Optimizer:
    """The optimizer of ``config["optimizer"]`` (SGD, Adam or AdamW), with its param groups, over ``model``."""
    return optimizer_from_config(config, model)


def build_loss(config: dict) -> SoftmaxCrossEntropy:
    return SoftmaxCrossEntropy(label_smoothing=config["loss"]["label_smoothing"])


def build_augment(config: dict, image_shape=None):
    """The training-set Augment of ``data.augment``, or None when it does nothing.

    ``image_shape`` (C, H, W) of the training images: padding that the image size cannot take
    is a ConfigError naming data.augment.crop_padding."""
    from gpucnn.data import Augment

    aug = config["data"]["augment"]
    if not (aug["flip"] or aug["crop_padding"]):
        return None
    augment = Augment(flip=aug["flip"], crop_padding=aug["crop_padding"], padding_mode=aug.get("padding_mode", "zeros"),
                      alternate_flip=aug.get("alternate_flip", False))
    if image_shape is not None:
        try:
            augment.check_image_size(int(image_shape[-2]), int(image_shape[-1]))
        except ValueError as exc:
            raise ConfigError(f"data.augment.crop_padding = {augment.crop_padding}: {exc}") from None
    return augment


def _ema(config: dict, model: Sequential) -> EMA | None:
    settings = config["training"]["ema"]
    return EMA(model, settings["decay"], settings["warmup"]) if settings["decay"] > 0 else None


def _lookahead(config: dict, model: Sequential, steps_per_epoch: int):
    from gpucnn.lookahead import Lookahead

    settings = config["training"]["lookahead"]
    if not settings["every"]:
        return None
    return Lookahead(model, settings["every"], settings["decay"], settings["power"],
                     total_steps=config["training"]["epochs"] * steps_per_epoch)


def restored_model(checkpoint, input_shape, num_classes: int, path=None) -> Sequential:
    """A checkpoint's model ready to evaluate or predict: built from its config for per-sample
    ``input_shape`` (C, H, W), its params loaded, and, for a run with training.ema, the averaged
    weights in place of the live ones. ``evaluate``, ``predict`` and ``gpucnn.load`` all use it."""
    from gpucnn.checkpoint import restore

    model = build_model(checkpoint.config, input_shape, num_classes)
    ema = _ema(checkpoint.config, model) if checkpoint.ema_state else None
    restore(checkpoint, model, None, path, ema=ema)
    if ema is not None:
        ema.swap()
    return model


def build_run(config: dict, dataset, checkpoint=None, train: bool = True, backend=None,
              eval_batch_size: int | None = None, checkpoint_path=None, world=None) -> Run:
    """Assemble a run of validated ``config`` on ``dataset`` (a gpucnn.data.Dataset).

    ``checkpoint`` (a loaded Checkpoint): its normalization, params, optimizer state and
    progress are restored, and the whitening layer keeps its saved filters instead of being
    fitted again. ``train=False`` builds no training loader or schedule (evaluation).
    ``backend`` defaults to the current one; the model's arrays live there.
    ``world`` (gpucnn.distributed.World): the run is one rank of a data-parallel job; its
    device is bound first and ``Run.parallel`` holds its ``DataParallel``.
    """
    from gpucnn.checkpoint import restore, restore_lookahead
    from gpucnn.data import BatchLoader

    backend = backend or get_backend()
    if hasattr(backend.ops, "deterministic"):  # the kernel backends; NumPy is deterministic already
        backend.ops.deterministic = config["training"]["deterministic"]
    check_cuda_graph_setting(config["training"]["cuda_graph"], backend, config, world.size if world is not None else 1)
    if world is not None:
        from gpucnn.distributed import bind_device

        bind_device(world, backend)
    data, seed = config["data"], config["training"]["seed"]
    if checkpoint is not None:
        mean, std = np.asarray(checkpoint.mean), np.asarray(checkpoint.std)
        whiten = None
    else:
        mean, std = normalization(config, dataset.x_train)
        whiten = whitening_input(config, dataset.x_train, mean, std) if train else None
    if checkpoint is not None and not train:
        model, ema = restored_model(checkpoint, dataset.image_shape, dataset.num_classes, checkpoint_path), None
    else:
        model = build_model(config, dataset.image_shape, dataset.num_classes, seed=seed, whitening_images=whiten)
        ema = _ema(config, model)
    optimizer = build_optimizer(config, model)
    if checkpoint is not None and train:
        restore(checkpoint, model, optimizer, checkpoint_path, ema=ema)
    train_loader = schedule = lookahead = None
    if train:
        train_loader = BatchLoader(dataset.x_train, dataset.y_train, data["batch_size"], backend, mean, std,
                                   shuffle=True, seed=seed, augment=build_augment(config, dataset.x_train.shape[1:]))
        schedule = schedule_from_config(config, len(train_loader))
        lookahead = _lookahead(config, model, len(train_loader))
        if lookahead is not None and checkpoint is not None:
            restore_lookahead(checkpoint, lookahead, checkpoint_path)
    eval_batch = eval_batch_size or data["eval_batch_size"]
    test_loader = BatchLoader(dataset.x_test, dataset.y_test, eval_batch, backend, mean, std, shuffle=False)
    val_loader = None
    if getattr(dataset, "x_val", None) is not None and len(dataset.y_val):
        val_loader = BatchLoader(dataset.x_val, dataset.y_val, eval_batch, backend, mean, std, shuffle=False)
    run = Run(config, dataset, model, optimizer, build_loss(config), mean, std, train_loader, test_loader,
              schedule, checkpoint, val_loader, ema, lookahead)
    if world is not None:
        from gpucnn.distributed import distribute_run

        run.parallel = distribute_run(run, world)
    return run
