// losses.cu: softmax cross-entropy with label smoothing, and the MSE gradient.
//
// Layout: logits/probs/dlogits (N, K) row-major float32; labels (N,) int32.
// Target t_k = (1 - eps) * [k == label] + eps / K.
//
// softmax_xent_forward: one thread per row (grid-stride over rows). Writes probs and the
//   row loss -sum_k t_k log p_k = lse - sum_k t_k z_k with lse = max + log sum exp(z - max)
//   (stable, no log of a rounded-to-zero probability). A label outside [0, K) makes that
//   row's loss NaN, so a bad batch shows up as a non-finite loss rather than a wrong one.
//   The batch mean is taken on the device by reduce.cu:scaled_sum.
// softmax_xent_backward: one thread per element: dlogits = (p - t) * inv_n.
// mse_backward: one thread per element: dpred = (pred - target) * scale, scale = 2 / size.
//   (The MSE loss itself is reduce.cu:scaled_sum_sq_diff.)
#include "common.cuh"

extern "C" __global__ void softmax_xent_forward(float* __restrict__ probs, float* __restrict__ row_loss,
                                                const float* __restrict__ logits,
                                                const int* __restrict__ labels,
                                                int N, int K, float smoothing)
{
    for (int row = blockIdx.x * blockDim.x + threadIdx.x; row < N; row += gridDim.x * blockDim.x) {
        const float* z = logits + (size_t)row * K;
        float* p = probs + (size_t)row * K;
        float zmax = -GPUCNN_INFINITY;
        for (int k = 0; k < K; ++k) zmax = fmaxf(zmax, z[k]);
        float total = 0.0f, zsum = 0.0f;
        for (int k = 0; k < K; ++k) {
            total += expf(z[k] - zmax);
            zsum += z[k];
        }
        const float lse = zmax + logf(total);
        for (int k = 0; k < K; ++k) p[k] = expf(z[k] - lse);
        const int label = labels[row];
        if (label < 0 || label >= K) {
            row_loss[row] = GPUCNN_NAN;
        } else {
            row_loss[row] = lse - (1.0f - smoothing) * z[label] - (smoothing / K) * zsum;
        }
    }
}

extern "C" __global__ void softmax_xent_backward(float* __restrict__ dlogits, const float* __restrict__ probs,
                                                 const int* __restrict__ labels,
                                                 int N, int K, float smoothing, float inv_n)
{
    const int total = N * K;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int row = i / K;
        const int k = i - row * K;
        const float t = (k == labels[row] ? 1.0f - smoothing : 0.0f) + smoothing / K;
        dlogits[i] = (probs[i] - t) * inv_n;
    }
}

extern "C" __global__ void mse_backward(float* __restrict__ dpred, const float* __restrict__ pred,
                                        const float* __restrict__ target, int n, float scale)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        dpred[i] = (pred[i] - target[i]) * scale;
    }
}
