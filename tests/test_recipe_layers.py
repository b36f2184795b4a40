"""The cifar10-fast recipe's pieces: Scale, dirac/fan-in init, frozen params, the network, TTA, SGD settings."""

import numpy as np
import pytest
from test_gradients import check_layer

import reference_models as zoo
from gpucnn import init, layers, optim
from gpucnn.model import Sequential
from gpucnn.recipe import airbench_sgd_settings
from gpucnn.tta import predict_tta


# --------------------------------------------------------------------------- Scale
@pytest.mark.parametrize("factor", [1 / 9, -2.5])
def test_scale_gradients(factor):
    x = np.random.default_rng(0).standard_normal((3, 10))
    check_layer(layers.Scale(factor), x)


def test_scale_forward_and_errors():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = layers.Scale(1 / 9).forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x / 9, rtol=1e-7)
    assert layers.Scale(0.5).output_shape((4, 2)) == (4, 2) and layers.Scale(0.5).num_params() == 0
    with pytest.raises(ValueError, match="Scale: factor must be a finite number, got nan"):
        layers.Scale(float("nan"))
    with pytest.raises(ValueError, match="Scale: factor must be a finite number"):
        layers.Scale("2")
    with pytest.raises(RuntimeError, match="Scale: backward called before forward"):
        layers.Scale(2.0).backward(x)


# --------------------------------------------------------------------------- init
@pytest.mark.parametrize("shape", [(24, 12, 3, 3), (5, 5, 3, 3), (4, 9, 3, 3), (6, 2, 2, 2)])
def test_dirac_follows_torch_dirac_on_the_first_in_channels_filters(shape):
    torch = pytest.importorskip("torch")
    ours = init.dirac(shape, np.random.default_rng(0), np.float64)
    ref = torch.tensor(init.fan_in_uniform(shape, np.random.default_rng(0), np.float64))
    torch.nn.init.dirac_(ref[: ref.size(1)])  # airbench: dirac_(w[:w.size(1)]) after the default init
    np.testing.assert_array_equal(ours, ref.numpy())


def test_dirac_conv_passes_the_input_through_its_first_channels(numpy_backend):
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 4))
    conv = layers.Conv2D(3, 8, 3, padding=1, bias=False, init="dirac", dtype=np.float64, rng=2)
    y = conv.forward(x)
    np.testing.assert_array_equal(y[:, :3], x)
    assert np.all(conv.params["W"][3:] != 0)  # the other filters keep the default draw
    bound = 1 / np.sqrt(3 * 9)
    assert np.abs(conv.params["W"][3:]).max() <= bound


def test_fan_in_uniform_is_torch_default_scale():
    torch = pytest.importorskip("torch")
    w = init.fan_in_uniform((256, 64, 3, 3), np.random.default_rng(0))
    ref = torch.nn.Conv2d(64, 256, 3).weight.detach().numpy()
    bound = 1 / np.sqrt(64 * 9)
    assert np.abs(w).max() <= bound and np.abs(ref).max() <= bound
    assert w.std() == pytest.approx(ref.std(), rel=0.02)


# --------------------------------------------------------------------------- frozen params
def test_frozen_params_are_left_alone_by_sgd_and_counted_non_trainable(numpy_backend):
    rng = np.random.default_rng(3)
    bn = layers.BatchNorm2D(4, dtype=np.float64)
    bn.frozen_params = {"gamma"}
    model = Sequential([bn, layers.Flatten()])
    y = model.forward(rng.standard_normal((3, 4, 2, 2)))
    model.backward(rng.standard_normal(y.shape))
    assert np.any(bn.grads["gamma"] != 0)
    beta_before = np.array(bn.params["beta"])
    opt = optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.5)
    opt.step()
    np.testing.assert_array_equal(bn.params["gamma"], np.ones(4))
    np.testing.assert_allclose(bn.params["beta"], beta_before - 0.1 * np.array(bn.grads["beta"]))
    assert set(opt.state_dict()) == {"velocity.layers.0.beta"}
    assert "Non-trainable params: 4" in model.summary((4, 2, 2))
    assert "layers.0.gamma" in model.state_dict()


