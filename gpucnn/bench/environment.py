"""What a benchmark ran on: device, library versions, command line, timestamp; and the
same-run reference rates (SGEMM GFLOP/s, device copy GB/s) that results are compared to.

CUDA facts come from ``backend.xp`` (CuPy on the cuda backend); CuPy is never imported here.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import shlex
import sys

import numpy as np

import gpucnn
from gpucnn.bench.timing import Timing, clock_for_backend, measure
from gpucnn.bench.torch_peers import torch_version_info


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{(number % 1000) // 10}"


def command_line(argv: list[str]) -> str:
    """The command as a user would type it: ``gpucnn bench ...`` (shell-quoted)."""
    args = [str(a) for a in argv]
    if "bench" in args[1:]:
        args = ["gpucnn", *args[args.index("bench", 1):]]
    return shlex.join(args)


def describe_environment(backend, torch=None, argv: list[str] | None = None) -> dict:
    """Device, versions, command line and UTC timestamp of this run."""
    versions = {"gpucnn": gpucnn.__version__, "numpy": np.__version__, "python": platform.python_version()}
    versions.update(torch_version_info(torch))
    device = {"backend": backend.name, "name": backend.device_name, "platform": platform.platform()}
    if backend.on_device:
        xp = backend.xp
        versions["cupy"] = xp.__version__
        with contextlib.suppress(Exception):
            versions["cuda_runtime"] = _cuda_version(int(xp.cuda.runtime.runtimeGetVersion()))
        with contextlib.suppress(Exception):
            versions["cuda_driver"] = _cuda_version(int(xp.cuda.runtime.driverGetVersion()))
        with contextlib.suppress(Exception):
            props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
            device["compute_capability"] = f"{props['major']}.{props['minor']}"
            device["multiprocessors"] = int(props["multiProcessorCount"])
            device["memory_gib"] = round(int(props["totalGlobalMem"]) / 2**30, 1)
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(argv if argv is not None else sys.argv),
        "device": device,
        "versions": versions,
    }


def default_sgemm_size(backend) -> int:
    """8192 on the GPU (1.1 TFLOP per call), 1024 on the CPU."""
    return 8192 if backend.on_device else 1024


def measure_references(backend, sgemm_size: int, repeats: int, warmup: int) -> dict:
    """SGEMM (xp.matmul, float32, size^3) GFLOP/s and device copy GB/s, measured now."""
    xp = backend.xp
    clock = clock_for_backend(backend)
    rng = np.random.default_rng(0)
    a = backend.asarray(rng.standard_normal((sgemm_size, sgemm_size), dtype=np.float32))
    b = backend.asarray(rng.standard_normal((sgemm_size, sgemm_size), dtype=np.float32))
    gemm: Timing = measure(lambda: xp.matmul(a, b), clock, repeats, warmup)
    flops = 2.0 * sgemm_size**3
    del a, b
    elements = (64 << 20) if backend.on_device else (8 << 20)  # 256 MiB or 32 MiB
    src = xp.ones(elements, dtype=np.float32)
    dst = xp.empty_like(src)
    copy: Timing = measure(lambda: xp.copyto(dst, src), clock, repeats, warmup)
    moved = 2.0 * src.nbytes
    return {
        "sgemm": {"size": sgemm_size, "gflops": flops / (gemm.median_ms * 1e6), "timing": gemm.as_dict(),
                  "how": "xp.matmul float32 (cuBLAS on cuda, BLAS via NumPy on the CPU)"},
        "copy": {"bytes": int(moved), "gbps": moved / (copy.median_ms * 1e6), "timing": copy.as_dict(),
                 "how": "xp.copyto of a float32 array (read + write bytes)"},
    }
