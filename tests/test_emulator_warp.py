"""Warp-level primitives on the emulator: shuffles, votes, __syncwarp against a NumPy model of
CUDA's semantics, and misuse (disagreeing masks, early exits) raising instead of hanging."""

from __future__ import annotations

import multiprocessing
import os
import traceback

import numpy as np
import pytest

from gpucnn.cuda import sources
from gpucnn.cuda.emulator import EmulatedLauncher

FULL = 0xFFFFFFFF

WARP_KERNELS = r"""
// Test kernels for the emulator's warp collectives. mode: 0 idx, 1 up, 2 down, 3 xor.
// Lanes outside `mask` leave at once (legal: nobody waits for them).
extern "C" __global__ void shfl_float(float* __restrict__ out, const float* __restrict__ x,
                                      const int* __restrict__ arg, int mode, int width, unsigned int mask)
{
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (!((mask >> (threadIdx.x & 31)) & 1u)) return;
    const float v = x[t];
    float r;
    if (mode == 0) r = __shfl_sync(mask, v, arg[t], width);
    else if (mode == 1) r = __shfl_up_sync(mask, v, (unsigned int)arg[t], width);
    else if (mode == 2) r = __shfl_down_sync(mask, v, (unsigned int)arg[t], width);
    else r = __shfl_xor_sync(mask, v, arg[t], width);
    out[t] = r;
}

extern "C" __global__ void shfl_int(int* __restrict__ out, unsigned int* __restrict__ out_u,
                                    const int* __restrict__ x, const int* __restrict__ arg, int mode, int width)
{
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int v = x[t];
    const unsigned int u = (unsigned int)x[t] ^ 0x80000000u;
    if (mode == 0) { out[t] = __shfl_sync(0xffffffffu, v, arg[t], width); out_u[t] = __shfl_sync(0xffffffffu, u, arg[t], width); }
    else if (mode == 1) { out[t] = __shfl_up_sync(0xffffffffu, v, arg[t], width); out_u[t] = __shfl_up_sync(0xffffffffu, u, arg[t], width); }
    else if (mode == 2) { out[t] = __shfl_down_sync(0xffffffffu, v, arg[t], width); out_u[t] = __shfl_down_sync(0xffffffffu, u, arg[t], width); }
    else { out[t] = __shfl_xor_sync(0xffffffffu, v, arg[t], width); out_u[t] = __shfl_xor_sync(0xffffffffu, u, arg[t], width); }
}

extern "C" __global__ void votes(unsigned int* __restrict__ out, const int* __restrict__ pred, unsigned int mask)
{
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (!((mask >> (threadIdx.x & 31)) & 1u)) return;
    out[3 * t] = __ballot_sync(mask, pred[t]);
    out[3 * t + 1] = (unsigned int)__any_sync(mask, pred[t]);
    out[3 * t + 2] = (unsigned int)__all_sync(mask, pred[t]);
}

// Tree reduction over each warp; lane 0 writes the warp's sum.
extern "C" __global__ void warp_sum(float* __restrict__ out, const float* __restrict__ x, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if ((threadIdx.x & 31) == 0) out[i / 32] = v;
}

// Each lane reads its right neighbour's shared-memory slot after __syncwarp.
extern "C" __global__ void syncwarp_rotate(float* __restrict__ out, const float* __restrict__ x)
{
    __shared__ float s[64];
    const int t = threadIdx.x;
    s[t] = x[blockIdx.x * 64 + t] * 2.0f;
    __syncwarp();
    out[blockIdx.x * 64 + t] = s[(t & ~31) | ((t + 1) & 31)];
}

// ---- misuse: every one must be reported -------------------------------------------------
extern "C" __global__ void mismatched_mask(float* __restrict__ out)
{
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int mask = lane < 16 ? 0xffffffffu : 0xffff0000u;
    out[threadIdx.x] = __shfl_sync(mask, (float)lane, 0);
}

extern "C" __global__ void mismatched_operation(float* __restrict__ out)
{
    const unsigned int lane = threadIdx.x & 31;
    if (lane & 1u) out[threadIdx.x] = (float)__ballot_sync(0xffffffffu, 1);
    else out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)lane, 1);
}

extern "C" __global__ void early_exit(float* __restrict__ out, int leaver)
{
    const int lane = threadIdx.x & 31;
    if (lane == leaver) return;
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (float)lane, 0);
}

extern "C" __global__ void collective_vs_barrier(float* __restrict__ out)
{
    if (threadIdx.x == 0) __syncthreads();
    else out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 0);
}

extern "C" __global__ void lane_not_in_mask(float* __restrict__ out)
{
    const unsigned int lane = threadIdx.x & 31;
    out[threadIdx.x] = __shfl_sync(1u << ((lane + 1) & 31), 1.0f, 0);
}

extern "C" __global__ void bad_width(float* __restrict__ out)
{
    out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 0, 3);
}

// A full mask in a block of 48 threads: warp 1 has only 16 lanes.
extern "C" __global__ void mask_beyond_block(float* __restrict__ out)
{
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}
"""


