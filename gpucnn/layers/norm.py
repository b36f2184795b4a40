"""2-D batch normalization (per channel over N, H, W), PyTorch semantics."""

from __future__ import annotations

import numpy as np

from gpucnn.checks import finite_number
from gpucnn.layers.base import Layer
from gpucnn.ops import BN_FUSED_ACTIVATIONS


class BatchNorm2D(Layer):
    """Training: normalize with batch statistics and update the running ones as PyTorch:
    running = (1 - momentum) * running + momentum * batch, with the UNBIASED batch variance.
    Evaluation: normalize with the running statistics. Params gamma ("weight"), beta ("bias").

    It can absorb the activation layer right after it when the op fuses that activation
    (``gpucnn.ops.BN_FUSED_ACTIVATIONS``): y = act(BN(x)) in the normalize kernel, and the
    backward recomputes act's input instead of reading a cached one (see gpucnn.fusion).
    """

    param_kinds = {"gamma": "weight", "beta": "bias"}

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True, dtype=np.float32):
        super().__init__(dtype)
        if num_features < 1:
            raise ValueError(f"BatchNorm2D: num_features must be >= 1, got {num_features}")
        self.num_features = int(num_features)
        # the config schema's ranges: eps > 0 keeps 1/sqrt(var + eps) finite; momentum 0 would never update
        self.eps = finite_number("BatchNorm2D", "eps", eps, 0.0, low_open=True)
        self.momentum = finite_number("BatchNorm2D", "momentum", momentum, 0.0, 1.0, low_open=True)
        self.affine = bool(affine)
        self.param_kinds = {}
        if self.affine:
            self._new_param("gamma", np.ones(num_features, dtype=self.dtype), "weight")
            self._new_param("beta", np.zeros(num_features, dtype=self.dtype), "bias")
        else:
            self._gamma = self.backend.asarray(np.ones(num_features, dtype=self.dtype))
            self._beta = self.backend.asarray(np.zeros(num_features, dtype=self.dtype))
        self.running_mean = self.backend.asarray(np.zeros(num_features, dtype=self.dtype))
        self.running_var = self.backend.asarray(np.ones(num_features, dtype=self.dtype))
        self._cache = None
        # Set by gpucnn.distributed for model.sync_batchnorm: an object with this layer's two
        # training ops (same signatures) that uses the statistics of the global batch.
        self.stats_sync = None

    absorbable_activations = BN_FUSED_ACTIVATIONS

    def forget_forward(self) -> None:
        self._cache = None

    def _gamma_beta(self):
        if self.affine:
            return self.params["gamma"], self.params["beta"]
        return self._gamma, self._beta

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.num_features:
            raise ValueError(
                f"{self.name}: expected per-sample shape ({self.num_features}, H, W), got {tuple(input_shape)}"
            )
        return tuple(input_shape)

    def forward(self, x, training: bool = True):
        self.check_input(x, 4, "(N, C, H, W)")
        self.output_shape(tuple(x.shape[1:]))
        gamma, beta = self._gamma_beta()
        if x.shape[0] == 0 and training:
            raise ValueError(f"{self.name}: an empty batch (N = 0) has no batch statistics to normalize with, "
                             f"so training mode is undefined for it; use training=False (running statistics)")
        if not training:
            self._cache = None
            if x.shape[0] == 0:
                return self.empty_output(x)
            return self.ops.batchnorm2d_inference(x, gamma, beta, self.running_mean, self.running_var, self.eps,
                                                  activation=self.fused_activation)
        if x.shape[0] * x.shape[2] * x.shape[3] < 2:
            raise ValueError(f"{self.name}: training needs more than 1 value per channel, got input shape {tuple(x.shape)}")
        # The op updates the running statistics in place (on the kernel backends inside the
        # launch that combines the batch statistics): no new arrays per step. With
        # sync_batchnorm (data-parallel ranks) the statistics are those of the global batch.
        ops = self.ops if self.stats_sync is None else self.stats_sync
        activation = self._activation
        # The synchronized statistics have no fused form: with them an absorbed activation
        # runs through its own ops after the op's output, as the unfused layer would.
        fused = None if activation is None or self.stats_sync is not None else activation.name
        y, mean, invstd, _ = ops.batchnorm2d_forward(
            x, gamma, beta, self.eps, running_mean=self.running_mean, running_var=self.running_var,
            momentum=self.momentum, activation=fused,
        )
        act_cache = None
        if activation is not None and fused is None:
            z, y = y, getattr(self.ops, activation.ops[0])(y)
            act_cache = z if activation.cached == "input" else y
        # What this forward did is cached with the statistics, so its backward matches it.
        self._cache = (x, mean, invstd, activation, fused, act_cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward needs a training-mode forward first")
        x, mean, invstd, activation, fused, act_cache = self._cache
        gamma, beta = self._gamma_beta()
        ops = self.ops if self.stats_sync is None else self.stats_sync
        if activation is not None and fused is None:
            dy = getattr(self.ops, activation.ops[1])(dy, act_cache)
        # With ``fused`` the op recomputes act's input from x, the statistics and beta.
        dx, dgamma, dbeta = ops.batchnorm2d_backward(dy, x, gamma, mean, invstd, beta=beta if fused else None,
                                                     activation=fused)
        if self.affine:
            self.grads["gamma"] = dgamma
            self.grads["beta"] = dbeta
        return dx

    def state(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def load_state(self, state):
        for key in ("running_mean", "running_var"):
            value = np.asarray(state[key])
            if value.shape != (self.num_features,):
                raise ValueError(f"{self.name}.{key}: expected shape ({self.num_features},), got {value.shape}")
            # in place: a captured CUDA-graph step keeps the arrays' addresses (gpucnn.graph_step)
            getattr(self, key)[...] = self.backend.asarray(value.astype(self.dtype))

    def __repr__(self) -> str:
        return f"BatchNorm2D({self.num_features}, eps={self.eps}, momentum={self.momentum})"
