"""Launchers of the tensor-core kernels in kernels/conv2d_tc.cu (``tf32`` and ``bf16``).

Each function takes the ``launcher`` (``CudaLauncher`` with cupy arrays, or
``EmulatedLauncher`` with numpy arrays) and the array module ``xp`` of those arrays, checks
its inputs, and returns a new float32 array. Inputs and outputs are float32 in every
precision: the kernels round the GEMM operands (TF32 with cvt.rna, or bf16 with round to
nearest even) on their way into the mma fragments and accumulate in fp32.

Shapes (NCHW): x (N, C, H, W), w (O, C, KH, KW), b (O,), y and dy (N, O, OH, OW).
``stride`` and ``padding`` are an int or an (h, w) pair.

backward_filter (and gemm without bias/ReLU) split the reduction over gridDim.z when the
output tiles alone would not fill the device; the partial sums are added by
``splitk_reduce`` (conv2d_igemm.cu) in split order, so results do not depend on timing.
"""

from __future__ import annotations

import math

import numpy as np

PRECISIONS = ("tf32", "bf16")
BLOCK_M = 64
BLOCK_N = 64
BLOCK_K = 16
THREADS = 128
MAX_GRID_YZ = 65535
MIN_CHUNKS_PER_SPLIT = 8  # a split shorter than this many K chunks costs more to reduce than it saves
REDUCE_THREADS = 256


def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or an (h, w) pair, got {value!r}") from None
    return a, b


def _precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"tensor-core precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _float32(xp, op: str, name: str, a, ndim: int):
    """``a`` as a C-contiguous float32 array of ``ndim`` dimensions (no silent dtype casts)."""
    if a.dtype != np.float32:
        raise TypeError(f"{op}: {name} must be float32 (tf32/bf16 round inside the kernel), got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a)


def _geometry(op: str, x_shape, w_shape, stride, padding):
    n, c, h, w = (int(v) for v in x_shape)
    o, wc, kh, kw = (int(v) for v in w_shape)
    if wc != c:
        raise ValueError(f"{op}: input has {c} channels but the filter expects {wc}")
    sh, sw = _pair(stride, f"{op}: stride")
    ph, pw = _pair(padding, f"{op}: padding")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"{op}: stride must be >= 1 and padding >= 0, got stride {(sh, sw)} padding {(ph, pw)}")
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: input {h}x{w} (padding {ph},{pw}) is smaller than the kernel {kh}x{kw}")
    return n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow


def _i32(*values) -> list:
    return [np.int32(v) for v in values]


def _grid(rows: int, cols: int, splits: int = 1) -> tuple[int, int, int]:
    grid_y = math.ceil(cols / BLOCK_N)
    if grid_y > MAX_GRID_YZ:
        raise ValueError(f"tensor-core GEMM: {cols} output columns exceed the grid limit of {MAX_GRID_YZ * BLOCK_N}")
    return math.ceil(rows / BLOCK_M), grid_y, splits


