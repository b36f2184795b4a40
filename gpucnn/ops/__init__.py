"""The op interface: one function per operation, same signature on every backend.

Implementations:
  - ``gpucnn.ops.numpy_ops``  (module)  vectorized NumPy; the reference. float32/float64.
  - ``gpucnn.ops.kernel_ops.KernelOps(launcher, xp)``  kernels/*.cu launched on the GPU
    (CudaLauncher, xp=cupy) or on the CPU emulation (EmulatedLauncher, xp=numpy). float32.

Layers reach them as ``get_backend().ops.<name>(...)``. Arrays are NCHW and C-contiguous;
``stride``, ``padding``, ``kernel`` are ``(h, w)`` tuples of ints (layers normalize ints).
Every function returns new arrays unless it says "in place".

Convolution (cross-correlation), x: (N, C, H, W), w: (O, C, KH, KW), b: (O,) or None,
OH = (H + 2*ph - KH)//sh + 1, OW likewise:
  conv2d_forward(x, w, b, stride, padding, activation=None) -> y (N, O, OH, OW)
      ``activation``: None or a name in ``GEMM_FUSED_ACTIVATIONS`` ("relu"), applied to
      the biased sum (y = act(conv + b)); the kernel backends apply it in the GEMM's epilogue
  conv2d_backward_data(dy, w, x_shape, stride, padding) -> dx (N, C, H, W)
  conv2d_backward_filter(dy, x, w_shape, stride, padding) -> dw (O, C, KH, KW)
  conv2d_backward_bias(dy) -> db (O,)                      sum over N, OH, OW

Pooling, x: (N, C, H, W) -> y: (N, C, OH, OW):
  maxpool2d_forward(x, kernel, stride, padding) -> (y, argmax)
      argmax: int32 (N, C, OH, OW), the flat index ``h*W + w`` of the window's maximum
      inside its input plane. Padding is -inf. Ties: first maximum in row-major window order.
  maxpool2d_backward(dy, argmax, x_shape, kernel=None, stride=None, padding=None) -> dx
      scatter-add dy to argmax. The optional window geometry lets the kernel backends run
      a deterministic gather when ``ops.deterministic`` is set (KernelOps attribute;
      without geometry they run an ordered per-plane scatter): each dx is then the float32
      sum over its windows in row-major order, bit-identical from run to run. Pools whose
      windows do not overlap (stride >= kernel) are exact on every path.
  avgpool2d_forward(x, kernel, stride, padding) -> y       padding counts as zeros,
      divisor is always KH*KW
  avgpool2d_backward(dy, x_shape, kernel, stride, padding) -> dx

Dense, x: (N, I), w: (O, I), b: (O,):
  dense_forward(x, w, b, activation=None) -> y (N, O)      y = act(x @ w.T + b), act as for conv
  dense_backward(dy, x, w) -> (dx (N, I), dw (O, I), db (O,))

Activations (any shape), one pair per entry of ``ACTIVATIONS`` below; backward takes what
the layer cached (the output y or the input x, as the entry says):
  relu_forward(x) -> y;      relu_backward(dy, y) -> dx
  sigmoid_forward(x) -> y;   sigmoid_backward(dy, y) -> dx
  tanh_forward(x) -> y;      tanh_backward(dy, y) -> dx
  softplus_forward(x) -> y;  softplus_backward(dy, x) -> dx     (stable for large |x|)
  gelu_forward(x) -> y;      gelu_backward(dy, x) -> dx         (exact erf form)
  silu_forward(x) -> y;      silu_backward(dy, x) -> dx         (x * sigmoid(x), a.k.a. Swish)
  dropout_forward(x, p, seed) -> (y, mask)                 inverted dropout; ``mask`` holds
      0 or 1/(1-p), drawn from a counter-based hash of (seed, flat index) that every
      backend computes identically (see numpy_ops.dropout_keep_uniform); seed: int in [0, 2**32)
  dropout_backward(dy, mask) -> dx

Losses, logits: (N, K) float, labels: (N,) int32/int64 in [0, K):
  softmax_cross_entropy_forward(logits, labels, label_smoothing) -> (loss, probs)
      loss: 0-d array, mean over the batch of -sum_k t_k log p_k with
      t = (1 - eps) * onehot + eps / K; probs: (N, K)
  softmax_cross_entropy_backward(probs, labels, label_smoothing) -> dlogits = (probs - t) / N
  mse_forward(pred, target) -> loss (0-d): mean over all elements of (pred - target)**2
  mse_backward(pred, target) -> dpred = 2 * (pred - target) / pred.size

Optimizer:
  sgd_update(param, grad, velocity, lr, momentum, nesterov, weight_decay) -> None, in place
      g = grad + weight_decay * param;  if momentum: velocity = momentum*velocity + g and
      step = g + momentum*velocity if nesterov else velocity; else step = g;
      param -= lr * step.  ``velocity`` is None when momentum == 0.

Batch normalization (per channel over N, H, W), x: (N, C, H, W), gamma/beta: (C,):
  batchnorm2d_forward(x, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.1,
                      activation=None) -> (y, mean (C,), invstd (C,), var_unbiased (C,))
      running_mean/running_var (C,), when given, are updated in place (both or neither):
      running = (1 - momentum) * running + momentum * batch, unbiased batch variance.
  batchnorm2d_inference(x, gamma, beta, running_mean, running_var, eps, activation=None) -> y
  batchnorm2d_backward(dy, x, gamma, mean, invstd, beta=None, activation=None) -> (dx, dgamma, dbeta)
  ``activation``: None or a name in ``BN_FUSED_ACTIVATIONS`` below ("relu", "gelu"), applied to
  the normalized output (y = act(xhat * gamma + beta)); backward then takes dy of act's output
  and needs ``beta`` to recompute act's input. On the kernel backends the statistics and
  dgamma/dbeta are deterministic two-stage reductions over many blocks per channel
  (``bn_chunk``/``bn_target_blocks``/``bn_min_chunk`` on KernelOps choose the chunks).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Activation:
    """One element-wise activation: ops ``{name}_forward(x)`` and ``{name}_backward(dy, cached)``.

    ``cached`` is what backward takes: "output" (y) or "input" (x). ``layer`` is the class
    name of its layer in gpucnn.layers, which is also its torch.nn module's name; ``name``
    is its config ``type`` and torch.nn.functional's name. Adding an activation means an
    entry here, its NumPy pair in np_activations.py and its kernel pair in kernels/activations.cu.
    """

    name: str
    cached: str
    layer: str

    @property
    def ops(self) -> tuple[str, str]:
        return (f"{self.name}_forward", f"{self.name}_backward")


ACTIVATIONS = (
    Activation("relu", "output", "ReLU"),
    Activation("sigmoid", "output", "Sigmoid"),
    Activation("tanh", "output", "Tanh"),
    Activation("softplus", "input", "Softplus"),
    Activation("gelu", "input", "GELU"),
    Activation("silu", "input", "SiLU"),
)

# The activations batchnorm2d_* can apply inside their normalize kernel (and recompute in the
# backward); the kernels' act codes are their index + 1, 0 meaning none (np_norm.bn_activation_code).
# The model's fusion plan (gpucnn.fusion) folds a BatchNorm2D + one of these layers from here.
BN_FUSED_ACTIVATIONS = ("relu", "gelu")

# The activations conv2d_forward/dense_forward can apply in their epilogue (the GEMM kernels'
# relu flag); a Conv2D/Dense layer absorbs the layer of one of these right after it. Their
# backward reads the output (ReLU's mask), which the absorbing layer keeps.
GEMM_FUSED_ACTIVATIONS = ("relu",)


def fused_activation_code(op: str, activation, allowed: tuple[str, ...]) -> int:
    """0 for None, else 1 + the index of ``activation`` in ``allowed`` (the kernels' act code);
    a name outside ``allowed`` is a ValueError naming the op."""
    if activation is None:
        return 0
    if activation not in allowed:
        raise ValueError(f"{op}: activation {activation!r} cannot be fused; expected None or one of "
                         f"{', '.join(allowed)}")
    return 1 + allowed.index(activation)


def gemm_relu(op: str, activation) -> bool:
    """Whether ``op``'s epilogue applies ReLU (the one entry of GEMM_FUSED_ACTIVATIONS)."""
    return fused_activation_code(op, activation, GEMM_FUSED_ACTIVATIONS) != 0

CONV_OPS = (
    "conv2d_forward",
    "conv2d_backward_data",
    "conv2d_backward_filter",
    "conv2d_backward_bias",
)
POOL_OPS = ("maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward")
DENSE_OPS = ("dense_forward", "dense_backward")
ACTIVATION_OPS = tuple(op for a in ACTIVATIONS for op in a.ops) + ("dropout_forward", "dropout_backward")
LOSS_OPS = (
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "mse_forward",
    "mse_backward",
)
OPTIM_OPS = ("sgd_update",)
NORM_OPS = ("batchnorm2d_forward", "batchnorm2d_inference", "batchnorm2d_backward")

# Op families: which ops one benchmark shape family feeds (gpucnn.bench.shapes).
OP_FAMILIES: dict[str, tuple[str, ...]] = {
    "conv": CONV_OPS,
    "pool": POOL_OPS,
    "act": ACTIVATION_OPS,
    "bn": NORM_OPS,
    "dense": DENSE_OPS,
    "loss": LOSS_OPS,
    "sgd": OPTIM_OPS,
}

ALL_OPS = CONV_OPS + POOL_OPS + DENSE_OPS + ACTIVATION_OPS + LOSS_OPS + OPTIM_OPS + NORM_OPS
