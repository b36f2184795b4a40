// batchnorm.cu: 2-D batch normalization (per channel over N, H, W).
//
// Layout: x, y, dy, dx (N, C, H, W) float32 NCHW; gamma, beta, mean, invstd, var (C,).
// M = N * H * W values per channel.
//
// batchnorm2d_forward: one block per channel (blockIdx.x = c), blockDim.x a power of two.
//   Two passes over the channel with deterministic block reductions: mean, then the biased
//   variance of the centred values (no E[x^2] - E[x]^2 cancellation); then every thread
//   normalizes its slice: y = (x - mean) * invstd * gamma + beta. Writes mean, invstd =
//   1/sqrt(var + eps) and the unbiased variance var * M / (M - 1) (NaN when M == 1).
// batchnorm2d_inference: one thread per element with the running statistics.
// batchnorm2d_backward: one block per channel: dbeta = sum dy, dgamma = sum dy * xhat,
//   dx = gamma * invstd / M * (M * dy - dbeta - xhat * dgamma).
#include "common.cuh"

extern "C" __global__ void batchnorm2d_forward(float* __restrict__ y, float* __restrict__ mean_out,
                                               float* __restrict__ invstd_out, float* __restrict__ var_out,
                                               const float* __restrict__ x, const float* __restrict__ gamma,
                                               const float* __restrict__ beta, int N, int C, int HW, float eps)
{
    __shared__ float scratch[1024];
    const int c = blockIdx.x;
    const int M = N * HW;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < M; i += blockDim.x) {
        const int n = i / HW;
        acc += x[(n * C + c) * HW + (i - n * HW)];
    }
    const float mean = block_sum(acc, scratch) / M;
    acc = 0.0f;
    for (int i = threadIdx.x; i < M; i += blockDim.x) {
        const int n = i / HW;
        const float d = x[(n * C + c) * HW + (i - n * HW)] - mean;
        acc += d * d;
    }
    const float var = block_sum(acc, scratch) / M;
    const float invstd = 1.0f / sqrtf(var + eps);
    const float scale = invstd * gamma[c];
    const float shift = beta[c];
    for (int i = threadIdx.x; i < M; i += blockDim.x) {
        const int n = i / HW;
        const int at = (n * C + c) * HW + (i - n * HW);
        y[at] = (x[at] - mean) * scale + shift;
    }
    if (threadIdx.x == 0) {
        mean_out[c] = mean;
        invstd_out[c] = invstd;
        var_out[c] = M > 1 ? var * ((float)M / (float)(M - 1)) : GPUCNN_NAN;
    }
}

extern "C" __global__ void batchnorm2d_inference(float* __restrict__ y, const float* __restrict__ x,
                                                 const float* __restrict__ gamma, const float* __restrict__ beta,
                                                 const float* __restrict__ running_mean,
                                                 const float* __restrict__ running_var,
                                                 int N, int C, int HW, float eps)
{
    const int total = N * C * HW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int c = (i / HW) % C;
        const float scale = gamma[c] / sqrtf(running_var[c] + eps);
        y[i] = (x[i] - running_mean[c]) * scale + beta[c];
    }
}

extern "C" __global__ void batchnorm2d_backward(float* __restrict__ dx, float* __restrict__ dgamma,
                                                float* __restrict__ dbeta, const float* __restrict__ dy,
                                                const float* __restrict__ x, const float* __restrict__ gamma,
                                                const float* __restrict__ mean, const float* __restrict__ invstd,
                                                int N, int C, int HW)
{
    __shared__ float scratch[1024];
    const int c = blockIdx.x;
    const int M = N * HW;
    const float mu = mean[c];
    const float is = invstd[c];
    float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
    for (int i = threadIdx.x; i < M; i += blockDim.x) {
        const int n = i / HW;
        const int at = (n * C + c) * HW + (i - n * HW);
        sum_dy += dy[at];
        sum_dy_xhat += dy[at] * (x[at] - mu) * is;
    }
    const float db = block_sum(sum_dy, scratch);
    const float dg = block_sum(sum_dy_xhat, scratch);
    const float k = gamma[c] * is / M;
    for (int i = threadIdx.x; i < M; i += blockDim.x) {
        const int n = i / HW;
        const int at = (n * C + c) * HW + (i - n * HW);
        const float xhat = (x[at] - mu) * is;
        dx[at] = k * (M * dy[at] - db - xhat * dg);
    }
    if (threadIdx.x == 0) {
        dgamma[c] = dg;
        dbeta[c] = db;
    }
}
