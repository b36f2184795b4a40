"""Straight-from-the-formula loop implementations (slow; tests only).

Conv forward (seed formula, cross-correlation with stride s and zero padding p):
    y[n,o,i,j] = b[o] + sum_{c,m,k} W[o,c,m,k] * x[n,c,i*s+m-p, j*s+k-p]
Every gradient below is that sum differentiated term by term.
"""

from __future__ import annotations

import numpy as np


def _at(x, n, c, r, q):
    """x[n, c, r, q], or 0 outside the image (zero padding)."""
    if 0 <= r < x.shape[2] and 0 <= q < x.shape[3]:
        return x[n, c, r, q]
    return 0.0


def conv_out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def conv_forward(x, w, b, stride, padding):
    n_, c_, h, wd = x.shape
    o_, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = conv_out(h, kh, sh, ph), conv_out(wd, kw, sw, pw)
    y = np.zeros((n_, o_, oh, ow))
    for n in range(n_):
        for o in range(o_):
            for i in range(oh):
                for j in range(ow):
                    total = 0.0 if b is None else b[o]
                    for c in range(c_):
                        for m in range(kh):
                            for k in range(kw):
                                total += w[o, c, m, k] * _at(x, n, c, i * sh + m - ph, j * sw + k - pw)
                    y[n, o, i, j] = total
    return y


def conv_backward_data(dy, w, x_shape, stride, padding):
    """dx[n,c,r,q] = sum over outputs (o,i,j) and taps (m,k) with i*s+m-p = r, j*s+k-p = q."""
    dx = np.zeros(x_shape)
    n_, o_, oh, ow = dy.shape
    _, c_, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    for n in range(n_):
        for o in range(o_):
            for i in range(oh):
                for j in range(ow):
                    for c in range(c_):
                        for m in range(kh):
                            for k in range(kw):
                                r, q = i * sh + m - ph, j * sw + k - pw
                                if 0 <= r < x_shape[2] and 0 <= q < x_shape[3]:
                                    dx[n, c, r, q] += dy[n, o, i, j] * w[o, c, m, k]
    return dx


def conv_backward_filter(dy, x, w_shape, stride, padding):
    """dW[o,c,m,k] = sum_{n,i,j} dy[n,o,i,j] * x[n,c,i*s+m-p, j*s+k-p]."""
    dw = np.zeros(w_shape)
    n_, o_, oh, ow = dy.shape
    _, c_, kh, kw = w_shape
    (sh, sw), (ph, pw) = stride, padding
    for o in range(o_):
        for c in range(c_):
            for m in range(kh):
                for k in range(kw):
                    total = 0.0
                    for n in range(n_):
                        for i in range(oh):
                            for j in range(ow):
                                total += dy[n, o, i, j] * _at(x, n, c, i * sh + m - ph, j * sw + k - pw)
                    dw[o, c, m, k] = total
    return dw


def conv_backward_bias(dy):
    n_, o_, oh, ow = dy.shape
    db = np.zeros(o_)
    for o in range(o_):
        for n in range(n_):
            for i in range(oh):
                for j in range(ow):
                    db[o] += dy[n, o, i, j]
    return db


def maxpool_forward(x, kernel, stride, padding):
    """(y, argmax): scan each window row by row; a value replaces the best only if strictly greater."""
    n_, c_, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = conv_out(h, kh, sh, ph), conv_out(wd, kw, sw, pw)
    y = np.zeros((n_, c_, oh, ow))
    arg = np.zeros((n_, c_, oh, ow), dtype=np.int64)
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    best, best_at = -np.inf, -1
                    for m in range(kh):
                        for k in range(kw):
                            r, q = i * sh + m - ph, j * sw + k - pw
                            if 0 <= r < h and 0 <= q < wd and (best_at < 0 or x[n, c, r, q] > best):
                                best, best_at = x[n, c, r, q], r * wd + q
                    y[n, c, i, j], arg[n, c, i, j] = best, best_at
    return y, arg


def maxpool_backward(dy, argmax, x_shape):
    dx = np.zeros(x_shape)
    n_, c_, oh, ow = dy.shape
    wd = x_shape[3]
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    a = int(argmax[n, c, i, j])
                    dx[n, c, a // wd, a % wd] += dy[n, c, i, j]
    return dx
