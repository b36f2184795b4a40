"""Adam, clip_grad_norm and EMA run on every backend (arrays through layer.xp): emulated and cuda
against the numpy backend, float32."""

import numpy as np
import pytest

from gpucnn import backend as backend_module
from gpucnn import layers, optim
from gpucnn.ema import EMA
from gpucnn.model import Sequential


def build():
    return Sequential([layers.Conv2D(2, 3, 3, rng=0), layers.BatchNorm2D(3), layers.Flatten(), layers.Dense(12, 4, rng=1)])


def run(model, grads):
    """5 clipped AdamW steps with EMA; returns host copies of params and averaged params, and the norms."""
    opt = optim.AdamW(model, lr=0.01, weight_decay=0.1, amsgrad=True)
    ema = EMA(model, decay=0.9, warmup=1)
    to_device = model.backend.asarray
    norms = []
    for step_grads in grads:
        for (_, layer, name), g in zip(model.parameters(), step_grads):
            layer.grads[name] = to_device(g.copy())  # clipping scales in place
        norms.append(optim.clip_grad_norm(model, 1.0))
        opt.step()
        ema.update()
    with ema.averaged():
        averaged = {k: np.array(v) for k, v in model.state_dict().items()}
    return model.state_dict(), averaged, norms


@pytest.mark.parametrize("name", ["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_adamw_clip_and_ema_match_numpy(name, request):
    request.getfixturevalue(f"{name}_backend")
    device_model = build()
    shapes = [layer.params[n].shape for _, layer, n in device_model.parameters()]
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(5)]
    got = run(device_model, grads)
    with backend_module.use_backend("numpy"):
        want = run(build(), grads)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5)
    for g, w in zip(got[:2], want[:2]):
        for key in w:
            np.testing.assert_allclose(g[key], w[key], rtol=1e-5, atol=1e-6, err_msg=key)
