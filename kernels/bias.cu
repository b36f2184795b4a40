// bias.cu: per-channel bias addition and per-channel sums (bias gradients).
//
// Layout: a tensor viewed as (N, C, P), C-contiguous, P = H*W for conv maps (NCHW) and
// P = 1 for dense activations (N, C).
//
// add_channel_bias: y[n, c, p] += b[c]; one thread per element, grid-stride loop.
// channel_sum: out[c] = sum over n, p of x[n, c, p] (conv and dense bias gradient);
//   one block per channel (blockIdx.x = c), blockDim.x a power of two; each thread sums a
//   strided slice, then a deterministic tree reduction in shared memory (no atomics, so the
//   result is bit-identical from run to run).
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
    __shared__ float scratch[1024];
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
