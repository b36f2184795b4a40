"""Fully connected layer on NumPy. x (N, I), w (O, I), b (O,), y (N, O).

``precision`` (fp32, tf32 or bf16) rounds the operands of each GEMM as in np_conv; the
bias and its gradient (a plain sum of dy) stay full precision.
"""

from __future__ import annotations

from gpucnn.ops.np_conv import gemm_activation, round_operands


def dense_forward(x, w, b, activation=None, precision="fp32"):
    """y (N, O) = act(x @ w.T + b)."""
    x, w = round_operands(precision, x, w)
    y = x @ w.T
    if b is not None:
        y += b
    return gemm_activation("dense_forward", activation, y)


def dense_backward(dy, x, w, precision="fp32"):
    """(dx (N, I), dw (O, I), db (O,)) for dy (N, O)."""
    db = dy.sum(axis=0)
    dy, x, w = round_operands(precision, dy, x, w)
    return dy @ w, dy.T @ x, db
