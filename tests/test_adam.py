"""Adam / AdamW: every step equal to torch.optim.Adam / AdamW in float64 (groups, frozen params,
amsgrad, weight decay, lr changes), state round trip, argument checks."""

import numpy as np
import pytest

from gpucnn import layers, optim
from gpucnn.model import Sequential

STEPS = 50


@pytest.fixture(autouse=True)
def _numpy(numpy_backend):
    yield


def net():
    """Conv (W, b) -> BatchNorm (gamma, beta) -> Dense (W, b; its b frozen), float64."""
    dense = layers.Dense(12, 3, dtype=np.float64, rng=2)
    dense.frozen_params = {"b"}
    return Sequential([
        layers.Conv2D(2, 3, 3, dtype=np.float64, rng=0),
        layers.BatchNorm2D(3, dtype=np.float64),
        layers.Flatten(),
        dense,
    ])


GROUPS = [{"layer": "BatchNorm2D", "lr_scale": 0.5}, {"kind": "bias", "lr_scale": 2.0, "weight_decay": 0.03}]


def torch_groups(torch, model, weight_decay):
    """torch param groups with the lr scales and decays GROUPS (and the weight-only default) mean."""
    lr_scale = {"0.W": 1.0, "0.b": 2.0, "1.gamma": 0.5, "1.beta": 0.5, "3.W": 1.0}
    decay = {"0.W": weight_decay, "0.b": 0.03, "1.gamma": weight_decay, "1.beta": 0.0, "3.W": weight_decay}
    tensors, groups = {}, []
    for key in lr_scale:
        i, name = key.split(".")
        tensors[key] = torch.tensor(np.array(model.layers[int(i)].params[name]), requires_grad=True)
        groups.append({"params": [tensors[key]], "lr_scale": lr_scale[key], "weight_decay": decay[key]})
    return tensors, groups


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
def test_every_step_matches_torch(decoupled, weight_decay, amsgrad):
    torch = pytest.importorskip("torch", reason="torch is the reference for Adam's math")
    model = net()
    frozen_before = np.array(model.layers[3].params["b"])
    cls, ref_cls = (optim.AdamW, torch.optim.AdamW) if decoupled else (optim.Adam, torch.optim.Adam)
    opt = cls(model, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay, amsgrad=amsgrad, groups=GROUPS)
    tensors, groups = torch_groups(torch, model, weight_decay)
    for g in groups:
        g["lr"] = 0.01 * g["lr_scale"]
    ref = ref_cls(groups, lr=0.01, betas=(0.8, 0.95), eps=1e-6, amsgrad=amsgrad, foreach=False)
    rng = np.random.default_rng(1)
    for step in range(STEPS):
        if step == STEPS // 2:  # a schedule changing the base rate mid-run
            opt.lr = 0.003
            for g in ref.param_groups:
                g["lr"] = 0.003 * g["lr_scale"]
        for _, layer, name in model.parameters():
            # grads shrink over time so that v decays and amsgrad's max is exercised
            layer.grads[name] = rng.standard_normal(layer.params[name].shape) * (1.0 + 3.0 * (step < 5))
        for key, t in tensors.items():
            i, name = key.split(".")
            t.grad = torch.tensor(model.layers[int(i)].grads[name])
        opt.step()
        ref.step()
        for key, t in tensors.items():
            i, name = key.split(".")
            np.testing.assert_allclose(model.layers[int(i)].params[name], t.detach().numpy(), rtol=1e-12, atol=1e-14,
                                       err_msg=f"step {step}, param {key}")
    np.testing.assert_array_equal(model.layers[3].params["b"], frozen_before)
    assert "exp_avg.layers.3.b" not in opt.state_dict()
    if amsgrad:  # the max must differ from v somewhere, or amsgrad was not tested
        state = opt.state_dict()
        assert np.any(state["max_exp_avg_sq.layers.0.W"] > state["exp_avg_sq.layers.0.W"])


def test_adamw_decays_weights_not_biases_by_default():
    model = net()
    for _, layer, name in model.parameters():
        layer.grads[name] = np.zeros(layer.params[name].shape)
    w, b = np.array(model.layers[0].params["W"]), np.array(model.layers[0].params["b"])
    optim.AdamW(model, lr=0.1, weight_decay=0.5).step()
    # zero grads: m = v = 0, so the Adam part adds nothing and only the decay acts
    np.testing.assert_allclose(model.layers[0].params["W"], w * (1 - 0.1 * 0.5), rtol=1e-15)
    np.testing.assert_array_equal(model.layers[0].params["b"], b)


