"""One benchmark run: backend, environment, references, kernel and training results -> a dict.

The dict is what ``report`` prints and writes (its layout is documented there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from gpucnn.backend import use_backend
from gpucnn.bench import torch_peers
from gpucnn.bench.environment import default_sgemm_size, describe_environment, measure_references
from gpucnn.bench.kernels_bench import KernelBenchSettings, run_kernel_bench
from gpucnn.bench.report import SCHEMA, BenchOutputError, peak_tflops
from gpucnn.bench.train_bench import TrainSettings, run_train_bench


def check_output_paths(paths) -> None:
    """Fail before any timing when an output folder is missing or --plot lacks matplotlib."""
    json_path, markdown_path, plot_path = (tuple(paths) + (None, None, None))[:3]
    for path in (json_path, markdown_path, plot_path):
        if path and not Path(path).resolve().parent.is_dir():
            raise BenchOutputError(f"cannot write {path}: folder {Path(path).resolve().parent} does not exist")
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BenchOutputError("--plot needs matplotlib: pip install matplotlib (or gpucnn[plot])") from None


def _settings_dict(kernel: KernelBenchSettings | None, train: TrainSettings | None) -> dict:
    out: dict = {}
    if kernel is not None:
        out["kernels"] = {"shapes": [s.label for s in kernel.shapes], "ops": kernel.ops, "repeats": kernel.repeats,
                          "warmup": kernel.warmup, "gate_batch": kernel.gate_batch, "peers": kernel.peers,
                          "variants": dict(kernel.variants), "all_variants": kernel.all_variants}
    if train is not None:
        out["train"] = {"models": list(train.models), "batches": list(train.batches), "images": train.images,
                        "repeats": train.repeats, "warmup": train.warmup, "peers": train.peers,
                        "epochs": train.epochs}
    return out


def run_bench(device: str, kernel: KernelBenchSettings | None, train: TrainSettings | None,
              sgemm_size: int | None = None, log: Callable[[str], None] = lambda s: None,
              check_outputs=(), argv: list[str] | None = None, precision: str | None = None) -> dict:
    """Run the requested benchmarks on ``device`` in ``precision`` (None: GPUCNN_PRECISION, else
    auto) and return the full result dict."""
    check_output_paths(check_outputs)
    torch = torch_peers.load_torch()
    with use_backend(device) as backend:
        if precision is not None:
            backend.set_precision(precision, "--precision")
        result = {"schema": SCHEMA, **describe_environment(backend, torch, argv)}
        result["precision"] = backend.precision
        result["peak_tflops"] = peak_tflops(backend.device_name, backend.precision) if backend.on_device else None
        peers_on = (kernel.peers if kernel else False) or (train.peers if train else False)
        modes = torch_peers.peer_modes(backend, torch) if peers_on else []
        result["peer_modes"] = [mode.describe(torch) for mode in modes]
        result["peers_skipped"] = torch_peers.skipped_peer_modes(backend, torch) if peers_on else []
        if torch is None and peers_on:
            log("torch is not importable: no PyTorch peers in this run")
        size = sgemm_size or default_sgemm_size(backend)
        log(f"device: {backend.device_name} (backend {backend.name}), precision: {backend.precision}; "
            f"reference SGEMM {size}^3 and copy")
        result["reference"] = measure_references(backend, size, repeats=5, warmup=2)
        result["settings"] = _settings_dict(kernel, train)
        result["kernels"] = []
        result["train"] = []
        if kernel is not None:
            log("kernels (each checked against NumPy float64 first):")
            result["kernels"] = run_kernel_bench(backend, kernel, result["reference"], torch, log)
        if train is not None:
            log("training steps:")
            result["train"] = run_train_bench(backend, train, torch, modes, log)
        tuner = getattr(backend.ops, "autotune", None)
        result["autotune"] = tuner.describe() if tuner is not None else []
    return result
