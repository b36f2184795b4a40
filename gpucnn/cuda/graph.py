"""CUDA graphs of a training step: what blocks capture, the setting's resolution, ``StepGraph``.

``training.cuda_graph = "auto" | "on" | "off"`` (config_schema); the Trainer's use of it
(gpucnn.train, ``Trainer._train_step``):
  off   every step runs eagerly, as before graphs existed (lr and seeds by value, cuBLAS).
  auto  on the cuda backend, the capturable step (below) captured once per (batch size,
        trainable params, persistent arrays) and replayed every step; a blocker makes it run
        eagerly instead, said once in one line. On the emulated backend the capturable
        step runs eagerly (no graphs on a CPU; CI covers the code path); on numpy: eager.
  on    as auto, but a blocker is an error naming it: ``check_cuda_graph_setting`` (build
        time: the numpy backend, the config's blockers) or GraphCaptureError at the first
        step (an op that called cuBLAS despite the capturable mode).

The capturable step reads only fixed arrays: the batch in static buffers (x_static,
y_static, copied from the loader's batch before each replay), per-step scalars in device
memory (gpucnn.cuda.step_scalars: the lr of each lr scale, one seed per dropout layer,
written from the host before each replay), params, optimizer buffers and BatchNorm
running statistics (all updated in place) and the loss/accuracy sums (``RunningMetrics``
accumulates in place). Its ops run in ``ops.capturable`` mode (KernelOps): no cuBLAS,
dense and convolutions through gpucnn's own GEMM kernels.

What blocks a graph (``step_blockers``, ``capture_blockers``):
  - an optimizer that uses the lr on the host (Adam/AdamW: bias corrections from per-param
    step counts); SGD reads it from device memory;
  - training.ema (a host-computed decay per update), training.clip_grad_norm (reads the
    norm on the host: a sync per step), data parallel over several ranks (NCCL and a host
    stop check per step);
  - any op that still calls a library routine (``capture_blockers`` runs the step with
    ``ops.xp`` replaced by a recording proxy; CuPy refuses cuBLAS under stream capture).

``StepGraph(step_fn, backend, setting)``: ``step(feed)`` runs ``feed`` (copy the batch and
scalars in; on the current stream, so the loader's arrays are read in the stream order they
were written in) and then the step. The first call runs ``step_fn`` eagerly under the
blocker probe: it is the real step (weights move; conv autotuning, kernel compilation and
the optimizer's buffers happen here, outside any capture) and decides the mode. In "graph"
mode the second call captures ``step_fn`` on a stream of the graph's own (relaxed mode:
the memory pool may cudaMalloc) into a private memory pool kept alive with the graph, so no
later allocation can take an address the graph writes; that call and every later one
launch the graph after the feed (the graph stream waits on an event of the current stream,
and the current stream on one recorded after the launch). Elsewhere ``step`` runs
``step_fn`` after the feed.

Verified without a GPU: the blocker analysis, the setting's resolution, the capturable step
on the emulated backend (bit for bit the eager step where the GEMMs are the same kernels),
and that it passes nothing per step by value and reads no device value on the host
(tests/test_cuda_graph_step.py). NOT verified: capture and replay themselves (they need a
GPU; ``gpu``-marked tests prove replay equals eager execution bit for bit there).
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


def capture_blockers(step_fn: Callable[[], object], ops, backend=None) -> list[str]:
    """Run ``step_fn`` once and list "op (xp.fn)" for every op that called a cuBLAS routine.

    ``ops`` is the backend's ops object; without an ``xp`` attribute (the numpy backend) the
    whole step is host code and the answer is ["the numpy backend (host code)"]. With
    ``backend``, its ``xp`` (what layers, losses and metrics use) is watched too.
    """
    if not hasattr(ops, "xp"):
        return ["the numpy backend (host code)"]
    found: dict[str, set[str]] = {}
    real = ops.xp
    watched = [ops] + ([backend] if backend is not None and backend.xp is real else [])
    for owner in watched:
        owner.xp = _RecordingModule(real, found)
    try:
        step_fn()
    finally:
        for owner in watched:
            owner.xp = real
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


def step_blockers(*, optimizer: str, device_lr: bool, ema: bool, clip_norm: float, world_size: int) -> list[str]:
    """What keeps a training step out of a CUDA graph besides its ops (one phrase each)."""
    found = []
    if not device_lr:
        found.append(f"optimizer {optimizer} (computes with the lr on the host: Adam's bias corrections; "
                     f"use sgd)")
    if ema:
        found.append("training.ema (its decay is computed on the host each update)")
    if clip_norm:
        found.append("training.clip_grad_norm (reads the gradient norm on the host each step)")
    if world_size > 1:
        found.append(f"data parallel over {world_size} ranks (NCCL all-reduce and a host stop check each step)")
    return found


def config_blockers(config: dict, world_size: int = 1) -> list[str]:
    """``step_blockers`` of a validated config (what build_run knows before the model exists)."""
    from gpucnn.optim import OPTIMIZER_CLASSES

    name = config["optimizer"].get("name", "sgd")
    training = config["training"]
    return step_blockers(optimizer=name, device_lr=OPTIMIZER_CLASSES[name].device_lr,
                         ema=training["ema"]["decay"] > 0, clip_norm=training["clip_grad_norm"],
                         world_size=world_size)


def check_cuda_graph_setting(setting: str, backend, config: dict | None = None, world_size: int = 1) -> None:
    """What build_run checks: ``on`` is refused (one line) where the step cannot be a graph."""
    if setting != "on":
        return
    if not backend.kernels:
        raise ConfigError(f"training.cuda_graph = 'on' needs the cuda backend (emulated runs the step "
                          f"eagerly); the {backend.name} backend has no kernels")
    blockers = config_blockers(config, world_size) if config is not None else []
    if blockers:
        raise ConfigError(f"training.cuda_graph = 'on': the step cannot be captured: {'; '.join(blockers)}; "
                          f"use 'auto' or 'off'")


def _nothing() -> None:
    return None


class StepGraph:
    """One training step as a CUDA graph on the cuda backend, the same step eagerly elsewhere.

    ``mode``: None before the first ``step``, then "graph" or "eager" (``resolve``).
    ``replays``: how many steps ran as a graph launch.
    """

    def __init__(self, step_fn: Callable[[], object], backend, stream=None, setting: str = "auto"):
        self.step_fn = step_fn
        self.backend = backend
        self.setting = setting
        self.stream = stream
        self.mode: str | None = None
        self.blockers: list[str] = []
        self.replays = 0
        self._graph = None
        self._pool = None

    def prepare(self) -> str:
        """The first step, eagerly and under the blocker probe; sets and returns the mode."""
        self.blockers = capture_blockers(self.step_fn, self.backend.ops, self.backend)
        self.mode = resolve(self.setting, self.backend, self.blockers)
        return self.mode

    def step(self, feed: Callable[[], object] = _nothing) -> None:
        """``feed()`` then one step: the eager first step, else the graph's launch (or ``step_fn``)."""
        feed()
        if self.mode is None:
            self.prepare()
            return
        if self.mode != "graph":
            self.step_fn()
            return
        if self._graph is None:
            try:
                self._capture()
            except GraphCaptureError as exc:
                if self.setting == "on":
                    raise
                # auto: a step that cannot be captured still trains, eagerly (the Trainer says why)
                self.mode, self.blockers = "eager", [str(exc)]
                self.step_fn()
                return
        self._launch()

    def _launch(self) -> None:
        current = self.backend.xp.cuda.get_current_stream()
        self.stream.wait_event(current.record())  # the feed and everything before it
        self._graph.launch(stream=self.stream)
        current.wait_event(self.stream.record())  # readers of the results (metrics, eval, saves)
        self.replays += 1

    def _capture(self) -> None:
        """Record ``step_fn`` into a graph (nothing runs: the next launch is the step)."""
        cupy = self.backend.xp
        if self.stream is None:
            self.stream = cupy.cuda.Stream(non_blocking=True)
        cupy.cuda.get_current_stream().synchronize()  # the eager first step is done
        self._pool = cupy.cuda.MemoryPool()
        with cupy.cuda.using_allocator(self._pool.malloc), self.stream:
            self.stream.begin_capture()  # CuPy's default mode: relaxed (the pool may cudaMalloc)
            try:
                self.step_fn()
            except Exception as exc:  # something the blocker probe does not know refused capture
                with contextlib.suppress(Exception):
                    self.stream.end_capture()
                if any("OutOfMemory" in cls.__name__ for cls in type(exc).__mro__):
                    raise  # the Trainer's OOM guard names the batch size
                raise GraphCaptureError(f"capturing the step failed: {type(exc).__name__}: {exc}"[:300]) from exc
            self._graph = self.stream.end_capture()
