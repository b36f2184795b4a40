"""CUDA-graph groundwork: which ops of a step block capture, and ``StepGraph`` around a step.

``training.cuda_graph = "auto" | "on" | "off"`` (config_schema). What each means today:
  off   the step runs eagerly (every backend).
  auto  a graph where it can be one (the cuda backend, and a step whose ops are all raw
        kernels); eager elsewhere. Until the Trainer keeps lr, step counters and dropout
        seeds in device memory (they are passed by value now), the training loop itself
        always runs eagerly under ``auto``.
  on    a clear error where the step cannot be captured (``check_cuda_graph_setting``):
        the numpy backend, or the cuda Trainer until it is capture-ready. The emulated
        backend runs the same step eagerly (CI covers the code path, timing means nothing).

What blocks capture: CuPy refuses cuBLAS calls during stream capture (``cupy.matmul`` raises
NotImplementedError under capture in CuPy 14). In KernelOps those are the ``xp.matmul``
calls of ``dense_forward``/``dense_backward`` and of the ``im2col_gemm``/``gemm_col2im``
conv variants. ``capture_blockers(step, ops)`` runs a step once with ``ops.xp`` replaced by
a recording proxy and names every op that called such a function; it works on the emulated
backend too (xp = numpy), so CI checks the analysis that ``auto`` rests on.

``StepGraph(step_fn, backend, stream=None)``: on the cuda backend, ``prepare()`` runs the step
eagerly twice on ``stream`` (conv autotuning and the memory pool settle; see autotune), checks
the blockers, then captures one step (``stream.begin_capture()``/``end_capture()``, relaxed
mode) with a private memory pool kept alive with the graph, so that no later allocation can
reuse an address the graph writes. ``step()`` replays it. The step must read its inputs
from fixed device buffers (the caller copies each batch into them before ``step()``).
Elsewhere ``prepare()`` checks the blockers the same way and ``step()`` calls ``step_fn``.

Verified without a GPU: the blocker analysis, the setting's resolution and the eager path.
NOT verified: the capture/replay path itself (it needs a GPU; tests/test_bench_graph.py
holds a ``gpu``-marked test proving replay equals eager bit for bit, skipped on CPU).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable

from gpucnn.errors import ConfigError, GpucnnError

SETTINGS = ("auto", "on", "off")

# xp functions that reach cuBLAS/cuSOLVER on CuPy (refused under stream capture)
LIBRARY_CALLS = frozenset({"matmul", "dot", "tensordot", "einsum", "inner", "outer", "vdot"})


class GraphCaptureError(GpucnnError):
    """A step cannot be captured as a CUDA graph (names the ops that block it)."""


class _RecordingModule:
    """Stands in for ``ops.xp``: forwards everything, notes which op called a library routine."""

    def __init__(self, xp, found: dict[str, set[str]]):
        self._xp = xp
        self._found = found

    def __getattr__(self, name):
        value = getattr(self._xp, name)
        if name in LIBRARY_CALLS and callable(value):
            found = self._found

            def recorded(*args, **kwargs):
                caller = sys._getframe(1).f_code.co_name  # the KernelOps method (or helper) calling it
                found.setdefault(caller, set()).add(f"xp.{name}")
                return value(*args, **kwargs)

            return recorded
        return value


def capture_blockers(step_fn: Callable[[], object], ops) -> list[str]:
    """Run ``step_fn`` once and list "op (xp.fn)" for every op that called a cuBLAS routine.

    ``ops`` is the backend's ops object; without an ``xp`` attribute (the numpy backend) the
    whole step is host code and the answer is ["the numpy backend (host code)"].
    """
    if not hasattr(ops, "xp"):
        return ["the numpy backend (host code)"]
    found: dict[str, set[str]] = {}
    real = ops.xp
    ops.xp = _RecordingModule(real, found)
    try:
        step_fn()
    finally:
        ops.xp = real
    return [f"{op} ({', '.join(sorted(calls))})" for op, calls in sorted(found.items())]


def resolve(setting: str, backend, blockers: list[str]) -> str:
    """"graph" or "eager" for ``training.cuda_graph`` = ``setting`` on ``backend``.

    ``on`` with blockers raises GraphCaptureError naming them (on every backend, so that CI
    sees the same error a GPU run would); ``on`` without a kernel backend raises too.
    """
    if setting not in SETTINGS:
        raise ConfigError(f"training.cuda_graph: expected one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting == "off":
        return "eager"
    if setting == "on":
        if not backend.kernels:
            raise GraphCaptureError(f"training.cuda_graph = 'on' needs a kernel backend (cuda; emulated runs "
                                    f"the step eagerly), not {backend.name}")
        if blockers:
            raise GraphCaptureError("training.cuda_graph = 'on': the step is not capturable; cuBLAS calls "
                                    f"(refused under capture) in: {'; '.join(blockers)}")
    if blockers:
        return "eager"
    return "graph" if backend.on_device else "eager"


def check_cuda_graph_setting(setting: str, backend) -> None:
    """What build_run checks: ``on`` is refused where the training loop cannot honour it."""
    if setting != "on":
        return
    if not backend.kernels:
        raise ConfigError(f"training.cuda_graph = 'on' needs the cuda backend (emulated runs the step "
                          f"eagerly); the {backend.name} backend has no kernels")
    if backend.on_device:
        raise ConfigError("training.cuda_graph = 'on': the training loop is not capture-ready yet (lr and "
                          "dropout seeds are passed by value each step); use 'auto' or 'off'")


class StepGraph:
    """One training step as a CUDA graph on the cuda backend, the same step eagerly elsewhere."""

    def __init__(self, step_fn: Callable[[], object], backend, stream=None, setting: str = "auto"):
        self.step_fn = step_fn
        self.backend = backend
        self.setting = setting
        self.stream = stream
        self.mode: str | None = None  # "graph" | "eager", set by prepare()
        self.blockers: list[str] = []
        self._graph = None
        self._pool = None

    def prepare(self) -> str:
        """Warm up, find the blockers, and capture when the mode is "graph"; returns the mode."""
        on_device = self.backend.on_device
        if on_device and self.stream is None:
            self.stream = self.backend.xp.cuda.Stream(non_blocking=True)
        with self._on_stream():
            self.step_fn()  # first use: conv autotuning, kernel compilation, pool growth
            self.blockers = capture_blockers(self.step_fn, self.backend.ops)
        self.mode = resolve(self.setting, self.backend, self.blockers)
        if self.mode == "graph":
            self._capture()
        return self.mode

    def step(self) -> None:
        """One step: replay the graph, or run ``step_fn``."""
        if self.mode is None:
            self.prepare()
        if self._graph is not None:
            self._graph.launch(stream=self.stream)
        else:
            with self._on_stream():
                self.step_fn()

    def _on_stream(self):
        return self.stream if self.stream is not None else contextlib.nullcontext()

    def _capture(self) -> None:
        cupy = self.backend.xp
        self._pool = cupy.cuda.MemoryPool()
        with cupy.cuda.using_allocator(self._pool.malloc), self.stream:
            self.step_fn()  # fills the private pool, so capture itself needs no cudaMalloc
            self.stream.synchronize()
            self.stream.begin_capture()  # CuPy's default mode: relaxed
            try:
                self.step_fn()
            except Exception as exc:  # something the blocker probe does not know refused capture
                with contextlib.suppress(Exception):
                    self.stream.end_capture()
                raise GraphCaptureError(f"capturing the step failed: {type(exc).__name__}: {exc}"[:300]) from exc
            self._graph = self.stream.end_capture()
        self.stream.synchronize()
