"""The race: gpucnn's cifar10-fast against airbench94 (PyPI ``airbench`` 0.1.8) on one GPU.

Both train for the same number of epochs on the same synthetic CIFAR-shaped data in one
process; the result is seconds per epoch for each and ``ratio`` = gpucnn's / airbench's
(< 1: gpucnn is faster). Nothing downloads: airbench's ``CifarLoader(path)`` reads
``path/{train,test}.pt`` (``torch.save`` of ``{"images": uint8 (N, 32, 32, 3) HWC tensor,
"labels": int64 (N,) tensor, "classes": list of str}``) and only downloads when they are
missing, so ``write_cifar_files`` writes them first into a temporary folder. airbench's
``train()`` builds its test loader from the relative path ``cifar10``, so it runs with that
folder as the working directory.

What is timed (each side warm first: airbench's ``warmup94`` step, which runs cuDNN's
benchmark search; for gpucnn a one-epoch run of two batches on the same backend: kernel
builds, conv autotuning, a graph capture):
  airbench  ``train94(loader, epochs=E, verbose=False)`` end to end (net build, whitening
            init, the first epoch's on-GPU image preparation, every training step; no
            evaluation), divided by E. Its own math: fp16 weights and activations,
            channels-last. Its loader drops the last partial batch (48 steps of 1024 on 50000).
  gpucnn    ``gpucnn train``'s own path: the Trainer on the cifar10-fast recipe for E epochs
            (its loader and augmentation, lr schedule, the step as a CUDA graph when nothing
            blocks one, Lookahead), each epoch's seconds as the Trainer measures them for
            metrics.jsonl (to a device sync; the model build and whitening fit before, and
            the evaluation after, are outside them); their mean, and each in
            ``gpucnn_epoch_samples_s``. Every image trains (49 steps, the last of 848).
            Its math: ``--precision`` (default bf16, the nearest to airbench's fp16: bf16
            GEMM operands, fp32 sums and activations); ``gpucnn_step`` says whether the step
            ran as a CUDA graph.

``main(argv)`` is the command (scripts/airbench_race.py wraps it); without a GPU it exits 1
with one line saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gpucnn.errors import GpucnnError
from gpucnn.precision import PRECISIONS

AIRBENCH_VERSION = "0.1.8"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SCHEMA = "gpucnn-airbench-race/1"


class RaceUnavailable(GpucnnError):
    """The race cannot run here (no GPU, airbench or torch missing)."""


def synthetic_cifar(train: int, test: int, seed: int = 0):
    """(x_train, y_train, x_test, y_test): uint8 NCHW (N, 3, 32, 32) images, int64 labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(train, 3, 32, 32), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(test, 3, 32, 32), dtype=np.uint8)
    y_train = rng.integers(0, 10, size=train).astype(np.int64)
    y_test = rng.integers(0, 10, size=test).astype(np.int64)
    return x_train, y_train, x_test, y_test


def write_cifar_files(folder, x_train, y_train, x_test, y_test, torch) -> Path:
    """Write ``folder/cifar10/{train,test}.pt`` in airbench's format; returns ``folder/cifar10``.

    Images go in as NCHW uint8 (gpucnn's layout) and are stored NHWC, as torchvision's
    CIFAR10.data is and as airbench's loader expects (it permutes them back to NCHW).
    """
    target = Path(folder) / "cifar10"
    target.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        images = torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.uint8).transpose(0, 2, 3, 1)))
        labels = torch.from_numpy(np.asarray(y, np.int64))
        torch.save({"images": images, "labels": labels, "classes": list(CLASSES)}, target / f"{name}.pt")
    return target


def gpu_unavailable_reason(torch) -> str | None:
    """Why the race cannot run here, or None: it needs torch with CUDA and gpucnn's cuda backend."""
    if torch is None:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    from gpucnn.backend import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    return f"gpucnn's cuda backend is unavailable: {reason}" if reason else None


def _import_airbench():
    try:
        import airbench
    except ImportError as exc:
        raise RaceUnavailable(f"airbench is not importable ({exc}); pip install airbench=={AIRBENCH_VERSION} "
                              "(it needs torchvision)") from None
    return airbench


