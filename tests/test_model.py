"""Sequential: forward/backward, predict, summary, state_dict, save/load."""

import os

import numpy as np
import pytest

from gpucnn import layers
from gpucnn.model import Sequential
from reference_models import lenet5


@pytest.fixture(autouse=True)
def _numpy(numpy_backend):
    yield


def small_net(seed=0):
    return Sequential(
        [
            layers.Conv2D(1, 4, 3, padding=1, rng=seed),
            layers.BatchNorm2D(4),
            layers.ReLU(),
            layers.MaxPool2D(2),
            layers.Flatten(),
            layers.Dense(16, 3, rng=seed),
        ]
    )


def test_lenet5_shapes_and_summary():
    model = lenet5(rng=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    logits = model.forward(x)
    assert logits.shape == (2, 10)
    dx = model.backward(np.ones_like(logits))
    assert dx.shape == x.shape
    assert model.backward(np.ones_like(logits), input_grad=False) is None
    text = model.summary((3, 32, 32))
    assert "(None, 6, 28, 28)" in text and "(None, 16, 5, 5)" in text and "(None, 400)" in text
    # 456 + 2416 + 48120 + 10164 + 850 = 62006
    assert "Total params: 62,006" in text
    assert "Conv2D(3, 6" in text and "Dense(84, 10)" in text
    with pytest.raises(ValueError, match="Conv2D"):
        model.summary((1, 32, 32))
    with pytest.raises(ValueError, match="image_size"):
        lenet5(image_size=8)


def test_frozen_layers_count_as_non_trainable():
    model = small_net()
    model.layers[0].frozen = True
    text = model.summary((1, 4, 4))
    assert "Trainable params: 59" in text and "Non-trainable params: 40" in text


def test_predict_is_batched_eval_mode():
    model = small_net()
    x = np.random.default_rng(1).standard_normal((10, 1, 4, 4)).astype(np.float32)
    model.forward(x, training=True)
    full = model.forward(x, training=False)
    np.testing.assert_allclose(model.predict(x, batch_size=3), full, rtol=1e-6)


def test_state_dict_save_load_round_trip(tmp_path):
    model = small_net(0)
    x = np.random.default_rng(2).standard_normal((5, 1, 4, 4)).astype(np.float32)
    model.forward(x, training=True)  # moves BatchNorm running stats
    path = tmp_path / "model.npz"
    model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    with np.load(path, allow_pickle=False) as data:
        assert "layers.1.running_var" in data.files and "layers.0.W" in data.files
    other = small_net(1)
    assert not np.array_equal(other.forward(x, training=False), model.forward(x, training=False))
    other.load_params(path)
    np.testing.assert_array_equal(other.forward(x, training=False), model.forward(x, training=False))


def test_load_state_dict_reports_missing_extra_and_shape(tmp_path):
    model = small_net()
    state = model.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['layers.0.b'\]"):
        model.load_state_dict({k: v for k, v in state.items() if k != "layers.0.b"})
    with pytest.raises(ValueError, match=r"unexpected keys \['layers.9.W'\]"):
        model.load_state_dict({**state, "layers.9.W": np.zeros(1)})
    with pytest.raises(ValueError, match=r"'layers.5.W' expected shape \(3, 16\), got \(3, 15\)"):
        model.load_state_dict({**state, "layers.5.W": np.zeros((3, 15))})
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        model.load_params(bad)


def test_zero_grads_and_parameters():
    model = small_net()
    x = np.random.default_rng(3).standard_normal((2, 1, 4, 4)).astype(np.float32)
    model.backward(np.ones_like(model.forward(x)))
    assert any(np.any(layer.grads[name] != 0) for _, layer, name in model.parameters())
    model.zero_grads()
    assert all(np.all(layer.grads[name] == 0) for _, layer, name in model.parameters())
    assert [(i, n) for i, _, n in model.parameters()] == [(0, "W"), (0, "b"), (1, "gamma"), (1, "beta"), (5, "W"), (5, "b")]
