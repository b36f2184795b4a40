"""Configs: shipped files, overrides, validation messages, TOML output, model building."""



import numpy as np
import pytest

from gpucnn import layers
from gpucnn.build import build_model
from gpucnn.config import (
    apply_overrides,
    dumps_toml,
    load_config,
    parse_value,
    shipped_config_names,
    tomllib,
    split_key,
    validate_config,
    write_config,
)
from gpucnn.errors import ConfigError

CIFAR_SHAPE = (3, 32, 32)


@pytest.fixture
def lenet():
    return validate_config(load_config("lenet5"))


def test_shipped_configs_validate_and_round_trip():
    assert {"lenet5", "cifar10-vgg", "digits"} <= set(shipped_config_names())
    for name in ("lenet5", "cifar10-vgg", "digits"):
        config = validate_config(load_config(name))
        assert validate_config(tomllib.loads(dumps_toml(config))) == config


def test_default_config_is_lenet5_on_cifar10(lenet):
    assert validate_config(load_config(None)) == lenet
    assert lenet["data"]["dataset"] == "cifar10"
    kinds = [spec["type"] for spec in lenet["model"]["layers"]]
    assert kinds.count("conv2d") == 2 and kinds.count("dense") == 3


def test_lenet5_builds_with_inferred_sizes(numpy_backend, lenet):
    model = build_model(lenet, CIFAR_SHAPE, 10)
    convs = [m for m in model.layers if isinstance(m, layers.Conv2D)]
    dense = [m for m in model.layers if isinstance(m, layers.Dense)]
    assert [c.params["W"].shape for c in convs] == [(6, 3, 5, 5), (16, 6, 5, 5)]
    assert [d.params["W"].shape for d in dense] == [(120, 400), (84, 120), (10, 84)]
    # 456 + 2416 + 48120 + 10164 + 850: the classic LeNet-5 count on 3-channel input
    assert model.num_params() == 62006


def test_vgg_config_is_a_few_hundred_thousand_params(numpy_backend):
    config = validate_config(load_config("cifar10-vgg"))
    model = build_model(config, CIFAR_SHAPE, 10)
    assert 300_000 <= model.num_params() <= 2_000_000
    convs = [m for m in model.layers if isinstance(m, layers.Conv2D)]
    assert len(convs) == 6 and all(c.kernel_size == (3, 3) for c in convs)


def test_same_seed_same_initial_weights(numpy_backend, lenet):
    a = build_model(lenet, CIFAR_SHAPE, 10).state_dict()
    b = build_model(lenet, CIFAR_SHAPE, 10).state_dict()
    c = build_model(lenet, CIFAR_SHAPE, 10, seed=1).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["layers.0.W"], c["layers.0.W"])


def test_overrides_parse_toml_literals_and_index_lists(lenet):
    out = apply_overrides(lenet, [
        "optimizer.lr=0.05", "data.dataset=digits", "model.layers[0].kernel_size=[3, 3]",
        "training.seed = 7", "data.augment.flip=false", 'schedule.name="step"',
    ])
    assert out["optimizer"]["lr"] == 0.05
    assert out["data"]["dataset"] == "digits"
    assert out["model"]["layers"][0]["kernel_size"] == [3, 3]
    assert out["training"]["seed"] == 7 and out["data"]["augment"]["flip"] is False
    assert out["schedule"]["name"] == "step"
    assert lenet["optimizer"]["lr"] == 0.02  # the input is not modified
    validate_config(out)


