"""SGD: update rule, Nesterov, weight decay on weights only, groups, frozen layers, state round trip."""

import numpy as np
import pytest

from gpucnn import layers, optim
from gpucnn.model import Sequential


@pytest.fixture(autouse=True)
def _numpy(numpy_backend):
    yield


def net():
    model = Sequential([layers.Dense(3, 2, dtype=np.float64, rng=0), layers.BatchNorm2D(2, dtype=np.float64)])
    for _, layer, name in model.parameters():
        layer.grads[name] = np.full(layer.params[name].shape, 0.5)
    return model


def snapshot(model):
    return {f"{i}.{n}": np.array(layer.params[n]) for i, layer, n in model.parameters()}


def test_plain_sgd_weight_decay_only_on_weights():
    model = net()
    before = snapshot(model)
    optim.SGD(model, lr=0.1, weight_decay=0.2).step()
    after = snapshot(model)
    np.testing.assert_allclose(after["0.W"], before["0.W"] - 0.1 * (0.5 + 0.2 * before["0.W"]))
    np.testing.assert_allclose(after["0.b"], before["0.b"] - 0.1 * 0.5)
    np.testing.assert_allclose(after["1.gamma"], before["1.gamma"] - 0.1 * (0.5 + 0.2 * before["1.gamma"]))
    np.testing.assert_allclose(after["1.beta"], before["1.beta"] - 0.1 * 0.5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_torch(nesterov):
    torch = pytest.importorskip("torch")
    model = net()
    w0 = np.array(model.layers[0].params["W"])
    ref = torch.tensor(w0, requires_grad=True)
    ref_opt = torch.optim.SGD([ref], lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    opt = optim.SGD(model, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    rng = np.random.default_rng(0)
    for _ in range(4):
        g = rng.standard_normal(w0.shape)
        model.layers[0].grads["W"] = g.copy()
        ref.grad = torch.tensor(g)
        opt.step()
        ref_opt.step()
    np.testing.assert_allclose(model.layers[0].params["W"], ref.detach().numpy(), rtol=1e-12)


def test_groups_lr_scale_and_weight_decay_override():
    model = net()
    before = snapshot(model)
    groups = [{"layer": "BatchNorm2D", "lr_scale": 0.0}, {"kind": "bias", "lr_scale": 2.0, "weight_decay": 0.1}]
    optim.SGD(model, lr=0.1, weight_decay=0.2, groups=groups).step()
    after = snapshot(model)
    np.testing.assert_array_equal(after["1.gamma"], before["1.gamma"])
    np.testing.assert_array_equal(after["1.beta"], before["1.beta"])
    np.testing.assert_allclose(after["0.b"], before["0.b"] - 0.2 * (0.5 + 0.1 * before["0.b"]))
    np.testing.assert_allclose(after["0.W"], before["0.W"] - 0.1 * (0.5 + 0.2 * before["0.W"]))
    with pytest.raises(ValueError, match=r"groups\[0\] has unknown keys \['lr'\]"):
        optim.SGD(model, lr=0.1, groups=[{"lr": 1}])


def test_frozen_layers_are_skipped_and_lr_is_settable():
    model = net()
    model.layers[0].frozen = True
    before = snapshot(model)
    opt = optim.SGD(model, lr=0.1)
    opt.lr = 0.3
    opt.step()
    after = snapshot(model)
    np.testing.assert_array_equal(after["0.W"], before["0.W"])
    np.testing.assert_allclose(after["1.gamma"], before["1.gamma"] - 0.3 * 0.5)


def test_state_dict_round_trip_resumes_identically():
    a, b = net(), net()
    opt_a = optim.SGD(a, lr=0.1, momentum=0.9)
    opt_a.step()
    state = opt_a.state_dict()
    assert set(state) == {"velocity.layers.0.W", "velocity.layers.0.b", "velocity.layers.1.gamma", "velocity.layers.1.beta"}
    b.load_state_dict(a.state_dict())
    opt_b = optim.SGD(b, lr=0.1, momentum=0.9)
    opt_b.load_state_dict(state)
    opt_a.step()
    opt_b.step()
    for key, value in snapshot(a).items():
        np.testing.assert_array_equal(snapshot(b)[key], value)
    with pytest.raises(ValueError, match="names no parameter"):
        opt_b.load_state_dict({"velocity.layers.7.W": np.zeros(1)})
    with pytest.raises(ValueError, match=r"expected shape \(2, 3\), got \(3,\)"):
        opt_b.load_state_dict({"velocity.layers.0.W": np.zeros(3)})


def test_invalid_settings():
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        optim.SGD(net(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum must be in"):
        optim.SGD(net(), lr=0.1, momentum=1.5)
