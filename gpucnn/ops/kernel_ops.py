"""Every op of ``gpucnn.ops`` backed by the hand-written kernels in kernels/*.cu.

``KernelOps(launcher, xp)`` runs on the GPU (``CudaLauncher``, xp = cupy) or on the CPU
emulation (``EmulatedLauncher``, xp = numpy) with identical Python code. Signatures and
semantics match ``gpucnn.ops.numpy_ops``; float32 only (float64 raises TypeError
pointing at the numpy backend). Nothing here copies to the host: losses come back as
0-d device arrays reduced on the device.

Convolution variants (``ops.variants``, ``ops.set_variant(op, name)``):
  conv2d_forward          auto (default) | im2col_gemm | igemm | direct
  conv2d_backward_data    auto (default) | gemm_col2im | igemm | direct
  conv2d_backward_filter  auto (default) | im2col_gemm | igemm | direct
  conv2d_backward_bias    channel_sum
``auto`` on the cuda backend times the variants once per shape on first use and keeps the
fastest (gpucnn.cuda.autotune, as cudnn.benchmark does). Elsewhere (the emulator, whose
timings say nothing about a GPU) ``auto`` picks per call from the GEMM shape, by what the
H100 benchmark measured
(benchmarks/results/): thin GEMMs (fewer than 32 output channels or a reduction
C*KH*KW under 64, as in LeNet-5) go to the tiled kernels (``direct`` forward, ``igemm``
backward), where cuBLAS cannot amortise the column buffer; wider ones go to cuBLAS.
``im2col_gemm``/``gemm_col2im`` lower to a column buffer (kernels) and multiply with
xp.matmul (cuBLAS on the GPU), processing the batch in chunks that keep the buffer under
``col_buffer_bytes``; ``igemm`` are the shared-memory tiled implicit-GEMM kernels (no
buffer); ``direct`` the textbook formulas.

Precision (``ops.precision``, set by ``Backend.set_precision``): in ``tf32`` and ``bf16``
the five GEMM ops (conv2d forward, backward-data and backward-filter, dense forward and
backward) run the tensor-core kernels of kernels/conv2d_tc.cu through gpucnn.cuda.tc_ops,
whatever variant is set; the bias gradients stay on ``channel_sum`` in fp32. ``fp32`` runs
the kernels above (the only ones on GPUs before sm_80).

Capturable mode (``ops.capturable = True``, set by the Trainer for a CUDA-graph step): no
library GEMM anywhere, because CuPy refuses cuBLAS under stream capture. Convolution
``auto`` (and an explicitly set ``im2col_gemm``/``gemm_col2im``) runs ``igemm`` instead,
the autotuner only times the raw-kernel variants, and the fp32 dense GEMMs run as 1x1
convolutions through the ``igemm`` kernels (x (N, I) as (N, I, 1, 1), W (O, I) as
(O, I, 1, 1)): the same products summed in another order, so they agree with xp.matmul to
float32 rounding, not bit for bit. tf32/bf16 already use the tensor-core GEMMs.

Per-step scalars: ``sgd_update``'s ``lr`` and ``dropout_forward``'s ``seed`` are either a
number (passed by value: the eager path) or a 1-element device array (float32 / uint32),
read by the kernel (``sgd_update_dev``, ``dropout_forward_dev``) so that a captured graph
sees what the host wrote before each replay.
"""

from __future__ import annotations

import math

import numpy as np

from gpucnn.cuda import autotune, tc_ops
from gpucnn.ops import ACTIVATIONS, gemm_relu
from gpucnn.ops.np_norm import bn_activation_code

THREADS = 256
MAX_GRID = 65535
IGEMM_TILE = 64
IGEMM_TILE_K = 16

# Conv variants that multiply through xp.matmul (cuBLAS on the GPU): never in capturable mode.
LIBRARY_VARIANTS = frozenset({"im2col_gemm", "gemm_col2im"})

VARIANTS = {
    "conv2d_forward": ("auto", "im2col_gemm", "igemm", "direct"),
    "conv2d_backward_data": ("auto", "gemm_col2im", "igemm", "direct"),
    "conv2d_backward_filter": ("auto", "im2col_gemm", "igemm", "direct"),
    "conv2d_backward_bias": ("channel_sum",),
}


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _i32(*values) -> list:
    return [np.int32(v) for v in values]


def _device_scalar(op: str, name: str, value, dtype) -> bool:
    """True when ``value`` is a 1-element array (read by the kernel), False for a number."""
    if not hasattr(value, "shape"):
        return False
    if value.size != 1 or value.dtype != dtype:
        raise TypeError(f"{op}: {name} as an array must hold one {np.dtype(dtype).name}, got "
                        f"{value.dtype} of shape {tuple(value.shape)}")
    return True


