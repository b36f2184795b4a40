// sgd.cu: the SGD parameter update, in place.
//
// Layout: param, velocity, grad: flat float32 arrays of n elements (velocity unused and
// may alias param when has_velocity == 0). One thread per element, grid-stride loop.
//   g = grad + weight_decay * param
//   with momentum:  v = momentum * v + g;  step = nesterov ? g + momentum * v : v
//   without:        step = g
//   param -= lr * step
extern "C" __global__ void sgd_update(float* __restrict__ param, float* __restrict__ velocity,
                                      const float* __restrict__ grad, int n, float lr, float momentum,
                                      float weight_decay, int nesterov, int has_velocity)
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
