// reduce.cu: whole-array reductions to one value, computed on the device so a training
// step never copies an intermediate to the host (the loss stays a 0-d device array).
//
// scaled_sum:          out[0] = scale * sum_i x[i]
// scaled_sum_sq_diff:  out[0] = scale * sum_i (a[i] - b[i])^2
// One block (gridDim.x == 1), blockDim.x a power of two; each thread sums a strided slice,
// then common.cuh's deterministic block_sum (warp shuffles, fixed order).
#include "common.cuh"

extern "C" __global__ void scaled_sum(float* __restrict__ out, const float* __restrict__ x,
                                      int n, float scale)
{
    __shared__ float scratch[BLOCK_SUM_SCRATCH];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[0] = scale * total;
}

extern "C" __global__ void scaled_sum_sq_diff(float* __restrict__ out, const float* __restrict__ a,
                                              const float* __restrict__ b, int n, float scale)
{
    __shared__ float scratch[BLOCK_SUM_SCRATCH];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float d = a[i] - b[i];
        acc += d * d;
    }
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[0] = scale * total;
}
