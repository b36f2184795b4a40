// activations.cu: element-wise activation functions and inverted dropout.
//
// Layout: any shape, treated as a flat C-contiguous array of n float32 elements.
// Thread mapping: one thread per element, grid-stride loop (any grid size is correct).
// Forward kernels write y from x; backward kernels write dx from dy and what the layer
// cached (y for relu/sigmoid/tanh, x for softplus/gelu/silu, the mask for dropout).
//
// Dropout: for flat index i and seed s (uint32), h = lowbias32(lowbias32(i) ^ s) and
// u = (h >> 8) * 2^-24; an element is kept iff u >= p, i.e. iff (h >> 8) >= keep_threshold
// where keep_threshold = ceil(p * 2^24) is computed exactly on the host (comparing in
// integers gives the same decision as the float64 reference for every p).

#define GRID_STRIDE_LOOP(i, n) \
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += gridDim.x * blockDim.x)

static __device__ __forceinline__ float stable_sigmoid(float x)
{
    const float e = expf(-fabsf(x));  // <= 1, never overflows
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

static __device__ __forceinline__ unsigned int lowbias32(unsigned int x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

extern "C" __global__ void relu_forward(float* __restrict__ y, const float* __restrict__ x, int n)
{
    GRID_STRIDE_LOOP(i, n) { y[i] = x[i] > 0.0f ? x[i] : 0.0f; }
}

extern "C" __global__ void relu_backward(float* __restrict__ dx, const float* __restrict__ dy,
                                         const float* __restrict__ y, int n)
{
    GRID_STRIDE_LOOP(i, n) { dx[i] = y[i] > 0.0f ? dy[i] : 0.0f; }
}

extern "C" __global__ void sigmoid_forward(float* __restrict__ y, const float* __restrict__ x, int n)
{
    GRID_STRIDE_LOOP(i, n) { y[i] = stable_sigmoid(x[i]); }
}

extern "C" __global__ void sigmoid_backward(float* __restrict__ dx, const float* __restrict__ dy,
                                            const float* __restrict__ y, int n)
{
    GRID_STRIDE_LOOP(i, n) { dx[i] = dy[i] * y[i] * (1.0f - y[i]); }
}

extern "C" __global__ void tanh_forward(float* __restrict__ y, const float* __restrict__ x, int n)
{
    GRID_STRIDE_LOOP(i, n) { y[i] = tanhf(x[i]); }
}

extern "C" __global__ void tanh_backward(float* __restrict__ dx, const float* __restrict__ dy,
                                         const float* __restrict__ y, int n)
{
    GRID_STRIDE_LOOP(i, n) { dx[i] = dy[i] * (1.0f - y[i] * y[i]); }
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)): exact for large |x|, no overflow.
extern "C" __global__ void softplus_forward(float* __restrict__ y, const float* __restrict__ x, int n)
{
    GRID_STRIDE_LOOP(i, n) { y[i] = fmaxf(x[i], 0.0f) + log1pf(expf(-fabsf(x[i]))); }
}

extern "C" __global__ void softplus_backward(float* __restrict__ dx, const float* __restrict__ dy,
                                             const float* __restrict__ x, int n)
{
    GRID_STRIDE_LOOP(i, n) { dx[i] = dy[i] * stable_sigmoid(x[i]); }
}

// gelu(x) = x * Phi(x), Phi(x) = 0.5 * erfc(-x / sqrt(2)) (erfc keeps the left tail accurate).
extern "C" __global__ void gelu_forward(float* __restrict__ y, const float* __restrict__ x, int n)
{
    GRID_STRIDE_LOOP(i, n) { y[i] = x[i] * 0.5f * erfcf(-x[i] * 0.70710678118654752f); }
}

// d/dx gelu = Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
extern "C" __global__ void gelu_backward(float* __restrict__ dx, const float* __restrict__ dy,
                                         const float* __restrict__ x, int n)
{
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        const float cdf = 0.5f * erfcf(-v * 0.70710678118654752f);
        const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}

// silu(x) = x * sigmoid(x); d/dx = s * (1 + x * (1 - s)).
extern "C" __global__ void silu_forward(float* __restrict__ y, const float* __restrict__ x, int n)
{
    GRID_STRIDE_LOOP(i, n) { y[i] = x[i] * stable_sigmoid(x[i]); }
}

extern "C" __global__ void silu_backward(float* __restrict__ dx, const float* __restrict__ dy,
                                         const float* __restrict__ x, int n)
{
    GRID_STRIDE_LOOP(i, n) {
        const float s = stable_sigmoid(x[i]);
        dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

// dropout_forward takes the seed by value (eager steps); dropout_forward_dev reads it from
// device memory (seed[0]), so a captured CUDA graph draws a new mask each replay. One body.
static __device__ __forceinline__ void dropout_forward_body(float* __restrict__ y, float* __restrict__ mask,
                                                            const float* __restrict__ x, int n, unsigned int seed,
                                                            unsigned int keep_threshold, float scale)
{
    GRID_STRIDE_LOOP(i, n) {
        const unsigned int h = lowbias32(lowbias32((unsigned int)i) ^ seed);
        const float m = (h >> 8) >= keep_threshold ? scale : 0.0f;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

extern "C" __global__ void dropout_forward(float* __restrict__ y, float* __restrict__ mask,
                                           const float* __restrict__ x, int n,
                                           unsigned int seed, unsigned int keep_threshold, float scale)
{
    dropout_forward_body(y, mask, x, n, seed, keep_threshold, scale);
}

extern "C" __global__ void dropout_forward_dev(float* __restrict__ y, float* __restrict__ mask,
                                               const float* __restrict__ x, int n,
                                               const unsigned int* __restrict__ seed, unsigned int keep_threshold,
                                               float scale)
{
    dropout_forward_body(y, mask, x, n, seed[0], keep_threshold, scale);
}

extern "C" __global__ void dropout_backward(float* __restrict__ dx, const float* __restrict__ dy,
                                            const float* __restrict__ mask, int n)
{
    GRID_STRIDE_LOOP(i, n) { dx[i] = dy[i] * mask[i]; }
}
