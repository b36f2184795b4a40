// conv2d_direct.cu: direct 2-D convolution (cross-correlation), forward and both backward
// passes, written as the textbook formulas. The simple, obviously-correct variant; the fast
// paths are conv2d_igemm.cu (tiled implicit GEMM) and conv2d_im2col.cu (+ cuBLAS).
//
// Layout: x, dx (N, C, H, W); w, dw (O, C, KH, KW); y, dy (N, O, OH, OW); b (O,);
// all float32 NCHW, C-contiguous. OH = (H + 2 PH - KH) / SH + 1, OW likewise.
//
// conv2d_forward_direct: one thread per output y[n, o, oh, ow] (grid-stride loop):
//   y = b[o] + sum_{c, kh, kw} w[o, c, kh, kw] * x[n, c, oh SH - PH + kh, ow SW - PW + kw],
//   out-of-range x reads as 0 (zero padding). b is read only when has_bias != 0; relu != 0
//   stores max(y, 0) (the fused ReLU of ops.GEMM_FUSED_ACTIVATIONS).
// conv2d_backward_data_direct: one thread per input delta dx[n, c, h, w]. The flipped-filter
//   delta convolution: dx is the full convolution of the delta map, dilated by the stride
//   (SH - 1 zeros between rows, SW - 1 between columns) and zero padded, with the filter
//   rotated by 180 degrees. Summing over the rotated filter is the same as summing, for each
//   unrotated tap (kh, kw), the delta at (h + PH - kh) / SH when that position lies on the
//   dilated grid (divisible by SH) and inside the map; taps that fall on inserted zeros or
//   outside contribute nothing.
// conv2d_backward_filter_direct: one BLOCK per filter tap dw[o, c, kh, kw] (blockIdx.x);
//   the valid correlation of the zero-padded input with the delta map:
//   dw = sum_{n, oh, ow} dy[n, o, oh, ow] * x[n, c, oh SH - PH + kh, ow SW - PW + kw].
//   Threads stride over (n, oh, ow); common.cuh's deterministic block_sum finishes
//   (blockDim.x a power of two). The bias gradient is bias.cu:channel_sum.
#include "common.cuh"

extern "C" __global__ void conv2d_forward_direct(float* __restrict__ y, const float* __restrict__ x,
                                                 const float* __restrict__ w, const float* __restrict__ b,
                                                 int has_bias, int relu, int N, int C, int H, int W, int O,
                                                 int KH, int KW, int SH, int SW, int PH, int PW,
                                                 int OH, int OW)
{
    const int total = N * O * OH * OW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int ow = i % OW;
        const int oh = (i / OW) % OH;
        const int o = (i / (OH * OW)) % O;
        const int n = i / (O * OH * OW);
        float acc = has_bias ? b[o] : 0.0f;
        for (int c = 0; c < C; ++c) {
            const float* xc = x + ((size_t)n * C + c) * H * W;
            const float* wc = w + ((size_t)o * C + c) * KH * KW;
            for (int kh = 0; kh < KH; ++kh) {
                const int h = oh * SH - PH + kh;
                if (h < 0 || h >= H) continue;
                for (int kw = 0; kw < KW; ++kw) {
                    const int ww = ow * SW - PW + kw;
                    if (ww >= 0 && ww < W) acc += wc[kh * KW + kw] * xc[h * W + ww];
                }
            }
        }
        y[i] = relu ? fmaxf(acc, 0.0f) : acc;
    }
}

extern "C" __global__ void conv2d_backward_data_direct(float* __restrict__ dx, const float* __restrict__ dy,
                                                       const float* __restrict__ w,
                                                       int N, int C, int H, int W, int O,
                                                       int KH, int KW, int SH, int SW, int PH, int PW,
                                                       int OH, int OW)
{
    const int total = N * C * H * W;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int ww = i % W;
        const int h = (i / W) % H;
        const int c = (i / (H * W)) % C;
        const int n = i / (C * H * W);
        float acc = 0.0f;
        for (int o = 0; o < O; ++o) {
            const float* dyo = dy + ((size_t)n * O + o) * OH * OW;
            const float* wo = w + ((size_t)o * C + c) * KH * KW;
            for (int kh = 0; kh < KH; ++kh) {
                const int th = h + PH - kh;  // row in the dilated delta map
                if (th < 0 || th % SH != 0) continue;
                const int oh = th / SH;
                if (oh >= OH) continue;
                for (int kw = 0; kw < KW; ++kw) {
                    const int tw = ww + PW - kw;
                    if (tw < 0 || tw % SW != 0) continue;
                    const int ow = tw / SW;
                    if (ow < OW) acc += wo[kh * KW + kw] * dyo[oh * OW + ow];
                }
            }
        }
        dx[i] = acc;
    }
}

extern "C" __global__ void conv2d_backward_filter_direct(float* __restrict__ dw, const float* __restrict__ dy,
                                                         const float* __restrict__ x,
                                                         int N, int C, int H, int W, int O,
                                                         int KH, int KW, int SH, int SW, int PH, int PW,
                                                         int OH, int OW)
{
    __shared__ float scratch[BLOCK_SUM_SCRATCH];
    const int tap = blockIdx.x;  // flat index into dw (O, C, KH, KW)
    const int kw = tap % KW;
    const int kh = (tap / KW) % KH;
    const int c = (tap / (KH * KW)) % C;
    const int o = tap / (C * KH * KW);
    const int P = OH * OW;
    const int count = N * P;
    float acc = 0.0f;
    for (int j = threadIdx.x; j < count; j += blockDim.x) {
        const int n = j / P;
        const int p = j - n * P;
        const int oh = p / OW;
        const int ow = p - oh * OW;
        const int h = oh * SH - PH + kh;
        const int ww = ow * SW - PW + kw;
        if (h >= 0 && h < H && ww >= 0 && ww < W) {
            acc += dy[((size_t)n * O + o) * P + p] * x[(((size_t)n * C + c) * H + h) * W + ww];
        }
    }
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) dw[tap] = total;
}
