"""Absorbing the activation after a Conv2D or Dense into its GEMM's epilogue.

A layer whose forward op takes ``activation=`` (conv2d_forward, dense_forward) can absorb an
activation layer of ``gpucnn.ops.GEMM_FUSED_ACTIVATIONS`` (ReLU) right after it
(gpucnn.fusion plans the pairs): the op applies it where the GEMM stores its result, the
activation layer passes through, and this layer keeps the output (what ReLU's backward
reads) and applies the activation's backward to dy before its own. Per pair and training
step: one elementwise launch less and one activation-sized tensor neither written nor read
again in the forward.
"""

from __future__ import annotations

from gpucnn.ops import GEMM_FUSED_ACTIVATIONS


class EpilogueActivation:
    """Mixin for Layer subclasses whose forward op applies ``fused_activation`` itself.

    The subclass calls ``_activated(y)`` on its op's output and
    ``_activation_backward(dy)`` first thing in its backward.
    """

    absorbable_activations = GEMM_FUSED_ACTIVATIONS
    _fused_output = None  # y of the last forward when it applied the activation (as ReLU caches it)

    def forget_forward(self) -> None:
        self._fused_output = None

    def _activated(self, y):
        """The op's output ``y``; kept for the backward when the activation was applied in it."""
        self._fused_output = y if self._activation is not None else None
        return y

    def _activation_backward(self, dy):
        """dy through the absorbed activation (as the pass-through layer's backward would have)."""
        if self._fused_output is None:
            return dy
        # GEMM_FUSED_ACTIVATIONS read their output in the backward (Activation.cached "output")
        return getattr(self.ops, self._activation.ops[1])(dy, self._fused_output)
