"""The shipped ResNet-20 and ResNet-18 configs against PyTorch twins, and a real training run.

The twins are built here (test-only reference models in the usual PyTorch form: a BasicBlock
module with conv1/bn1/conv2/bn2 and a ``shortcut`` Sequential, He et al. 2016 / kuangliu's
CIFAR ResNet-18). gpucnn's model comes from the shipped TOML; its weights are copied into the
twin, then the parameter counts, the training-mode logits, every gradient, the BatchNorm running
statistics and the params after SGD steps (Nesterov, weight decay, the config's BN group) agree.
Both run in float64 at batch 2 (agreement
to ~1e-13 relative; a few seconds each on 2 cores) and ResNet-18 also in float32, the dtype
training uses, at a tolerance float32 rounding through 20 BatchNorm layers allows (~5x margin).
"""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from gpucnn import layers, losses, optim
from gpucnn.build import build_layer, build_model
from gpucnn.config import dumps_toml, load_config, tomllib, validate_config
from gpucnn.data.dataset import Dataset
from gpucnn.model import Sequential

try:
    import torch
except ImportError:  # the twins skip; the config and training tests still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="the PyTorch twins need torch (pip install torch==2.13.0)")
nn = torch.nn if torch is not None else None

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CIFAR_SHAPE = (3, 32, 32)


def shipped(name: str) -> dict:
    return validate_config(load_config(CONFIGS / f"{name}.toml"))


# ----------------------------------------------------------------------------- the PyTorch twins
if torch is not None:
    class SubsamplePad(nn.Module):
        """Option A as the common CIFAR ResNet code writes it."""

        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.pad, self.stride = (c_out - c_in) // 2, stride

        def forward(self, x):
            x = x[:, :, :: self.stride, :: self.stride]
            return nn.functional.pad(x, (0, 0, 0, 0, self.pad, self.pad))

    class BasicBlock(nn.Module):
        def __init__(self, c_in, c_out, stride, option="B"):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.shortcut = nn.Sequential()
            if (stride != 1 or c_in != c_out) and option == "A":
                self.shortcut = SubsamplePad(c_in, c_out, stride)
            elif stride != 1 or c_in != c_out:  # option B: projection where the shape changes
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(c_out))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + self.shortcut(x))

    class CifarResNet(nn.Module):
        """3x3 stem, stages of basic blocks (stride 2 at the first block of every stage but the first)."""

        def __init__(self, widths, blocks, num_classes=10, option="B"):
            super().__init__()
            self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            stages, c_in = [], widths[0]
            for i, (width, n) in enumerate(zip(widths, blocks)):
                for b in range(n):
                    stages.append(BasicBlock(c_in, width, 2 if i > 0 and b == 0 else 1, option))
                    c_in = width
            self.stages = nn.Sequential(*stages)
            self.linear = nn.Linear(c_in, num_classes)

        def forward(self, x):
            out = self.stages(torch.relu(self.bn1(self.conv1(x))))
            return self.linear(out.mean(dim=(2, 3)))


def resnet20_twin(option="B"):
    return CifarResNet((16, 32, 64), (3, 3, 3), option=option)


def option_a(config):
    """The config with every projection shortcut replaced by the paper's option A (as resnet20.toml says)."""
    config = copy.deepcopy(config)
    for spec in config["model"]["layers"]:
        if spec["type"] == "residual" and spec["shortcut"]:
            spec["shortcut"] = [{"type": "subsample_pad", "out_channels": spec["body"][0]["out_channels"]}]
    return validate_config(config)


def resnet18_twin(widths=(64, 128, 256, 512)):
    return CifarResNet(widths, (2, 2, 2, 2))


# ----------------------------------------------------------------------------- pairing the two
def build_in(config, dtype, seed=0):
    """build_model's layers in ``dtype`` (build_model itself builds float32): same rng order."""
    rng = np.random.default_rng(seed)
    shape, built = CIFAR_SHAPE, []
    for i, spec in enumerate(config["model"]["layers"]):
        layer = build_layer(spec, shape, f"model.layers[{i}]", rng, dtype=dtype)
        shape = layer.output_shape(shape)
        built.append(layer)
    return Sequential(built)


