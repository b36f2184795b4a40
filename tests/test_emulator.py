"""The CUDA emulator itself: it must catch broken kernels, not just run good ones."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.cuda import sources
from gpucnn.cuda.emulator import EmulatedLauncher
from gpucnn.errors import KernelCompileError
from gpucnn.ops import numpy_ops as ref
from gpucnn.ops.kernel_ops import KernelOps

FORWARD_TAP_ROW = "const int h = oh * SH - PH + kh;"


def _conv_case():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    return x, w


def test_an_off_by_one_kernel_fails_the_comparison():
    """A copy of conv2d_direct.cu reading one input row too low must disagree with NumPy,
    while the shipped source agrees: the parity tests can fail."""
    text = sources.read_sources()["conv2d_direct.cu"]
    assert text.count(FORWARD_TAP_ROW) >= 1
    broken = text.replace(FORWARD_TAP_ROW, "const int h = oh * SH - PH + kh + 1;", 1)
    x, w = _conv_case()
    want = ref.conv2d_forward(x, w, None, (1, 1), (1, 1))
    for launcher, should_match in ((EmulatedLauncher(), True),
                                   (EmulatedLauncher(source_overrides={"conv2d_direct.cu": broken}), False)):
        ops = KernelOps(launcher, np)
        ops.set_variant("conv2d_forward", "direct")
        got = ops.conv2d_forward(x, w, None, (1, 1), (1, 1))
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5) is should_match


def test_a_broken_tile_loader_fails_the_comparison():
    """Same for the implicit-GEMM kernel (shared memory + barriers): shift the A-tile row."""
    text = sources.read_sources()["conv2d_igemm.cu"]
    needle = "As[ak][am + 16 * r] = (m < O && k < K) ? w[(size_t)m * K + k] : 0.0f;"
    assert needle in text
    broken = text.replace(needle, "As[ak][am + 16 * r] = (m < O && k < K) ? w[(size_t)m * K + k + 1] : 0.0f;")
    x, w = _conv_case()
    ops = KernelOps(EmulatedLauncher(source_overrides={"conv2d_igemm.cu": broken}), np)
    ops.set_variant("conv2d_forward", "igemm")
    got = ops.conv2d_forward(x, w, None, (1, 1), (1, 1))
    assert not np.allclose(got, ref.conv2d_forward(x, w, None, (1, 1), (1, 1)), rtol=1e-3, atol=1e-3)


def test_a_missing_barrier_is_a_wrong_answer():
    """Drop the barrier after the tile loads: threads read shared memory before it is filled."""
    text = sources.read_sources()["reduce.cu"]
    broken = text.replace("acc += x[i];\n    const float total = block_sum(acc, scratch);",
                          "acc += x[i];\n    scratch[threadIdx.x] = acc;\n"
                          "    const float total = threadIdx.x == 0 ? scratch[blockDim.x - 1] : 0.0f;", 1)
    assert broken != text
    launcher = EmulatedLauncher(source_overrides={"reduce.cu": broken})
    out = np.zeros((), np.float32)
    # 32 threads: scratch holds BLOCK_SUM_SCRATCH (32) floats, one per warp of the largest block
    x = np.ones(32, np.float32)
    launcher.launch("scaled_sum", (1,), (32,), (out, x, np.int32(32), np.float32(1.0)))
    assert float(out) != 32.0


def test_a_barrier_inside_a_branch_is_reported():
    text = sources.read_sources()["reduce.cu"] + """
extern "C" __global__ void divergent_barrier(float* __restrict__ out, int n)
{
    if (threadIdx.x < 3) __syncthreads();
    out[threadIdx.x] = (float)n;
}
"""
    launcher = EmulatedLauncher(source_overrides={"reduce.cu": text})
    assert launcher.index["divergent_barrier"].uses_barriers
    with pytest.raises(RuntimeError, match="__syncthreads.*only some threads"):
        launcher.launch("divergent_barrier", (1,), (8,), (np.zeros(8, np.float32), np.int32(1)))


def test_shared_memory_is_per_block_and_barriers_order_threads():
    """channel_sum needs every thread's partial sum before thread 0 reads the total."""
    launcher = EmulatedLauncher()
    x = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    out = np.zeros(3, np.float32)
    for threads in (1, 2, 64, 256, 1024):
        launcher.launch("channel_sum", (3,), (threads,), (out, x, np.int32(2), np.int32(3), np.int32(5)))
        np.testing.assert_array_equal(out, x.sum(axis=(0, 2)))


def test_invalid_launch_configurations_are_refused_like_cuda():
    launcher = EmulatedLauncher()
    x = np.zeros(4, np.float32)
    args = (x, x.copy(), np.int32(4))
    with pytest.raises(RuntimeError, match="1024 threads"):
        launcher.launch("relu_forward", (1,), (2048,), args)
    with pytest.raises(RuntimeError, match="is 0"):
        launcher.launch("relu_forward", (0,), (32,), args)


def test_arguments_are_checked_against_the_kernel_signature():
    launcher = EmulatedLauncher()
    x = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="n must be np.int32, got int"):
        launcher.launch("relu_forward", (1,), (32,), (x, x.copy(), 4))  # a Python int is 64-bit on CuPy
    with pytest.raises(TypeError, match="x must be float32, got float64"):
        launcher.launch("relu_forward", (1,), (32,), (x, np.zeros(4), np.int32(4)))
    with pytest.raises(TypeError, match="takes 3 arguments"):
        launcher.launch("relu_forward", (1,), (32,), (x, x.copy()))
    with pytest.raises(TypeError, match="C-contiguous"):
        launcher.launch("relu_forward", (1,), (32,), (x, np.zeros(8, np.float32)[::2], np.int32(4)))
    with pytest.raises(KeyError, match="no kernel named"):
        launcher.launch("no_such_kernel", (1,), (32,), ())


def test_compile_errors_name_the_file_and_line():
    text = sources.read_sources()["sgd.cu"]
    lines = text.splitlines()
    target = next(i for i, line in enumerate(lines) if "param[i] -= lr * step;" in line)
    lines[target] = lines[target].replace("step;", "undeclared_step;")
    launcher = EmulatedLauncher(source_overrides={"sgd.cu": "\n".join(lines)})
    with pytest.raises(KernelCompileError, match=rf"sgd\.cu:{target + 1}: .*undeclared_step"):
        launcher.compile_all()


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match="unknown kernel file"):
        EmulatedLauncher(source_overrides={"nope.cu": ""})


def test_barrier_detection_follows_helpers():
    index = sources.kernel_index(sources.read_sources())
    assert index["channel_sum"].uses_barriers  # through block_sum in common.cuh
    assert index["conv2d_forward_igemm"].uses_barriers
    assert not index["relu_forward"].uses_barriers
    assert not index["maxpool2d_backward"].uses_barriers


def test_library_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path))
    launcher = EmulatedLauncher()
    x = np.ones(3, np.float32)
    launcher.launch("relu_forward", (1,), (32,), (x.copy(), x, np.int32(3)))
    built = list(tmp_path.glob("emulator/*/activations.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    EmulatedLauncher().launch("relu_forward", (1,), (32,), (x.copy(), x, np.int32(3)))
    assert built[0].stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("emulator/*/tmp*"))  # no half-written build left behind
