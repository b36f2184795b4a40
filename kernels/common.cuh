// common.cuh: small device helpers shared by several kernel files.
//
// GPUCNN_INFINITY, GPUCNN_NAN: float +inf and a quiet NaN.
//
// Block reductions: warp shuffles inside each warp, then one shared-memory hand-off between
// the warps. blockDim.x must be a power of two <= 1024 (a block smaller than a warp reduces
// over its own lanes). The order of every addition is fixed by the lane and warp numbers, so
// results are bit-identical from run to run (no atomics).
//   warp_sum(v): xor butterfly over the block's warp width; float addition commutes, so every
//     lane ends with the same total.
//   block_sum(v, scratch): the block's total in every thread; `scratch` a __shared__ array of
//     at least BLOCK_SUM_SCRATCH floats. Every thread must call it (it contains barriers).
//   block_sum2(a, b, scratch): two totals at once (one pair of barriers), scratch of
//     2 * BLOCK_SUM_SCRATCH floats.
#pragma once

// NVRTC has no <math.h>: spell the IEEE special values out.
#define GPUCNN_INFINITY __int_as_float(0x7f800000)
#define GPUCNN_NAN __int_as_float(0x7fffffff)

// One float per warp of the largest block (1024 threads / 32).
#define BLOCK_SUM_SCRATCH 32

// Lanes of a warp that a block uses: 32, or blockDim.x when the block is smaller than a warp.
static __device__ __forceinline__ unsigned int block_warp_lanes()
{
    return blockDim.x < 32u ? blockDim.x : 32u;
}

static __device__ __forceinline__ unsigned int lane_mask(unsigned int lanes)
{
    return lanes >= 32u ? 0xffffffffu : (1u << lanes) - 1u;
}

static __device__ __forceinline__ float warp_sum(float v, unsigned int lanes)
{
    const unsigned int mask = lane_mask(lanes);
    for (unsigned int offset = lanes / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(mask, v, offset);
    return v;
}

static __device__ __forceinline__ float block_sum(float value, float* scratch)
{
    const unsigned int lanes = block_warp_lanes();
    value = warp_sum(value, lanes);
    const unsigned int warps = blockDim.x / lanes;
    if (warps == 1) return value;  // the same for every thread of the block
    const unsigned int lane = threadIdx.x & 31u;
    if (lane == 0) scratch[threadIdx.x >> 5] = value;
    __syncthreads();
    value = warp_sum(lane < warps ? scratch[lane] : 0.0f, 32u);
    __syncthreads();  // scratch may be reused right after
    return value;
}

static __device__ __forceinline__ void block_sum2(float& a, float& b, float* scratch)
{
    const unsigned int lanes = block_warp_lanes();
    a = warp_sum(a, lanes);
    b = warp_sum(b, lanes);
    const unsigned int warps = blockDim.x / lanes;
    if (warps == 1) return;
    const unsigned int lane = threadIdx.x & 31u;
    if (lane == 0) {
        scratch[threadIdx.x >> 5] = a;
        scratch[BLOCK_SUM_SCRATCH + (threadIdx.x >> 5)] = b;
    }
    __syncthreads();
    a = warp_sum(lane < warps ? scratch[lane] : 0.0f, 32u);
    b = warp_sum(lane < warps ? scratch[BLOCK_SUM_SCRATCH + lane] : 0.0f, 32u);
    __syncthreads();
}