def pairs(model, net):
    """(gpucnn layer, torch module) for every layer with params, in definition order."""
    ours = [layer for _, layer in model.named_layers() if isinstance(layer, (layers.Conv2D, layers.BatchNorm2D,
                                                                            layers.Dense))]
    theirs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    assert len(ours) == len(theirs)
    kinds = {layers.Conv2D: nn.Conv2d, layers.BatchNorm2D: nn.BatchNorm2d, layers.Dense: nn.Linear}
    for layer, mod in zip(ours, theirs):
        assert isinstance(mod, kinds[type(layer)]), (layer, mod)
    return list(zip(ours, theirs))


def named(layer, mod):
    """(our param/state name, our array, torch tensor) for one pair."""
    if isinstance(layer, layers.BatchNorm2D):
        return [("gamma", layer.params["gamma"], mod.weight), ("beta", layer.params["beta"], mod.bias),
                ("running_mean", layer.running_mean, mod.running_mean),
                ("running_var", layer.running_var, mod.running_var)]
    items = [("W", layer.params["W"], mod.weight)]
    return items + ([("b", layer.params["b"], mod.bias)] if "b" in layer.params else [])


def copy_into(model, net, dtype):
    net = net.to(dtype)
    with torch.no_grad():
        for layer, mod in pairs(model, net):
            for _, ours, ref in named(layer, mod):
                assert tuple(ours.shape) == tuple(ref.shape), (layer, ref.shape)
                ref.copy_(torch.from_numpy(np.array(ours)))
    return net


def worst_ratio(pairs_of_arrays, rtol, atol_frac):
    """max |a - b| / (atol + rtol |b|) with atol = atol_frac * max|b| per tensor (<= 1 passes)."""
    worst, where = 0.0, ""
    for name, a, b in pairs_of_arrays:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        atol = atol_frac * max(np.abs(b).max(), 1e-30)
        ratio = float(np.max(np.abs(a - b) / (atol + rtol * np.abs(b))))
        if ratio > worst:
            worst, where = ratio, name
    return worst, where


def sgd_pair(config, model, net):
    """gpucnn's SGD from the config's optimizer section, and torch.optim.SGD with the same settings."""
    o = config["optimizer"]
    groups = [dict(g) for g in o["groups"]]  # layer names match classes case-insensitively
    ours = optim.SGD(model, o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
                     weight_decay=o["weight_decay"], groups=groups)
    bn_wd = {g["layer"]: g["weight_decay"] for g in groups if "layer" in g and "weight_decay" in g}
    assert bn_wd == {"batchnorm2d": 0.0}  # what the twin below encodes
    decayed = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ids = {id(p) for p in decayed}
    rest = [p for p in net.parameters() if id(p) not in ids]  # BN gamma/beta and biases: no decay
    theirs = torch.optim.SGD([{"params": decayed, "weight_decay": o["weight_decay"]},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])
    return ours, theirs


