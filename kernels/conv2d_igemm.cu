// conv2d_igemm.cu: convolution forward and backward as tiled implicit GEMMs: the GEMM
// operand that im2col would materialise is gathered straight from the tensor into shared
// memory, one K-chunk at a time, so no column buffer is ever written to global memory.
//
// Layout: x, dx (N, C, H, W); w, dw (O, C, KH, KW); y, dy (N, O, OH, OW); float32 NCHW.
// KHW = KH*KW, P = OH*OW.
//
//   kernel                       GEMM rows (M)   GEMM columns               reduction (K)
//   conv2d_forward_igemm         o   (O)         (n, oh, ow)  N*P           (c, kh, kw)  C*KHW
//   conv2d_backward_data_igemm   c   (C)         (n, h, w)    N*H*W         (o, kh, kw)  O*KHW
//   conv2d_backward_filter_igemm o   (O)         (c, kh, kw)  C*KHW         (n, oh, ow)  N*P
//
// forward adds b[o] when has_bias != 0 and stores max(y, 0) when relu != 0 (the fused ReLU
// of ops.GEMM_FUSED_ACTIVATIONS).
// backward_data gathers the delta map as the flipped-filter delta convolution: column
// (n, h, w), tap (o, kh, kw) reads dy[n, o, (h + PH - kh) / SH, (w + PW - kw) / SW] when
// that position lies on the stride-dilated delta grid and inside it, else 0.
// backward_filter is split along K over gridDim.z (the reduction N*P is long while the
// output O*C*KHW is small, so without a split only a handful of blocks would run); block z
// writes its partial sums to partial[z] (splits, O, C*KHW), and splitk_reduce adds the
// splits in a fixed order: deterministic, no atomics.
//
// Thread mapping (all three): 256 threads (blockDim = (256, 1, 1)) compute a 64 x 64 output
// tile (blockIdx.y: row tile, blockIdx.x: column tile); thread (tx, ty) = (tid % 16,
// tid / 16) owns the 4 x 4 register tile rows ty + 16 i, columns tx + 16 j (so a warp's
// stores cover runs of 16 consecutive columns). Per K-chunk of 16 each thread loads 4
// elements of the A tile (As[16][64 + 4], padded against bank conflicts) and 4 of the B
// tile (Bs[16][64]; each thread always loads the same column, whose index decomposition is
// hoisted out of the K loop), then all threads do 16 rank-1 updates from shared memory.

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16

static __device__ __forceinline__ void tile_multiply(float acc[4][4], const float As[TILE_K][TILE_M + 4],
                                                     const float Bs[TILE_K][TILE_N], int tx, int ty)
{
#pragma unroll
    for (int kk = 0; kk < TILE_K; ++kk) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
}

