"""Central differences in float64: the reference the gradient checks compare backward passes to."""

import numpy as np

H = 1e-6


def relative_error(analytic, numeric):
    """||a - n|| / (||a|| + ||n||): entry-wise ratios would blow up on near-zero entries."""
    scale = max(np.linalg.norm(analytic) + np.linalg.norm(numeric), 1e-12)
    return float(np.linalg.norm(analytic - numeric) / scale)


def numeric_grad(f, v):
    """d f() / d v by (f(v + H) - f(v - H)) / 2H at every entry; ``v`` is perturbed in place and restored."""
    g = np.zeros_like(v)
    for idx in np.ndindex(v.shape):
        old = v[idx]
        v[idx] = old + H
        plus = f()
        v[idx] = old - H
        minus = f()
        v[idx] = old
        g[idx] = (plus - minus) / (2 * H)
    return g