@pytest.fixture(scope="module")
def warp_launcher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warp_kernels")
    (folder / "warp_test.cu").write_text(WARP_KERNELS)
    return EmulatedLauncher(kernel_folder=folder)


def shuffle_source(lane: np.ndarray, arg: np.ndarray, mode: int, width: int) -> np.ndarray:
    """The lane each lane reads, by the CUDA C++ Programming Guide's description (delta < 32)."""
    base = (lane // width) * width
    if mode == 0:  # idx: lane arg (mod width) of the own segment
        return base + arg % width
    if mode == 1:  # up: lane - delta unless that leaves the segment
        return np.where(lane % width >= arg, lane - arg, lane)
    if mode == 2:  # down: lane + delta unless that leaves the segment
        return np.where(lane % width + arg < width, lane + arg, lane)
    target = lane ^ arg  # xor: lanes of later segments are out of reach
    return np.where(target < base + width, target, lane)


def shuffle_model(x: np.ndarray, arg: np.ndarray, mode: int, width: int, mask: int) -> np.ndarray:
    """Per warp of 32: the shuffled values; NaN where the source lane is outside the mask
    (undefined in CUDA; the emulator's poison), and where the lane itself left."""
    out = np.full_like(x, np.nan)
    lanes = np.arange(32)
    active = (mask >> lanes) & 1 == 1
    for w in range(x.size // 32):
        src = shuffle_source(lanes, arg[32 * w : 32 * w + 32], mode, width)
        values = x[32 * w + src]
        values[~active[src]] = np.nan
        out[32 * w : 32 * w + 32][active] = values[active]
    return out


MASKS = [FULL, 0x0000FFFF, 0xF0F0F0F0, 0x80000001, 0x00000004]


@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["idx", "up", "down", "xor"])
@pytest.mark.parametrize("width", [32, 16, 8, 4, 2, 1])
def test_float_shuffles_match_the_model(warp_launcher, mode, width):
    rng = np.random.default_rng(mode * 64 + width)
    n = 128  # 2 blocks x 2 warps
    x = rng.standard_normal(n).astype(np.float32)
    for mask in MASKS:
        if mode == 0:
            arg = rng.integers(-40, 40, n).astype(np.int32)  # any int; only its low bits count
        elif mode == 3:
            arg = np.full(n, rng.integers(0, 32), np.int32)
        else:
            arg = np.full(n, rng.integers(0, 32), np.int32)
        out = np.full(n, np.nan, np.float32)
        warp_launcher.launch("shfl_float", (2,), (64,),
                             (out, x, arg, np.int32(mode), np.int32(width), np.uint32(mask)))
        np.testing.assert_array_equal(out, shuffle_model(x, arg, mode, width, mask), err_msg=f"mask {mask:#x}")


@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["idx", "up", "down", "xor"])
def test_int_and_unsigned_shuffles_keep_all_32_bits(warp_launcher, mode):
    rng = np.random.default_rng(10 + mode)
    n = 64
    x = rng.integers(-(2**31), 2**31 - 1, n).astype(np.int32)  # not representable as float32
    arg = np.full(n, 5 if mode else 0, np.int32) if mode else rng.integers(0, 32, n).astype(np.int32)
    for width in (32, 8):
        out = np.zeros(n, np.int32)
        out_u = np.zeros(n, np.uint32)
        warp_launcher.launch("shfl_int", (1,), (64,), (out, out_u, x, arg, np.int32(mode), np.int32(width)))
        src = np.concatenate([32 * w + shuffle_source(np.arange(32), arg[32 * w : 32 * w + 32], mode, width)
                              for w in range(2)])
        np.testing.assert_array_equal(out, x[src])
        np.testing.assert_array_equal(out_u, x[src].view(np.uint32) ^ np.uint32(0x80000000))


