"""Fully connected layer on NumPy. x (N, I), w (O, I), b (O,), y (N, O)."""

from __future__ import annotations



def dense_forward(x, w, b):
    """y (N, O) = x @ w.T + b."""
    y = x @ w.T
    if b is not None:
        y += b
    return y


def dense_backward(dy, x, w):
    """(dx (N, I), dw (O, I), db (O,)) for dy (N, O)."""
    return dy @ w, dy.T @ x, dy.sum(axis=0)
