"""SGD: update rule, Nesterov, weight decay on weights only, groups, frozen layers, state round trip,
argument checks; clip_grad_norm against torch."""

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


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lr": float("nan")}, r"SGD: lr must be a finite number >= 0, got nan"),
    ({"lr": float("inf")}, r"SGD: lr must be a finite number >= 0, got inf"),
    ({"lr": -0.1}, r"SGD: lr must be a finite number >= 0, got -0.1"),
    ({"lr": True}, r"SGD: lr must be a finite number >= 0, got True"),
    ({"lr": 0.1, "momentum": float("nan")}, r"SGD: momentum must be in \[0, 1\), got nan"),
    ({"lr": 0.1, "momentum": -0.5}, r"SGD: momentum must be in \[0, 1\), got -0.5"),
    ({"lr": 0.1, "momentum": 1.0}, r"SGD: momentum must be in \[0, 1\), got 1.0"),
    ({"lr": 0.1, "weight_decay": float("inf")}, r"SGD: weight_decay must be a finite number >= 0, got inf"),
    ({"lr": 0.1, "groups": [{"weight_decay": -1.0}]}, r"SGD: groups\[0\].weight_decay must be a finite number >= 0"),
])
def test_non_finite_and_out_of_range_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.SGD(net(), **kwargs)


# --------------------------------------------------------------------------- clip_grad_norm
def grads_of(model):
    return {f"{i}.{n}": np.array(layer.grads[n]) for i, layer, n in model.parameters()}


@pytest.mark.parametrize("max_norm", [0.3, 1.0, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    torch = pytest.importorskip("torch", reason="torch is the reference for clip_grad_norm_")
    model = net()
    model.layers[1].frozen_params = {"beta"}
    rng = np.random.default_rng(5)
    for _, layer, name in model.parameters():
        layer.grads[name] = rng.standard_normal(layer.params[name].shape) * 0.3
    before = grads_of(model)
    trainable = [k for k in before if k != "1.beta"]
    tensors = [torch.zeros(before[k].shape, dtype=torch.float64, requires_grad=True) for k in trainable]
    for t, k in zip(tensors, trainable):
        t.grad = torch.tensor(before[k])
    want = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm))
    total = optim.clip_grad_norm(model, max_norm)
    assert total == pytest.approx(want, rel=1e-14)
    assert total == pytest.approx(np.sqrt(sum(np.sum(before[k] ** 2) for k in trainable)), rel=1e-14)
    after = grads_of(model)
    for t, k in zip(tensors, trainable):
        np.testing.assert_allclose(after[k], t.grad.numpy(), rtol=1e-14)
    np.testing.assert_array_equal(after["1.beta"], before["1.beta"])  # frozen: not counted, not scaled
    if max_norm < total:
        clipped = np.sqrt(sum(np.sum(after[k] ** 2) for k in trainable))
        assert clipped == pytest.approx(max_norm, rel=1e-5)
    else:
        assert all(np.array_equal(after[k], before[k]) for k in trainable)


def test_clip_grad_norm_leaves_non_finite_grads_and_checks_max_norm():
    model = net()
    model.layers[0].grads["W"][0, 0] = np.inf
    before = grads_of(model)
    assert optim.clip_grad_norm(model, 1.0) == np.inf
    for key, value in grads_of(model).items():
        np.testing.assert_array_equal(value, before[key])
    with pytest.raises(ValueError, match=r"clip_grad_norm: max_norm must be a finite number > 0, got 0"):
        optim.clip_grad_norm(model, 0)
