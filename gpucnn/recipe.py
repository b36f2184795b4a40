"""airbench94's decoupled SGD hyper-parameters converted to gpucnn's optimizer.

airbench94 (PyTorch) sums the label-smoothed loss over the batch and runs torch.optim.SGD
(Nesterov, momentum mu) with ``lr_t = lr / K`` and ``weight_decay = wd_t / lr_t`` where
``K = 1024 * (1 + 1/(1 - mu))`` and ``wd_t = wd * B / K``; BatchNorm biases get
``lr_t * bias_scaler`` with weight decay ``wd_t / (lr_t * bias_scaler)``. Every other
trainable param (conv and dense weights, the whitening bias) decays.

gpucnn's loss is the batch *mean*, so its gradient is the summed one divided by B; the
same updates therefore need ``lr = lr_t * B`` and, since gpucnn applies
``lr * lr_scale * weight_decay * w``, ``weight_decay = wd_t / lr`` (``/ bias_scaler`` for
BatchNorm biases, whose lr_scale is bias_scaler). The decay per step stays ``wd_t * w``.
"""

from __future__ import annotations


def airbench_sgd_settings(batch_size: int = 1024, lr: float = 11.5, weight_decay: float = 0.0153,
                          momentum: float = 0.85, bias_scaler: float = 64.0) -> dict:
    """{"lr", "weight_decay", "groups"} for ``optim.SGD(model, lr, momentum, nesterov=True, ...)``."""
    if batch_size < 1 or not 0.0 <= momentum < 1.0 or lr <= 0 or weight_decay < 0 or bias_scaler <= 0:
        raise ValueError(
            f"airbench_sgd_settings: need batch_size >= 1, 0 <= momentum < 1, lr > 0, weight_decay >= 0 and "
            f"bias_scaler > 0; got {batch_size}, {momentum}, {lr}, {weight_decay}, {bias_scaler}"
        )
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr_torch = lr / kilostep_scale
    wd_torch = weight_decay * batch_size / kilostep_scale
    ours_lr = lr_torch * batch_size
    ours_wd = wd_torch / ours_lr
    groups = [
        {"layer": "BatchNorm2D", "kind": "bias", "lr_scale": bias_scaler, "weight_decay": ours_wd / bias_scaler},
        {"kind": "bias", "weight_decay": ours_wd},
    ]
    return {"lr": ours_lr, "weight_decay": ours_wd, "groups": groups}
