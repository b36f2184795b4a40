// batchnorm.cu: 2-D batch normalization (per channel over N, H, W), optionally fused with
// the activation that follows it (act: 0 none, 1 relu, 2 gelu; exact erf form).
//
// Layout: x, y, dy, dx (N, C, H, W) float32 NCHW; gamma, beta, mean, invstd, var,
// running_mean, running_var (C,). M = N * HW values per channel, indexed j = n * HW + p.
//
// Statistics and parameter gradients are deterministic two-stage reductions over many
// blocks per channel, so a few channels still fill the device:
//   stage 1, grid (C, chunks): block (c, g) reduces values j in [g * chunk, (g + 1) * chunk)
//     of channel c; stage 2 combines the chunks of each channel in ascending order.
//   Every sum and merge is a fixed-order warp-shuffle tree, then one shared-memory hand-off
//   between the warps (common.cuh; no atomics): results are bit-identical from run to run for
//   a given chunk size and block size.
//
// batchnorm2d_partial_stats: per chunk its mean and M2 = sum (x - mean)^2. Each thread sums
//   its values shifted by the first one it reads (no E[x^2] - E[x]^2 cancellation even for
//   mean 100, std 0.01: the shift leaves values of the data's spread), so its count, mean,
//   M2 are accurate; threads, then chunks, are merged with Chan's pairwise formula
//   mean = ma + d * nb / n, M2 = M2a + M2b + d^2 * na * nb / n (d = mb - ma). One read of x.
//   partial[(c * chunks + g) * 2 + {0, 1}] = {mean, M2} of chunk g.
// batchnorm2d_finalize_stats: grid (C,): combines the chunks of channel c and writes mean,
//   invstd = 1/sqrt(M2 / M + eps), the unbiased variance M2 / (M - 1) (NaN when M == 1) and,
//   when update_running != 0, running = (1 - momentum) * running + momentum * batch in place
//   (PyTorch's convention, unbiased variance): one launch instead of several elementwise ops.
// batchnorm2d_normalize / batchnorm2d_inference: one thread per element, grid-stride;
//   y = act((x - mean) * invstd * gamma + beta) with the batch / the running statistics.
// batchnorm2d_backward_partial: grid (C, chunks) like stage 1; with z = xhat * gamma + beta
//   and dz = dy * act'(z) (dz = dy without activation): sum dz -> partial[c * chunks + g],
//   sum dz * xhat -> partial[(C + c) * chunks + g]. Stage 2 is bias.cu's channel_sum over
//   partial viewed as (1, 2C, chunks), giving sums = [dbeta (C), dgamma (C)].
// batchnorm2d_backward_dx: one thread per element,
//   dx = gamma * invstd / M * (M * dz - dbeta - xhat * dgamma).
//
// Elementwise kernels walk their flat indices with PlaneWalk, which keeps (plane, p) and the
// channel up to date by additions: no integer division per element.
#include "common.cuh"

#define BN_ACT_NONE 0
#define BN_ACT_RELU 1
#define BN_ACT_GELU 2

// Splits j, j + step, j + 2 step, ... into (q, p) with j = q * HW + p, one division up front.
struct PlaneWalk {
    int q, p, dq, dp, HW;
    __device__ PlaneWalk(int j, int step, int hw)
        : q(j / hw), p(j - (j / hw) * hw), dq(step / hw), dp(step - (step / hw) * hw), HW(hw) {}
    // Returns the carry (0 or 1) that p's wrap added to q beyond dq.
    __device__ int next()
    {
        q += dq;
        p += dp;
        if (p >= HW) {
            p -= HW;
            ++q;
            return 1;
        }
        return 0;
    }
};

static __device__ __forceinline__ float bn_activate(float z, int act)
{
    if (act == BN_ACT_RELU) return z > 0.0f ? z : 0.0f;
    if (act == BN_ACT_GELU) return z * 0.5f * erfcf(-z * 0.70710678118654752f);
    return z;
}

// d act(z) / dz times dy (same formulas as activations.cu's relu/gelu backward).
static __device__ __forceinline__ float bn_activation_grad(float dy, float z, int act)
{
    if (act == BN_ACT_RELU) return z > 0.0f ? dy : 0.0f;
    if (act == BN_ACT_GELU) {
        const float cdf = 0.5f * erfcf(-z * 0.70710678118654752f);
        const float pdf = 0.39894228040143268f * expf(-0.5f * z * z);
        return dy * (cdf + z * pdf);
    }
    return dy;
}

// Chan's merge of (nb, mb, m2b) into (na, ma, m2a); an empty side leaves the other as is.
static __device__ __forceinline__ void chan_merge(float& na, float& ma, float& m2a, float nb, float mb, float m2b)
{
    if (nb == 0.0f) return;
    if (na == 0.0f) {
        na = nb;
        ma = mb;
        m2a = m2b;
        return;
    }
    const float n = na + nb;
    const float d = mb - ma;
    const float f = nb / n;
    ma += d * f;
    m2a += m2b + d * d * na * f;
    na = n;
}

