"""Whole training steps and epochs: our model vs the same network in PyTorch eager.

Models are shipped configs, named by config (``lenet5``, ``cifar10-vgg``, ``cifar10-fast``...)
or by their shape-set name (``vgg``, ``fast``; see ``gpucnn.bench.shapes.NAMED_SETS``). Ours is
assembled by ``gpucnn.build.build_run`` exactly as ``gpucnn train`` does (optimizer with its
param groups, loss with its label smoothing), on a synthetic CIFAR-shaped dataset; the PyTorch
twin is built from the same layer specs with the same per-parameter lr and weight decay.
One step = forward, softmax cross-entropy, backward, SGD update. An "epoch" runs
``images // batch`` steps back to back with no host synchronization inside; it is timed
``settings.epochs`` times (at least 3): ``epoch.seconds`` is the median, ``epochs`` holds the
min, the median and every sample, and ``ratio`` (ours / peer) compares medians.

Beside the times, each record has its ``math_mode`` (ours: the backend's precision; a peer:
``PeerMode.math_mode``), ``peak_bytes`` over one step (CuPy's pool on ours, PyTorch's
``max_memory_allocated`` on a peer; None on the CPU) and, for ours on the kernel backends,
``counts``: kernel launches, cuBLAS-bound and other xp calls and host syncs of one step
(``gpucnn.bench.counters``). On the cuda backend a second record of ours times the step as a
CUDA graph (``gpucnn.graph_step``, what ``training.cuda_graph`` trains with), with its
``graph`` mode and replay count; the peers' ``ratio`` is against the faster of our two
(named in ``ratio_of``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from gpucnn.bench.shapes import NAMED_SETS, SET_INPUT
from gpucnn.bench.timing import Clock, clock_for_backend, measure

INPUT_SHAPE, NUM_CLASSES = SET_INPUT
DATA_POOL = 8  # distinct synthetic batches cycled through


@dataclass
class TrainSettings:
    models: list[str]
    batches: list[int]
    images: int = 50000
    repeats: int = 10
    warmup: int = 3
    peers: bool = True
    seed: int = 0
    epochs: int = 3  # timed epochs per model and batch (min and median reported)


def model_config(name: str) -> tuple[dict, str]:
    """(validated config, where it came from) for a shipped config name or a shape-set alias."""
    from gpucnn.config import load_config, shipped_config_names, validate_config

    shipped = NAMED_SETS.get(name, name)
    if shipped not in shipped_config_names():
        known = sorted({*NAMED_SETS, *shipped_config_names()})
        raise ValueError(f"--train-models: unknown model {name!r}; expected one of {', '.join(known)}")
    return validate_config(load_config(shipped)), f"configs/{shipped}.toml"


def _torch_scale(torch, factor: float):
    """A torch module for gpucnn's Scale layer (y = factor * x)."""

    class Scale(torch.nn.Module):
        def forward(self, x):
            return x * factor

    return Scale()


def torch_twin(torch, specs: list[dict], input_shape=INPUT_SHAPE):
    """``torch.nn.Sequential`` with the layers of ``specs`` (validated config entries), module for layer."""
    from gpucnn.layers import ACTIVATION_LAYERS

    nn = torch.nn
    shape = tuple(input_shape)
    modules = []
    for spec in specs:
        kind = spec["type"]
        if kind == "conv2d":
            module = nn.Conv2d(shape[0], spec["out_channels"], spec["kernel_size"], stride=spec["stride"],
                               padding=spec["padding"], bias=spec["bias"])
        elif kind == "whitening_conv2d":
            k = spec["kernel_size"]
            kh, kw = (k, k) if isinstance(k, int) else k
            module = nn.Conv2d(shape[0], 2 * shape[0] * kh * kw, (kh, kw), bias=spec["bias"])
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
        elif kind == "scale":
            module = _torch_scale(torch, spec["factor"])
        elif kind == "flatten":
            module = nn.Flatten()
        else:
            module = getattr(nn, ACTIVATION_LAYERS[kind].__name__)()
        modules.append(module)
        with torch.no_grad():
            shape = tuple(module(torch.zeros((1, *shape))).shape[1:])
    return nn.Sequential(*modules)