# --------------------------------------------------------------------------- the network
def test_cifar10_fast_is_airbench94(numpy_backend):
    model = zoo.cifar10_fast(rng=0)
    kinds = [type(layer).__name__ for layer in model.layers]
    group = ["Conv2D", "MaxPool2D", "BatchNorm2D", "GELU", "Conv2D", "BatchNorm2D", "GELU"]
    assert kinds == ["Conv2D", "GELU"] + group * 3 + ["MaxPool2D", "Flatten", "Dense", "Scale"]
    assert model.num_params() == 1_972_792  # airbench94's nn.Sequential, counted with torch
    frozen = {(i, n) for i, layer in enumerate(model.layers) for n in layer.frozen_params}
    bn_indices = [i for i, k in enumerate(kinds) if k == "BatchNorm2D"]
    assert frozen == {(0, "W")} | {(i, "gamma") for i in bn_indices}
    for i in bn_indices:
        assert model.layers[i].eps == 1e-12 and model.layers[i].momentum == pytest.approx(0.4)
    convs = [layer for layer in model.layers[1:] if isinstance(layer, layers.Conv2D)]
    assert [c.out_channels for c in convs] == [64, 64, 256, 256, 256, 256]
    assert all("b" not in c.params and c.padding == (1, 1) for c in convs)
    assert "b" not in model.layers[-2].params and model.layers[-1].factor == pytest.approx(1 / 9)
    assert model.summary((3, 32, 32)).splitlines()[-2] == "Trainable params: 1,971,352"
    with pytest.raises(ValueError, match="cifar10_fast: image_size must be at least 25, got 16"):
        zoo.cifar10_fast(image_size=16)


def test_cifar10_fast_whitens_from_images(numpy_backend):
    images = np.random.default_rng(4).standard_normal((4, 3, 32, 32)).astype(np.float32)
    model = zoo.cifar10_fast(rng=0, whitening_images=images, widths=(8, 8, 8))
    from gpucnn.whitening import whitening_filters

    np.testing.assert_allclose(model.layers[0].params["W"], whitening_filters(images, 2).astype(np.float32))
    assert model.forward(images).shape == (4, 10)


def test_cifar10_fast_counts_match_torch():
    pytest.importorskip("torch")
    from test_torch_twin import twin_net

    net = twin_net((64, 256, 256))
    assert sum(p.numel() for p in net.parameters()) == 1_972_792
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 1_971_352


# --------------------------------------------------------------------------- TTA
def test_predict_tta_averages_the_mirror_and_is_mirror_invariant(numpy_backend):
    rng = np.random.default_rng(5)
    model = zoo.cifar10_fast(rng=0, widths=(4, 8, 8), image_size=26, dtype=np.float64)
    model.forward(rng.standard_normal((8, 3, 26, 26)), training=True)  # move the running stats
    x = rng.standard_normal((5, 3, 26, 26))
    mirrored = np.ascontiguousarray(x[..., ::-1])
    got = predict_tta(model, x, batch_size=2)
    np.testing.assert_allclose(got, 0.5 * model.predict(x) + 0.5 * model.predict(mirrored), rtol=1e-12)
    np.testing.assert_allclose(predict_tta(model, mirrored, batch_size=5), got, rtol=1e-12)
    assert not np.allclose(model.predict(x), got)
    with pytest.raises(ValueError, match="predict_tta: batch_size must be >= 1, got 0"):
        predict_tta(model, x, batch_size=0)


# --------------------------------------------------------------------------- SGD settings
def test_airbench_settings_keep_airbench_steps():
    s = airbench_sgd_settings(batch_size=1024)
    kilostep = 1024 * (1 + 1 / 0.15)
    lr_t, wd_t = 11.5 / kilostep, 0.0153 * 1024 / kilostep
    assert s["lr"] == pytest.approx(lr_t * 1024) and s["lr"] == pytest.approx(1.5)
    # decay per step: ours lr * wd * w == airbench's lr_t * (wd_t / lr_t) * w, biases too
    assert s["lr"] * s["weight_decay"] == pytest.approx(wd_t)
    bn, bias = s["groups"]
    assert bn["layer"] == "BatchNorm2D" and bn["kind"] == "bias" and bn["lr_scale"] == 64.0
    assert s["lr"] * bn["lr_scale"] * bn["weight_decay"] == pytest.approx(wd_t)
    assert bias == {"kind": "bias", "weight_decay": s["weight_decay"]}
    with pytest.raises(ValueError, match="airbench_sgd_settings"):
        airbench_sgd_settings(momentum=1.0)