// Merges (n, mean, m2) of lanes l and l + offset into lane l, offsets lanes/2 ... 1: lane 0
// ends with the warp's moments merged in a fixed order (Chan's merge is not symmetric in
// float arithmetic, so only lane 0's result is used; the other lanes' are partial).
static __device__ __forceinline__ void warp_merge_moments(float& n, float& mean, float& m2, unsigned int lanes)
{
    const unsigned int mask = lane_mask(lanes);
    for (unsigned int offset = lanes / 2; offset > 0; offset >>= 1) {
        const float nb = __shfl_down_sync(mask, n, offset);
        const float mb = __shfl_down_sync(mask, mean, offset);
        const float m2b = __shfl_down_sync(mask, m2, offset);
        if ((threadIdx.x & 31u) + offset < lanes) chan_merge(n, mean, m2, nb, mb, m2b);
    }
}

// Fixed-order merge of every thread's (count, mean, M2): warps first, then warp 0 merges the
// warps' results; thread 0 gets the block's. blockDim.x a power of two <= 1024; `shared`
// holds 3 * BLOCK_SUM_SCRATCH floats; all threads must call it.
static __device__ void block_merge_moments(float& n, float& mean, float& m2, float* shared)
{
    const unsigned int lanes = block_warp_lanes();
    warp_merge_moments(n, mean, m2, lanes);
    const unsigned int warps = blockDim.x / lanes;
    if (warps == 1) return;
    const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) {
        shared[warp] = n;
        shared[BLOCK_SUM_SCRATCH + warp] = mean;
        shared[2 * BLOCK_SUM_SCRATCH + warp] = m2;
    }
    __syncthreads();
    if (warp == 0) {
        const bool mine = lane < warps;
        n = mine ? shared[lane] : 0.0f;
        mean = mine ? shared[BLOCK_SUM_SCRATCH + lane] : 0.0f;
        m2 = mine ? shared[2 * BLOCK_SUM_SCRATCH + lane] : 0.0f;
        warp_merge_moments(n, mean, m2, 32u);
    }
}

extern "C" __global__ void batchnorm2d_partial_stats(float* __restrict__ partial, const float* __restrict__ x,
                                                     int N, int C, int HW, int chunk)
{
    __shared__ float moments[3 * BLOCK_SUM_SCRATCH];
    const int c = blockIdx.x, g = blockIdx.y;
    const int M = N * HW;
    const int begin = g * chunk;
    const int end = begin + chunk < M ? begin + chunk : M;
    float count = 0.0f, mean = 0.0f, m2 = 0.0f;
    const int j0 = begin + (int)threadIdx.x;
    if (j0 < end) {
        PlaneWalk at(j0, blockDim.x, HW);
        const float shift = x[((size_t)at.q * C + c) * HW + at.p];
        float s1 = 0.0f, s2 = 0.0f;
        int k = 0;
        for (int j = j0; j < end; j += blockDim.x, at.next(), ++k) {
            const float d = x[((size_t)at.q * C + c) * HW + at.p] - shift;
            s1 += d;
            s2 += d * d;
        }
        count = (float)k;
        mean = shift + s1 / count;
        m2 = fmaxf(s2 - s1 * (s1 / count), 0.0f);
    }
    block_merge_moments(count, mean, m2, moments);
    if (threadIdx.x == 0) {
        partial[((size_t)c * gridDim.y + g) * 2] = mean;
        partial[((size_t)c * gridDim.y + g) * 2 + 1] = m2;
    }
}

extern "C" __global__ void batchnorm2d_finalize_stats(float* __restrict__ mean_out, float* __restrict__ invstd_out,
                                                      float* __restrict__ var_out, float* __restrict__ running_mean,
                                                      float* __restrict__ running_var,
                                                      const float* __restrict__ partial, int chunks, int M,
                                                      int chunk, float eps, float momentum, int update_running)
{
    __shared__ float moments[3 * BLOCK_SUM_SCRATCH];
    const int c = blockIdx.x;
    float count = 0.0f, mean = 0.0f, m2 = 0.0f;
    // Thread t merges chunks t, t + blockDim.x, ... in ascending order, then the tree.
    for (int g = threadIdx.x; g < chunks; g += blockDim.x) {
        const int begin = g * chunk;
        const float n = (float)((begin + chunk < M ? begin + chunk : M) - begin);
        const float* pg = partial + ((size_t)c * chunks + g) * 2;
        chan_merge(count, mean, m2, n, pg[0], pg[1]);
    }
    block_merge_moments(count, mean, m2, moments);
    if (threadIdx.x == 0) {
        const float var = m2 / (float)M;
        const float unbiased = M > 1 ? m2 / (float)(M - 1) : GPUCNN_NAN;
        mean_out[c] = mean;
        invstd_out[c] = 1.0f / sqrtf(var + eps);
        var_out[c] = unbiased;
        if (update_running) {
            const float keep = 1.0f - momentum;
            running_mean[c] = keep * running_mean[c] + momentum * mean;
            running_var[c] = keep * running_var[c] + momentum * unbiased;
        }
    }
}

