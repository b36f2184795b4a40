"""What one training step costs besides time: kernel launches, host syncs, peak device memory.

``count_step(backend, step)`` runs ``step`` once and counts, on the kernel backends:
  kernel_launches   kernels queued through the launcher (``launcher.launches``: every
                    kernels/*.cu launch, cuda and emulated alike)
  library_calls     ``ops.xp`` calls that reach cuBLAS on CuPy (xp.matmul ...), by name
  xp_calls          every other ``ops.xp`` function call KernelOps makes (allocations,
                    ascontiguousarray...), by name
  host_syncs        ``backend.synchronize``/``backend.to_host`` and ``launcher.synchronize``
                    calls during the step
Not counted (documented in docs/readme-benchmarks.md): CuPy elementwise kernels run by
array operators in layers and the optimizer (``a += b`` on CuPy arrays) and implicit syncs
such as ``float(device_array)`` inside the step; CuPy has no launch hook for them.

``peak_step_bytes(backend, step)``: the CuPy memory pool's peak ``used_bytes`` over one step
(a memory hook sees every pool allocation), None on CPU backends; ``torch_peak_step_bytes``
the same for a PyTorch peer (``torch.cuda.max_memory_allocated``). Both are absolute (params,
optimizer state and the data pool included), so they compare like for like.
"""

from __future__ import annotations

import contextlib
from typing import Callable

from gpucnn.cuda.graph import LIBRARY_CALLS


class _CountingModule:
    """Stands in for ``ops.xp`` while a step runs: forwards everything, counts function calls."""

    def __init__(self, xp, library: dict[str, int], other: dict[str, int]):
        self._xp, self._library, self._other = xp, library, other

    def __getattr__(self, name):
        value = getattr(self._xp, name)
        if not callable(value) or isinstance(value, type):
            return value
        table = self._library if name in LIBRARY_CALLS else self._other

        def counted(*args, **kwargs):
            table[name] = table.get(name, 0) + 1
            return value(*args, **kwargs)

        return counted


@contextlib.contextmanager
def _patched(obj, name: str, wrapper_of):
    """Replace ``obj.name`` by ``wrapper_of(original)`` for the block (an instance attribute)."""
    original = getattr(obj, name)
    had_own = name in vars(obj)
    setattr(obj, name, wrapper_of(original))
    try:
        yield
    finally:
        if had_own:
            setattr(obj, name, original)
        else:
            delattr(obj, name)


def count_step(backend, step: Callable[[], object]) -> dict | None:
    """Launches, cuBLAS-bound and other xp calls, and host syncs of one ``step``; None without kernels."""
    ops = backend.ops
    launcher = getattr(ops, "launcher", None)
    if not backend.kernels or launcher is None or not hasattr(launcher, "launches"):
        return None
    library: dict[str, int] = {}
    other: dict[str, int] = {}
    syncs = [0]

    def counting(fn):
        def wrapped(*args, **kwargs):
            syncs[0] += 1
            return fn(*args, **kwargs)

        return wrapped

    backend.synchronize()
    before = launcher.launches
    real_xp = ops.xp
    ops.xp = _CountingModule(real_xp, library, other)
    try:
        with _patched(backend, "synchronize", counting), _patched(backend, "to_host", counting), \
                _patched(launcher, "synchronize", counting):
            step()
    finally:
        ops.xp = real_xp
    backend.synchronize()
    return {"kernel_launches": launcher.launches - before,
            "library_calls": sum(library.values()), "library_by_name": dict(sorted(library.items())),
            "xp_calls": sum(other.values()), "xp_by_name": dict(sorted(other.items())),
            "host_syncs": syncs[0],
            "how": "launcher.launches; ops.xp calls (cuBLAS-bound: matmul...); backend/launcher syncs. "
                   "CuPy elementwise operators in layers/optimizer and implicit syncs are not counted"}


def peak_step_bytes(backend, step: Callable[[], object]) -> int | None:
    """Peak bytes in use in CuPy's default memory pool during one ``step``; None off the GPU."""
    if not backend.on_device:
        return None
    cupy = backend.xp
    pool = cupy.get_default_memory_pool()

    class PeakHook(cupy.cuda.memory_hook.MemoryHook):
        name = "gpucnn-bench-peak"

        def __init__(self):
            self.peak = pool.used_bytes()

        def malloc_postprocess(self, **kwargs):
            self.peak = max(self.peak, pool.used_bytes())

    backend.synchronize()
    hook = PeakHook()
    with hook:
        step()
        backend.synchronize()
    return int(hook.peak)


def torch_peak_step_bytes(torch, device: str, step: Callable[[], object]) -> int | None:
    """``torch.cuda.max_memory_allocated`` over one ``step`` (reset first); None on the CPU."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())