def torch_param_groups(net, model, optimizer) -> list[dict]:
    """torch SGD param groups giving each twin param the lr scale and weight decay ours uses.

    Both models list their params in the same order (layer by layer; W/weight then b/bias,
    gamma then beta); frozen params of ours get ``requires_grad = False`` in the twin.
    """
    ours = [(layer, name) for _, layer, name in model.parameters()]
    theirs = list(net.parameters())
    if len(ours) != len(theirs):
        raise ValueError(f"torch twin has {len(theirs)} params, ours {len(ours)}")
    groups = []
    for (layer, name), param in zip(ours, theirs):
        if not layer.is_trainable(name):
            param.requires_grad_(False)
            continue
        lr_scale, wd = optimizer.param_settings(layer, name)
        groups.append({"params": [param], "lr": optimizer.lr * lr_scale, "weight_decay": wd})
    return groups


def _synthetic(batch: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, batch, *INPUT_SHAPE), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(count, batch)).astype(np.int32)
    return x, y


def synthetic_dataset(images: int, seed: int):
    """A CIFAR-shaped uint8 Dataset of random images: what build_run fits normalization
    (and a whitening layer) to in the benchmark."""
    from gpucnn.data import Dataset

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(images, *INPUT_SHAPE), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, size=images).astype(np.int64)
    return Dataset("synthetic", x, y, x[:1], y[:1], [str(k) for k in range(NUM_CLASSES)])


def _ours_step(backend, config: dict, batch: int, seed: int):
    """(step function, run) for ``config`` at ``batch`` on ``backend`` (which must be current)."""
    from gpucnn.backend import get_backend
    from gpucnn.build import build_run

    if get_backend() is not backend:
        raise RuntimeError("run_train_bench: make the benchmark backend current first (use_backend)")
    config = {**config, "data": {**config["data"], "batch_size": batch}}
    run = build_run(config, synthetic_dataset(max(batch, 256), seed), backend=backend)
    model, optimizer, loss_fn = run.model, run.optimizer, run.loss_fn
    xs, ys = _synthetic(batch, DATA_POOL, seed)
    data = [(backend.asarray(x), backend.asarray(y)) for x, y in zip(xs, ys)]
    counter = [0]

    def step():
        x, y = data[counter[0] % len(data)]
        counter[0] += 1
        loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

    return step, run


def _graph_step(backend, run, batch: int, seed: int):
    """(step function, CapturableStep): the step as ``training.cuda_graph`` runs it
    (gpucnn.graph_step: static buffers, device lr and seeds, own GEMMs, one graph launch per
    step on the cuda backend), on the same synthetic batches as ``_ours_step``."""
    from gpucnn.graph_step import CapturableStep
    from gpucnn.metrics import RunningMetrics

    xs, ys = _synthetic(batch, DATA_POOL, seed)
    data = [(backend.asarray(x), backend.asarray(y)) for x, y in zip(xs, ys)]
    captured = CapturableStep(run.model, run.loss_fn, run.optimizer, backend, *data[0], RunningMetrics(backend))
    counter = [0]

    def step():
        x, y = data[counter[0] % len(data)]
        counter[0] += 1
        seeds = {path: (seed + counter[0] * 7919 + k) % 2**32 for k, path in enumerate(captured.scalars.seed_paths)}
        captured.run(x, y, run.optimizer.lr, seeds)

    return step, captured


def _torch_step(torch, device: str, config: dict, batch: int, seed: int, run, mode=None) -> Callable[[], None]:
    """The twin's step on ``device``; ``mode`` (a PeerMode) may ask for channels-last bf16
    (autocast itself is ``mode.active``'s) and ``torch.compile`` of the network."""
    torch.manual_seed(seed)
    net = torch_twin(torch, config["model"]["layers"]).to(device).train()
    channels_last = bool(mode is not None and mode.bf16)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    o = config["optimizer"]
    opt = torch.optim.SGD(torch_param_groups(net, run.model, run.optimizer), lr=o["lr"], momentum=o["momentum"],
                          nesterov=o["nesterov"])
    smoothing = config["loss"]["label_smoothing"]
    xs, ys = _synthetic(batch, DATA_POOL, seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    data = [(torch.from_numpy(x).to(device).contiguous(memory_format=memory_format),
             torch.from_numpy(y.astype(np.int64)).to(device)) for x, y in zip(xs, ys)]
    counter = [0]
    F = torch.nn.functional
    forward = torch.compile(net) if mode is not None and mode.compile else net

    def step():
        x, y = data[counter[0] % len(data)]
        counter[0] += 1
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y, label_smoothing=smoothing).backward()
        opt.step()

    return step


