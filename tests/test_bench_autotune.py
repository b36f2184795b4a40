"""Conv ``auto`` by measurement (gpucnn.cuda.autotune): cache logic with a fake clock, the
KernelOps hook on the emulated backend, and the launch counters the benchmark reads."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.cuda import autotune
from gpucnn.ops import numpy_ops


# The forward variant a timed call really ran, told by the first kernel it launched.
FORWARD_KERNELS = {"im2col": "im2col_gemm", "conv2d_forward_igemm": "igemm", "conv2d_forward_direct": "direct"}


class FakeClock:
    """Milliseconds from a table, keyed by the variant whose kernel the timed call launched."""

    def __init__(self, launcher, table):
        self.launcher, self.table, self.calls = launcher, table, 0

    def __call__(self, fn):
        launched = []
        real = self.launcher.launch
        self.launcher.launch = lambda name, *a: (launched.append(name), real(name, *a))[1]
        try:
            fn()
        finally:
            del self.launcher.launch  # the class method again
        self.calls += 1
        return self.table[FORWARD_KERNELS[launched[0]]]


def test_choose_times_each_candidate_once_per_key_and_keeps_the_fastest():
    table = {"a": 3.0, "b": 1.5, "c": 2.0}
    state = {"variant": None}
    runs = []

    def run(variant):
        state["variant"] = variant
        runs.append(variant)

    tuner = autotune.Autotuner(clock=lambda fn: (fn(), table[state["variant"]])[1], repeats=2, warmup=1)
    assert tuner.choose("conv2d_forward", ("k1",), run, ("a", "b", "c")) == "b"
    # 1 warm-up + 2 timed calls per candidate, in candidate order
    assert runs == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert tuner.cache[("conv2d_forward", ("k1",))].times_ms == table
    runs.clear()
    assert tuner.choose("conv2d_forward", ("k1",), run, ("a", "b", "c")) == "b"
    assert runs == []  # cached: nothing timed again
    table["a"] = 0.5
    assert tuner.choose("conv2d_forward", ("k2",), run, ("a", "b", "c")) == "a"  # a new shape is timed
    assert tuner.choose("conv2d_backward_data", ("k1",), run, ("a", "b", "c")) == "a"  # per op too
    assert len(runs) == 18


def test_choose_keeps_the_minimum_sample_and_breaks_ties_by_order():
    samples = {"x": iter([5.0, 1.0, 9.0]), "y": iter([2.0, 2.0, 2.0])}
    state = {}
    tuner = autotune.Autotuner(clock=lambda fn: (fn(), next(samples[state["v"]]))[1], repeats=3, warmup=0)
    assert tuner.choose("op", (), lambda v: state.update(v=v), ("x", "y")) == "x"  # min 1.0 < 2.0
    tied = autotune.Autotuner(clock=lambda fn: (fn(), 1.0)[1], repeats=1, warmup=0)
    assert tied.choose("op", (), lambda v: None, ("y", "x")) == "y"


def test_shape_key_separates_shapes_dtypes_and_geometry():
    a = np.zeros((2, 3, 5, 5), np.float32)
    key = autotune.shape_key((a, None, (1, 1), (0, 0)))
    assert key == autotune.shape_key((np.ones((2, 3, 5, 5), np.float32), None, (1, 1), (0, 0)))
    assert key != autotune.shape_key((np.zeros((4, 3, 5, 5), np.float32), None, (1, 1), (0, 0)))
    assert key != autotune.shape_key((a.astype(np.float64), None, (1, 1), (0, 0)))
    assert key != autotune.shape_key((a, None, (2, 2), (0, 0)))


def test_numpy_array_module_keeps_the_fixed_rule():
    assert not autotune.for_array_module(np).measures


def _conv_args(rng, n=2, c=3, hw=6, o=4, k=3):
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = rng.standard_normal((o, c, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    return x, w, b


def test_emulated_auto_uses_the_rule_and_reports_it(emulated_backend):
    ops = emulated_backend.ops
    assert not ops.autotune.measures
    x, w, b = _conv_args(np.random.default_rng(0))
    ops.conv2d_forward(x, w, b, (1, 1), (1, 1))
    assert ops.autotune.last_pick["conv2d_forward"] == "direct"  # 4 output channels < 32
    assert ops.autotune.cache == {}


def test_kernel_ops_hook_tunes_once_per_shape_with_a_fake_clock(emulated_backend):
    """A measuring tuner on the emulated ops: the fake clock's fastest variant runs, cached."""
    ops = emulated_backend.ops
    op = "conv2d_forward"
    saved = ops.autotune
    clock = FakeClock(ops.launcher, {"im2col_gemm": 2.0, "igemm": 0.7, "direct": 1.1})
    ops.autotune = tuner = autotune.Autotuner(clock=clock, repeats=2, warmup=1)
    try:
        x, w, b = _conv_args(np.random.default_rng(1))
        y = ops.conv2d_forward(x, w, b, (1, 1), (1, 1))
        np.testing.assert_allclose(y, numpy_ops.conv2d_forward(x, w, b, (1, 1), (1, 1)), rtol=1e-4, atol=1e-4)
        assert tuner.last_pick[op] == "igemm"
        assert clock.calls == 3 * 2
        assert ops.variant(op) == "auto"  # restored after timing
        ops.conv2d_forward(x, w, b, (1, 1), (1, 1))
        assert clock.calls == 6  # same shape: cached
        x2, w2, b2 = _conv_args(np.random.default_rng(2), n=3)
        clock.table["direct"] = 0.1
        ops.conv2d_forward(x2, w2, b2, (1, 1), (1, 1))
        assert tuner.last_pick[op] == "direct" and clock.calls == 12
        ops.set_variant(op, "im2col_gemm")  # an explicit variant is never tuned
        ops.conv2d_forward(x, w, b, (2, 2), (0, 0))
        assert clock.calls == 12
        assert {r["variant"] for r in tuner.describe()} == {"igemm", "direct"}
        ops.set_variant(op, "auto")
        ops.deterministic = True  # timing-based choices could differ between runs: the rule holds
        clock.table["igemm"] = 0.01  # what tuning would pick
        x3, w3, b3 = _conv_args(np.random.default_rng(4), n=5)
        ops.conv2d_forward(x3, w3, b3, (1, 1), (1, 1))
        assert clock.calls == 12 and tuner.last_pick[op] == "direct"
    finally:
        ops.deterministic = False
        ops.set_variant(op, "auto")
        ops.autotune = saved


def test_emulated_launcher_counts_launches(emulated_backend):
    ops = emulated_backend.ops
    x, w, b = _conv_args(np.random.default_rng(3))
    before = ops.launcher.launches
    ops.conv2d_forward(x, w, b, (1, 1), (1, 1))  # direct: one kernel
    assert ops.launcher.launches - before == 1
    ops.set_variant("conv2d_forward", "im2col_gemm")
    try:
        before = ops.launcher.launches
        ops.conv2d_forward(x, w, b, (1, 1), (1, 1))  # im2col + (matmul outside) + bias kernel
        assert ops.launcher.launches - before == 2
    finally:
        ops.set_variant("conv2d_forward", "auto")


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