def choose_splits(launcher, rows: int, cols: int, k: int, splits: int | None = None) -> int:
    """How many K splits a GEMM of (rows x cols) with reduction k gets.

    ``splits`` forces a count (clamped to [1, number of K chunks]); by default enough splits
    for about 4 blocks per multiprocessor, each at least MIN_CHUNKS_PER_SPLIT chunks long.
    """
    chunks = max(1, math.ceil(k / BLOCK_K))
    if splits is not None:
        if int(splits) < 1:
            raise ValueError(f"splits must be >= 1, got {splits}")
        return int(min(int(splits), chunks, MAX_GRID_YZ))
    tiles = math.ceil(rows / BLOCK_M) * math.ceil(cols / BLOCK_N)
    wanted = math.ceil(4 * getattr(launcher, "multiprocessor_count", 1) / tiles)
    return int(max(1, min(wanted, chunks // MIN_CHUNKS_PER_SPLIT, MAX_GRID_YZ)))


def _reduce_splits(launcher, out, partial, splits: int) -> None:
    count = out.size
    grid = max(1, min(65535, math.ceil(count / REDUCE_THREADS)))
    launcher.launch("splitk_reduce", (grid,), (REDUCE_THREADS,), (out, partial, *_i32(splits, count)))


def conv2d_forward_tc(launcher, xp, x, w, b, stride, padding, precision: str, relu: bool = False):
    """y (N, O, OH, OW) = cross-correlation of x with w on tensor cores, + b, ReLU if ``relu``."""
    op = "conv2d_forward_tc"
    prec = _precision(precision)
    x, w = _float32(xp, op, "x", x, 4), _float32(xp, op, "w", w, 4)
    if b is not None:
        b = _float32(xp, op, "b", b, 1)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"{op}: bias has {b.shape[0]} entries, expected {w.shape[0]} (one per output channel)")
    g = _geometry(op, x.shape, w.shape, stride, padding)
    n, o, oh, ow = g[0], g[4], g[11], g[12]
    y = xp.empty((n, o, oh, ow), dtype=np.float32)
    launcher.launch(f"conv2d_forward_tc_{prec}", _grid(n * oh * ow, o), (THREADS,),
                    (y, x, w, b if b is not None else w, np.int32(b is not None), np.int32(bool(relu)), *_i32(*g)))
    return y


def conv2d_backward_data_tc(launcher, xp, dy, w, x_shape, stride, padding, precision: str):
    """dx (N, C, H, W): dy (N, O, OH, OW) through the 180-degree rotated filter, on tensor cores."""
    op = "conv2d_backward_data_tc"
    prec = _precision(precision)
    dy, w = _float32(xp, op, "dy", dy, 4), _float32(xp, op, "w", w, 4)
    g = _geometry(op, x_shape, w.shape, stride, padding)
    n, c, h, wd, o, oh, ow = g[0], g[1], g[2], g[3], g[4], g[11], g[12]
    if tuple(dy.shape) != (n, o, oh, ow):
        raise ValueError(f"{op}: dy has shape {tuple(dy.shape)}, expected {(n, o, oh, ow)}")
    dx = xp.empty((n, c, h, wd), dtype=np.float32)
    launcher.launch(f"conv2d_backward_data_tc_{prec}", _grid(n * h * wd, c), (THREADS,), (dx, dy, w, *_i32(*g)))
    return dx


def conv2d_backward_filter_tc(launcher, xp, dy, x, w_shape, stride, padding, precision: str,
                              splits: int | None = None):
    """dw (O, C, KH, KW): valid correlation of the zero-padded x with dy, on tensor cores.

    The reduction over N*OH*OW is split ``splits`` ways (default: ``choose_splits``).
    """
    op = "conv2d_backward_filter_tc"
    prec = _precision(precision)
    dy, x = _float32(xp, op, "dy", dy, 4), _float32(xp, op, "x", x, 4)
    g = _geometry(op, x.shape, w_shape, stride, padding)
    n, c, o, kh, kw, oh, ow = g[0], g[1], g[4], g[5], g[6], g[11], g[12]
    if tuple(dy.shape) != (n, o, oh, ow):
        raise ValueError(f"{op}: dy has shape {tuple(dy.shape)}, expected {(n, o, oh, ow)}")
    cols = c * kh * kw
    count = choose_splits(launcher, o, cols, n * oh * ow, splits)
    dw = xp.empty((o, c, kh, kw), dtype=np.float32)
    partial = dw if count == 1 else xp.empty((count, o, cols), dtype=np.float32)
    launcher.launch(f"conv2d_backward_filter_tc_{prec}", _grid(o, cols, count), (THREADS,),
                    (partial, dy, x, *_i32(*g)))
    if count > 1:
        _reduce_splits(launcher, dw, partial, count)
    return dw


def gemm_tc(launcher, xp, a, b, precision: str, trans_a: bool = False, trans_b: bool = False,
            bias=None, relu: bool = False, splits: int | None = None):
    """c (M, NN) = op(a) @ op(b) (+ bias (NN,), ReLU if ``relu``) on tensor cores.

    op(a) is a (M, K), or a.T when ``trans_a`` (a stored (K, M)); op(b) is b (K, NN), or b.T
    when ``trans_b`` (b stored (NN, K)). Dense layers: y = gemm_tc(x, w, trans_b=True,
    bias=b); dx = gemm_tc(dy, w); dw = gemm_tc(dy, x, trans_a=True). The K split
    (``splits``, default ``choose_splits``) is used only without bias and ReLU, which the
    split kernels cannot apply to partial sums.
    """
    op = "gemm_tc"
    prec = _precision(precision)
    a, b = _float32(xp, op, "a", a, 2), _float32(xp, op, "b", b, 2)
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    nn, kb = (b.shape[0], b.shape[1]) if trans_b else (b.shape[1], b.shape[0])
    if k != kb:
        raise ValueError(f"{op}: op(a) is {m}x{k} but op(b) is {kb}x{nn}; the inner sizes must agree")
    if m < 1 or nn < 1 or k < 1:
        raise ValueError(f"{op}: empty operand (op(a) {m}x{k}, op(b) {kb}x{nn})")
    if bias is not None:
        bias = _float32(xp, op, "bias", bias, 1)
        if bias.shape[0] != nn:
            raise ValueError(f"{op}: bias has {bias.shape[0]} entries, expected {nn} (one per output column)")
    fused = bias is not None or bool(relu)
    count = 1 if fused else choose_splits(launcher, m, nn, k, splits)
    c = xp.empty((m, nn), dtype=np.float32)
    partial = c if count == 1 else xp.empty((count, m, nn), dtype=np.float32)
    launcher.launch(f"gemm_tc_{prec}", _grid(m, nn, count), (THREADS,),
                    (partial, a, b, bias if bias is not None else a, np.int32(bias is not None),
                     np.int32(bool(relu)), *_i32(m, nn, k, bool(trans_a), bool(trans_b))))
    if count > 1:
        _reduce_splits(launcher, c, partial, count)
    return c


def dense_forward_tc(launcher, xp, x, w, b, precision: str, relu: bool = False):
    """y (N, O) = x (N, I) @ w (O, I).T + b (O,) (b may be None), ReLU if ``relu``, on tensor cores."""
    return gemm_tc(launcher, xp, x, w, precision, trans_b=True, bias=b, relu=relu)


def dense_backward_tc(launcher, xp, dy, x, w, precision: str):
    """(dx (N, I), dw (O, I)) for dy (N, O) on tensor cores; db stays the channel sum of dy."""
    return gemm_tc(launcher, xp, dy, w, precision), gemm_tc(launcher, xp, dy, x, precision, trans_a=True)
