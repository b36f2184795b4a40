"""Layer API: dtype kept, clear ValueErrors naming the layer, shapes, param kinds, BatchNorm semantics."""

import numpy as np
import pytest

from gpucnn import init, layers


@pytest.fixture(autouse=True)
def _numpy(numpy_backend):
    yield


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_keep_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    stack = [
        layers.Conv2D(3, 4, 3, padding=1, dtype=dtype, rng=0),
        layers.BatchNorm2D(4, dtype=dtype),
        layers.GELU(),
        layers.MaxPool2D(2),
        layers.AvgPool2D(2),
        layers.Dropout(0.5, rng=0),
        layers.Softplus(),
        layers.Flatten(),
        layers.Dense(16, 3, dtype=dtype, rng=0),
        layers.Sigmoid(),
        layers.Tanh(),
        layers.ReLU(),
    ]
    for layer in stack:
        x = layer.forward(x)
        assert x.dtype == dtype, layer
    d = np.ones_like(x)
    for layer in reversed(stack):
        d = layer.backward(d)
        assert d.dtype == dtype, layer
    for layer in stack:
        for name, p in layer.params.items():
            assert p.dtype == dtype and layer.grads[name].dtype == dtype


def test_conv_rejects_bad_inputs_with_layer_name_and_shapes():
    conv = layers.Conv2D(3, 4, 5)
    with pytest.raises(ValueError, match=r"Conv2D: expected a 4-d input .*got shape \(3, 8, 8\)"):
        conv.forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Conv2D: expected 3 input channels, got input of shape \(N, 1, 8, 8\)"):
        conv.forward(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Conv2D: input spatial size 4x8 .* smaller than the 5x5 kernel"):
        conv.forward(np.zeros((2, 3, 4, 8), np.float32))
    with pytest.raises(ValueError, match=r"Conv2D: got an integer array \(uint8\); convert images to float"):
        conv.forward(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"Conv2D: expected float32 input, got float64"):
        conv.forward(np.zeros((2, 3, 8, 8)))


def test_other_layers_reject_bad_inputs():
    with pytest.raises(ValueError, match=r"Dense: expected per-sample input shape \(5,\), got \(4,\)"):
        layers.Dense(5, 2).forward(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2D: input spatial size 2x2 .* smaller than the 3x3 window"):
        layers.MaxPool2D(3).forward(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2D: expected a 4-d input"):
        layers.MaxPool2D(2).forward(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2D: expected per-sample shape \(3, H, W\), got \(2, 4, 4\)"):
        layers.BatchNorm2D(3).forward(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"ReLU: got an integer array"):
        layers.ReLU().forward(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"Dropout: p must be in \[0, 1\)"):
        layers.Dropout(1.0)
    with pytest.raises(ValueError, match=r"MaxPool2D: padding"):
        layers.MaxPool2D(2, padding=2)
    with pytest.raises(TypeError, match=r"Conv2D: dtype must be a float type"):
        layers.Conv2D(1, 1, 3, dtype=np.int32)


def test_output_shape_and_param_metadata():
    conv = layers.Conv2D(3, 8, (5, 3), stride=(2, 1), padding=(1, 0), rng=0)
    assert conv.output_shape((3, 11, 10)) == (8, 5, 8)
    assert conv.params["W"].shape == (8, 3, 5, 3) and conv.params["b"].shape == (8,)
    assert conv.num_params() == 8 * 3 * 5 * 3 + 8
    assert conv.param_kinds == {"W": "weight", "b": "bias"}
    assert layers.BatchNorm2D(4).param_kinds == {"gamma": "weight", "beta": "bias"}
    assert layers.Dense(4, 2, bias=False).params.keys() == {"W"}
    assert layers.MaxPool2D(3, 2, 1).output_shape((2, 7, 8)) == (2, 4, 4)
    assert layers.Flatten().output_shape((2, 3, 4)) == (24,)


def test_initializers_are_seeded_and_scaled():
    a = layers.Conv2D(16, 32, 3, rng=42).params["W"]
    b = layers.Conv2D(16, 32, 3, rng=np.random.default_rng(42)).params["W"]
    np.testing.assert_array_equal(a, b)
    assert a.std() == pytest.approx(np.sqrt(2 / (16 * 9)), rel=0.05)
    u = init.he_uniform((64, 100), np.random.default_rng(0))
    assert np.abs(u).max() <= np.sqrt(6 / 100) and u.std() == pytest.approx(np.sqrt(2 / 100), rel=0.05)
    conv = layers.Conv2D(3, 3, 3, padding=1, init="dirac", dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5))
    np.testing.assert_array_equal(conv.forward(x), x)
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        layers.Dense(2, 2, init="xavier")


def test_batchnorm_matches_torch_in_train_and_eval():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    bn = layers.BatchNorm2D(3, momentum=0.2, dtype=np.float64)
    ref = torch.nn.BatchNorm2d(3, momentum=0.2, dtype=torch.float64)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 5, 2)) * 3 + 1
        np.testing.assert_allclose(bn.forward(x, training=True), ref.train()(torch.tensor(x)).detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, ref.running_var.numpy(), rtol=1e-12)  # unbiased, as PyTorch
    x = rng.standard_normal((2, 3, 5, 2))
    np.testing.assert_allclose(bn.forward(x, training=False), ref.eval()(torch.tensor(x)).detach().numpy(), atol=1e-12)


def test_batchnorm_refuses_single_value_per_channel():
    with pytest.raises(ValueError, match="BatchNorm2D: training needs more than 1 value per channel"):
        layers.BatchNorm2D(2).forward(np.zeros((1, 2, 1, 1), np.float32))


def test_dropout_is_identity_in_eval_and_scales_in_training():
    x = np.ones((1000,), np.float32).reshape(10, 100)
    drop = layers.Dropout(0.4, rng=0)
    np.testing.assert_array_equal(drop.forward(x, training=False), x)
    y = drop.forward(x, training=True)
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.6)}
    assert abs((y == 0).mean() - 0.4) < 0.06
    drop.next_seed = drop.last_seed
    np.testing.assert_array_equal(drop.forward(x, training=True), y)


def test_losses_reject_bad_labels_and_shapes():
    from gpucnn import losses

    loss = losses.SoftmaxCrossEntropy()
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got values in \[0, 4\]"):
        loss.forward(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got values in \[-1, 1\]"):
        loss.forward(logits, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"expected labels of shape \(3,\)"):
        loss.forward(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"MeanSquaredError: prediction shape \(3, 4\) != target shape \(4, 3\)"):
        losses.MeanSquaredError().forward(logits, np.zeros((4, 3), np.float32))