extern "C" __global__ void __launch_bounds__(256)
conv2d_forward_igemm(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                     const float* __restrict__ b, int has_bias, int relu, int N, int C, int H, int W, int O,
                     int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW)
{
    __shared__ float As[TILE_K][TILE_M + 4];
    __shared__ float Bs[TILE_K][TILE_N];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int KHW = KH * KW, K = C * KHW, P = OH * OW, NCOL = N * P;
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;

    const int bn = tid & 63, bk = tid >> 6;
    const int col = n0 + bn;
    const bool col_ok = col < NCOL;
    int img = 0, h0 = 0, w0 = 0;
    if (col_ok) {
        img = col / P;
        const int p = col - img * P;
        const int oh = p / OW;
        h0 = oh * SH - PH;
        w0 = (p - oh * OW) * SW - PW;
    }
    const float* ximg = x + (size_t)img * C * H * W;
    const int ak = tid & 15, am = tid >> 4;

    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        for (int r = 0; r < 4; ++r) {
            const int m = m0 + am + 16 * r, k = k0 + ak;
            As[ak][am + 16 * r] = (m < O && k < K) ? w[(size_t)m * K + k] : 0.0f;
        }
        for (int r = 0; r < 4; ++r) {
            const int k = k0 + bk + 4 * r;
            float v = 0.0f;
            if (col_ok && k < K) {
                const int c = k / KHW;
                const int rem = k - c * KHW;
                const int kh = rem / KW;
                const int h = h0 + kh, ww = w0 + rem - kh * KW;
                if (h >= 0 && h < H && ww >= 0 && ww < W) v = ximg[((size_t)c * H + h) * W + ww];
            }
            Bs[bk + 4 * r][bn] = v;
        }
        __syncthreads();
        tile_multiply(acc, As, Bs, tx, ty);
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= O) continue;
        const float bias = has_bias ? b[m] : 0.0f;
        for (int j = 0; j < 4; ++j) {
            const int c2 = n0 + tx + 16 * j;
            if (c2 >= NCOL) continue;
            const int n = c2 / P;
            const float v = acc[i][j] + bias;
            y[((size_t)n * O + m) * P + (c2 - n * P)] = relu ? fmaxf(v, 0.0f) : v;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
conv2d_backward_data_igemm(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
                           int N, int C, int H, int W, int O, int KH, int KW, int SH, int SW,
                           int PH, int PW, int OH, int OW)
{
    __shared__ float As[TILE_K][TILE_M + 4];
    __shared__ float Bs[TILE_K][TILE_N];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int KHW = KH * KW, K = O * KHW, HW = H * W, NCOL = N * HW;
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;

    const int bn = tid & 63, bk = tid >> 6;
    const int col = n0 + bn;
    const bool col_ok = col < NCOL;
    int img = 0, th0 = 0, tw0 = 0;
    if (col_ok) {
        img = col / HW;
        const int p = col - img * HW;
        const int h = p / W;
        th0 = h + PH;
        tw0 = p - h * W + PW;
    }
    const float* dyimg = dy + (size_t)img * O * OH * OW;
    const int ak = tid & 15, am = tid >> 4;

    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        for (int r = 0; r < 4; ++r) {
            const int m = m0 + am + 16 * r, k = k0 + ak;
            float v = 0.0f;
            if (m < C && k < K) {
                const int o = k / KHW;
                v = w[((size_t)o * C + m) * KHW + (k - o * KHW)];
            }
            As[ak][am + 16 * r] = v;
        }
        for (int r = 0; r < 4; ++r) {
            const int k = k0 + bk + 4 * r;
            float v = 0.0f;
            if (col_ok && k < K) {
                const int o = k / KHW;
                const int rem = k - o * KHW;
                const int kh = rem / KW;
                const int th = th0 - kh, tw = tw0 - (rem - kh * KW);
                if (th >= 0 && tw >= 0 && th % SH == 0 && tw % SW == 0) {
                    const int oh = th / SH, ow = tw / SW;
                    if (oh < OH && ow < OW) v = dyimg[((size_t)o * OH + oh) * OW + ow];
                }
            }
            Bs[bk + 4 * r][bn] = v;
        }
        __syncthreads();
        tile_multiply(acc, As, Bs, tx, ty);
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= C) continue;
        for (int j = 0; j < 4; ++j) {
            const int c2 = n0 + tx + 16 * j;
            if (c2 >= NCOL) continue;
            const int n = c2 / HW;
            dx[((size_t)n * C + m) * HW + (c2 - n * HW)] = acc[i][j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
conv2d_backward_filter_igemm(float* __restrict__ partial, const float* __restrict__ dy,
                             const float* __restrict__ x, int N, int C, int H, int W, int O,
                             int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW)
{
    __shared__ float As[TILE_K][TILE_M + 4];
    __shared__ float Bs[TILE_K][TILE_N];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int KHW = KH * KW, P = OH * OW, K = N * P, NCOL = C * KHW;
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    const int chunks = (K + TILE_K - 1) / TILE_K;
    const int per_split = (chunks + gridDim.z - 1) / gridDim.z;
    const int k_begin = blockIdx.z * per_split * TILE_K;
    const int k_end = min(K, k_begin + per_split * TILE_K);

    const int bn = tid & 63, bk = tid >> 6;
    const int col = n0 + bn;
    const bool col_ok = col < NCOL;
    int c = 0, kh = 0, kw = 0;
    if (col_ok) {
        c = col / KHW;
        const int rem = col - c * KHW;
        kh = rem / KW;
        kw = rem - kh * KW;
    }
    const int ak = tid & 15, am = tid >> 4;

    float acc[4][4] = {};
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        for (int r = 0; r < 4; ++r) {
            const int m = m0 + am + 16 * r, k = k0 + ak;
            float v = 0.0f;
            if (m < O && k < k_end) {
                const int n = k / P;
                v = dy[((size_t)n * O + m) * P + (k - n * P)];
            }
            As[ak][am + 16 * r] = v;
        }
        for (int r = 0; r < 4; ++r) {
            const int k = k0 + bk + 4 * r;
            float v = 0.0f;
            if (col_ok && k < k_end) {
                const int n = k / P;
                const int p = k - n * P;
                const int oh = p / OW;
                const int h = oh * SH - PH + kh, ww = (p - oh * OW) * SW - PW + kw;
                if (h >= 0 && h < H && ww >= 0 && ww < W) v = x[(((size_t)n * C + c) * H + h) * W + ww];
            }
            Bs[bk + 4 * r][bn] = v;
        }
        __syncthreads();
        tile_multiply(acc, As, Bs, tx, ty);
        __syncthreads();
    }
    float* out = partial + (size_t)blockIdx.z * O * NCOL;
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= O) continue;
        for (int j = 0; j < 4; ++j) {
            const int c2 = n0 + tx + 16 * j;
            if (c2 < NCOL) out[(size_t)m * NCOL + c2] = acc[i][j];
        }
    }
}

// out[i] = sum over s of partial[s * count + i], s ascending; one thread per element.
extern "C" __global__ void splitk_reduce(float* __restrict__ out, const float* __restrict__ partial,
                                         int splits, int count)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < splits; ++s) acc += partial[(size_t)s * count + i];
        out[i] = acc;
    }
}
