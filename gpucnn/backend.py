"""Choice of compute backend: ``numpy``, ``cuda`` or ``emulated``.

A backend bundles an array module (``xp``: numpy or cupy), the op implementations
(``ops``: one object or module with the functions listed in ``gpucnn.ops``) and the
host<->device copies. Layers ask ``get_backend()`` for it at call time and never
import CuPy themselves; this module and ``gpucnn.cuda`` are the only places that do.

Selection: ``set_backend(name)``, else the ``GPUCNN_BACKEND`` environment variable,
else ``auto`` (cuda when CuPy imports and a device answers, otherwise numpy,
announced once on stderr). An explicit ``cuda`` that cannot run raises
``BackendUnavailable`` naming the cause; it never falls back silently.

Precision (``gpucnn.precision.PRECISIONS``): a new backend starts in ``GPUCNN_PRECISION``
(default ``auto``); ``Backend.set_precision(name)`` changes it. ``resolve_precision`` is the
one place ``auto`` is decided: tf32 on a GPU with tensor cores (compute capability >= 8.0),
fp32 everywhere else. The backend's ``precision`` is always concrete (fp32, tf32 or bf16)
and its ops read it on every call: the convolution and dense GEMMs round their operands
to it (NumPy: ``gpucnn.precision.operand_rounding``; kernels: the tensor-core kernels).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterator

import numpy as np

from gpucnn.errors import BackendUnavailable, ConfigError
from gpucnn.precision import check_precision

BACKEND_NAMES = ("auto", "numpy", "cuda", "emulated")
_ALIASES = {"cpu": "numpy", "gpu": "cuda"}
# Every spelling a user may give (config ``training.device``, ``--device``, GPUCNN_BACKEND).
DEVICE_CHOICES = ("auto", "cpu", "numpy", "cuda", "gpu", "emulated")
ENV_VAR = "GPUCNN_BACKEND"
PRECISION_ENV_VAR = "GPUCNN_PRECISION"
# The GEMM ops whose operands a reduced precision rounds (everything else stays fp32).
PRECISION_OPS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter", "dense_forward",
                 "dense_backward")
TENSOR_CORE_CAPABILITY = (8, 0)  # mma.sync tf32 m16n8k8 / bf16 m16n8k16 need sm_80


@dataclass
class Backend:
    """A compute backend: array module, ops and host<->device copies.

    Capabilities that callers test instead of comparing names:
    ``on_device`` (arrays live in GPU memory, host copies cost a transfer; also: queued
    work is asynchronous and ``synchronize`` waits for it), ``supports_float64``,
    ``kernels`` (ops run the kernels/*.cu sources: cuda and emulated), ``tensor_cores``
    (a GPU of compute capability >= 8.0). ``precision`` is the resolved GEMM precision
    (fp32, tf32 or bf16); change it with ``set_precision``.
    """

    name: str
    xp: ModuleType
    ops: Any
    device_name: str
    float_dtypes: tuple = (np.float32, np.float64)
    on_device: bool = False
    kernels: bool = False
    notes: list = field(default_factory=list)
    compute_capability: tuple | None = None  # (major, minor) of a GPU; None on CPU backends
    precision: str = "fp32"
    requested_precision: str = "fp32"

    @property
    def tensor_cores(self) -> bool:
        """True on a GPU with TF32/BF16 tensor cores (compute capability >= 8.0)."""
        return self.on_device and self.compute_capability is not None and \
            tuple(self.compute_capability) >= TENSOR_CORE_CAPABILITY

    def set_precision(self, name: str, where: str = "precision") -> str:
        """Make ``name`` (auto, fp32, tf32, bf16) this backend's precision; return the resolved one.

        ``where`` names the setting in the error a bad value raises (a ConfigError).
        """
        resolved = resolve_precision(name, self, where)
        self.requested_precision, self.precision = _precision_name(name, where), resolved
        if hasattr(self.ops, "precision"):
            self.ops.precision = resolved
        return resolved

    @property
    def supports_float64(self) -> bool:
        return np.float64 in self.float_dtypes

    def asarray(self, array, dtype=None):
        """Copy a host (NumPy) array to this backend's device; no copy when already there."""
        return self.xp.asarray(array, dtype=dtype)

    def to_host(self, array) -> np.ndarray:
        """Return a NumPy copy (or view, on CPU backends) of a backend array.

        0-d device arrays come back as 0-d NumPy arrays; NumPy scalars (``np.float64(1.0)``,
        what reductions on the numpy backend return) and Python numbers or lists as NumPy arrays.
        """
        if isinstance(array, np.ndarray):
            return array
        if hasattr(array, "get") and not isinstance(array, (dict, np.generic)):  # a CuPy array
            return array.get()
        return np.asarray(array)

    def synchronize(self) -> None:
        """Wait for queued device work to finish (a no-op on CPU backends)."""
        if self.on_device:
            self.xp.cuda.get_current_stream().synchronize()

    def check_dtype(self, dtype, what: str) -> None:
        """Raise TypeError when this backend cannot compute in ``dtype``."""
        if np.dtype(dtype).type not in self.float_dtypes:
            allowed = ", ".join(np.dtype(t).name for t in self.float_dtypes)
            raise TypeError(
                f"{what}: the {self.name} backend computes in {allowed}; got {np.dtype(dtype).name}"
                + ("" if self.supports_float64 else " (use the numpy backend for float64 gradient checks)")
            )


_current: Backend | None = None
_announced = False


def _precision_name(requested, where: str) -> str:
    """``requested`` in lower case if it is one of PRECISIONS, else a ConfigError naming ``where``."""
    try:
        return check_precision(requested.strip().lower() if isinstance(requested, str) else requested, where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def resolve_precision(requested: str, backend: Backend, where: str = "precision") -> str:
    """The concrete precision (fp32, tf32 or bf16) ``requested`` means on ``backend``.

    ``auto``: tf32 on a GPU with tensor cores, fp32 elsewhere (numpy, emulated, GPUs before
    sm_80). tf32/bf16 on a GPU without tensor cores is an error (the fp32 kernels are the
    only ones it runs); the CPU backends compute every precision (NumPy rounds the same way).
    """
    name = _precision_name(requested, where)
    if name == "auto":
        return "tf32" if backend.tensor_cores else "fp32"
    if name != "fp32" and backend.on_device and not backend.tensor_cores:
        cc = ".".join(str(v) for v in backend.compute_capability or ("?",))
        raise ConfigError(f"{where}: {name} needs tensor cores (compute capability >= 8.0); "
                          f"{backend.device_name} has {cc}; use fp32 (or auto)")
    return name


def choose_precision(option: str | None = None, config_value: str | None = None) -> tuple[str, str]:
    """(precision, where it came from): ``option`` (--precision), else GPUCNN_PRECISION, else the
    config's ``training.precision``, else auto; the same precedence as the backend choice."""
    if option:
        return option, "--precision"
    env = os.environ.get(PRECISION_ENV_VAR)
    if env:
        return env, PRECISION_ENV_VAR
    if config_value:
        return config_value, "training.precision"
    return "auto", "precision"


class NumpyOps:
    """``gpucnn.ops.numpy_ops`` with the GEMM ops (PRECISION_OPS) rounding to ``precision``.

    Every other op is the module's function itself; ``precision`` is set by the backend.
    """

    def __init__(self, module, precision: str = "fp32"):
        self._module = module
        self.precision = precision
        for op in PRECISION_OPS:
            setattr(self, op, self._rounded(getattr(module, op)))

    def _rounded(self, fn):
        def op(*args, **kwargs):
            return fn(*args, precision=self.precision, **kwargs)

        op.__name__, op.__doc__ = fn.__name__, fn.__doc__
        return op

    def __getattr__(self, name):
        return getattr(self._module, name)


def normalize_name(name: str) -> str:
    """Map user spellings (``cpu``, ``gpu``, any case) to a backend name, or raise ValueError."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; expected one of auto, numpy (cpu), cuda, emulated")
    return key


def cuda_unavailable_reason() -> str | None:
    """Why the cuda backend cannot run here, or None when it can."""
    try:
        import cupy  # noqa: F401
    except ImportError as exc:
        return f"CuPy is not installed ({exc.msg}); install gpucnn[cuda12] or gpucnn[cuda13]"
    except Exception as exc:  # a broken CuPy install raises all sorts of errors on import
        return f"CuPy failed to import: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        text = str(exc)
        if "InsufficientDriver" in text or "driver version" in text.lower() or "NoDriver" in text:
            # The CUDA runtime says "insufficient driver" both when the driver is too old and when
            # there is none at all; whether libcuda loads tells the two apart.
            driver = driver_cuda_version()
            if driver is None:
                return ("no NVIDIA driver is installed (libcuda.so.1 cannot be loaded); install the NVIDIA "
                        "driver, or use --device cpu")
            return (f"the NVIDIA driver is too old for this CuPy build: it supports CUDA {driver[0]}.{driver[1]}"
                    f" ({text}); update the driver or install the CuPy build for that CUDA version")
        if "NoDevice" in text:
            return "no CUDA device is visible (cudaErrorNoDevice)"
        return f"CUDA could not be initialised: {text}"
    if count == 0:
        return "no CUDA device is visible"
    return None


def driver_cuda_version() -> tuple[int, int] | None:
    """The CUDA version the installed NVIDIA driver supports, e.g. (12, 4); None when no driver
    library (libcuda.so.1 / nvcuda.dll) loads. The driver API answers without a device."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        try:
            if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
                return (0, 0)
        except AttributeError:
            return (0, 0)
        return (version.value // 1000, version.value % 1000 // 10)
    return None


def _make_numpy() -> Backend:
    from gpucnn.ops import numpy_ops

    return Backend("numpy", np, NumpyOps(numpy_ops), "CPU (NumPy)")


def _make_cuda() -> Backend:
    reason = cuda_unavailable_reason()
    if reason:
        raise BackendUnavailable(f"cuda backend unavailable: {reason}")
    import cupy

    from gpucnn.cuda.launcher import CudaLauncher
    from gpucnn.ops.kernel_ops import KernelOps

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return Backend("cuda", cupy, KernelOps(CudaLauncher(), cupy), name, float_dtypes=(np.float32,),
                   on_device=True, kernels=True, compute_capability=(int(props["major"]), int(props["minor"])))


def _make_emulated() -> Backend:
    from gpucnn.cuda.emulator import EmulatedLauncher
    from gpucnn.ops.kernel_ops import KernelOps

    return Backend(
        "emulated", np, KernelOps(EmulatedLauncher(), np), "CPU (CUDA emulation)", float_dtypes=(np.float32,),
        kernels=True,
    )


def create_backend(name: str, precision: str | None = None, where: str = "precision") -> Backend:
    """Build a backend by name, in ``precision`` (default: GPUCNN_PRECISION, else auto).

    ``where`` names the precision's source in the error a bad value raises.
    """
    backend = _create(name)
    if precision is None:
        precision, where = choose_precision()
    backend.set_precision(precision, where)
    return backend


def _create(name: str) -> Backend:
    """Build a backend by name; ``auto`` picks cuda when usable, else numpy (announced once)."""
    global _announced
    key = normalize_name(name)
    if key == "numpy":
        return _make_numpy()
    if key == "cuda":
        return _make_cuda()
    if key == "emulated":
        return _make_emulated()
    reason = cuda_unavailable_reason()
    if reason is None:
        return _make_cuda()
    if not _announced:
        print(f"gpucnn: using the numpy backend ({reason})", file=sys.stderr)
        _announced = True
    backend = _make_numpy()
    backend.notes.append(reason)
    return backend


def get_backend() -> Backend:
    """The current backend, created on first use from ``GPUCNN_BACKEND`` (default auto)."""
    global _current
    if _current is None:
        _current = create_backend(os.environ.get(ENV_VAR, "auto"))
    return _current


def set_backend(name: str, precision: str | None = None, where: str = "precision") -> Backend:
    """Make ``name`` the current backend (in ``precision``, see create_backend) and return it."""
    global _current
    _current = create_backend(name, precision, where)
    return _current


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Run a block under another backend, restoring the previous one afterwards."""
    global _current
    previous = _current
    try:
        yield set_backend(name)
    finally:
        _current = previous