def test_parse_value_and_split_key():
    assert parse_value("1e-3") == 0.001 and parse_value("true") is True and parse_value("abc") == "abc"
    assert split_key("model.layers[3].kernel_size") == ["model", "layers", 3, "kernel_size"]
    with pytest.raises(ConfigError, match="malformed key"):
        split_key("model..lr")


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("optimizer.lrr=0.1", r"optimizer\.lrr: unknown key \(did you mean 'lr'\?\)"),
        ("optimizer.lr=-0.1", r"optimizer\.lr: expected a number > 0, got -0\.1"),
        ("optimizer.lr=0", r"optimizer\.lr: expected a number > 0"),
        ("optimizer.momentum=1.5", r"optimizer\.momentum: expected a number >= 0 and < 1, got 1\.5"),
        ("training.epochs=2.5", r"training\.epochs: expected an integer >= 1, got 2\.5"),
        ("training.epochs=true", r"training\.epochs: expected an integer >= 1, got True"),
        ("data.batch_size=big", r"data\.batch_size: expected an integer >= 1, got 'big'"),
        ("data.dataset=imagenet", r"data\.dataset: expected one of 'cifar10', 'cifar100', .*got 'imagenet'"),
        ("model.layers[0].type=conv3d", r"model\.layers\[0\]\.type: expected one of conv2d"),
        ("model.layers[0].kernel=5", r"model\.layers\[0\]\.kernel: unknown key"),
        ("model.layers[0].kernel_size=0", r"model\.layers\[0\]\.kernel_size: expected an integer >= 1"),
        ("model.layers[0].kernel_size=[3, 3, 3]", r"model\.layers\[0\]\.kernel_size: expected an integer >= 1 or a pair"),
        ("schedule.name=exp", r"schedule\.name: expected one of 'constant', 'step', 'cosine', 'linear'"),
        ("schedule.min_lr=1.0", r"schedule\.min_lr: got 1\.0, but it must not exceed optimizer\.lr"),
        ("extra.key=1", r"extra: unknown section"),
        ("model.layers[40].p=1", r"model\.layers\[40\]: index out of range"),
    ],
)
def test_bad_values_name_the_key(lenet, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_config(apply_overrides(lenet, [override]))


def test_missing_required_key_and_bad_set_syntax(lenet):
    del lenet["model"]["layers"][0]["out_channels"]
    with pytest.raises(ConfigError, match=r"model\.layers\[0\]\.out_channels: missing"):
        validate_config(lenet)
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(lenet, ["optimizer.lr"])


def test_kernel_larger_than_its_input_names_the_layer(numpy_backend, lenet):
    # after conv5 (28) pool (14) conv5 (10) pool (5), a third 7x7 conv cannot fit
    specs = lenet["model"]["layers"]
    specs.insert(6, {"type": "conv2d", "out_channels": 8, "kernel_size": 7})
    config = validate_config(lenet)
    with pytest.raises(ConfigError, match=r"model\.layers\[6\]\.kernel_size: got 7, but the conv2d input at this "
                                          r"depth is 5x5"):
        build_model(config, CIFAR_SHAPE, 10)


def test_dense_on_image_and_wrong_class_count(numpy_backend, lenet):
    no_flatten = apply_overrides(lenet, [])
    del no_flatten["model"]["layers"][6]
    with pytest.raises(ConfigError, match=r'model\.layers\[6\]: a dense layer needs a flat input.*type = "flatten"'):
        build_model(validate_config(no_flatten), CIFAR_SHAPE, 10)
    with pytest.raises(ConfigError, match=r"model\.layers\[11\]\.out_features: got 10, but the dataset has 7 "
                                          r"classes"):
        build_model(lenet, CIFAR_SHAPE, 7)
    no_head = apply_overrides(lenet, [])
    del no_head["model"]["layers"][6:]
    with pytest.raises(ConfigError, match=r"model\.layers\[5\]: the model must end in one logit per class, "
                                          r"shape \(10,\), but it gives \(16, 5, 5\)"):
        build_model(validate_config(no_head), CIFAR_SHAPE, 10)


def test_toml_writer_handles_strings_floats_and_nesting(tmp_path):
    config = {"a": {"s": 'he said "hi"\\', "f": 1.0, "e": 1e-8, "i": 3, "b": True, "l": [1, 2],
                    "t": [{"x": 1}, {"y": "z"}], "sub": {"k": 0.5}}}
    write_config(tmp_path / "c.toml", config)
    assert tomllib.loads((tmp_path / "c.toml").read_text()) == config
    assert not list(tmp_path.glob("*.tmp"))


def test_every_layer_type_builds(numpy_backend):
    specs = [
        {"type": "conv2d", "out_channels": 4, "kernel_size": [3, 5], "stride": 1, "padding": [1, 2]},
        {"type": "batchnorm2d"}, {"type": "gelu"}, {"type": "avgpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "bias": False, "init": "he_uniform"},
        {"type": "tanh"}, {"type": "maxpool2d", "kernel_size": 3, "stride": 1, "padding": 1},
        {"type": "sigmoid"}, {"type": "softplus"}, {"type": "scale", "factor": 0.5}, {"type": "flatten"},
        {"type": "dropout", "p": 0.1}, {"type": "dense", "out_features": 3}, {"type": "relu"}, {"type": "silu"},
    ]
    config = validate_config({"model": {"layers": specs}})
    model = build_model(config, (2, 16, 16), 3)
    names = [type(layer).__name__ for layer in model.layers]
    assert names == ["Conv2D", "BatchNorm2D", "GELU", "AvgPool2D", "Conv2D", "Tanh", "MaxPool2D", "Sigmoid",
                     "Softplus", "Scale", "Flatten", "Dropout", "Dense", "ReLU", "SiLU"]
    assert model.layers[0].params["W"].shape == (4, 2, 3, 5)
    assert "b" not in model.layers[4].params
    assert model.layers[12].params["W"].shape == (3, 4 * 3 * 3)  # 16 -> pool 8 -> 3x3 stride-2 conv 3
    assert model.forward(np.zeros((2, 2, 16, 16), np.float32)).shape == (2, 3)
