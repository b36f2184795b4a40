"""The cifar10-fast recipe trains exactly like its PyTorch twin (airbench94's formulation).

The twin is airbench94's own code shape: Conv with dirac_ on W[:C], BatchNorm with
momentum 1 - 0.6, eps 1e-12 and a frozen weight, a frozen whitening conv, GELU, Linear
without bias, Mul(1/9), a *summed* label-smoothed cross-entropy, Nesterov SGD with the
decoupled lr/wd (lr = 11.5 / kilostep, wd = 0.0153 * B / kilostep, BN biases at 64x lr
with wd / lr_biases) and LambdaLR over airbench's warm-up/warm-down triangle. gpucnn runs
its own formulation (mean loss, lr_ours = lr * B, weight_decay = wd / lr_ours, groups) on
the same batches from its BatchLoader (flip + reflect translate 2). After every step the
losses agree, and at the end every parameter and BatchNorm running statistic agrees.

Why float64 for the full width: in float32, a max-pool window whose two largest inputs differ
by less than the rounding difference between the two engines picks a different argmax, and
the 64x-lr BatchNorm biases amplify such a flip step after step; the wide network has ~0.5M
windows per step, so after a few steps the float32 twins drift apart by ~1e-4 for some seeds
(the maths is the same, the rounding is not). In float64 the full-width twins agree to ~1e-15
(losses 2e-16 relative, params within rtol 1e-9/atol 1e-11 by a factor 1e4); the narrow
float32 twin (22 steps) agrees to 2e-7 relative in the losses and within rtol 1e-4/atol 1e-5
by a factor 7-40 over the seeds tried (rtol 1e-5/atol 1e-6 typically holds too).
Step counts (5, 22) are chosen so that round(0.23 * steps) == int(0.23 * steps): gpucnn's
warm-up length rounds, airbench's truncates.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import reference_models as zoo  # noqa: E402
from gpucnn import losses, optim  # noqa: E402
from gpucnn.data.augment import Augment  # noqa: E402
from gpucnn.data.loader import BatchLoader  # noqa: E402
from gpucnn.layers import BatchNorm2D, Conv2D, Dense  # noqa: E402
from gpucnn.recipe import airbench_sgd_settings  # noqa: E402
from gpucnn.schedules import LRSchedule  # noqa: E402
from gpucnn.whitening import normalized_images  # noqa: E402


TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
MOMENTUM = 0.85
LABEL_SMOOTHING = 0.2
BN_MOMENTUM_AIRBENCH = 0.6


# ----------------------------------------------------------------- the PyTorch twin (airbench94)
class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class TwinBatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features):
        super().__init__(num_features, eps=1e-12, momentum=1 - BN_MOMENTUM_AIRBENCH)
        self.weight.requires_grad = False


def twin_net(widths):
    """Flat nn.Sequential in gpucnn's layer order (airbench's ConvGroup unrolled)."""
    mods = [nn.Conv2d(3, 24, 2, padding=0, bias=True), nn.GELU()]
    c_in = 24
    for w in widths:
        mods += [nn.Conv2d(c_in, w, 3, padding="same", bias=False), nn.MaxPool2d(2), TwinBatchNorm(w), nn.GELU(),
                 nn.Conv2d(w, w, 3, padding="same", bias=False), TwinBatchNorm(w), nn.GELU()]
        c_in = w
    mods += [nn.MaxPool2d(3), nn.Flatten(), nn.Linear(c_in, 10, bias=False), Mul(1 / 9)]
    net = nn.Sequential(*mods)
    net[0].weight.requires_grad = False
    return net


def airbench_lr_factor(total_steps):
    def get_lr(step):
        warmup_steps = int(total_steps * 0.23)
        warmdown_steps = total_steps - warmup_steps
        if step < warmup_steps:
            frac = step / warmup_steps
            return 0.2 * (1 - frac) + 1.0 * frac
        frac = (step - warmup_steps) / warmdown_steps
        return 1.0 * (1 - frac) + 0.07 * frac

    return get_lr


def twin_optimizer(net, batch_size, total_steps):
    kilostep_scale = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr = 11.5 / kilostep_scale
    wd = 0.0153 * batch_size / kilostep_scale
    lr_biases = lr * 64.0
    norm_biases = [m.bias for m in net if isinstance(m, nn.BatchNorm2d)]
    ids = {id(p) for p in norm_biases}
    other = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
    opt = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                           dict(params=other, lr=lr, weight_decay=wd / lr)], momentum=MOMENTUM, nesterov=True)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, airbench_lr_factor(total_steps))


def pairs(model, net):
    """(gpucnn layer, torch module) for every layer with params or state."""
    mods = list(net)
    assert len(mods) == len(model.layers)
    return [(layer, mod) for layer, mod in zip(model.layers, mods) if isinstance(layer, (Conv2D, Dense, BatchNorm2D))]


def copy_into_twin(model, net, device):
    host = model.backend.to_host
    with torch.no_grad():
        for layer, mod in pairs(model, net):
            if isinstance(layer, BatchNorm2D):
                mod.weight.copy_(torch.tensor(host(layer.params["gamma"])))
                mod.bias.copy_(torch.tensor(host(layer.params["beta"])))
                mod.running_mean.copy_(torch.tensor(host(layer.running_mean)))
                mod.running_var.copy_(torch.tensor(host(layer.running_var)))
            else:
                mod.weight.copy_(torch.tensor(host(layer.params["W"])))
                if "b" in layer.params:
                    mod.bias.copy_(torch.tensor(host(layer.params["b"])))
    return net.to(device)


def compare_state(model, net, rtol, atol):
    """Largest |ours - torch| / (atol + rtol*|torch|) over every param and running stat (<= 1 passes)."""
    host = model.backend.to_host
    worst, where = 0.0, ""
    for i, (layer, mod) in enumerate(pairs(model, net)):
        if isinstance(layer, BatchNorm2D):
            items = [("gamma", mod.weight), ("beta", mod.bias), ("running_mean", mod.running_mean),
                     ("running_var", mod.running_var)]
            ours = {**layer.params, "running_mean": layer.running_mean, "running_var": layer.running_var}
        else:
            items = [("W", mod.weight)] + ([("b", mod.bias)] if "b" in layer.params else [])
            ours = layer.params
        for name, ref in items:
            a = np.asarray(host(ours[name]), dtype=np.float64)
            b = ref.detach().cpu().double().numpy()
            ratio = float(np.max(np.abs(a - b) / (atol + rtol * np.abs(b))))
            if ratio > worst:
                worst, where = ratio, f"{layer!r}.{name}"
    return worst, where


def run_twin(widths, batch, steps, device="cpu", dtype=np.float32, seed=0):
    """Train gpucnn and the twin side by side; return (our losses, twin losses, model, net)."""
    rng = np.random.default_rng(seed)
    n_images = batch * 2
    images = rng.integers(0, 256, (n_images, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n_images)
    mean, std = images.mean(axis=(0, 2, 3)) / 255, images.std(axis=(0, 2, 3)) / 255
    normalized = normalized_images(images, mean, std, n_images)
    loader = BatchLoader(images, labels, batch, mean=mean, std=std, seed=1, drop_last=True,
                         augment=Augment(flip=True, crop_padding=2, padding_mode="reflect"))
    model = zoo.cifar10_fast(rng=seed, whitening_images=normalized, widths=widths, dtype=dtype)
    net = copy_into_twin(model, twin_net(widths).to(TORCH_DTYPES[np.dtype(dtype).name]), device)

    settings = airbench_sgd_settings(batch_size=batch)
    opt = optim.SGD(model, settings["lr"], momentum=MOMENTUM, nesterov=True,
                    weight_decay=settings["weight_decay"], groups=settings["groups"])
    schedule = LRSchedule("linear", settings["lr"], steps_per_epoch=steps, epochs=1, warmup_epochs=0.23,
                          warmup_start_factor=0.2, min_lr=0.07 * settings["lr"])
    loss_fn = losses.SoftmaxCrossEntropy(label_smoothing=LABEL_SMOOTHING)
    twin_opt, twin_sched = twin_optimizer(net, batch, steps)
    twin_loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING, reduction="none")
    net.train()

    ours, theirs = [], []
    batches = (b for _ in range(steps) for b in loader)
    for step in range(steps):
        x, y = next(batches)
        x = x.astype(dtype, copy=False)
        opt.lr = schedule(step)
        assert opt.lr == pytest.approx(twin_opt.param_groups[1]["lr"] * batch, rel=1e-12), step  # same lr
        loss = loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        ours.append(float(loss))

        xt = torch.tensor(model.backend.to_host(x)).to(device)
        yt = torch.tensor(model.backend.to_host(y).astype(np.int64)).to(device)
        twin_loss = twin_loss_fn(net(xt), yt).sum()
        twin_opt.zero_grad(set_to_none=True)
        twin_loss.backward()
        twin_opt.step()
        twin_sched.step()
        theirs.append(twin_loss.item() / batch)
    return np.array(ours), np.array(theirs), model, net


def assert_twins(widths, batch, steps, rtol, atol, loss_rtol, device="cpu", dtype=np.float32):
    ours, theirs, model, net = run_twin(widths, batch, steps, device, dtype)
    np.testing.assert_allclose(ours, theirs, rtol=loss_rtol)
    assert ours[-1] != ours[0]  # it trained
    worst, where = compare_state(model, net, rtol, atol)
    assert worst <= 1.0, f"{where} differs by {worst:.3g} x (atol + rtol*|torch|)"


@pytest.fixture(autouse=True)
def _torch_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic reductions, and no fight for 2 cores with NumPy's BLAS
    yield
    torch.set_num_threads(previous)


def test_full_width_recipe_matches_torch_in_float64(numpy_backend):
    """The real network (widths 64/256/256, 32x32), 5 steps: the same math to ~1e-15."""
    assert_twins((64, 256, 256), batch=16, steps=5, rtol=1e-9, atol=1e-11, loss_rtol=1e-12, dtype=np.float64)


def test_narrow_recipe_matches_torch_in_float32_over_many_steps(numpy_backend):
    """Widths 16/32/32 for 22 steps (warm-up, peak and decay of the schedule) in float32."""
    assert_twins((16, 32, 32), batch=32, steps=22, rtol=1e-4, atol=1e-5, loss_rtol=2e-6)


def test_recipe_matches_torch_on_the_emulated_kernels(emulated_backend):
    """kernels/*.cu (batchnorm, GELU, label smoothing, Nesterov SGD, ...) compiled for the CPU, float32."""
    assert_twins((8, 16, 16), batch=8, steps=5, rtol=1e-4, atol=1e-5, loss_rtol=2e-6)


@pytest.mark.gpu
def test_recipe_matches_torch_on_cuda(cuda_backend):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    assert_twins((64, 256, 256), batch=64, steps=5, rtol=1e-3, atol=1e-4, loss_rtol=1e-4, device="cuda")
    assert_twins((16, 32, 32), batch=32, steps=22, rtol=1e-3, atol=1e-4, loss_rtol=1e-4, device="cuda")


def twin_lookahead_update(net_ema, net, decay):
    """airbench's LookaheadState.update, also for float64 tensors (airbench lerps only half/float,
    which are all it trains in; the float64 twin needs its double tensors covered)."""
    for ema_param, net_param in zip(net_ema.values(), net.state_dict().values()):
        if net_param.dtype in (torch.half, torch.float, torch.double):
            ema_param.lerp_(net_param, 1 - decay)
            net_param.copy_(ema_param)


def test_airbench_extras_match_torch_over_several_epochs(numpy_backend):
    """5 epochs of 2 steps (T = 10): alternating flips, the whitening bias frozen from epoch 2,
    Lookahead every 3 steps plus the final pull (gpucnn.lookahead.Lookahead vs airbench's update), float64.
    Both sides take the decay from Lookahead.decay_at (float64); airbench's alpha_schedule is a float32
    tensor, a ~1e-8 relative difference the float64 tolerances would see."""
    from gpucnn.lookahead import Lookahead

    widths, batch, epochs, per_epoch, dtype = (8, 16, 16), 8, 5, 2, np.float64
    total = epochs * per_epoch
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * per_epoch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, batch * per_epoch)
    mean, std = images.mean(axis=(0, 2, 3)) / 255, images.std(axis=(0, 2, 3)) / 255
    loader = BatchLoader(images, labels, batch, mean=mean, std=std, seed=1, drop_last=True,
                         augment=Augment(flip=True, crop_padding=2, padding_mode="reflect", alternate_flip=True))
    model = zoo.cifar10_fast(rng=0, whitening_images=normalized_images(images, mean, std, len(images)),
                             widths=widths, dtype=dtype)
    model.layers[0].train_epochs = {"b": 2}
    net = copy_into_twin(model, twin_net(widths).to(torch.float64), "cpu")
    settings = airbench_sgd_settings(batch_size=batch)
    opt = optim.SGD(model, settings["lr"], momentum=MOMENTUM, nesterov=True,
                    weight_decay=settings["weight_decay"], groups=settings["groups"])
    schedule = LRSchedule("linear", settings["lr"], steps_per_epoch=total, epochs=1, warmup_epochs=0.23,
                          warmup_start_factor=0.2, min_lr=0.07 * settings["lr"])
    look = Lookahead(model, every=3, decay=0.95**5, power=3.0, total_steps=total)
    loss_fn = losses.SoftmaxCrossEntropy(label_smoothing=LABEL_SMOOTHING)
    twin_opt, twin_sched = twin_optimizer(net, batch, total)
    twin_loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING, reduction="none")
    net_ema = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    ours, theirs, t = [], [], 0
    for epoch in range(epochs):
        model.set_epoch(epoch)
        net[0].bias.requires_grad = epoch < 2
        loader.set_epoch(epoch)
        for x, y in loader:
            opt.lr = schedule(t)
            loss = loss_fn.forward(model.forward(x.astype(dtype), training=True), y)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
            ours.append(float(loss))
            xt = torch.tensor(np.asarray(x, dtype=dtype))
            yt = torch.tensor(np.asarray(y).astype(np.int64))
            twin_loss = twin_loss_fn(net(xt), yt).sum()
            twin_opt.zero_grad(set_to_none=True)
            twin_loss.backward()
            twin_opt.step()
            twin_sched.step()
            theirs.append(twin_loss.item() / batch)
            t += 1
            look.after_step(t)
            if t % 3 == 0:
                twin_lookahead_update(net_ema, net, look.decay_at(t))
            if t >= total:
                twin_lookahead_update(net_ema, net, 1.0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    worst, where = compare_state(model, net, rtol=1e-9, atol=1e-11)
    assert worst <= 1.0, f"{where} differs by {worst:.3g} x (atol + rtol*|torch|)"
    assert not model.layers[0].is_trainable("b")
