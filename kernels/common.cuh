// common.cuh: small device helpers shared by several kernel files.
//
// GPUCNN_INFINITY, GPUCNN_NAN: float +inf and a quiet NaN.
//
// block_sum: deterministic tree reduction over the threads of a block. blockDim.x must be a
// power of two <= 1024 and `scratch` a __shared__ array of at least blockDim.x floats.
// Every thread of the block must call it (it contains barriers); all get the total.
#pragma once

// NVRTC has no <math.h>: spell the IEEE special values out.
#define GPUCNN_INFINITY __int_as_float(0x7f800000)
#define GPUCNN_NAN __int_as_float(0x7fffffff)

static __device__ __forceinline__ float block_sum(float value, float* scratch)
{
    const unsigned int t = threadIdx.x;
    scratch[t] = value;
    __syncthreads();
    for (unsigned int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (t < half) scratch[t] += scratch[t + half];
        __syncthreads();
    }
    const float total = scratch[0];
    __syncthreads();  // scratch may be reused right after
    return total;
}
