// conv2d_im2col.cu: lowering kernels for convolution as GEMM (the matrix products run in
// cuBLAS through xp.matmul; see gpucnn/ops/kernel_ops.py).
//
// Layout: x, dx (N, C, H, W) float32 NCHW. The column matrix holds, for K = C*KH*KW rows
// (k = (c*KH + kh)*KW + kw) and P = OH*OW columns per image (p = oh*OW + ow), the value
// x[n, c, oh SH - PH + kh, ow SW - PW + kw] (0 outside the image) at
//   col[n * stride_n + k * stride_k + p],
// so the caller picks the layout: (N, K, P) with stride_n = K*P, stride_k = P (batched
// GEMM for the forward pass), or (K, N, P) with stride_n = P, stride_k = N*P (one GEMM
// over the whole batch for the filter gradient).
//
// im2col: one thread per col element (n, k, p), p fastest, so writes are coalesced.
// col2im: the adjoint, as a GATHER: one thread per dx[n, c, h, w] sums the col entries of
//   every (kh, kw, oh, ow) that read it (oh = (h + PH - kh) / SH when divisible and in range).
//   Each dx is written once: deterministic, no atomics, no zero fill needed.
extern "C" __global__ void im2col(float* __restrict__ col, const float* __restrict__ x,
                                  int N, int C, int H, int W, int KH, int KW, int SH, int SW,
                                  int PH, int PW, int OH, int OW, int stride_n, int stride_k)
{
    const int P = OH * OW;
    const int K = C * KH * KW;
    const int total = N * K * P;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int p = i % P;
        const int k = (i / P) % K;
        const int n = i / (P * K);
        const int kw = k % KW;
        const int kh = (k / KW) % KH;
        const int c = k / (KH * KW);
        const int oh = p / OW;
        const int ow = p - oh * OW;
        const int h = oh * SH - PH + kh;
        const int w = ow * SW - PW + kw;
        float v = 0.0f;
        if (h >= 0 && h < H && w >= 0 && w < W) v = x[(((size_t)n * C + c) * H + h) * W + w];
        col[(size_t)n * stride_n + (size_t)k * stride_k + p] = v;
    }
}

extern "C" __global__ void col2im(float* __restrict__ dx, const float* __restrict__ col,
                                  int N, int C, int H, int W, int KH, int KW, int SH, int SW,
                                  int PH, int PW, int OH, int OW, int stride_n, int stride_k)
{
    const int total = N * C * H * W;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int w = i % W;
        const int h = (i / W) % H;
        const int c = (i / (H * W)) % C;
        const int n = i / (C * H * W);
        const float* coln = col + (size_t)n * stride_n;
        float acc = 0.0f;
        for (int kh = 0; kh < KH; ++kh) {
            const int th = h + PH - kh;
            if (th < 0 || th % SH != 0 || th / SH >= OH) continue;
            const int oh = th / SH;
            for (int kw = 0; kw < KW; ++kw) {
                const int tw = w + PW - kw;
                if (tw < 0 || tw % SW != 0 || tw / SW >= OW) continue;
                const int k = (c * KH + kh) * KW + kw;
                acc += coln[(size_t)k * stride_k + oh * OW + tw / SW];
            }
        }
        dx[i] = acc;
    }
}