def test_ballot_any_all(warp_launcher):
    rng = np.random.default_rng(3)
    n = 128
    for mask in MASKS:
        for density in (0.0, 0.5, 1.0):
            pred = (rng.random(n) < density).astype(np.int32) * rng.integers(1, 9, n).astype(np.int32)
            out = np.full(3 * n, 0xDEAD, np.uint32)
            warp_launcher.launch("votes", (2,), (64,), (out, pred, np.uint32(mask)))
            out = out.reshape(n, 3)
            for w in range(n // 32):
                bits = sum(1 << j for j in range(32) if (mask >> j) & 1 and pred[32 * w + j])
                for j in range(32):
                    got = tuple(out[32 * w + j])
                    if (mask >> j) & 1:
                        assert got == (bits, int(bits != 0), int(bits == mask)), (mask, w, j)
                    else:
                        assert got == (0xDEAD,) * 3


def test_warp_reduction_matches_the_same_tree_in_numpy(warp_launcher):
    rng = np.random.default_rng(4)
    n = 200  # the last warp is partly padding
    x = rng.standard_normal(n).astype(np.float32)
    blocks = 2
    out = np.zeros(blocks * 128 // 32, np.float32)
    warp_launcher.launch("warp_sum", (blocks,), (128,), (out, x, np.int32(n)))
    v = np.zeros(blocks * 128, np.float32)
    v[:n] = x
    v = v.reshape(-1, 32)
    for offset in (16, 8, 4, 2, 1):
        shifted = np.concatenate([v[:, offset:], v[:, 32 - offset :]], axis=1)  # out of range: own value
        v = v + shifted
    np.testing.assert_array_equal(out, v[:, 0])
    np.testing.assert_allclose(out[: n // 32 + 1].sum(), x.sum(), rtol=1e-5)


def test_syncwarp_orders_shared_memory(warp_launcher):
    x = np.arange(128, dtype=np.float32)
    out = np.zeros(128, np.float32)
    warp_launcher.launch("syncwarp_rotate", (2,), (64,), (out, x))
    lanes = np.arange(64)
    want = np.concatenate([2 * x[64 * b + ((lanes & ~31) | ((lanes + 1) & 31))] for b in range(2)])
    np.testing.assert_array_equal(out, want)


def test_the_scan_marks_warp_kernels_for_fibers(warp_launcher):
    assert warp_launcher.index["warp_sum"].uses_barriers
    assert warp_launcher.index["syncwarp_rotate"].uses_barriers
    assert not sources.kernel_index(sources.read_sources())["relu_forward"].uses_barriers


def _child(conn, folder, name, grid, block, args):
    try:
        EmulatedLauncher(kernel_folder=folder).launch(name, grid, block, args)
        conn.send(None)
    except BaseException as error:  # noqa: BLE001 - report any failure to the parent
        conn.send(f"{type(error).__name__}: {error}" if isinstance(error, RuntimeError) else traceback.format_exc())


def launch_expecting_error(launcher, name, grid, block, args, seconds=60.0) -> str:
    """Launch in a forked child so a hang fails the test instead of stalling the suite; the error text."""
    launcher.function(name)  # build in the parent: the child only runs
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_child, args=(child, launcher.kernel_folder, name, grid, block, args))
    process.start()
    if not parent.poll(seconds):
        process.kill()
        process.join()
        pytest.fail(f"{name} hung for {seconds} s instead of raising")
    message = parent.recv()
    process.join()
    assert message is not None, f"{name} ran without an error"
    return message


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to guard against hangs")
@pytest.mark.parametrize(
    "name, block, extra, pattern",
    [
        ("mismatched_mask", 32, (), r"lanes of warp 0 of block \(0,0,0\) disagree: lane 16 calls __shfl_sync "
                                    r"\(mask 0xffff0000.*lane 0 waits in __shfl_sync \(mask 0xffffffff"),
        ("mismatched_operation", 32, (), r"disagree: lane 1 calls __ballot_sync .* lane 0 waits in __shfl_xor_sync"),
        ("early_exit", 64, (np.int32(5),), r"lane 5 of warp 0 of block \(0,0,0\) exited while lane 0 waits for it "
                                           r"in __shfl_sync"),
        ("early_exit", 64, (np.int32(0),), r"__shfl_sync in lane 1 of warp 0 .* names lane 0, which has already exited"),
        ("collective_vs_barrier", 32, (), r"__shfl_sync in warp 0 of block \(0,0,0\): lane 1 waits .* for lanes 0, "
                                          r"which wait at __syncthreads"),
        ("lane_not_in_mask", 32, (), r"mask 0x00000002 does not name the calling lane"),
        ("bad_width", 32, (), r"__shfl_sync: width 3 is not a power of two"),
        ("mask_beyond_block", 48, (), r"names lanes that do not exist \(the block has 48 threads\)"),
    ],
)
def test_misuse_is_reported_not_hung(warp_launcher, name, block, extra, pattern):
    import re

    message = launch_expecting_error(warp_launcher, name, (2,), (block,), (np.zeros(block, np.float32), *extra))
    assert message.startswith(f"RuntimeError: emulated kernel {name}: "), message
    assert re.search(pattern, message), message


def test_the_launcher_survives_a_faulting_kernel(warp_launcher):
    """After an error the next launch (same process, same library) runs normally."""
    with pytest.raises(RuntimeError, match="disagree"):
        warp_launcher.launch("mismatched_mask", (1,), (32,), (np.zeros(32, np.float32),))
    x = np.ones(64, np.float32)
    out = np.zeros(2, np.float32)
    warp_launcher.launch("warp_sum", (1,), (64,), (out, x, np.int32(64)))
    np.testing.assert_array_equal(out, [32.0, 32.0])


def test_the_ucontext_fallback_gives_the_same_results(tmp_path):
    (tmp_path / "warp_test.cu").write_text(WARP_KERNELS)
    launcher = EmulatedLauncher(kernel_folder=tmp_path, cxx_flags=("-DGPUCNN_EMU_UCONTEXT",))
    x = np.random.default_rng(5).standard_normal(256).astype(np.float32)
    got, want = np.zeros(8, np.float32), np.zeros(8, np.float32)
    launcher.launch("warp_sum", (2,), (128,), (got, x, np.int32(256)))
    EmulatedLauncher(kernel_folder=tmp_path).launch("warp_sum", (2,), (128,), (want, x, np.int32(256)))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(RuntimeError, match="exited while lane 0 waits"):
        launcher.launch("early_exit", (1,), (32,), (np.zeros(32, np.float32), np.int32(3)))
