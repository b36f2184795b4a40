"""Whole training steps and epochs: our model vs the same network in PyTorch eager.

Models come as ``model.layers`` specs (the config format): ``lenet5`` (the shipped
``lenet5`` config when present, else the built-in spec below) and ``vgg`` (the shipped
``cifar10-vgg`` config when present, else the built-in VGG spec). Ours is built with
``gpucnn.build.build_model``; the PyTorch twin is built from the same specs. Data are synthetic
CIFAR-shaped batches already on the device; one step = forward, softmax cross-entropy,
backward, SGD update (momentum/weight decay from the config). An "epoch" runs
``images // batch`` steps back to back with no host synchronization inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from gpucnn.bench.timing import Clock, clock_for_backend, measure

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
DATA_POOL = 8  # distinct synthetic batches cycled through

LENET5_LAYERS = [
    {"type": "conv2d", "out_channels": 6, "kernel_size": 5}, {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "conv2d", "out_channels": 16, "kernel_size": 5}, {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "flatten"},
    {"type": "dense", "out_features": 120}, {"type": "relu"},
    {"type": "dense", "out_features": 84}, {"type": "relu"},
    {"type": "dense", "out_features": NUM_CLASSES},
]


def _vgg_block(channels: int) -> list[dict]:
    conv = {"type": "conv2d", "out_channels": channels, "kernel_size": 3, "padding": 1, "bias": False}
    return [conv, {"type": "batchnorm2d"}, {"type": "relu"}, dict(conv), {"type": "batchnorm2d"}, {"type": "relu"},
            {"type": "maxpool2d", "kernel_size": 2}]


VGG_LAYERS = [*_vgg_block(64), *_vgg_block(128), *_vgg_block(256), {"type": "flatten"},
              {"type": "dense", "out_features": NUM_CLASSES}]

MODELS = {"lenet5": ("lenet5", LENET5_LAYERS), "vgg": ("cifar10-vgg", VGG_LAYERS)}


@dataclass
class TrainSettings:
    models: list[str]
    batches: list[int]
    images: int = 50000
    repeats: int = 10
    warmup: int = 3
    peers: bool = True
    seed: int = 0


def model_config(name: str) -> tuple[dict, str]:
    """(validated config, where it came from) for a model name of MODELS."""
    from gpucnn.config import load_config, validate_config
    from gpucnn.errors import ConfigError

    if name not in MODELS:
        raise ValueError(f"--train-models: unknown model {name!r}; expected one of {', '.join(MODELS)}")
    shipped, layers = MODELS[name]
    try:
        return validate_config(load_config(shipped)), f"configs/{shipped}.toml"
    except ConfigError:
        return validate_config({"model": {"layers": layers}}), "built-in spec (gpucnn/bench/train_bench.py)"


def torch_twin(torch, specs: list[dict], input_shape=INPUT_SHAPE):
    """``torch.nn.Sequential`` with the layers of ``specs`` (validated config entries)."""
    nn = torch.nn
    shape = tuple(input_shape)
    modules = []
    for spec in specs:
        kind = spec["type"]
        if kind == "conv2d":
            module = nn.Conv2d(shape[0], spec["out_channels"], spec["kernel_size"], stride=spec["stride"],
                               padding=spec["padding"], bias=spec["bias"])
        elif kind in ("maxpool2d", "avgpool2d"):
            stride = spec.get("stride") or spec["kernel_size"]
            module = (nn.MaxPool2d(spec["kernel_size"], stride, spec["padding"]) if kind == "maxpool2d"
                      else nn.AvgPool2d(spec["kernel_size"], stride, spec["padding"], count_include_pad=True))
        elif kind == "dense":
            module = nn.Linear(shape[0], spec["out_features"], bias=spec["bias"])
        elif kind == "batchnorm2d":
            module = nn.BatchNorm2d(shape[0], eps=spec["eps"], momentum=spec["momentum"], affine=spec["affine"])
        elif kind == "dropout":
            module = nn.Dropout(spec["p"])
        else:
            module = {"flatten": nn.Flatten, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                      "softplus": nn.Softplus, "gelu": nn.GELU}[kind]()
        modules.append(module)
        with torch.no_grad():
            shape = tuple(module(torch.zeros((1, *shape))).shape[1:])
    return nn.Sequential(*modules)


def _synthetic(batch: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, batch, *INPUT_SHAPE), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(count, batch)).astype(np.int32)
    return x, y


def _ours_step(backend, config: dict, batch: int, seed: int) -> tuple[Callable[[], None], int]:
    from gpucnn import losses, optim
    from gpucnn.backend import get_backend
    from gpucnn.build import build_model

    if get_backend() is not backend:
        raise RuntimeError("run_train_bench: make the benchmark backend current first (use_backend)")
    model = build_model(config, INPUT_SHAPE, NUM_CLASSES, seed=seed)
    o = config["optimizer"]
    opt = optim.SGD(model, o["lr"], momentum=o["momentum"], nesterov=o["nesterov"], weight_decay=o["weight_decay"])
    loss_fn = losses.SoftmaxCrossEntropy(label_smoothing=config["loss"]["label_smoothing"])
    xs, ys = _synthetic(batch, DATA_POOL, seed)
    data = [(backend.asarray(x), backend.asarray(y)) for x, y in zip(xs, ys)]
    counter = [0]

    def step():
        x, y = data[counter[0] % len(data)]
        counter[0] += 1
        loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    return step, model.num_params()


def _torch_step(torch, device: str, config: dict, batch: int, seed: int) -> Callable[[], None]:
    torch.manual_seed(seed)
    net = torch_twin(torch, config["model"]["layers"]).to(device).train()
    o = config["optimizer"]
    opt = torch.optim.SGD(net.parameters(), lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
                          weight_decay=o["weight_decay"])
    smoothing = config["loss"]["label_smoothing"]
    xs, ys = _synthetic(batch, DATA_POOL, seed)
    data = [(torch.from_numpy(x).to(device), torch.from_numpy(y.astype(np.int64)).to(device)) for x, y in zip(xs, ys)]
    counter = [0]
    F = torch.nn.functional

    def step():
        x, y = data[counter[0] % len(data)]
        counter[0] += 1
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y, label_smoothing=smoothing).backward()
        opt.step()

    return step


def _time_training(step: Callable[[], None], clock: Clock, batch: int, settings: TrainSettings) -> dict:
    timing = measure(step, clock, settings.repeats, settings.warmup, min_sample_ms=0.0)
    steps = max(1, settings.images // batch)

    def epoch():
        for _ in range(steps):
            step()

    seconds = clock.sample(epoch, 1) / 1e3
    return {
        "step": {"ms": timing.median_ms, "timing": timing.as_dict()},
        "epoch": {"images": steps * batch, "steps": steps, "seconds": seconds},
        "images_per_s": steps * batch / seconds if seconds > 0 else None,
    }


def run_train_bench(backend, settings: TrainSettings, torch=None, modes=(),
                    log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """One record per (model, batch, implementation); peers carry ratio = our epoch time / theirs.

    ``backend`` must be the current backend (the models are built on it).
    """
    from gpucnn.bench.torch_peers import torch_clock

    records: list[dict] = []
    for name in settings.models:
        config, source = model_config(name)
        for batch in settings.batches:
            step, n_params = _ours_step(backend, config, batch, settings.seed)
            ours = {"model": name, "source": source, "batch": batch, "impl": f"ours ({backend.name})",
                    "params": n_params, **_time_training(step, clock_for_backend(backend), batch, settings),
                    "ratio": None}
            del step
            records.append(ours)
            log(f"  {name} batch {batch} ours: {ours['step']['ms']:.2f} ms/step, {ours['images_per_s']:.0f} images/s")
            for mode in (modes if settings.peers else ()):
                try:
                    with mode.active(torch):
                        peer_step = _torch_step(torch, mode.device, config, batch, settings.seed)
                        figures = _time_training(peer_step, torch_clock(torch, mode.device), batch, settings)
                except Exception as exc:  # a failing peer is reported, never fatal
                    log(f"  {name} batch {batch} {mode.name}: failed ({type(exc).__name__}: {exc})"[:300])
                    continue
                ratio = ours["epoch"]["seconds"] / figures["epoch"]["seconds"] if figures["epoch"]["seconds"] else None
                records.append({"model": name, "source": source, "batch": batch, "impl": mode.name,
                                "params": n_params, **figures, "ratio": ratio})
                log(f"  {name} batch {batch} {mode.name}: {figures['step']['ms']:.2f} ms/step")
    return records