def assert_twins(config, net, dtype, batch, steps, rtol, atol_frac, seed=0):
    """Forward, every gradient and ``steps`` SGD steps of gpucnn's model and its twin agree."""
    np_dtype = np.dtype(dtype)
    torch_dtype = {np.float32: torch.float32, np.float64: torch.float64}[np_dtype.type]
    model = build_in(config, np_dtype) if np_dtype != np.float32 else build_model(config, CIFAR_SHAPE, 10)
    rng = np.random.default_rng(seed)
    # non-trivial BN affine params and running stats, so gamma/beta/stat mix-ups would show
    for _, layer in model.named_layers():
        if isinstance(layer, layers.BatchNorm2D):
            layer.set_param("gamma", rng.uniform(0.5, 1.5, layer.num_features))
            layer.set_param("beta", rng.normal(0, 0.1, layer.num_features))
    net = copy_into(model, net, torch_dtype)
    net.train()
    assert model.num_params() == sum(p.numel() for p in net.parameters())
    opt, twin_opt = sgd_pair(config, model, net)
    loss_fn, twin_loss_fn = losses.SoftmaxCrossEntropy(), nn.CrossEntropyLoss()
    for step in range(steps):
        x = rng.standard_normal((batch, *CIFAR_SHAPE)).astype(np_dtype)
        y = rng.integers(0, 10, batch)
        logits = model.forward(x, training=True)
        loss = float(loss_fn.forward(logits, y))
        model.backward(loss_fn.backward(), input_grad=False)
        twin_opt.zero_grad(set_to_none=True)
        twin_logits = net(torch.from_numpy(x))
        twin_loss = twin_loss_fn(twin_logits, torch.from_numpy(y))
        twin_loss.backward()

        ratio, where = worst_ratio([("logits", logits, twin_logits.detach().numpy())], rtol, atol_frac)
        assert ratio <= 1, f"step {step}: logits differ by {ratio:.3g} x tolerance"
        assert loss == pytest.approx(twin_loss.item(), rel=rtol)
        grads = [(f"{layer!r}.{name}", layer.grads[name], ref.grad.numpy())
                 for layer, mod in pairs(model, net) for name, _, ref in named(layer, mod) if name in layer.grads]
        assert len(grads) == len(list(net.parameters()))
        ratio, where = worst_ratio(grads, rtol, atol_frac)
        assert ratio <= 1, f"step {step}: grad {where} differs by {ratio:.3g} x tolerance"
        opt.step()
        twin_opt.step()
        state = [(f"{layer!r}.{name}", ours, ref.detach().numpy())
                 for layer, mod in pairs(model, net) for name, ours, ref in named(layer, mod)]
        ratio, where = worst_ratio(state, rtol, atol_frac)
        assert ratio <= 1, f"after step {step}: {where} differs by {ratio:.3g} x tolerance"
    return model, net


@pytest.fixture(autouse=True)
def _torch_threads():
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # no fight for 2 cores with NumPy's BLAS
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- ResNet-20
@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_shipped_resnet_configs_round_trip_and_carry_the_recipe(name):
    config = shipped(name)
    assert validate_config(tomllib.loads(dumps_toml(config))) == config  # what checkpoints embed
    opt = config["optimizer"]
    assert (opt["momentum"], opt["nesterov"], opt["weight_decay"]) == (0.9, True, 5e-4)
    assert config["schedule"]["name"] == "cosine"
    assert config["data"]["augment"]["flip"] and config["data"]["augment"]["crop_padding"] == 4


def test_resnet20_config_has_the_papers_shape(numpy_backend):
    model = build_model(shipped("resnet20"), CIFAR_SHAPE, 10)
    convs = [l for _, l in model.named_layers() if isinstance(l, layers.Conv2D)]
    blocks = [l for l in model.layers if isinstance(l, layers.Residual)]
    assert len(blocks) == 9
    # 6n + 2 weighted layers with n = 3: the stem, 2 per block, the dense layer (projections aside)
    assert len([c for c in convs if c.kernel_size == (3, 3)]) + 1 == 20
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    assert [len(b.shortcut) for b in blocks] == [0, 0, 0, 2, 0, 0, 2, 0, 0]
    assert [b.shortcut[0].stride for b in blocks if b.shortcut] == [(2, 2), (2, 2)]
    assert model.summary(CIFAR_SHAPE).count("(None, 64, 8, 8)") > 0


@needs_torch
def test_resnet20_param_count_is_the_twins(numpy_backend):
    count = sum(p.numel() for p in resnet20_twin().parameters())
    assert build_model(shipped("resnet20"), CIFAR_SHAPE, 10).num_params() == count
    assert 0.265e6 < count < 0.275e6  # the paper's "0.27M"


@needs_torch
def test_resnet20_matches_torch_in_float64(numpy_backend):
    """Two SGD steps (the second with momentum), batch 2: the same math to ~1e-13."""
    assert_twins(shipped("resnet20"), resnet20_twin(), np.float64, batch=2, steps=2, rtol=1e-11, atol_frac=1e-12)


