"""Test-time augmentation: average the logits of each image and its left-right mirror."""

from __future__ import annotations


def predict_tta(model, x, batch_size: int = 256):
    """Logits (N, K) = 0.5 * model(x) + 0.5 * model(x mirrored along W), in evaluation mode.

    x: (N, C, H, W) on the model's backend; computed ``batch_size`` images at a time
    (two forward passes per batch). Returns a backend array.
    """
    if batch_size < 1:
        raise ValueError(f"predict_tta: batch_size must be >= 1, got {batch_size}")
    if x.ndim != 4:
        raise ValueError(f"predict_tta: expected images (N, C, H, W), got shape {tuple(x.shape)}")
    xp = model.backend.xp
    outs = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        plain = model.forward(batch, training=False)
        mirrored = model.forward(xp.ascontiguousarray(batch[..., ::-1]), training=False)
        outs.append((plain + mirrored) * plain.dtype.type(0.5))
    return xp.concatenate(outs, axis=0)