# --------------------------------------------------------------------------- the shipped config
def test_cifar10_fast_config_builds_the_recipe(numpy_backend):
    from gpucnn.build import build_model
    from gpucnn.config import load_config, validate_config
    from gpucnn.build import build_optimizer

    config = validate_config(load_config("cifar10-fast"))
    images = np.random.default_rng(6).standard_normal((3, 3, 32, 32)).astype(np.float32)
    built = build_model(config, (3, 32, 32), 10, whitening_images=images)
    ref = zoo.cifar10_fast(rng=0, whitening_images=images)
    assert [repr(a) for a in built.layers] == [repr(b) for b in ref.layers]
    for a, b in zip(built.layers, ref.layers):  # same seed, same draws in the same order
        assert a.frozen_params == b.frozen_params
        assert a.params.keys() == b.params.keys()
        for name in a.params:
            np.testing.assert_array_equal(a.params[name], b.params[name])
        assert getattr(a, "eps", None) == getattr(b, "eps", None)
        assert getattr(a, "momentum", None) == pytest.approx(getattr(b, "momentum", None))
    opt = build_optimizer(config, built)
    want = airbench_sgd_settings(batch_size=config["data"]["batch_size"])
    assert opt.lr == pytest.approx(want["lr"]) and opt.weight_decay == pytest.approx(want["weight_decay"])
    assert opt.momentum == 0.85 and opt.nesterov
    assert len(opt.groups) == len(want["groups"])
    for got, expected in zip(opt.groups, want["groups"]):
        expected = {"lr_scale": 1.0, **expected}  # the config schema fills in the default lr_scale
        if "layer" in expected:  # configs name layer classes in lower case; groups match either
            expected["layer"] = expected["layer"].lower()
        assert got.keys() == expected.keys()
        assert all(got[k] == pytest.approx(v) if isinstance(v, float) else got[k] == v for k, v in expected.items())
    assert config["loss"]["label_smoothing"] == 0.2
    assert config["data"]["augment"] == {"flip": True, "crop_padding": 2, "padding_mode": "reflect", "alternate_flip": True}


def test_cifar10_fast_schedule_is_airbench_triangle():
    from gpucnn.config import load_config, validate_config
    from gpucnn.schedules import schedule_from_config

    config = validate_config(load_config("cifar10-fast"))
    steps_per_epoch = 50  # 10 epochs: 500 steps, warm-up int(0.23 * 500) = 115 steps
    schedule = schedule_from_config(config, steps_per_epoch)
    total = steps_per_epoch * config["training"]["epochs"]
    warm = int(0.23 * total)
    for step in (0, 1, 57, 114, 115, 116, 300, 499):
        if step < warm:
            factor = 0.2 * (1 - step / warm) + step / warm
        else:
            frac = (step - warm) / (total - warm)
            factor = (1 - frac) + 0.07 * frac
        assert schedule(step) == pytest.approx(1.5 * factor, rel=1e-12), step


def test_whitening_conv2d_must_come_first():
    from gpucnn.build import build_model
    from gpucnn.config import load_config, validate_config
    from gpucnn.errors import ConfigError

    config = validate_config(load_config("cifar10-fast"))
    config["model"]["layers"].insert(0, {"type": "gelu"})
    with pytest.raises(ConfigError, match=r"model.layers\[1\]: whitening_conv2d must be the first layer"):
        build_model(config, (3, 32, 32), 10)


def test_cifar10_fast_config_round_trips_through_toml():
    from gpucnn.config import dumps_toml, load_config, tomllib, validate_config

    config = validate_config(load_config("cifar10-fast"))
    assert validate_config(tomllib.loads(dumps_toml(config))) == config
