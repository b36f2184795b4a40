"""The ``auto`` convolution variant: chosen by measurement on the GPU, by a fixed rule elsewhere.

As ``torch.backends.cudnn.benchmark`` does, the first call of a convolution op at a new shape
times every concrete variant (``im2col_gemm``/``gemm_col2im``, ``igemm``, ``direct``) on that
call's own arguments and keeps the fastest; later calls at the same shape reuse the choice.
The cache is per ``KernelOps`` (so per backend) and keyed by op and shape key (every array
argument's shape and dtype plus the stride/padding/shape arguments).

Timing the CPU emulator says nothing about a GPU, so there (``xp`` without ``cuda`` events)
the tuner does not measure and ``KernelOps._pick`` keeps its fixed rule. The rule also holds
under ``ops.deterministic`` (training.deterministic): a choice made by timing can differ from
run to run, and different variants round differently.

How it hooks in without touching the op bodies: ``install(ops)`` wraps the tuned ops on the
instance. The wrapper tunes on a cache miss (running the op once per candidate with that
variant set explicitly, so the nested calls pass straight through), then sets
``tuner.current[op]`` for the duration of the real call; ``KernelOps._pick`` resolves
``auto`` through ``tuner.resolve(op, rule_choice)``, which returns the tuned variant when one
is current, else the rule's, and remembers it in ``tuner.last_pick`` (what the benchmark
reports as the variant ``auto`` picked).

Tuning synchronizes the host (events) and allocates scratch outputs: it happens on the
first step of a run, so a CUDA graph must be captured after one eager step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

TUNED_OPS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter")

Clock = Callable[[Callable[[], object]], float]  # runs fn once, returns milliseconds


def shape_key(args) -> tuple:
    """A hashable key of one call: shapes and dtypes of the arrays, the other arguments as given."""
    key = []
    for a in args:
        if hasattr(a, "shape") and hasattr(a, "dtype"):
            key.append(("array", tuple(int(v) for v in a.shape), str(a.dtype)))
        elif isinstance(a, (tuple, list)):
            key.append(tuple(int(v) for v in a))
        else:
            key.append(a if a is None else repr(a))
    return tuple(key)


def event_clock(xp) -> Clock:
    """Milliseconds of one call between two CUDA events of ``xp`` (CuPy) on the current stream."""

    def time_ms(fn):
        start, end = xp.cuda.Event(), xp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(xp.cuda.get_elapsed_time(start, end))

    return time_ms


@dataclass
class Choice:
    """The variant kept for one (op, shape key) and the minimum ms each candidate measured."""

    variant: str
    times_ms: dict[str, float]


@dataclass
class Autotuner:
    """Per-shape variant choice by timing (``clock`` set) or none (``clock`` None: fixed rule)."""

    clock: Clock | None = None
    repeats: int = 3  # timed calls per candidate; the minimum counts (least disturbed by noise)
    warmup: int = 1  # untimed calls first (compiles the kernel, fills the memory pool)
    cache: dict[tuple, Choice] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)
    last_pick: dict[str, str] = field(default_factory=dict)

    @property
    def measures(self) -> bool:
        return self.clock is not None

    def choose(self, op: str, key: tuple, run: Callable[[str], object], candidates) -> str:
        """The cached variant for (op, key), timing ``run(variant)`` for each candidate on a miss.

        Ties go to the first candidate listed (the order of ``kernel_ops.VARIANTS``).
        """
        if (op, key) not in self.cache:
            times: dict[str, float] = {}
            for variant in candidates:
                for _ in range(self.warmup):
                    run(variant)
                times[variant] = min(self.clock(lambda: run(variant)) for _ in range(self.repeats))
            best = min(candidates, key=lambda v: times[v])
            self.cache[(op, key)] = Choice(best, times)
        return self.cache[(op, key)].variant

    def resolve(self, op: str, rule_choice: str) -> str:
        """What ``auto`` runs for ``op`` now: the tuned variant of this call, else the rule's."""
        picked = self.current.get(op) or rule_choice
        self.last_pick[op] = picked
        return picked

    def describe(self) -> list[dict]:
        """The cache as records (for the benchmark JSON)."""
        return [{"op": op, "key": repr(key), "variant": c.variant, "times_ms": dict(c.times_ms)}
                for (op, key), c in self.cache.items()]


def for_array_module(xp) -> Autotuner:
    """A measuring tuner when ``xp`` has CUDA events (CuPy on a GPU), else one that keeps the rule."""
    cuda = getattr(xp, "cuda", None)
    return Autotuner(event_clock(xp) if cuda is not None and hasattr(cuda, "Event") else None)


def install(ops, variants: dict[str, tuple[str, ...]]) -> None:
    """Wrap ``ops``'s tuned methods (instance attributes) so that ``auto`` tunes on first use."""
    for op in TUNED_OPS:
        method = getattr(ops, op)
        candidates = tuple(v for v in variants[op] if v != "auto")
        setattr(ops, op, _tuning_wrapper(ops, op, method, candidates))


def _tuning_wrapper(ops, op: str, method, candidates):
    """``method`` (a bound op) behind the tuner that is ``ops.autotune`` at call time."""

    def run_with(variant: str, args, kwargs):
        saved = ops._variant[op]
        ops._variant[op] = variant
        try:
            return method(*args, **kwargs)
        finally:
            ops._variant[op] = saved

    def call(*args, **kwargs):
        tuner: Autotuner = ops.autotune
        # tf32/bf16 route every variant to the tensor-core kernels: nothing to choose between.
        # deterministic: a choice by timing may differ between runs, and with it the rounding
        if (not tuner.measures or ops._variant[op] != "auto" or getattr(ops, "precision", "fp32") != "fp32"
                or getattr(ops, "deterministic", False)):
            return method(*args, **kwargs)
        # capturable mode (a CUDA-graph step) excludes the cuBLAS variants: time only the others
        excluded = getattr(ops, "excluded_variants", frozenset())
        allowed = tuple(v for v in candidates if v not in excluded)
        key = shape_key((*args, *(kwargs[k] for k in sorted(kwargs)))) + tuple(sorted(kwargs)) + (allowed,)
        chosen = tuner.choose(op, key, lambda v: run_with(v, args, kwargs), allowed)
        tuner.current[op] = chosen
        try:
            return method(*args, **kwargs)
        finally:
            tuner.current.pop(op, None)

    call.__doc__ = method.__doc__
    call.__name__ = op
    return call
