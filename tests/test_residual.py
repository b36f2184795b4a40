"""Residual / Add containers and GlobalAvgPool2D: gradients, the layer tree in Sequential, configs.

Gradient checks are central differences in float64 on the numpy backend (as tests/test_gradients.py)
over the input and every parameter of every child; the emulated backend (kernels/*.cu on the
CPU) must give numpy's forward and backward in float32.
"""

import numpy as np
import pytest

from gpucnn import layers, optim
from gpucnn.backend import use_backend
from gpucnn.build import build_model
from gpucnn.config import apply_overrides, dumps_toml, tomllib, validate_config
from gpucnn.errors import ConfigError
from gpucnn.model import Sequential

from test_gradients import TOL, numeric_grad, relative_error


def leaves(layer):
    """(path, layer) for the layer and every descendant."""
    out = [("", layer)]
    for name, child in layer.sublayers():
        out += [(f"{name}{'.' + p if p else ''}", c) for p, c in leaves(child)]
    return out


def check_tree(layer, x, training=True):
    """dx and every descendant's param grads against central differences of sum(layer(x) * R)."""
    r = np.random.default_rng(123).standard_normal(layer.forward(x, training=training).shape)

    def loss():
        return float(np.sum(layer.forward(x, training=training) * r))

    layer.forward(x, training=training)
    dx = layer.backward(r)
    analytic = {(p, n): np.array(g) for p, child in leaves(layer) for n, g in child.grads.items()}
    assert analytic, "the tree has no params to check"
    assert dx.dtype == np.float64 and dx.shape == x.shape
    assert relative_error(dx, numeric_grad(loss, x)) < TOL
    for path, child in leaves(layer):
        for name, p in child.params.items():
            assert relative_error(analytic[(path, name)], numeric_grad(loss, p)) < TOL, f"{path}.{name}"


def basic_block(c_in, c_out, stride, rng, dtype=np.float64, projection=None):
    """conv3x3-BN-ReLU-conv3x3-BN body; projection shortcut (1x1 conv + BN) when shapes change."""
    body = [layers.Conv2D(c_in, c_out, 3, stride=stride, padding=1, bias=False, dtype=dtype, rng=rng),
            layers.BatchNorm2D(c_out, dtype=dtype), layers.ReLU(),
            layers.Conv2D(c_out, c_out, 3, padding=1, bias=False, dtype=dtype, rng=rng),
            layers.BatchNorm2D(c_out, dtype=dtype)]
    if projection is None:
        projection = c_in != c_out or stride != 1
    shortcut = [layers.Conv2D(c_in, c_out, 1, stride=stride, bias=False, dtype=dtype, rng=rng),
                layers.BatchNorm2D(c_out, dtype=dtype)] if projection else None
    return layers.Residual(body, shortcut)


def randomize_bn(block, rng):
    """Non-trivial gamma/beta so their gradients are not checked at a special point."""
    for _, child in leaves(block):
        if isinstance(child, layers.BatchNorm2D):
            child.params["gamma"][...] = rng.uniform(0.5, 1.5, child.num_features)
            child.params["beta"][...] = rng.standard_normal(child.num_features)


# ----------------------------------------------------------------------------- gradients (float64)
def test_identity_residual_gradients(numpy_backend):
    rng = np.random.default_rng(0)
    block = basic_block(3, 3, 1, rng)
    randomize_bn(block, rng)
    assert block.shortcut == []
    check_tree(block, rng.standard_normal((2, 3, 5, 4)))


def test_projection_residual_gradients(numpy_backend):
    rng = np.random.default_rng(1)
    block = basic_block(2, 4, 2, rng)
    randomize_bn(block, rng)
    assert len(block.shortcut) == 2
    check_tree(block, rng.standard_normal((2, 2, 6, 5)))


def test_add_of_three_branches_gradients_and_values(numpy_backend):
    rng = np.random.default_rng(2)
    conv = layers.Conv2D(2, 2, 3, padding=1, dtype=np.float64, rng=rng)
    conv.params["b"][...] = rng.standard_normal(2)
    add = layers.Add([conv], [], [layers.Tanh()])
    x = rng.standard_normal((2, 2, 4, 3))
    np.testing.assert_allclose(add.forward(x), conv.forward(x) + x + np.tanh(x), rtol=1e-12)
    check_tree(add, x)
    assert [n for n, _ in add.sublayers()] == ["branch0.0", "branch2.0"]


