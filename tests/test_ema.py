"""EMA of the weights: hand-computed averages, warm-up, torch's AveragedModel, swap/restore, state."""

import numpy as np
import pytest

from gpucnn import layers
from gpucnn.ema import EMA
from gpucnn.model import Sequential


@pytest.fixture(autouse=True)
def _numpy(numpy_backend):
    yield


def net():
    return Sequential([
        layers.Conv2D(2, 3, 3, dtype=np.float64, rng=0),
        layers.BatchNorm2D(3, dtype=np.float64),
        layers.Flatten(),
        layers.Dense(12, 4, dtype=np.float64, rng=1),
    ])


def fake_step(model, rng):
    """What a training step changes: new param values and new running statistics."""
    for _, layer, name in model.parameters():
        layer.params[name][...] = rng.standard_normal(layer.params[name].shape)
    bn = model.layers[1]
    bn.running_mean = rng.standard_normal(3)
    bn.running_var = rng.uniform(0.5, 2.0, 3)


def live(model):
    return {k: np.array(v) for k, v in model.state_dict().items()}


def test_plain_decay_matches_hand_computed_average():
    model, rng = net(), np.random.default_rng(0)
    expected = live(model)  # warmup 0: the average starts at the construction weights
    ema = EMA(model, decay=0.9)
    for _ in range(6):
        fake_step(model, rng)
        ema.update()
        expected = {k: 0.9 * v + 0.1 * live(model)[k] for k, v in expected.items()}
    assert set(ema.shadow) == set(expected) and "layers.1.running_var" in ema.shadow
    for key, value in expected.items():
        np.testing.assert_allclose(ema.shadow[key], value, rtol=1e-13, err_msg=key)


def test_warmup_one_is_the_plain_mean_until_the_decay_caps_it():
    model, rng = net(), np.random.default_rng(1)
    ema = EMA(model, decay=0.75, warmup=1)
    assert [ema.decay_at(t) for t in range(5)] == pytest.approx([0.0, 0.5, 2 / 3, 0.75, 0.75])
    seen = []
    for _ in range(3):  # d = 0, 1/2, 2/3: the running mean of the three
        fake_step(model, rng)
        seen.append(live(model))
        ema.update()
    for key in seen[0]:
        np.testing.assert_allclose(ema.shadow[key], np.mean([s[key] for s in seen], axis=0), rtol=1e-13, err_msg=key)


def test_matches_torch_averaged_model_with_an_ema_avg_fn():
    torch = pytest.importorskip("torch", reason="torch.optim.swa_utils.AveragedModel is the reference")
    from torch.optim.swa_utils import AveragedModel

    decay, warmup = 0.8, 2.0
    model, rng = net(), np.random.default_rng(2)
    twin = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                               torch.nn.Linear(12, 4)).double()
    ours_to_torch = {"layers.0.W": "0.weight", "layers.0.b": "0.bias", "layers.1.gamma": "1.weight",
                     "layers.1.beta": "1.bias", "layers.1.running_mean": "1.running_mean",
                     "layers.1.running_var": "1.running_var", "layers.3.W": "3.weight", "layers.3.b": "3.bias"}

    def copy_to_twin():
        with torch.no_grad():
            tensors = twin.state_dict()
            for ours, theirs in ours_to_torch.items():
                tensors[theirs].copy_(torch.tensor(live(model)[ours]))

    def avg_fn(averaged, current, num_averaged):
        t = int(num_averaged)
        d = min(decay, t / (t + warmup))
        return d * averaged + (1 - d) * current

    copy_to_twin()
    averaged = AveragedModel(twin, avg_fn=avg_fn, use_buffers=True)
    ema = EMA(model, decay=decay, warmup=warmup)
    for _ in range(12):  # long enough for the decay to reach its cap (t >= 8)
        fake_step(model, rng)
        copy_to_twin()
        ema.update()
        averaged.update_parameters(twin)
    reference = averaged.module.state_dict()
    for ours, theirs in ours_to_torch.items():
        np.testing.assert_allclose(ema.shadow[ours], reference[theirs].numpy(), rtol=1e-13, err_msg=ours)


def test_averaged_context_evaluates_with_the_average_and_restores_exactly():
    model, rng = net(), np.random.default_rng(3)
    ema = EMA(model, decay=0.5)
    for _ in range(3):
        fake_step(model, rng)
        ema.update()
    before = live(model)
    shadow = {k: np.array(v) for k, v in ema.shadow.items()}
    x = rng.standard_normal((5, 2, 4, 4))
    reference = net()
    reference.load_state_dict(shadow)
    want = np.array(reference.forward(x, training=False))
    with ema.averaged():
        assert all(np.array_equal(v, shadow[k]) for k, v in live(model).items())
        np.testing.assert_array_equal(model.forward(x, training=False), want)
    after = live(model)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
        np.testing.assert_array_equal(ema.shadow[key], shadow[key], err_msg=key)


def test_state_round_trip_and_bad_state():
    rng = np.random.default_rng(4)
    a = net()
    ema_a = EMA(a, decay=0.9, warmup=3)
    for _ in range(4):
        fake_step(a, rng)
        ema_a.update()
    state = ema_a.state()
    assert state["num_updates"] == 4
    b = net()
    b.load_state_dict(a.state_dict())
    ema_b = EMA(b, decay=0.9, warmup=3)
    ema_b.load_state(state)
    fake_step(a, rng)
    b.load_state_dict(a.state_dict())
    ema_a.update()
    ema_b.update()  # same t, so same decay: identical results
    for key, value in ema_a.shadow.items():
        np.testing.assert_array_equal(ema_b.shadow[key], value, err_msg=key)
    with pytest.raises(ValueError, match=r"EMA.load_state: missing keys \['num_updates'\], unexpected keys \[\]"):
        ema_b.load_state({k: v for k, v in state.items() if k != "num_updates"})
    with pytest.raises(ValueError, match=r"'layers.0.b' expected shape \(3,\), got \(4,\)"):
        ema_b.load_state({**state, "layers.0.b": np.zeros(4)})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"decay": 1.0}, r"EMA: decay must be in \[0, 1\), got 1.0"),
    ({"decay": float("nan")}, r"EMA: decay must be in \[0, 1\), got nan"),
    ({"decay": 0.9, "warmup": -1}, r"EMA: warmup must be a finite number >= 0, got -1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EMA(net(), **kwargs)
