// sgd.cu: the SGD parameter update, in place.
//
// Layout: param, velocity, grad: flat float32 arrays of n elements (velocity unused and
// may alias param when has_velocity == 0). One thread per element, grid-stride loop.
//   g = grad + weight_decay * param
//   with momentum:  v = momentum * v + g;  step = nesterov ? g + momentum * v : v
//   without:        step = g
//   param -= lr * step
//
// Two entry points share one body (sgd_update_body): sgd_update takes lr by value (the
// eager path: no extra memory read), sgd_update_dev reads it from device memory (lr[0]),
// so a CUDA graph that captured the launch sees the lr the host wrote before each replay.
// The lr there is the param's full rate (base lr times its group's lr_scale, rounded to
// float32 on the host), exactly the value sgd_update would get, so both agree bit for bit.

static __device__ __forceinline__ void sgd_update_body(float* __restrict__ param, float* __restrict__ velocity,
                                                       const float* __restrict__ grad, int n, float lr,
                                                       float momentum, float weight_decay, int nesterov,
                                                       int has_velocity)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float g = grad[i] + weight_decay * param[i];
        float step = g;
        if (has_velocity) {
            const float v = momentum * velocity[i] + g;
            velocity[i] = v;
            step = nesterov ? g + momentum * v : v;
        }
        param[i] -= lr * step;
    }
}

extern "C" __global__ void sgd_update(float* __restrict__ param, float* __restrict__ velocity,
                                      const float* __restrict__ grad, int n, float lr, float momentum,
                                      float weight_decay, int nesterov, int has_velocity)
{
    sgd_update_body(param, velocity, grad, n, lr, momentum, weight_decay, nesterov, has_velocity);
}

extern "C" __global__ void sgd_update_dev(float* __restrict__ param, float* __restrict__ velocity,
                                          const float* __restrict__ grad, int n, const float* __restrict__ lr,
                                          float momentum, float weight_decay, int nesterov, int has_velocity)
{
    sgd_update_body(param, velocity, grad, n, lr[0], momentum, weight_decay, nesterov, has_velocity);
}