def test_global_avg_pool_gradients_and_values(numpy_backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5, 2))
    pool = layers.GlobalAvgPool2D()
    np.testing.assert_allclose(pool.forward(x), x.reshape(3, 4, -1).mean(-1), rtol=1e-12)
    r = rng.standard_normal((3, 4))
    pool.forward(x)
    dx = pool.backward(r)
    assert dx.flags.c_contiguous and dx.shape == x.shape
    assert relative_error(dx, numeric_grad(lambda: float(np.sum(pool.forward(x) * r)), x)) < TOL
    assert pool.output_shape((4, 5, 2)) == (4,)
    # float32 stays float32 (the cuda kernels after it run float32 only)
    assert pool.forward(x.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("shape, out_channels, stride", [((2, 3, 5, 4), 6, 2), ((1, 2, 7, 7), 5, (3, 2)),
                                                         ((2, 2, 4, 4), 2, 1)])
def test_subsample_pad_values_and_gradients(numpy_backend, shape, out_channels, stride):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    layer = layers.SubsamplePad(out_channels, stride=stride)
    y = layer.forward(x)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    front = (out_channels - shape[1]) // 2
    expected = np.zeros((shape[0], out_channels, -(-shape[2] // sh), -(-shape[3] // sw)))
    expected[:, front:front + shape[1]] = x[:, :, ::sh, ::sw]
    np.testing.assert_array_equal(y, expected)
    assert layer.output_shape(shape[1:]) == y.shape[1:]
    r = rng.standard_normal(y.shape)
    layer.forward(x)
    dx = layer.backward(r)
    assert relative_error(dx, numeric_grad(lambda: float(np.sum(layer.forward(x) * r)), x)) < TOL
    with pytest.raises(ValueError, match="out_channels 1 must be at least the input's"):
        layers.SubsamplePad(1).output_shape(shape[1:])


def test_residual_output_is_body_plus_shortcut(numpy_backend):
    rng = np.random.default_rng(4)
    block = basic_block(2, 3, 2, rng)
    x = rng.standard_normal((2, 2, 6, 6))
    body, shortcut = Sequential(block.body), Sequential(block.shortcut)
    np.testing.assert_allclose(block.forward(x, training=False),
                               body.forward(x, training=False) + shortcut.forward(x, training=False), rtol=1e-12)
    identity = basic_block(2, 2, 1, rng)
    np.testing.assert_allclose(identity.forward(x, training=False),
                               Sequential(identity.body).forward(x, training=False) + x, rtol=1e-12)


# ----------------------------------------------------------------------------- errors
def test_mismatched_branches_name_the_shapes(numpy_backend):
    rng = np.random.default_rng(5)
    block = basic_block(2, 4, 2, rng, projection=False)
    with pytest.raises(ValueError, match=r"body gives \(4, 3, 3\) but the identity shortcut gives \(2, 6, 6\)"):
        block.output_shape((2, 6, 6))
    with pytest.raises(ValueError, match=r"body gives \(4, 3, 3\)"):
        block.forward(rng.standard_normal((1, 2, 6, 6)))
    with pytest.raises(ValueError, match=r"branch0 gives \(3,\), branch1 gives \(4,\)"):
        layers.Add([layers.Dense(4, 3, dtype=np.float64)], []).output_shape((4,))
    with pytest.raises(ValueError, match="body must be a non-empty list"):
        layers.Residual([])
    with pytest.raises(TypeError, match=r"shortcut\[0\] is int"):
        layers.Residual([layers.ReLU()], [3])
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D: expected a 4-d input"):
        layers.GlobalAvgPool2D().forward(np.zeros((2, 3)))
    with pytest.raises(RuntimeError, match="before forward"):
        layers.Residual([layers.ReLU()]).backward(np.zeros((1, 2)))


# ----------------------------------------------------------------------------- the tree in Sequential
def tiny_resnet(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return Sequential([
        layers.Conv2D(3, 4, 3, padding=1, bias=False, dtype=dtype, rng=rng),
        layers.BatchNorm2D(4, dtype=dtype),
        layers.ReLU(),
        basic_block(4, 4, 1, rng, dtype),
        layers.ReLU(),
        basic_block(4, 8, 2, rng, dtype),
        layers.ReLU(),
        layers.GlobalAvgPool2D(),
        layers.Dense(8, 5, dtype=dtype, rng=rng),
    ])


def test_state_dict_keys_follow_the_tree_and_round_trip(numpy_backend, tmp_path):
    model = tiny_resnet()
    keys = list(model.state_dict())
    assert keys[:5] == ["layers.0.W", "layers.1.gamma", "layers.1.beta", "layers.1.running_mean",
                        "layers.1.running_var"]
    assert "layers.3.body.0.W" in keys and "layers.3.body.4.running_var" in keys
    assert "layers.5.shortcut.0.W" in keys and "layers.5.shortcut.1.gamma" in keys
    assert not any(k.startswith("layers.3.shortcut") for k in keys)  # identity: nothing to store
    assert keys[-2:] == ["layers.8.W", "layers.8.b"]
    # every array of the tree, each once: the counts agree with the layers themselves
    n_arrays = sum(len(l.params) + len(l.state()) for _, l in model.named_layers())
    assert len(keys) == len(set(keys)) == n_arrays
    assert model.num_params() == sum(v.size for k, v in model.state_dict().items() if "running" not in k)

    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    model.forward(x, training=True)  # moves the running statistics
    model.save(tmp_path / "m.npz")
    other = tiny_resnet(seed=9)
    assert not np.array_equal(other.state_dict()["layers.5.shortcut.0.W"], model.state_dict()["layers.5.shortcut.0.W"])
    other.load_params(tmp_path / "m.npz")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value, err_msg=key)
    np.testing.assert_array_equal(other.forward(x, training=False), model.forward(x, training=False))
    state = model.state_dict()
    del state["layers.5.body.1.gamma"]
    with pytest.raises(ValueError, match=r"missing keys \['layers.5.body.1.gamma'\]"):
        other.load_state_dict(state)


def test_flat_model_keys_are_unchanged(numpy_backend):
    model = Sequential([layers.Conv2D(1, 2, 3, rng=0), layers.BatchNorm2D(2), layers.ReLU(), layers.Flatten(),
                        layers.Dense(8, 3, rng=0)])
    assert list(model.state_dict()) == ["layers.0.W", "layers.0.b", "layers.1.gamma", "layers.1.beta",
                                        "layers.1.running_mean", "layers.1.running_var", "layers.4.W", "layers.4.b"]
    assert [(i, n) for i, _, n in model.parameters()] == [(0, "W"), (0, "b"), (1, "gamma"), (1, "beta"),
                                                           (4, "W"), (4, "b")]


def test_summary_indents_block_children_and_counts_frozen(numpy_backend):
    model = tiny_resnet()
    text = model.summary((3, 8, 8))
    lines = text.splitlines()
    block = next(i for i, line in enumerate(lines) if line.startswith("5: Residual"))
    assert "(None, 8, 4, 4)" in lines[block]
    children = lines[block + 1: block + 8]
    assert all(line.startswith("  ") for line in children)
    assert children[0].startswith("  body.0: Conv2D(4, 8") and "(None, 8, 4, 4)" in children[0]
    assert children[5].startswith("  shortcut.0: Conv2D(4, 8") and "(None, 8, 4, 4)" in children[5]
    total = model.num_params()
    assert f"Total params: {total:,}" in text
    assert f"{model.layers[5].num_params():,}" in lines[block]
    model.layers[3].frozen = True  # a frozen block freezes every child
    assert all(child.frozen for _, child in model.layers[3].sublayers())
    frozen = model.layers[3].num_params()
    assert frozen > 0 and model.num_trainable_params() == total - frozen
    assert f"Non-trainable params: {frozen:,}" in model.summary((3, 8, 8))


def test_sgd_reaches_block_children_with_their_group_settings(numpy_backend):
    """BatchNorm2D inside a block gets its group's lr_scale; frozen children are left alone."""
    model = tiny_resnet(dtype=np.float64)
    model.layers[5].shortcut[0].frozen = True
    x = np.random.default_rng(2).standard_normal((4, 3, 8, 8))
    model.forward(x)
    model.backward(np.ones((4, 5)) / 4)
    before = model.state_dict()
    grads = {f"layers.{path}.{n}": np.array(l.grads[n]) for path, l, n in model.parameters()}
    opt = optim.SGD(model, lr=0.1, groups=[{"layer": "BatchNorm2D", "lr_scale": 3.0}])
    opt.step()
    after = model.state_dict()
    bn_keys = [f"layers.{p}.{n}" for p, l, n in model.parameters() if isinstance(l, layers.BatchNorm2D)]
    assert "layers.5.body.1.gamma" in bn_keys and "layers.5.shortcut.1.beta" in bn_keys
    for key, g in grads.items():
        expected = before[key] if key.startswith("layers.5.shortcut.0.") else before[key] - 0.1 * (
            3.0 if key in bn_keys else 1.0) * g
        np.testing.assert_allclose(after[key], expected, rtol=1e-12, atol=1e-15, err_msg=key)
    # momentum state is keyed by the same paths and round-trips
    opt = optim.SGD(model, lr=0.1, momentum=0.9)
    opt.step()
    assert "velocity.layers.3.body.0.W" in opt.state_dict()
    fresh = optim.SGD(model, lr=0.1, momentum=0.9)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state_dict().keys() == opt.state_dict().keys()


# ----------------------------------------------------------------------------- emulated kernels
def kernel_backend_matches_numpy(device):
    """A projection block + identity block: forward, dx and every grad, kernels/*.cu vs numpy, float32."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    dy = rng.standard_normal((2, 5)).astype(np.float32)
    results = []
    for name in ("numpy", device):
        with use_backend(name) as backend:
            model = tiny_resnet(seed=3)
            model.layers[-1] = layers.Dense(8, 5, rng=4)
            xb = backend.asarray(x)
            y = backend.to_host(model.forward(xb, training=True))
            dx = backend.to_host(model.backward(backend.asarray(dy)))
            grads = {f"{p}.{n}": np.array(backend.to_host(l.grads[n])) for p, l, n in model.parameters()}
            results.append((y, dx, grads, model.state_dict()))
    (y0, dx0, g0, s0), (y1, dx1, g1, s1) = results
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-4, atol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) == 20
    for key in g0:
        assert np.abs(g0[key]).max() > 0, key
        np.testing.assert_allclose(g1[key], g0[key], rtol=1e-4, atol=1e-5, err_msg=key)
    for key in s0:  # running statistics too
        np.testing.assert_allclose(s1[key], s0[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_emulated_residual_matches_numpy():
    kernel_backend_matches_numpy("emulated")


@pytest.mark.gpu
def test_cuda_residual_matches_numpy(cuda_backend):
    kernel_backend_matches_numpy("cuda")


# ----------------------------------------------------------------------------- configs
def residual_config(layer_specs):
    return {"model": {"layers": layer_specs}}


BLOCK = {"type": "residual",
         "body": [{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
                  {"type": "batchnorm2d"}],
         "shortcut": [{"type": "conv2d", "out_channels": 8, "kernel_size": 1, "stride": 2, "bias": False},
                      {"type": "batchnorm2d"}]}
HEAD = [{"type": "relu"}, {"type": "globalavgpool2d"}, {"type": "dense", "out_features": 10}]


def test_residual_config_builds_with_inferred_sizes(numpy_backend):
    specs = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
             {"type": "residual", "body": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}]},
             BLOCK, *HEAD]
    config = validate_config(residual_config(specs))
    assert config["model"]["layers"][1]["shortcut"] == []  # omitted: the identity
    assert config["model"]["layers"][2]["body"][0]["init"] == "he"  # defaults filled in, recursively
    assert validate_config(tomllib.loads(dumps_toml(config))) == config
    model = build_model(config, (3, 8, 8), 10)
    block = model.layers[2]
    assert isinstance(block, layers.Residual) and isinstance(model.layers[4], layers.GlobalAvgPool2D)
    assert block.body[0].params["W"].shape == (8, 4, 3, 3)
    assert block.shortcut[0].params["W"].shape == (8, 4, 1, 1)
    assert block.body[1].num_features == 8 and block.shortcut[1].num_features == 8
    assert model.layers[5].params["W"].shape == (10, 8)
    assert model.forward(np.zeros((2, 3, 8, 8), np.float32), training=False).shape == (2, 10)
    # the same config and seed give the same model (weights drawn body first, then shortcut)
    again = build_model(config, (3, 8, 8), 10)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[key], value)
    # a nested key can be overridden from the command line's --set form
    wider = validate_config(apply_overrides(config, ["model.layers[2].body[0].out_channels=6",
                                                     "model.layers[2].shortcut[0].out_channels=6"]))
    assert build_model(wider, (3, 8, 8), 10).layers[2].body[0].out_channels == 6


def test_residual_config_errors_name_the_nested_key(numpy_backend):
    bad = [{**BLOCK, "body": [{"type": "conv2d", "out_channels": 8, "kernel_size": 0}]}, *HEAD]
    with pytest.raises(ConfigError, match=r"^model\.layers\[0\]\.body\[0\]\.kernel_size: expected an integer >= 1"):
        validate_config(residual_config(bad))
    bad = [{**BLOCK, "shortcut": [{"type": "conv2d", "out_channel": 8, "kernel_size": 1}]}, *HEAD]
    with pytest.raises(ConfigError, match=r"^model\.layers\[0\]\.shortcut\[0\]\.out_channel: unknown key"):
        validate_config(residual_config(bad))
    with pytest.raises(ConfigError, match=r"^model\.layers\[0\]\.body: missing"):
        validate_config(residual_config([{"type": "residual"}, *HEAD]))
    with pytest.raises(ConfigError, match=r"^model\.layers\[0\]\.body: expected at least one layer"):
        validate_config(residual_config([{"type": "residual", "body": []}, *HEAD]))
    with pytest.raises(ConfigError, match=r"^model\.layers\[0\]\.body\[1\]\.type: expected one of .*residual"):
        validate_config(residual_config([{"type": "residual", "body": [{"type": "relu"}, {"type": "nope"}]}]))

    no_projection = validate_config(residual_config([{k: v for k, v in BLOCK.items() if k != "shortcut"}, *HEAD]))
    with pytest.raises(ConfigError, match=r"^model\.layers\[0\]\.shortcut: the body gives \(8, 4, 4\) but the "
                                          r"identity shortcut passes \(3, 8, 8\)"):
        build_model(no_projection, (3, 8, 8), 10)
    too_big = validate_config(residual_config([{**BLOCK, "body": [
        {"type": "maxpool2d", "kernel_size": 2}, {"type": "conv2d", "out_channels": 8, "kernel_size": 5}]}, *HEAD]))
    with pytest.raises(ConfigError, match=r"^model\.layers\[0\]\.body\[1\]\.kernel_size: got 5, but the conv2d "
                                          r"input at this depth is 4x4"):
        build_model(too_big, (3, 8, 8), 10)
    whitening = validate_config(residual_config([{**BLOCK, "body": [{"type": "whitening_conv2d"}]}, *HEAD]))
    with pytest.raises(ConfigError, match=r"^model\.layers\[0\]\.body\[0\]: whitening_conv2d must be the first"):
        build_model(whitening, (3, 8, 8), 10)
    option_a = validate_config(residual_config([{**BLOCK, "shortcut": [{"type": "subsample_pad", "out_channels": 8}]},
                                                *HEAD]))
    model = build_model(option_a, (3, 8, 8), 10)
    assert isinstance(model.layers[0].shortcut[0], layers.SubsamplePad) and model.layers[0].shortcut[0].stride == (2, 2)
    flat = validate_config(residual_config([{"type": "flatten"}, {"type": "globalavgpool2d"}, *HEAD[2:]]))
    with pytest.raises(ConfigError, match=r"^model\.layers\[1\]: GlobalAvgPool2D: expected a per-sample shape"):
        build_model(flat, (3, 8, 8), 10)