@needs_torch
def test_resnet20_option_a_matches_torch_in_float64(numpy_backend):
    """The paper's parameter-free shortcut: 269,722 params in both, the same training step."""
    config = option_a(shipped("resnet20"))
    count = sum(p.numel() for p in resnet20_twin("A").parameters())
    assert build_model(config, CIFAR_SHAPE, 10).num_params() == count
    assert count < sum(p.numel() for p in resnet20_twin("B").parameters())
    assert_twins(config, resnet20_twin("A"), np.float64, batch=2, steps=1, rtol=1e-11, atol_frac=1e-12)


def test_float64_build_is_the_shipped_build(numpy_backend):
    """The float64 helper draws the same weights as build_model (float32), up to float32 rounding."""
    config = shipped("resnet20")
    a, b = build_model(config, CIFAR_SHAPE, 10).state_dict(), build_in(config, np.float64).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-7, atol=0, err_msg=key)


# ----------------------------------------------------------------------------- ResNet-18
def test_resnet18_config_has_the_cifar_shape(numpy_backend):
    model = build_model(shipped("resnet18"), CIFAR_SHAPE, 10)
    blocks = [l for l in model.layers if isinstance(l, layers.Residual)]
    assert len(blocks) == 8 and [len(b.shortcut) for b in blocks] == [0, 0, 2, 0, 2, 0, 2, 0]
    assert not any(isinstance(l, layers.MaxPool2D) for _, l in model.named_layers())  # the CIFAR stem keeps 32x32
    assert model.layers[0].kernel_size == (3, 3) and model.layers[0].stride == (1, 1)
    assert [b.body[0].out_channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]


@needs_torch
def test_resnet18_param_count_is_the_twins(numpy_backend):
    count = sum(p.numel() for p in resnet18_twin().parameters())
    assert build_model(shipped("resnet18"), CIFAR_SHAPE, 10).num_params() == count
    assert 11.1e6 < count < 11.25e6  # "11.2M"


@needs_torch
def test_resnet18_matches_torch_in_float64(numpy_backend):
    assert_twins(shipped("resnet18"), resnet18_twin(), np.float64, batch=2, steps=1, rtol=1e-11, atol_frac=1e-12)


@needs_torch
def test_resnet18_matches_torch_in_float32(numpy_backend):
    assert_twins(shipped("resnet18"), resnet18_twin(), np.float32, batch=2, steps=1, rtol=2e-4, atol_frac=2e-5)


# ----------------------------------------------------------------------------- training for real
def coloured_dataset(n_train, n_test, size, seed=0):
    """10 classes, each its own mean colour plus noise, so a network can learn it in a few steps."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, size=(10, 3))

    def split(n):
        y = rng.integers(0, 10, n)
        x = colours[y][:, :, None, None] + rng.integers(-30, 31, size=(n, 3, size, size))
        return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    return Dataset("coloured", x_train, y_train, x_test, y_test, [f"c{i}" for i in range(10)])


def test_resnet20_trains_on_the_cpu(tmp_path, numpy_backend):
    """The shipped ResNet-20 recipe through the real Trainer: 4 epochs x 5 steps, the loss goes down."""
    from gpucnn.build import build_run
    from gpucnn.train import Trainer

    config = shipped("resnet20")
    config["data"].update(batch_size=8, eval_batch_size=20)
    config["training"].update(epochs=4, log_every=5)
    config["schedule"]["warmup_epochs"] = 0.0
    config["optimizer"]["lr"] = 0.01  # the recipe's 0.1 at batch 128, scaled down for a batch of 8
    config = validate_config(config)
    result = Trainer(build_run(config, coloured_dataset(40, 20, 16)), tmp_path, echo=lambda s: None, progress_bar=False).fit()
    assert result.status == "completed" and result.epochs_done == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_loss = [r["train_loss"] for r in records]
    assert all(np.isfinite(train_loss))
    assert train_loss[-1] < 0.6 * train_loss[0], train_loss
    assert train_loss[-1] < 0.7 * np.log(10), train_loss  # well below chance
    assert records[-1]["train_acc"] > 0.3  # chance is 0.1
    with np.load(tmp_path / "last.npz", allow_pickle=False) as f:
        assert "model/layers.9.shortcut.0.W" in f.files and "optim/velocity.layers.9.body.0.W" in f.files