def time_airbench(data_root: Path, epochs: int, torch) -> dict:
    """airbench94's seconds per epoch on ``data_root/cifar10`` (see the module docstring)."""
    airbench = _import_airbench()
    from airbench.lib_airbench94 import hyp

    cwd = os.getcwd()
    os.chdir(data_root)  # train() opens its test loader at the relative path "cifar10"
    try:
        loader = airbench.CifarLoader("cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
                                      altflip=True)
        with contextlib.redirect_stdout(io.StringIO()):
            airbench.warmup94(train_loader=loader)  # one step (verbose warm-up returns after it)
        torch.cuda.synchronize()
        start = time.perf_counter()
        airbench.train94(train_loader=loader, epochs=epochs, verbose=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    finally:
        os.chdir(cwd)
    return {"epoch_s": seconds / epochs, "total_s": seconds, "steps_per_epoch": len(loader),
            "batch_size": loader.batch_size,
            "math": "fp16 + channels-last (airbench94's own)", "version": _installed_version()}


def _installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("airbench")
    except PackageNotFoundError:  # imported from a source tree on PYTHONPATH
        return None


def race_config(config_name: str, epochs: int, batch_size: int | None = None) -> dict:
    """``config_name`` as the race trains it: ``epochs`` epochs, evaluated once at the end
    (outside the timed epochs), no curves figure; ``batch_size`` overrides the config's."""
    from gpucnn.config import load_config, validate_config

    config = validate_config(load_config(config_name))
    config["training"]["epochs"] = epochs
    config["training"]["eval_every"] = epochs
    config["training"]["curves"] = False
    if batch_size is not None:
        config["data"]["batch_size"] = batch_size
    return config


def _fit(config: dict, dataset, backend, notes: list[str]):
    """Train ``config`` on ``dataset`` with the Trainer that ``gpucnn train`` runs, into a
    scratch folder; its lines go to ``notes``. Returns the Trainer."""
    from gpucnn.build import build_run
    from gpucnn.train import Trainer

    with tempfile.TemporaryDirectory(prefix="gpucnn-race-run-") as out:
        trainer = Trainer(build_run(config, dataset, backend=backend), Path(out) / "run", echo=notes.append,
                          progress_bar=False)
        trainer.fit()
    return trainer


def step_mode(trainer) -> str:
    """How the trainer's steps ran: "cuda graph", "capturable step, eager" (the emulator) or
    "eager" with the reason when a graph was wanted but something blocked it."""
    if trainer.cuda_graph is None:
        return "eager"
    steps = trainer.captured_steps
    reasons = sorted({s.eager_reason for s in steps if s.eager_reason})
    if reasons:
        return f"eager ({'; '.join(reasons)})"
    modes = {s.graph.mode for s in steps}
    return "cuda graph" if modes == {"graph"} else "capturable step, eager"


def time_gpucnn(dataset, epochs: int, config_name: str = "cifar10-fast", device: str = "cuda",
                batch_size: int | None = None, precision: str | None = None, warmup_batches: int = 2) -> dict:
    """gpucnn's seconds per epoch for ``config_name`` on ``device`` in ``precision`` (None: the
    config's): what ``gpucnn train`` does, timed by the Trainer itself (see the module docstring).

    A warm-up run first trains one epoch of ``warmup_batches`` full batches on the same backend
    (kernel builds, conv autotuning, one graph capture), so the timed run starts warm as
    airbench's does after ``warmup94``. ``batch_size`` overrides the config's (tests run the
    same path small on the CPU).
    """
    from gpucnn.backend import use_backend
    from gpucnn.data import Dataset

    config = race_config(config_name, epochs, batch_size)
    batch = config["data"]["batch_size"]
    warm_n = min(len(dataset.y_train), warmup_batches * batch)
    warm = Dataset(f"{dataset.name} (warm-up)", dataset.x_train[:warm_n], dataset.y_train[:warm_n],
                   dataset.x_test[:batch], dataset.y_test[:batch], list(dataset.classes))
    notes: list[str] = []
    with use_backend(device) as backend:
        if precision is not None:
            backend.set_precision(precision, "--precision")
        _fit(race_config(config_name, 1, batch_size), warm, backend, [])
        trainer = _fit(config, dataset, backend, notes)
        records = trainer.metrics_log.records
        samples = [r["seconds"] for r in records]
        return {"epoch_s": sum(samples) / epochs, "samples_s": samples, "steps_per_epoch": len(trainer.train_loader),
                "images_per_epoch": len(dataset.y_train), "math": backend.precision, "device": backend.device_name,
                "step": step_mode(trainer), "notes": [n for n in notes if n.startswith("training.cuda_graph")],
                "test_acc": records[-1].get("test_acc"), "config": f"configs/{config_name}.toml"}


def race(epochs: int, images: int, test_images: int, seed: int = 0, torch=None,
         log=lambda line: None, precision: str = "bf16") -> dict:
    """Run both for ``epochs`` on ``images`` synthetic training images; the result dict."""
    from gpucnn.bench.torch_peers import load_torch
    from gpucnn.data import Dataset

    torch = torch if torch is not None else load_torch()
    reason = gpu_unavailable_reason(torch)
    if reason:
        raise RaceUnavailable(f"needs a CUDA GPU: {reason}")
    _import_airbench()  # fail before any timing
    x_train, y_train, x_test, y_test = synthetic_cifar(images, test_images, seed)
    with tempfile.TemporaryDirectory(prefix="gpucnn-airbench-") as scratch:
        write_cifar_files(scratch, x_train, y_train, x_test, y_test, torch)
        log(f"airbench94: {epochs} epochs on {images} synthetic images")
        theirs = time_airbench(Path(scratch), epochs, torch)
    log(f"gpucnn cifar10-fast: {epochs} epochs on the same images")
    dataset = Dataset("synthetic-cifar10", x_train, y_train, x_test, y_test, list(CLASSES))
    ours = time_gpucnn(dataset, epochs, precision=precision)
    ratio = ours["epoch_s"] / theirs["epoch_s"] if theirs["epoch_s"] > 0 else None
    return {
        "schema": SCHEMA,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": {"name": ours["device"], "torch_device": torch.cuda.get_device_name()},
        "versions": {"torch": torch.__version__, "airbench": theirs["version"] or AIRBENCH_VERSION},
        "airbench": {"gpucnn_epoch_s": ours["epoch_s"], "airbench_epoch_s": theirs["epoch_s"], "ratio": ratio,
                     "epochs": epochs, "images": images, "gpucnn_epoch_samples_s": ours["samples_s"],
                     "gpucnn_math": ours["math"], "airbench_math": theirs["math"], "gpucnn_step": ours["step"],
                     "gpucnn_notes": ours["notes"], "gpucnn_images_per_epoch": ours["images_per_epoch"],
                     "airbench_images_per_epoch": theirs["steps_per_epoch"] * theirs["batch_size"],
                     "gpucnn_steps_per_epoch": ours["steps_per_epoch"],
                     "airbench_steps_per_epoch": theirs["steps_per_epoch"], "gpucnn_config": ours["config"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airbench_race.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs each (default 2)")
    parser.add_argument("--images", type=int, default=50000, help="synthetic training images (default 50000)")
    parser.add_argument("--test-images", type=int, default=2000, help="synthetic test images (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16",
                        help="gpucnn's GEMM precision (default bf16, the nearest to airbench's fp16)")
    parser.add_argument("--json", dest="json_path", default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.images < 1024 or args.test_images < 1:
        parser.error("--epochs >= 1, --images >= 1024 (one airbench batch) and --test-images >= 1 expected")
    if args.json_path and not Path(args.json_path).resolve().parent.is_dir():
        print(f"airbench race: error: cannot write {args.json_path}: its folder does not exist", file=sys.stderr)
        return 1
    try:
        result = race(args.epochs, args.images, args.test_images, args.seed,
                      log=lambda line: print(line, file=sys.stderr), precision=args.precision)
    except GpucnnError as exc:
        print(f"airbench race: {exc}", file=sys.stderr)
        return 1
    a = result["airbench"]
    print(f"gpucnn cifar10-fast {a['gpucnn_epoch_s']:.3f} s/epoch ({a['gpucnn_math']}, {a['gpucnn_step']}), airbench94 "
          f"{a['airbench_epoch_s']:.3f} s/epoch ({a['airbench_math']}): ratio {a['ratio']:.2f}x "
          f"on {result['device']['name']}")
    if args.json_path:
        from gpucnn.bench.report import atomic_write

        atomic_write(args.json_path, (json.dumps(result, indent=2) + "\n").encode())
    return 0
