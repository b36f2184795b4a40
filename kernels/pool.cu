// pool.cu: 2-D max and average pooling, forward and backward.
//
// Layout: x, dx (N, C, H, W); y, dy, argmax (N, C, OH, OW); NCHW, C-contiguous.
// argmax (int32) is the flat index h * W + w of the window's maximum inside its input
// plane. Max-pool padding acts as -inf (padded positions never win); avg-pool padding
// counts as zeros and the divisor is always KH * KW.
//
// Forward: one thread per output element, grid-stride loop. Max-pool ties keep the first
// maximum in row-major window order (strict '>' while scanning).
//
// avgpool2d_backward is a GATHER: one thread per INPUT element sums dy / (KH*KW) over every
// output window that covers it. Windows overlap when stride < kernel; the gather writes
// each dx once, is deterministic, needs no atomics and no zero-filled output. The windows
// covering row h are oh in [ceil((h + PH - KH + 1) / SH), floor((h + PH) / SH)] within
// [0, OH); at most ceil(KH / SH) * ceil(KW / SW) of them.
//
// maxpool2d_backward is a SCATTER with atomicAdd: one thread per OUTPUT element adds its dy
// to dx at its argmax (dx must be zero-filled first). Atomics make overlapping windows that
// share a maximum add up correctly; when two or more deltas meet in one element their float
// summation order may vary between runs (last-bit differences). Non-overlapping pools
// (stride >= kernel in both dimensions) are exact: every dx receives at most one delta.
//
// Deterministic alternatives (bit-identical to each other and from run to run; each dx is
// ((0 + d1) + d2) + ... over the windows that chose it, in row-major window order):
// maxpool2d_backward_gather: one thread per INPUT element scans the windows covering it
//   (same ranges as avgpool2d_backward) and adds the dy of those whose argmax is it. Needs
//   the window geometry; reads <= ceil(KH/SH) * ceil(KW/SW) (argmax, dy) pairs, writes dx once,
//   no zero fill, no atomics.
// maxpool2d_backward_ordered: for callers that know only the argmax (no geometry): one
//   thread per PLANE walks its outputs in row-major order and adds each dy at its argmax
//   (dx zero-filled first). Serial per plane, so slower; same sums as the gather.
#include "common.cuh"

static __device__ __forceinline__ int first_window(int pos, int pad, int kernel, int stride)
{
    const int t = pos + pad - kernel + 1;  // smallest o with o * stride + kernel - 1 >= pos + pad
    return t <= 0 ? 0 : (t + stride - 1) / stride;
}

extern "C" __global__ void maxpool2d_forward(float* __restrict__ y, int* __restrict__ argmax,
                                             const float* __restrict__ x,
                                             int N, int C, int H, int W, int KH, int KW, int SH, int SW,
                                             int PH, int PW, int OH, int OW)
{
    const int total = N * C * OH * OW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int ow = i % OW;
        const int oh = (i / OW) % OH;
        const int plane = i / (OH * OW);
        const float* xp = x + (size_t)plane * H * W;
        float best = -GPUCNN_INFINITY;
        int best_at = -1;
        for (int kh = 0; kh < KH; ++kh) {
            const int h = oh * SH - PH + kh;
            if (h < 0 || h >= H) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int w = ow * SW - PW + kw;
                if (w < 0 || w >= W) continue;
                const float v = xp[h * W + w];
                if (best_at < 0 || v > best) {
                    best = v;
                    best_at = h * W + w;
                }
            }
        }
        y[i] = best;
        argmax[i] = best_at;
    }
}

extern "C" __global__ void maxpool2d_backward(float* __restrict__ dx, const float* __restrict__ dy,
                                              const int* __restrict__ argmax, int planes, int HW, int OHW)
{
    const int total = planes * OHW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int plane = i / OHW;
        const int at = argmax[i];
        if (at >= 0 && at < HW) atomicAdd(&dx[(size_t)plane * HW + at], dy[i]);
    }
}

extern "C" __global__ void maxpool2d_backward_gather(float* __restrict__ dx, const float* __restrict__ dy,
                                                     const int* __restrict__ argmax,
                                                     int N, int C, int H, int W, int KH, int KW, int SH, int SW,
                                                     int PH, int PW, int OH, int OW)
{
    const int total = N * C * H * W;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int w = i % W;
        const int h = (i / W) % H;
        const int plane = i / (H * W);
        const int self = h * W + w;
        const float* dyp = dy + (size_t)plane * OH * OW;
        const int* ap = argmax + (size_t)plane * OH * OW;
        const int oh_end = min(OH, (h + PH) / SH + 1);
        const int ow_end = min(OW, (w + PW) / SW + 1);
        float acc = 0.0f;
        for (int oh = first_window(h, PH, KH, SH); oh < oh_end; ++oh) {
            for (int ow = first_window(w, PW, KW, SW); ow < ow_end; ++ow) {
                if (ap[oh * OW + ow] == self) acc += dyp[oh * OW + ow];
            }
        }
        dx[i] = acc;
    }
}

extern "C" __global__ void maxpool2d_backward_ordered(float* __restrict__ dx, const float* __restrict__ dy,
                                                      const int* __restrict__ argmax, int planes, int HW, int OHW)
{
    for (int plane = blockIdx.x * blockDim.x + threadIdx.x; plane < planes; plane += gridDim.x * blockDim.x) {
        float* dxp = dx + (size_t)plane * HW;
        const float* dyp = dy + (size_t)plane * OHW;
        const int* ap = argmax + (size_t)plane * OHW;
        for (int k = 0; k < OHW; ++k) {
            const int at = ap[k];
            if (at >= 0 && at < HW) dxp[at] += dyp[k];
        }
    }
}

extern "C" __global__ void avgpool2d_forward(float* __restrict__ y, const float* __restrict__ x,
                                             int N, int C, int H, int W, int KH, int KW, int SH, int SW,
                                             int PH, int PW, int OH, int OW)
{
    const int total = N * C * OH * OW;
    const float inv_area = 1.0f / (KH * KW);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int ow = i % OW;
        const int oh = (i / OW) % OH;
        const int plane = i / (OH * OW);
        const float* xp = x + (size_t)plane * H * W;
        float acc = 0.0f;
        for (int kh = 0; kh < KH; ++kh) {
            const int h = oh * SH - PH + kh;
            if (h < 0 || h >= H) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int w = ow * SW - PW + kw;
                if (w >= 0 && w < W) acc += xp[h * W + w];
            }
        }
        y[i] = acc * inv_area;
    }
}

extern "C" __global__ void avgpool2d_backward(float* __restrict__ dx, const float* __restrict__ dy,
                                              int N, int C, int H, int W, int KH, int KW, int SH, int SW,
                                              int PH, int PW, int OH, int OW)
{
    const int total = N * C * H * W;
    const float inv_area = 1.0f / (KH * KW);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int w = i % W;
        const int h = (i / W) % H;
        const int plane = i / (H * W);
        const float* dyp = dy + (size_t)plane * OH * OW;
        const int oh_end = min(OH, (h + PH) / SH + 1);
        const int ow_end = min(OW, (w + PW) / SW + 1);
        float acc = 0.0f;
        for (int oh = first_window(h, PH, KH, SH); oh < oh_end; ++oh) {
            for (int ow = first_window(w, PW, KW, SW); ow < ow_end; ++ow) acc += dyp[oh * OW + ow];
        }
        dx[i] = acc * inv_area;
    }
}
