"""The NumPy backend's ops: every function named in ``gpucnn.ops.ALL_OPS``.

Vectorized NumPy in float32 or float64 (the dtype of the inputs is kept); the
reference every CUDA kernel is checked against. The parts live in np_*.py.
"""

from gpucnn.ops import ACTIVATIONS, np_activations
from gpucnn.ops.np_activations import (  # noqa: F401
    dropout_backward,
    dropout_forward,
    dropout_keep_uniform,
    erf_np,
    erfc_np,
    lowbias32,
)
from gpucnn.ops.np_conv import (  # noqa: F401
    conv2d_backward_bias,
    conv2d_backward_data,
    conv2d_backward_filter,
    conv2d_forward,
    im2col,
)
from gpucnn.ops.np_dense import dense_backward, dense_forward  # noqa: F401
from gpucnn.ops.np_losses import (  # noqa: F401
    mse_backward,
    mse_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from gpucnn.ops.np_norm import (  # noqa: F401
    batchnorm2d_backward,
    batchnorm2d_forward,
    batchnorm2d_inference,
)
from gpucnn.ops.np_optim import sgd_update  # noqa: F401
from gpucnn.ops.np_pool import (  # noqa: F401
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

# Every activation pair of the op contract, taken from np_activations by name.
for _activation in ACTIVATIONS:
    for _op in _activation.ops:
        globals()[_op] = getattr(np_activations, _op)
del _activation, _op