// y = act(x * scale[c] + shift[c]) over the flat NCHW array, channel tracked by PlaneWalk.
static __device__ __forceinline__ void bn_affine(float* __restrict__ y, const float* __restrict__ x,
                                                 const float* __restrict__ gamma, const float* __restrict__ beta,
                                                 const float* __restrict__ center, const float* __restrict__ invstd,
                                                 const float* __restrict__ var, float eps, int N, int C, int HW,
                                                 int act)
{
    const int total = N * C * HW;
    const int step = gridDim.x * blockDim.x;
    const int i0 = blockIdx.x * blockDim.x + threadIdx.x;
    if (i0 >= total) return;
    PlaneWalk at(i0, step, HW);
    int c = at.q % C;
    const int dc = at.dq % C;
    for (int i = i0; i < total; i += step) {
        const float is = invstd ? invstd[c] : 1.0f / sqrtf(var[c] + eps);
        const float scale = is * gamma[c];
        y[i] = bn_activate((x[i] - center[c]) * scale + beta[c], act);
        c += dc + at.next();
        if (c >= C) c -= C;
    }
}

extern "C" __global__ void batchnorm2d_normalize(float* __restrict__ y, const float* __restrict__ x,
                                                 const float* __restrict__ gamma, const float* __restrict__ beta,
                                                 const float* __restrict__ mean, const float* __restrict__ invstd,
                                                 int N, int C, int HW, int act)
{
    bn_affine(y, x, gamma, beta, mean, invstd, nullptr, 0.0f, N, C, HW, act);
}

extern "C" __global__ void batchnorm2d_inference(float* __restrict__ y, const float* __restrict__ x,
                                                 const float* __restrict__ gamma, const float* __restrict__ beta,
                                                 const float* __restrict__ running_mean,
                                                 const float* __restrict__ running_var,
                                                 int N, int C, int HW, float eps, int act)
{
    bn_affine(y, x, gamma, beta, running_mean, nullptr, running_var, eps, N, C, HW, act);
}

extern "C" __global__ void batchnorm2d_backward_partial(float* __restrict__ partial, const float* __restrict__ dy,
                                                        const float* __restrict__ x,
                                                        const float* __restrict__ gamma,
                                                        const float* __restrict__ beta,
                                                        const float* __restrict__ mean,
                                                        const float* __restrict__ invstd,
                                                        int N, int C, int HW, int chunk, int act)
{
    __shared__ float scratch[2 * BLOCK_SUM_SCRATCH];
    const int c = blockIdx.x, g = blockIdx.y, chunks = gridDim.y;
    const int M = N * HW;
    const int begin = g * chunk;
    const int end = begin + chunk < M ? begin + chunk : M;
    const float mu = mean[c], is = invstd[c], ga = gamma[c], be = beta[c];
    float sum_dz = 0.0f, sum_dz_xhat = 0.0f;
    const int j0 = begin + (int)threadIdx.x;
    if (j0 < end) {
        PlaneWalk at(j0, blockDim.x, HW);
        for (int j = j0; j < end; j += blockDim.x, at.next()) {
            const size_t k = ((size_t)at.q * C + c) * HW + at.p;
            const float xhat = (x[k] - mu) * is;
            const float dz = bn_activation_grad(dy[k], xhat * ga + be, act);
            sum_dz += dz;
            sum_dz_xhat += dz * xhat;
        }
    }
    block_sum2(sum_dz, sum_dz_xhat, scratch);
    if (threadIdx.x == 0) {
        partial[(size_t)c * chunks + g] = sum_dz;
        partial[((size_t)C + c) * chunks + g] = sum_dz_xhat;
    }
}

extern "C" __global__ void batchnorm2d_backward_dx(float* __restrict__ dx, const float* __restrict__ dy,
                                                   const float* __restrict__ x, const float* __restrict__ gamma,
                                                   const float* __restrict__ beta, const float* __restrict__ mean,
                                                   const float* __restrict__ invstd, const float* __restrict__ sums,
                                                   int N, int C, int HW, int act)
{
    const int total = N * C * HW;
    const int step = gridDim.x * blockDim.x;
    const int i0 = blockIdx.x * blockDim.x + threadIdx.x;
    if (i0 >= total) return;
    const float M = (float)(N * HW);
    PlaneWalk at(i0, step, HW);
    int c = at.q % C;
    const int dc = at.dq % C;
    for (int i = i0; i < total; i += step) {
        const float is = invstd[c], ga = gamma[c];
        const float xhat = (x[i] - mean[c]) * is;
        const float dz = bn_activation_grad(dy[i], xhat * ga + beta[c], act);
        dx[i] = ga * is / M * (M * dz - sums[c] - xhat * sums[C + c]);
        c += dc + at.next();
        if (c >= C) c -= C;
    }
}
