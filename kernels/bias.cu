// bias.cu: per-channel bias addition and per-channel sums (bias gradients).
//
// Layout: a tensor viewed as (N, C, P), C-contiguous, P = H*W for conv maps (NCHW) and
// P = 1 for dense activations (N, C).
//
// add_channel_bias: y[n, c, p] += b[c]; one thread per element, grid-stride loop.
// channel_sum: out[c] = sum over n, p of x[n, c, p] (conv and dense bias gradient);
//   one block per channel (blockIdx.x = c), blockDim.x a power of two; each thread sums a
//   strided slice, then common.cuh's block_sum (warp shuffles in a fixed order, no atomics,
//   so the result is bit-identical from run to run).
// channel_partial_sum: first pass of channel_sum when a few channels hold many elements
//   (LeNet's 6 channels x 128 images): block (c, g) (blockIdx.x = c, blockIdx.y = g) sums
//   images [g*per_block, (g+1)*per_block) of channel c into partial[c, g]; channel_sum over
//   partial viewed as (1, C, groups) finishes. Same block_sum, still no atomics.
#include "common.cuh"

extern "C" __global__ void add_channel_bias(float* __restrict__ y, const float* __restrict__ b,
                                            int N, int C, int P)
{
    const int total = N * C * P;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        y[i] += b[(i / P) % C];
    }
}

extern "C" __global__ void channel_sum(float* __restrict__ out, const float* __restrict__ x,
                                       int N, int C, int P)
{
    __shared__ float scratch[BLOCK_SUM_SCRATCH];
    const int c = blockIdx.x;
    const int count = N * P;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
        const int n = i / P;
        const int p = i - n * P;
        acc += x[(n * C + c) * P + p];
    }
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[c] = total;
}

extern "C" __global__ void channel_partial_sum(float* __restrict__ partial, const float* __restrict__ x,
                                               int N, int C, int P, int per_block)
{
    __shared__ float scratch[BLOCK_SUM_SCRATCH];
    const int c = blockIdx.x, g = blockIdx.y;
    const int n0 = g * per_block;
    const int n1 = n0 + per_block < N ? n0 + per_block : N;
    const int count = (n1 - n0) * P;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
        const int dn = i / P;
        acc += x[((size_t)(n0 + dn) * C + c) * P + (i - dn * P)];
    }
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[c * gridDim.y + g] = total;
}
