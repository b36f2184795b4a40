"""SGD parameter update on NumPy (in place)."""

from __future__ import annotations

import numpy as np


def sgd_update(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    """param -= lr * step, in place; velocity (None when momentum == 0) updated in place.

    g = grad + weight_decay * param; with momentum v = momentum*v + g and
    step = g + momentum*v (nesterov) or v; without momentum step = g.
    ``lr``: a number, or a 1-element array holding it (what a CUDA-graph step passes the
    kernel ops; here its value is read on the host, as the float32 the kernel would read).
    """
    if hasattr(lr, "shape"):
        lr = float(np.asarray(lr).reshape(-1)[0])
    g = grad + weight_decay * param if weight_decay else grad
    if momentum:
        velocity *= momentum
        velocity += g
        step = g + momentum * velocity if nesterov else velocity
    else:
        step = g
    param -= lr * step