class KernelOps:
    """The ops of ``gpucnn.ops.ALL_OPS`` on kernels/*.cu, launched through ``launcher``."""

    def __init__(self, launcher, xp, col_buffer_bytes: int = 256 * 2**20):
        self.launcher = launcher
        self.xp = xp
        self.col_buffer_bytes = col_buffer_bytes
        self._variant = {op: names[0] for op, names in VARIANTS.items()}
        # ``auto`` by measurement where timings mean something (CuPy), else the rule in _pick
        self.autotune = autotune.for_array_module(xp)
        autotune.install(self, VARIANTS)
        self.reduction_threads = getattr(launcher, "reduction_threads", THREADS)
        self.multiprocessor_count = getattr(launcher, "multiprocessor_count", 1)
        self.min_chunks_per_split = 8
        # Blocks a channel sum aims for: enough to fill the device when channels are few.
        self.channel_sum_blocks = 4 * self.multiprocessor_count
        # BatchNorm reductions: blocks to aim for over all channels (several waves on the
        # device), the fewest values one block reduces (amortizes its tree and the combine),
        # and a fixed chunk size that overrides both (tests force many chunks at tiny shapes).
        self.bn_target_blocks = 8 * self.multiprocessor_count
        self.bn_min_chunk = 2048
        self.bn_chunk = None
        # Bit-identical results from run to run (training.deterministic): max-pool backward
        # over overlapping windows becomes a gather instead of an atomicAdd scatter.
        self.deterministic = False
        # GEMM precision: fp32 (the kernels above), or tf32/bf16 (the tensor-core kernels).
        self.precision = "fp32"
        # No library (cuBLAS) call in any op: what a CUDA-graph step needs (module doc).
        self.capturable = False

    @property
    def excluded_variants(self) -> frozenset:
        """Variants ``auto`` must not pick (and the tuner must not time) in the current mode."""
        return LIBRARY_VARIANTS if self.capturable else frozenset()

    # ---- variants ---------------------------------------------------------------------
    @property
    def variants(self) -> dict[str, tuple[str, ...]]:
        """Op name -> the implementations it can use (first listed: the default)."""
        return dict(VARIANTS)

    def variant(self, op: str) -> str:
        """The implementation ``op`` uses now."""
        return self._variant[op]

    def set_variant(self, op: str, variant: str) -> None:
        """Choose the implementation of a convolution op (see ``variants``)."""
        if op not in VARIANTS:
            raise ValueError(f"op {op!r} has no variants; ops with variants: {', '.join(VARIANTS)}")
        if variant not in VARIANTS[op]:
            raise ValueError(f"unknown variant {variant!r} for {op}; expected one of {', '.join(VARIANTS[op])}")
        self._variant[op] = variant

    # ---- launch helpers ---------------------------------------------------------------
    def _float32(self, op: str, *arrays):
        """Each array as a C-contiguous float32 array on this backend; float64 is refused."""
        out = []
        for a in arrays:
            if a.dtype != np.float32:
                raise TypeError(
                    f"{op}: the kernel backends compute in float32; got {a.dtype} "
                    "(use the numpy backend for float64 gradient checks)"
                )
            out.append(a if a.flags.c_contiguous else self.xp.ascontiguousarray(a))
        return out

    def _launch_flat(self, name: str, n: int, *args) -> None:
        grid = max(1, min(MAX_GRID, math.ceil(n / THREADS)))
        self.launcher.launch(name, (grid,), (THREADS,), args)

    def _empty(self, shape):
        return self.xp.empty(shape, dtype=np.float32)

    def _unary(self, name: str, x):
        (x,) = self._float32(name, x)
        y = self._empty(x.shape)
        self._launch_flat(name, x.size, y, x, np.int32(x.size))
        return y

    def _binary_backward(self, name: str, dy, cached):
        dy, cached = self._float32(name, dy, cached)
        if dy.shape != cached.shape:
            raise ValueError(f"{name}: dy shape {dy.shape} differs from the cached array's {cached.shape}")
        dx = self._empty(dy.shape)
        self._launch_flat(name, dy.size, dx, dy, cached, np.int32(dy.size))
        return dx

    # ---- convolution ------------------------------------------------------------------
    @staticmethod
    def _conv_geometry(op, x_shape, w_shape, stride, padding):
        n, c, h, w = (int(v) for v in x_shape)
        o, wc, kh, kw = (int(v) for v in w_shape)
        if wc != c:
            raise ValueError(f"{op}: input has {c} channels but the filter expects {wc}")
        sh, sw = (int(s) for s in stride)
        ph, pw = (int(p) for p in padding)
        oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        if oh < 1 or ow < 1:
            raise ValueError(f"{op}: input {h}x{w} (padding {ph},{pw}) is smaller than the kernel {kh}x{kw}")
        return n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow

    def _pick(self, op: str, out_channels: int, reduction: int) -> str:
        """The variant to run for ``op``; resolves ``auto`` from the GEMM's M and K sizes."""
        variant = self._variant[op]
        if variant == "auto":
            if out_channels < 32 or reduction < 64:
                rule = "direct" if op == "conv2d_forward" else "igemm"
            else:
                rule = VARIANTS[op][1]
            variant = self.autotune.resolve(op, rule)  # the measured choice of this call, if tuned
        if variant in self.excluded_variants:
            return "igemm"  # capturable mode: the raw-kernel GEMM instead of cuBLAS
        return variant

    @property
    def _tensor_cores(self) -> bool:
        """True when the GEMM ops go to the tensor-core kernels (precision tf32 or bf16)."""
        return self.precision in tc_ops.PRECISIONS

    def _chunk(self, n: int, per_image_floats: int) -> int:
        return max(1, min(n, self.col_buffer_bytes // max(1, 4 * per_image_floats)))

    def conv2d_forward(self, x, w, b, stride, padding, activation=None):
        """y (N, O, OH, OW) = act(cross-correlation of x (N, C, H, W) with w (O, C, KH, KW) + b).

        The fused ReLU is the epilogue of the tensor-core, igemm and direct kernels; after
        cuBLAS (im2col_gemm) it is one more elementwise launch, as an unfused ReLU layer's.
        """
        relu = gemm_relu("conv2d_forward", activation)
        x, w = self._float32("conv2d_forward", x, w)
        if b is not None:
            (b,) = self._float32("conv2d_forward", b)
        g = self._conv_geometry("conv2d_forward", x.shape, w.shape, stride, padding)
        if self._tensor_cores:
            return tc_ops.conv2d_forward_tc(self.launcher, self.xp, x, w, b, stride, padding, self.precision,
                                            relu=relu)
        n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow = g
        y = self._empty((n, o, oh, ow))
        variant = self._pick("conv2d_forward", o, c * kh * kw)
        bias = b if b is not None else w
        if variant == "direct":
            self._launch_flat("conv2d_forward_direct", y.size, y, x, w, bias, np.int32(b is not None),
                              np.int32(relu), *_i32(*g))
        elif variant == "igemm":
            self._forward_igemm(y, x, w, b, g, relu)
        else:
            k, p = c * kh * kw, oh * ow
            w2 = w.reshape(o, k)
            step = self._chunk(n, k * p)
            for start in range(0, n, step):
                nb = min(step, n - start)
                col = self._empty((nb, k, p))
                self._launch_flat("im2col", col.size, col, x[start : start + nb],
                                  *_i32(nb, c, h, wd, kh, kw, sh, sw, ph, pw, oh, ow, k * p, p))
                self.xp.matmul(w2, col, out=y[start : start + nb].reshape(nb, o, p))
            if b is not None:
                self._launch_flat("add_channel_bias", y.size, y, b, *_i32(n, o, oh * ow))
            if relu:
                y = self.relu_forward(y)
        return y

    def _forward_igemm(self, y, x, w, b, g, relu: bool = False) -> None:
        """y (N, O, OH, OW) := conv of x with w (+ b, ReLU) by the tiled implicit GEMM; g: _conv_geometry."""
        n, o, oh, ow = g[0], g[4], g[11], g[12]
        grid = (math.ceil(n * oh * ow / IGEMM_TILE), math.ceil(o / IGEMM_TILE))
        self.launcher.launch("conv2d_forward_igemm", grid, (THREADS,),
                             (y, x, w, b if b is not None else w, np.int32(b is not None), np.int32(relu),
                              *_i32(*g)))

    def _backward_data_igemm(self, dx, dy, w, g) -> None:
        """dx (N, C, H, W) := dy through the rotated filter by the tiled implicit GEMM."""
        n, c, h, wd = g[:4]
        grid = (math.ceil(n * h * wd / IGEMM_TILE), math.ceil(c / IGEMM_TILE))
        self.launcher.launch("conv2d_backward_data_igemm", grid, (THREADS,), (dx, dy, w, *_i32(*g)))

    def _backward_filter_igemm(self, dw, dy, x, g) -> None:
        """dw (O, C, KH, KW) := correlation of x with dy by the tiled implicit GEMM (split over N*P)."""
        n, c, o, kh, kw, oh, ow = g[0], g[1], g[4], g[5], g[6], g[11], g[12]
        k, p = c * kh * kw, oh * ow
        grid_x, grid_y = math.ceil(k / IGEMM_TILE), math.ceil(o / IGEMM_TILE)
        splits = self._splitk(grid_x * grid_y, math.ceil(n * p / IGEMM_TILE_K))
        partial = dw if splits == 1 else self._empty((splits, o, k))
        self.launcher.launch("conv2d_backward_filter_igemm", (grid_x, grid_y, splits), (THREADS,),
                             (partial, dy, x, *_i32(*g)))
        if splits > 1:
            self._launch_flat("splitk_reduce", dw.size, dw, partial, *_i32(splits, dw.size))

    def conv2d_backward_data(self, dy, w, x_shape, stride, padding):
        """dx (N, C, H, W): dy (N, O, OH, OW) through the 180-degree rotated filter."""
        dy, w = self._float32("conv2d_backward_data", dy, w)
        g = self._conv_geometry("conv2d_backward_data", x_shape, w.shape, stride, padding)
        n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow = g
        if tuple(dy.shape) != (n, o, oh, ow):
            raise ValueError(f"conv2d_backward_data: dy has shape {dy.shape}, expected {(n, o, oh, ow)}")
        if self._tensor_cores:
            return tc_ops.conv2d_backward_data_tc(self.launcher, self.xp, dy, w, x_shape, stride, padding,
                                                  self.precision)
        dx = self._empty((n, c, h, wd))
        variant = self._pick("conv2d_backward_data", o, c * kh * kw)
        if variant == "direct":
            self._launch_flat("conv2d_backward_data_direct", dx.size, dx, dy, w, *_i32(*g))
        elif variant == "igemm":
            self._backward_data_igemm(dx, dy, w, g)
        else:
            k, p = c * kh * kw, oh * ow
            w2t = w.reshape(o, k).T
            step = self._chunk(n, k * p)
            for start in range(0, n, step):
                nb = min(step, n - start)
                dcol = self.xp.matmul(w2t, dy[start : start + nb].reshape(nb, o, p))
                self._launch_flat("col2im", nb * c * h * wd, dx[start : start + nb], dcol,
                                  *_i32(nb, c, h, wd, kh, kw, sh, sw, ph, pw, oh, ow, k * p, p))
        return dx

    def _splitk(self, tiles: int, chunks: int) -> int:
        wanted = math.ceil(4 * self.multiprocessor_count / tiles)
        return max(1, min(wanted, chunks // max(1, self.min_chunks_per_split), MAX_GRID))

    def conv2d_backward_filter(self, dy, x, w_shape, stride, padding):
        """dw (O, C, KH, KW): valid correlation of the zero-padded x with the delta map dy."""
        dy, x = self._float32("conv2d_backward_filter", dy, x)
        g = self._conv_geometry("conv2d_backward_filter", x.shape, w_shape, stride, padding)
        n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow = g
        if tuple(dy.shape) != (n, o, oh, ow):
            raise ValueError(f"conv2d_backward_filter: dy has shape {dy.shape}, expected {(n, o, oh, ow)}")
        if self._tensor_cores:
            return tc_ops.conv2d_backward_filter_tc(self.launcher, self.xp, dy, x, w_shape, stride, padding,
                                                    self.precision)
        k, p = c * kh * kw, oh * ow
        dw = self._empty((o, c, kh, kw))
        variant = self._pick("conv2d_backward_filter", o, k)
        if variant == "direct":
            self.launcher.launch("conv2d_backward_filter_direct", (dw.size,), (self.reduction_threads,),
                                 (dw, dy, x, *_i32(*g)))
        elif variant == "igemm":
            self._backward_filter_igemm(dw, dy, x, g)
        else:
            w2 = dw.reshape(o, k)
            step = self._chunk(n, k * p)
            for start in range(0, n, step):
                nb = min(step, n - start)
                col = self._empty((k, nb * p))
                self._launch_flat("im2col", col.size, col, x[start : start + nb],
                                  *_i32(nb, c, h, wd, kh, kw, sh, sw, ph, pw, oh, ow, p, nb * p))
                dyt = self.xp.ascontiguousarray(dy[start : start + nb].reshape(nb, o, p).transpose(1, 0, 2))
                part = self.xp.matmul(dyt.reshape(o, nb * p), col.T)
                if start == 0:
                    w2[...] = part
                else:
                    w2 += part
        return dw

    def conv2d_backward_bias(self, dy):
        """db (O,): dy (N, O, OH, OW) summed over batch and positions."""
        (dy,) = self._float32("conv2d_backward_bias", dy)
        n, o = dy.shape[:2]
        return self._channel_sum(dy, n, o, int(np.prod(dy.shape[2:], dtype=np.int64)))

    def _channel_sum(self, a, n: int, channels: int, p: int):
        """out (channels,): a viewed as (n, channels, p) summed over n and p, deterministically."""
        out = self._empty((channels,))
        threads = (self.reduction_threads,)
        groups = min(n, max(1, math.ceil(self.channel_sum_blocks / channels)))
        if groups == 1:
            self.launcher.launch("channel_sum", (channels,), threads, (out, a, *_i32(n, channels, p)))
            return out
        per_block = math.ceil(n / groups)
        groups = math.ceil(n / per_block)
        partial = self._empty((channels, groups))
        self.launcher.launch("channel_partial_sum", (channels, groups), threads,
                             (partial, a, *_i32(n, channels, p, per_block)))
        self.launcher.launch("channel_sum", (channels,), threads, (out, partial, *_i32(1, channels, groups)))
        return out

    # ---- pooling ----------------------------------------------------------------------
    def _pool_geometry(self, op, x_shape, kernel, stride, padding):
        n, c, h, w = (int(v) for v in x_shape)
        kh, kw = (int(v) for v in kernel)
        sh, sw = (int(v) for v in stride)
        ph, pw = (int(v) for v in padding)
        oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        if oh < 1 or ow < 1:
            raise ValueError(f"{op}: input {h}x{w} (padding {ph},{pw}) is smaller than the window {kh}x{kw}")
        return n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow

    def maxpool2d_forward(self, x, kernel, stride, padding):
        """(y (N, C, OH, OW), argmax int32 (N, C, OH, OW): flat h*W + w of each maximum)."""
        (x,) = self._float32("maxpool2d_forward", x)
        g = self._pool_geometry("maxpool2d_forward", x.shape, kernel, stride, padding)
        n, c, oh, ow = g[0], g[1], g[10], g[11]
        y = self._empty((n, c, oh, ow))
        argmax = self.xp.empty((n, c, oh, ow), dtype=np.int32)
        self._launch_flat("maxpool2d_forward", y.size, y, argmax, x, *_i32(*g))
        return y, argmax

    def maxpool2d_backward(self, dy, argmax, x_shape, kernel=None, stride=None, padding=None):
        """dx (N, C, H, W): every dy added at its window's argmax (overlaps add up).

        With the window geometry (kernel, stride, padding: (h, w) pairs) and overlapping
        windows, ``deterministic`` selects the gather kernel; without the geometry it selects
        the per-plane ordered scatter (same sums, slower). Otherwise the atomicAdd scatter
        runs, which is already exact when windows do not overlap (stride >= kernel).
        """
        (dy,) = self._float32("maxpool2d_backward", dy)
        if argmax.dtype != np.int32 or argmax.shape != dy.shape:
            raise ValueError(f"maxpool2d_backward: argmax must be int32 of shape {dy.shape}, got "
                             f"{argmax.dtype} {argmax.shape}")
        argmax = argmax if argmax.flags.c_contiguous else self.xp.ascontiguousarray(argmax)
        n, c, h, w = (int(v) for v in x_shape)
        geometry = None
        if kernel is not None:
            if stride is None or padding is None:
                raise ValueError("maxpool2d_backward: kernel, stride and padding go together; got only some")
            geometry = self._pool_geometry("maxpool2d_backward", x_shape, kernel, stride, padding)
            if tuple(dy.shape) != (n, c, geometry[10], geometry[11]):
                raise ValueError(f"maxpool2d_backward: dy has shape {dy.shape}, expected "
                                 f"{(n, c, geometry[10], geometry[11])}")
        overlapping = geometry is None or geometry[6] < geometry[4] or geometry[7] < geometry[5]
        planes, ohw = n * c, dy.shape[2] * dy.shape[3]
        if self.deterministic and overlapping and geometry is not None:
            dx = self._empty((n, c, h, w))
            self._launch_flat("maxpool2d_backward_gather", dx.size, dx, dy, argmax, *_i32(*geometry))
            return dx
        dx = self.xp.zeros((n, c, h, w), dtype=np.float32)
        if self.deterministic and overlapping:
            self._launch_flat("maxpool2d_backward_ordered", planes, dx, dy, argmax, *_i32(planes, h * w, ohw))
        else:
            self._launch_flat("maxpool2d_backward", dy.size, dx, dy, argmax, *_i32(planes, h * w, ohw))
        return dx

    def avgpool2d_forward(self, x, kernel, stride, padding):
        """y (N, C, OH, OW): zero-padded window sums divided by KH*KW."""
        (x,) = self._float32("avgpool2d_forward", x)
        g = self._pool_geometry("avgpool2d_forward", x.shape, kernel, stride, padding)
        y = self._empty((g[0], g[1], g[10], g[11]))
        self._launch_flat("avgpool2d_forward", y.size, y, x, *_i32(*g))
        return y

    def avgpool2d_backward(self, dy, x_shape, kernel, stride, padding):
        """dx (N, C, H, W): each dy / (KH*KW) spread over its window."""
        (dy,) = self._float32("avgpool2d_backward", dy)
        g = self._pool_geometry("avgpool2d_backward", x_shape, kernel, stride, padding)
        if tuple(dy.shape) != (g[0], g[1], g[10], g[11]):
            raise ValueError(f"avgpool2d_backward: dy has shape {dy.shape}, expected {(g[0], g[1], g[10], g[11])}")
        dx = self._empty(tuple(int(v) for v in x_shape))
        self._launch_flat("avgpool2d_backward", dx.size, dx, dy, *_i32(*g))
        return dx

    # ---- dense (cuBLAS through xp.matmul; igemm 1x1 convolutions when capturable; ---------
    # ---- tensor-core GEMMs in tf32/bf16) ------------------------------------------------
    @staticmethod
    def _dense_geometry(n: int, i: int, o: int):
        """_conv_geometry of the 1x1 convolution x (n, i, 1, 1) * w (o, i, 1, 1) that a dense layer is."""
        return (n, i, 1, 1, o, 1, 1, 1, 1, 0, 0, 1, 1)

    def dense_forward(self, x, w, b, activation=None):
        """y (N, O) = act(x (N, I) @ w.T + b); the fused ReLU as in conv2d_forward."""
        relu = gemm_relu("dense_forward", activation)
        x, w = self._float32("dense_forward", x, w)
        if b is not None:
            (b,) = self._float32("dense_forward", b)
        if self._tensor_cores:
            return tc_ops.dense_forward_tc(self.launcher, self.xp, x, w, b, self.precision, relu=relu)
        if self.capturable:
            (n, i), o = x.shape, w.shape[0]
            y = self._empty((n, o))
            self._forward_igemm(y, x, w, b, self._dense_geometry(n, i, o), relu)
            return y
        y = self.xp.matmul(x, w.T)
        if b is not None:
            self._launch_flat("add_channel_bias", y.size, y, b, *_i32(y.shape[0], y.shape[1], 1))
        return self.relu_forward(y) if relu else y

    def dense_backward(self, dy, x, w):
        """(dx (N, I), dw (O, I), db (O,)) for dy (N, O)."""
        dy, x, w = self._float32("dense_backward", dy, x, w)
        if self._tensor_cores:
            dx, dw = tc_ops.dense_backward_tc(self.launcher, self.xp, dy, x, w, self.precision)
        elif self.capturable:
            g = self._dense_geometry(x.shape[0], x.shape[1], w.shape[0])
            dx, dw = self._empty(x.shape), self._empty(w.shape)
            self._backward_data_igemm(dx, dy, w, g)
            self._backward_filter_igemm(dw, dy, x, g)
        else:
            dx = self.xp.matmul(dy, w)
            dw = self.xp.matmul(dy.T, x)
        db = self._channel_sum(dy, dy.shape[0], dy.shape[1], 1)
        return dx, dw, db

    # ---- activations ------------------------------------------------------------------
    def dropout_forward(self, x, p, seed):
        """(y, mask): inverted dropout with the shared counter-based hash of (seed, index).

        ``seed``: an int in [0, 2**32) (by value), or a 1-element uint32 device array the
        kernel reads (a CUDA-graph step; its value is not checked, it must not be read here).
        """
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        on_device = _device_scalar("dropout_forward", "seed", seed, np.uint32)
        if not on_device and not 0 <= int(seed) < 2**32:
            raise ValueError(f"dropout seed must be in [0, 2**32), got {seed}")
        (x,) = self._float32("dropout_forward", x)
        y, mask = self._empty(x.shape), self._empty(x.shape)
        threshold = math.ceil(float(p) * 2**24)  # u >= p  <=>  (h >> 8) >= ceil(p * 2**24)
        scale = np.float32(1.0 / (1.0 - float(p)))
        if on_device:
            self._launch_flat("dropout_forward_dev", x.size, y, mask, x, np.int32(x.size), seed,
                              np.uint32(threshold), scale)
        else:
            self._launch_flat("dropout_forward", x.size, y, mask, x, np.int32(x.size),
                              np.uint32(int(seed)), np.uint32(threshold), scale)
        return y, mask

    def dropout_backward(self, dy, mask):
        return self._binary_backward("dropout_backward", dy, mask)

    # ---- losses -----------------------------------------------------------------------
    def _labels(self, op, labels, n):
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"{op}: labels must have shape ({n},), got {tuple(labels.shape)}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{op}: labels must be integers, got {labels.dtype}")
        return self.xp.ascontiguousarray(labels, dtype=np.int32)

    def softmax_cross_entropy_forward(self, logits, labels, label_smoothing):
        """(loss 0-d device array, probs (N, K)); a label outside [0, K) gives a NaN loss."""
        (logits,) = self._float32("softmax_cross_entropy_forward", logits)
        n, k = logits.shape
        labels = self._labels("softmax_cross_entropy_forward", labels, n)
        probs = self._empty((n, k))
        row_loss = self._empty((n,))
        self._launch_flat("softmax_xent_forward", n, probs, row_loss, logits, labels,
                          *_i32(n, k), np.float32(label_smoothing))
        loss = self._empty(())
        self.launcher.launch("scaled_sum", (1,), (self.reduction_threads,),
                             (loss, row_loss, np.int32(n), np.float32(1.0 / n)))
        return loss, probs

    def softmax_cross_entropy_backward(self, probs, labels, label_smoothing):
        """dlogits (N, K) = (probs - t) / N."""
        (probs,) = self._float32("softmax_cross_entropy_backward", probs)
        n, k = probs.shape
        labels = self._labels("softmax_cross_entropy_backward", labels, n)
        d = self._empty((n, k))
        self._launch_flat("softmax_xent_backward", d.size, d, probs, labels, *_i32(n, k),
                          np.float32(label_smoothing), np.float32(1.0 / n))
        return d

    def mse_forward(self, pred, target):
        """0-d mean over all elements of (pred - target)**2."""
        pred, target = self._float32("mse_forward", pred, target)
        if pred.shape != target.shape:
            raise ValueError(f"mse_forward: pred shape {pred.shape} differs from target shape {target.shape}")
        loss = self._empty(())
        self.launcher.launch("scaled_sum_sq_diff", (1,), (self.reduction_threads,),
                             (loss, pred, target, np.int32(pred.size), np.float32(1.0 / pred.size)))
        return loss

    def mse_backward(self, pred, target):
        """dpred = 2 * (pred - target) / pred.size."""
        pred, target = self._float32("mse_backward", pred, target)
        if pred.shape != target.shape:
            raise ValueError(f"mse_backward: pred shape {pred.shape} differs from target shape {target.shape}")
        d = self._empty(pred.shape)
        self._launch_flat("mse_backward", d.size, d, pred, target, np.int32(d.size), np.float32(2.0 / pred.size))
        return d

    # ---- optimizer --------------------------------------------------------------------
    def sgd_update(self, param, grad, velocity, lr, momentum, nesterov, weight_decay):
        """In place: param -= lr * step (see gpucnn.ops); velocity is None when momentum == 0.

        ``lr``: a number (by value), or a 1-element float32 device array the kernel reads.
        """
        for name, a in (("param", param), ("velocity", velocity)):
            if a is not None and (a.dtype != np.float32 or not a.flags.c_contiguous):
                raise TypeError(f"sgd_update: {name} must be a C-contiguous float32 array (updated in place), "
                                f"got {a.dtype}" + ("" if a.dtype != np.float32 else " non-contiguous")
                                + " (use the numpy backend for float64)")
        (grad,) = self._float32("sgd_update", grad)
        if grad.shape != param.shape or (velocity is not None and velocity.shape != param.shape):
            raise ValueError("sgd_update: param, grad and velocity must have the same shape")
        has_velocity = bool(momentum) and velocity is not None
        if momentum and velocity is None:
            raise ValueError("sgd_update: momentum > 0 needs a velocity array")
        rest = (np.float32(momentum), np.float32(weight_decay), np.int32(bool(nesterov)), np.int32(has_velocity))
        head = (param, velocity if has_velocity else param, grad, np.int32(param.size))
        if _device_scalar("sgd_update", "lr", lr, np.float32):
            self._launch_flat("sgd_update_dev", param.size, *head, lr, *rest)
        else:
            self._launch_flat("sgd_update", param.size, *head, np.float32(lr), *rest)

    # ---- batch normalization ----------------------------------------------------------
    def _bn_chunks(self, m: int, channels: int) -> tuple[int, int]:
        """(chunk, chunks): values per block and blocks per channel of a BatchNorm reduction."""
        if self.bn_chunk is not None:
            chunk = int(self.bn_chunk)
        else:
            wanted = max(1, math.ceil(self.bn_target_blocks / channels))
            chunk = max(int(self.bn_min_chunk), math.ceil(m / wanted))
        chunk = max(1, min(chunk, m))
        chunks = math.ceil(m / chunk)
        if chunks > MAX_GRID:
            chunk = math.ceil(m / MAX_GRID)
            chunks = math.ceil(m / chunk)
        return chunk, chunks

    def _running(self, op: str, name: str, a, channels: int):
        if a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != (channels,):
            raise TypeError(f"{op}: {name} must be a C-contiguous float32 array of shape ({channels},) "
                            f"(updated in place), got {a.dtype} {tuple(a.shape)}")
        return a

    def batchnorm2d_forward(self, x, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.1,
                            activation=None):
        """(y, mean (C,), invstd (C,), var_unbiased (C,)) from the batch statistics.

        Three launches: per-chunk moments (grid C x chunks), their fixed-order combine (which
        also updates running_mean/running_var in place when given), and the normalize(+act).
        """
        x, gamma, beta = self._float32("batchnorm2d_forward", x, gamma, beta)
        act = bn_activation_code("batchnorm2d_forward", activation)
        n, c, h, w = x.shape
        m = n * h * w
        update = running_mean is not None or running_var is not None
        if update:
            if running_mean is None or running_var is None:
                raise ValueError("batchnorm2d_forward: running_mean and running_var go together; got only one")
            running_mean = self._running("batchnorm2d_forward", "running_mean", running_mean, c)
            running_var = self._running("batchnorm2d_forward", "running_var", running_var, c)
        chunk, chunks = self._bn_chunks(m, c)
        threads = (self.reduction_threads,)
        partial = self._empty((c, chunks, 2))
        self.launcher.launch("batchnorm2d_partial_stats", (c, chunks), threads, (partial, x, *_i32(n, c, h * w, chunk)))
        mean, invstd, var = self._empty((c,)), self._empty((c,)), self._empty((c,))
        rm, rv = (running_mean, running_var) if update else (mean, var)
        self.launcher.launch("batchnorm2d_finalize_stats", (c,), threads,
                             (mean, invstd, var, rm, rv, partial, *_i32(chunks, m, chunk), np.float32(eps),
                              np.float32(momentum if update else 0.0), np.int32(update)))
        y = self._empty(x.shape)
        self._launch_flat("batchnorm2d_normalize", y.size, y, x, gamma, beta, mean, invstd,
                          *_i32(n, c, h * w, act))
        return y, mean, invstd, var

    def batchnorm2d_inference(self, x, gamma, beta, running_mean, running_var, eps, activation=None):
        """y = act((x - running_mean) / sqrt(running_var + eps) * gamma + beta)."""
        x, gamma, beta, rm, rv = self._float32("batchnorm2d_inference", x, gamma, beta, running_mean, running_var)
        act = bn_activation_code("batchnorm2d_inference", activation)
        n, c, h, w = x.shape
        y = self._empty(x.shape)
        self._launch_flat("batchnorm2d_inference", y.size, y, x, gamma, beta, rm, rv,
                          *_i32(n, c, h * w), np.float32(eps), np.int32(act))
        return y

    def batchnorm2d_backward(self, dy, x, gamma, mean, invstd, beta=None, activation=None):
        """(dx, dgamma, dbeta) for training-mode batch normalization (+ its fused activation).

        Per-chunk sums of dz and dz * xhat (grid C x chunks), channel_sum over the chunks
        in fixed order (skipped for one chunk), then the elementwise dx.
        """
        dy, x, gamma, mean, invstd = self._float32("batchnorm2d_backward", dy, x, gamma, mean, invstd)
        act = bn_activation_code("batchnorm2d_backward", activation)
        if act and beta is None:
            raise ValueError(f"batchnorm2d_backward: activation {activation!r} needs beta (to recompute its input)")
        (beta,) = self._float32("batchnorm2d_backward", beta) if beta is not None else (gamma,)
        n, c, h, w = x.shape
        if tuple(dy.shape) != tuple(x.shape):
            raise ValueError(f"batchnorm2d_backward: dy shape {tuple(dy.shape)} differs from x shape {tuple(x.shape)}")
        m = n * h * w
        chunk, chunks = self._bn_chunks(m, c)
        threads = (self.reduction_threads,)
        partial = self._empty((2 * c, chunks))
        self.launcher.launch("batchnorm2d_backward_partial", (c, chunks), threads,
                             (partial, dy, x, gamma, beta, mean, invstd, *_i32(n, c, h * w, chunk, act)))
        if chunks == 1:
            sums = partial.reshape(2 * c)
        else:
            sums = self._empty((2 * c,))
            self.launcher.launch("channel_sum", (2 * c,), threads, (sums, partial, *_i32(1, 2 * c, chunks)))
        dx = self._empty(x.shape)
        self._launch_flat("batchnorm2d_backward_dx", dx.size, dx, dy, x, gamma, beta, mean, invstd, sums,
                          *_i32(n, c, h * w, act))
        return dx, sums[c:], sums[:c]


def _activation_methods(name: str):
    forward, backward = f"{name}_forward", f"{name}_backward"

    def forward_op(self, x):
        return self._unary(forward, x)

    def backward_op(self, dy, cached):
        return self._binary_backward(backward, dy, cached)

    forward_op.__name__, backward_op.__name__ = forward, backward
    return forward_op, backward_op


# Every activation of the op contract runs its kernels/activations.cu pair of the same names.
for _activation in ACTIVATIONS:
    for _method in _activation_methods(_activation.name):
        setattr(KernelOps, _method.__name__, _method)
del _activation, _method