def test_state_dict_round_trip_resumes_identically():
    rng = np.random.default_rng(4)

    def fill(model, grads):
        for (_, layer, name), g in zip(model.parameters(), grads):
            layer.grads[name] = g.copy()

    a, b = net(), net()
    opt_a = optim.Adam(a, lr=0.01, amsgrad=True, weight_decay=0.01)
    shapes = [layer.params[name].shape for _, layer, name in a.parameters()]
    for _ in range(3):
        fill(a, [rng.standard_normal(s) for s in shapes])
        opt_a.step()
    state = opt_a.state_dict()
    assert state["step.layers.0.W"] == 3 and state["step.layers.0.W"].dtype == np.int64
    assert {k.split(".")[0] for k in state} == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"}
    b.load_state_dict(a.state_dict())
    opt_b = optim.Adam(b, lr=0.01, amsgrad=True, weight_decay=0.01)
    opt_b.load_state_dict(state)
    for _ in range(3):
        grads = [rng.standard_normal(s) for s in shapes]
        fill(a, grads)
        fill(b, grads)
        opt_a.step()
        opt_b.step()
    for (_, la, name), (_, lb, _) in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(la.params[name], lb.params[name])
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: unexpected key 'velocity.layers.0.W' \(expected 'exp_avg"):
        opt_b.load_state_dict({"velocity.layers.0.W": np.zeros((3, 2, 3, 3))})
    with pytest.raises(ValueError, match=r"'step.layers.0.W' expected shape \(\), got \(1,\)"):
        opt_b.load_state_dict({"step.layers.0.W": np.zeros(1, dtype=np.int64)})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lr": float("nan")}, r"Adam: lr must be a finite number >= 0, got nan"),
    ({"lr": -1.0}, r"Adam: lr must be a finite number >= 0, got -1.0"),
    ({"betas": (0.9, 1.0)}, r"Adam: betas\[1\] must be in \[0, 1\), got 1.0"),
    ({"betas": (float("inf"), 0.9)}, r"Adam: betas\[0\] must be in \[0, 1\), got inf"),
    ({"betas": 0.9}, r"Adam: betas must be a pair"),
    ({"eps": 0.0}, r"Adam: eps must be a finite number > 0, got 0.0"),
    ({"eps": float("nan")}, r"Adam: eps must be a finite number > 0, got nan"),
    ({"weight_decay": -0.1}, r"Adam: weight_decay must be a finite number >= 0"),
    ({"groups": [{"lr_scale": float("nan")}]}, r"Adam: groups\[0\].lr_scale must be a finite number >= 0, got nan"),
])
def test_bad_arguments_name_class_argument_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.Adam(net(), **kwargs)


def test_adamw_errors_name_adamw():
    with pytest.raises(ValueError, match=r"^AdamW: eps must be"):
        optim.AdamW(net(), eps=-1.0)


def test_optimizer_from_config_builds_each_named_optimizer():
    model = net()
    section = {"lr": 0.02, "weight_decay": 0.1, "groups": [{"layer": "batchnorm2d", "lr_scale": 0.5}]}
    sgd = optim.optimizer_from_config({"optimizer": {**section, "name": "sgd", "momentum": 0.9, "nesterov": True}}, model)
    assert type(sgd) is optim.SGD and (sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.02, 0.9, True, 0.1)
    adam = optim.optimizer_from_config({"optimizer": {**section, "name": "adamw", "betas": [0.8, 0.99], "eps": 1e-7,
                                                      "amsgrad": True}}, model)
    assert type(adam) is optim.AdamW and (adam.betas, adam.eps, adam.amsgrad) == ((0.8, 0.99), 1e-7, True)
    # a config's lower-case layer name selects the class: BatchNorm2D params get lr_scale 0.5
    assert adam.param_settings(model.layers[1], "gamma") == (0.5, 0.1)
    assert adam.param_settings(model.layers[0], "W") == (1.0, 0.1)
    plain = optim.optimizer_from_config({"optimizer": {"name": "adam", "lr": 0.1}}, model)
    assert (plain.betas, plain.eps, plain.amsgrad, plain.weight_decay) == ((0.9, 0.999), 1e-8, False, 0.0)
    with pytest.raises(ValueError, match=r"optimizer.name: unknown optimizer 'rmsprop'; expected one of sgd, adam, adamw"):
        optim.optimizer_from_config({"optimizer": {"name": "rmsprop", "lr": 0.1}}, model)