def _time_training(step: Callable[[], None], clock: Clock, batch: int, settings: TrainSettings) -> dict:
    timing = measure(step, clock, settings.repeats, settings.warmup, min_sample_ms=0.0)
    steps = max(1, settings.images // batch)

    def epoch():
        for _ in range(steps):
            step()

    samples = [clock.sample(epoch, 1) / 1e3 for _ in range(max(1, settings.epochs))]
    seconds = float(np.median(samples))
    return {
        "step": {"ms": timing.median_ms, "timing": timing.as_dict()},
        "epoch": {"images": steps * batch, "steps": steps, "seconds": seconds},
        "epochs": {"repeats": len(samples), "min_s": min(samples), "median_s": seconds, "samples_s": samples},
        "images_per_s": steps * batch / seconds if seconds > 0 else None,
    }


def _time_graph_step(backend, run, name, source, batch, n_params, settings, log) -> dict | None:
    """The record of our step as a CUDA graph, on the cuda backend when the run's step can be
    one (an SGD optimizer); None elsewhere. ``graph.mode`` says whether it really replayed."""
    if not backend.on_device or not run.optimizer.device_lr:
        return None
    try:
        step, captured = _graph_step(backend, run, batch, settings.seed)
        step()  # the eager first step (the probe); the next one captures
        step()
        figures = _time_training(step, clock_for_backend(backend), batch, settings)
    except Exception as exc:  # reported, never fatal: the eager record stands
        log(f"  {name} batch {batch} ours (cuda graph): failed ({type(exc).__name__}: {exc})"[:300])
        return None
    record = {"model": name, "source": source, "batch": batch, "impl": f"ours ({backend.name}, cuda graph)",
              "params": n_params, "math_mode": getattr(backend, "precision", "fp32"), "counts": None,
              "peak_bytes": None, **figures, "ratio": None,
              "graph": {"mode": captured.graph.mode, "replays": captured.graph.replays,
                        "blockers": captured.graph.blockers}}
    log(f"  {name} batch {batch} ours (cuda graph, {captured.graph.mode}): {figures['step']['ms']:.2f} ms/step")
    return record


def run_train_bench(backend, settings: TrainSettings, torch=None, modes=(),
                    log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """One record per (model, batch, implementation); peers carry ratio = our epoch time / theirs.

    ``backend`` must be the current backend (the models are built on it).
    """
    from gpucnn.bench.counters import count_step, peak_step_bytes, torch_peak_step_bytes
    from gpucnn.bench.torch_peers import torch_clock

    records: list[dict] = []
    for name in settings.models:
        config, source = model_config(name)
        for batch in settings.batches:
            step, run = _ours_step(backend, config, batch, settings.seed)
            n_params = run.model.num_params()
            step()  # first use: kernel builds and, on cuda, the conv autotuning (not what we count)
            ours = {"model": name, "source": source, "batch": batch, "impl": f"ours ({backend.name})",
                    "params": n_params, "math_mode": getattr(backend, "precision", "fp32"),
                    "counts": count_step(backend, step), "peak_bytes": peak_step_bytes(backend, step),
                    **_time_training(step, clock_for_backend(backend), batch, settings), "ratio": None}
            del step
            records.append(ours)
            log(f"  {name} batch {batch} ours: {ours['step']['ms']:.2f} ms/step, {ours['images_per_s']:.0f} images/s"
                + (f", {ours['counts']['kernel_launches']} launches/step" if ours["counts"] else ""))
            graphed = _time_graph_step(backend, run, name, source, batch, n_params, settings, log)
            if graphed is not None:
                records.append(graphed)
                if graphed["epoch"]["seconds"] < ours["epoch"]["seconds"]:
                    ours = graphed  # the peers' ratios are against our faster step
            for mode in (modes if settings.peers else ()):
                try:
                    with mode.active(torch):
                        peer_step = _torch_step(torch, mode.device, config, batch, settings.seed, run, mode)
                        peer_step()  # first use: cudnn.benchmark's search, torch.compile's compilation
                        peak = torch_peak_step_bytes(torch, mode.device, peer_step)
                        figures = _time_training(peer_step, torch_clock(torch, mode.device), batch, settings)
                except Exception as exc:  # a failing peer is reported, never fatal
                    log(f"  {name} batch {batch} {mode.name}: failed ({type(exc).__name__}: {exc})"[:300])
                    continue
                ratio = ours["epoch"]["seconds"] / figures["epoch"]["seconds"] if figures["epoch"]["seconds"] else None
                records.append({"model": name, "source": source, "batch": batch, "impl": mode.name,
                                "params": n_params, "math_mode": mode.math_mode, "counts": None,
                                "peak_bytes": peak, **figures, "ratio": ratio, "ratio_of": ours["impl"]})
                log(f"  {name} batch {batch} {mode.name}: {figures['step']['ms']:.2f} ms/step")
    return records
