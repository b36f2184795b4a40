"""Test-time augmentation (airbench94's ``infer`` levels).

level 0: model(x); level 1 (mirror): m(x) = 0.5 * model(x) + 0.5 * model(x mirrored along W);
level 2 (mirror + translate): 0.5 * m(x) + 0.5 * mean(m(x shifted by -1,-1), m(x shifted by +1,+1)),
the shifts being the windows [0:H, 0:W] and [2:H+2, 2:W+2] of x reflect-padded by 1 pixel.
"""

from __future__ import annotations

TTA_LEVELS = {"none": 0, "mirror": 1, "mirror_translate": 2}


def _mirror(model, x, xp):
    plain = model.forward(x, training=False)
    mirrored = model.forward(xp.ascontiguousarray(x[..., ::-1]), training=False)
    return (plain + mirrored) * plain.dtype.type(0.5)


def _tta_batch(model, x, level: int, xp):
    if level == 0:
        return model.forward(x, training=False)
    logits = _mirror(model, x, xp)
    if level == 1:
        return logits
    h, w = x.shape[-2:]
    padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    up = _mirror(model, xp.ascontiguousarray(padded[:, :, 0:h, 0:w]), xp)
    down = _mirror(model, xp.ascontiguousarray(padded[:, :, 2:h + 2, 2:w + 2]), xp)
    half = logits.dtype.type(0.5)
    return half * logits + half * ((up + down) * half)


def predict_tta(model, x, batch_size: int = 256, level: int = 1):
    """Logits (N, K) of TTA ``level`` (0, 1, 2; see the module docstring), in evaluation mode.

    x: (N, C, H, W) on the model's backend; computed ``batch_size`` images at a time. Returns a backend array.
    """
    if batch_size < 1:
        raise ValueError(f"predict_tta: batch_size must be >= 1, got {batch_size}")
    if x.ndim != 4:
        raise ValueError(f"predict_tta: expected images (N, C, H, W), got shape {tuple(x.shape)}")
    if level not in (0, 1, 2):
        raise ValueError(f"predict_tta: level must be 0, 1 or 2, got {level!r}")
    xp = model.backend.xp
    outs = [_tta_batch(model, x[start : start + batch_size], level, xp) for start in range(0, x.shape[0], batch_size)]
    return xp.concatenate(outs, axis=0)
