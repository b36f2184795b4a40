"""The capturable training step (training.cuda_graph, gpucnn.cuda.graph): the pointer kernels,
the capturable ops mode, the Trainer's capturable step on the emulated backend against the
eager step, and a CPU proof that the step is replayable (nothing per step passed by value,
no host read, no library call, fixed persistent arrays). The graph replay itself needs a GPU:
the ``gpu`` tests below prove it bit for bit there (skipped on CPU machines)."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import backend as backend_module
from gpucnn import layers
from gpucnn.build import build_loss, build_model, build_optimizer, build_run
from gpucnn.config import load_config, validate_config
from gpucnn.cuda import graph
from gpucnn.cuda.step_scalars import StepScalars
from gpucnn.data.dataset import Dataset
from gpucnn.errors import ConfigError
from gpucnn.graph_step import _address
from gpucnn.train import Trainer

BACKENDS = ["numpy", "emulated", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=BACKENDS)
def any_backend(request):
    if request.param == "cuda" and backend_module.cuda_unavailable_reason():
        pytest.skip("no GPU")
    with backend_module.use_backend(request.param) as b:
        yield b


# ---- the pointer kernels -----------------------------------------------------------------

@pytest.mark.parametrize("momentum, nesterov, wd", [(0.0, False, 0.0), (0.9, False, 5e-4), (0.85, True, 1e-3)])
def test_sgd_with_a_device_lr_equals_the_by_value_lr_bit_for_bit(any_backend, momentum, nesterov, wd):
    b = any_backend
    rng = np.random.default_rng(1)
    param0, grad = (rng.standard_normal(1000).astype(np.float32) for _ in range(2))
    lr = 0.0731 * 64.0  # a base rate times an lr scale: float32(lr) is what both forms read
    results = []
    for rate in (lr, b.asarray(np.array([lr], dtype=np.float32))):
        param, vel = b.asarray(param0.copy()), b.asarray(np.full(1000, 0.25, np.float32))
        for _ in range(3):
            b.ops.sgd_update(param, b.asarray(grad), vel if momentum else None, rate, momentum, nesterov, wd)
        results.append((b.to_host(param).copy(), b.to_host(vel).copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert np.abs(results[0][0] - param0).max() > 1e-3  # the update happened


def test_dropout_with_a_device_seed_equals_the_by_value_seed_bit_for_bit(any_backend):
    b = any_backend
    x = b.asarray(np.random.default_rng(2).standard_normal((4, 3, 7, 5)).astype(np.float32))
    for seed in (0, 12345, 2**32 - 1):
        y1, m1 = b.ops.dropout_forward(x, 0.3, seed)
        y2, m2 = b.ops.dropout_forward(x, 0.3, b.asarray(np.array([seed], dtype=np.uint32)))
        np.testing.assert_array_equal(b.to_host(y1), b.to_host(y2))
        np.testing.assert_array_equal(b.to_host(m1), b.to_host(m2))
        kept = float((b.to_host(m1) > 0).mean())
        assert 0.5 < kept < 0.9  # p = 0.3 drops some, keeps most


def test_the_pointer_kernels_refuse_a_wrong_scalar_array(emulated_backend):
    ops = emulated_backend.ops
    p = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="lr as an array must hold one float32"):
        ops.sgd_update(p, p.copy(), None, np.array([0.1]), 0.0, False, 0.0)  # float64
    with pytest.raises(TypeError, match="seed as an array must hold one uint32"):
        ops.dropout_forward(p, 0.5, np.array([1, 2], dtype=np.uint32))


def test_step_scalars_hold_the_float32_rates_and_seeds(emulated_backend):
    scalars = StepScalars(emulated_backend, [64.0, 1.0, 1.0], ["3", "5.body.1"])
    words_before = scalars.words.ctypes.data
    scalars.write(0.1, {"3": 7, "5.body.1": 2**32 - 2})
    assert scalars.lr_scales == (1.0, 64.0)
    assert scalars.lr(1.0)[0] == np.float32(0.1) and scalars.lr(64.0)[0] == np.float32(0.1 * 64.0)
    assert scalars.seed("3")[0] == 7 and scalars.seed("5.body.1")[0] == 2**32 - 2
    scalars.write(0.2, {"3": 8, "5.body.1": 9})
    assert scalars.lr(64.0)[0] == np.float32(0.2 * 64.0) and scalars.seed("3")[0] == 8
    assert scalars.words.ctypes.data == words_before  # written in place: a graph keeps the address
    with pytest.raises(KeyError, match="no lr slot for lr_scale 2.0"):
        scalars.lr(2.0)


def test_adam_cannot_read_a_device_lr(numpy_backend):
    from gpucnn import optim
    from gpucnn.model import Sequential

    model = Sequential([layers.Dense(3, 2)])
    with pytest.raises(TypeError, match="cannot read it from device memory"):
        optim.Adam(model).bind_device_lr(lambda scale: None)
    optim.SGD(model, 0.1).bind_device_lr(lambda scale: None)  # SGD can


# ---- capturable ops ----------------------------------------------------------------------

def test_capturable_dense_uses_own_kernels_and_agrees_with_matmul_to_float32_rounding(emulated_backend):
    ops = emulated_backend.ops
    rng = np.random.default_rng(3)
    n, i, o = 37, 300, 70
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((n, i), (o, i), (o,)))
    dy = rng.standard_normal((n, o)).astype(np.float32)
    library = (ops.dense_forward(x, w, b), *ops.dense_backward(dy, x, w))
    ops.capturable = True
    try:
        assert graph.capture_blockers(lambda: (ops.dense_forward(x, w, b), ops.dense_backward(dy, x, w)), ops) == []
        own = (ops.dense_forward(x, w, b), *ops.dense_backward(dy, x, w))
    finally:
        ops.capturable = False
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    exact = (x64 @ w64.T + b, dy64 @ w64, dy64.T @ x64)
    # |fl(sum) - sum| <= k * eps * sum |terms| for any summation order of k terms (float32 eps)
    bounds = (i * np.abs(x64) @ np.abs(w64).T, o * np.abs(dy64) @ np.abs(w64), n * np.abs(dy64).T @ np.abs(x64))
    eps = np.finfo(np.float32).eps
    for got, ref, want, bound in zip(own[:3], library[:3], exact, bounds):
        assert np.all(np.abs(got - want) <= eps * (bound + np.abs(want)))
        assert np.all(np.abs(ref - want) <= eps * (bound + np.abs(want)))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(own[3], library[3])  # db: the same channel sum


def test_capturable_conv_auto_never_picks_the_cublas_variants(emulated_backend):
    ops = emulated_backend.ops
    x = np.random.default_rng(4).standard_normal((2, 64, 6, 6)).astype(np.float32)
    w = np.random.default_rng(5).standard_normal((64, 64, 3, 3)).astype(np.float32)
    assert ops._pick("conv2d_forward", 64, 64 * 9) == "im2col_gemm"  # wide: cuBLAS when eager
    ops.capturable = True
    try:
        assert ops._pick("conv2d_forward", 64, 64 * 9) == "igemm"
        ops.set_variant("conv2d_backward_data", "gemm_col2im")  # even when set explicitly
        assert ops._pick("conv2d_backward_data", 64, 64 * 9) == "igemm"
        assert graph.capture_blockers(lambda: ops.conv2d_forward(x, w, None, (1, 1), (1, 1)), ops) == []
    finally:
        ops.capturable = False
        ops.set_variant("conv2d_backward_data", "auto")


def test_the_probe_watches_the_backend_module_too(emulated_backend):
    """Layers, losses and metrics reach arrays through ``backend.xp``: a library call there counts."""
    a = np.ones((3, 3), np.float32)

    def layer_code():
        return emulated_backend.xp.matmul(a, a)

    assert graph.capture_blockers(layer_code, emulated_backend.ops) == []  # ops.xp alone misses it
    assert graph.capture_blockers(layer_code, emulated_backend.ops, emulated_backend) == ["layer_code (xp.matmul)"]
    assert emulated_backend.xp is np and emulated_backend.ops.xp is np


@pytest.mark.parametrize("name", ["lenet5", "cifar10-vgg", "cifar10-fast", "resnet20"])
def test_the_shipped_models_have_no_capture_blockers_in_capturable_mode(emulated_backend, name):
    config = validate_config(load_config(name))
    model = build_model(config, (3, 32, 32), 10)
    optimizer, loss_fn = build_optimizer(config, model), build_loss(config)
    ops = emulated_backend.ops
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 3, 32, 32)).astype(np.float32), np.array([1, 7])

    def step():
        loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

    assert graph.capture_blockers(step, ops, emulated_backend) != []  # eagerly, the GEMMs go to cuBLAS
    ops.capturable = True
    try:
        assert graph.capture_blockers(step, ops, emulated_backend) == []
    finally:
        ops.capturable = False
    assert graph.config_blockers(config) == []  # and nothing in the recipe blocks a graph


# ---- the Trainer's capturable step --------------------------------------------------------

def _tiny(n_train: int = 40) -> Dataset:
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (n_train, 3, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 4, n_train).astype(np.int64)
    return Dataset("tiny", x, y, x[:12], y[:12], ["a", "b", "c", "d"])


def _config(cuda_graph: str, dense: bool, optimizer: str = "sgd") -> dict:
    """conv + BN + ReLU + dropout + (dense | conv to 4 channels + global average pool)."""
    head = ([{"type": "flatten"}, {"type": "dense", "out_features": 4}] if dense else
            [{"type": "conv2d", "out_channels": 4, "kernel_size": 1},
             {"type": "avgpool2d", "kernel_size": 4}, {"type": "flatten"}])
    config = load_config("lenet5")
    config["model"]["layers"] = [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "bias": False},
        {"type": "batchnorm2d"}, {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
        {"type": "dropout", "p": 0.25}, *head]
    config["data"].update(batch_size=16, eval_batch_size=12)  # 40 samples: 16, 16 and a last 8
    config["optimizer"].update(name=optimizer, lr=0.05)
    if optimizer == "sgd":
        config["optimizer"]["groups"] = [{"layer": "batchnorm2d", "kind": "bias", "lr_scale": 4.0}]
    else:
        for key in ("momentum", "nesterov"):
            config["optimizer"].pop(key, None)
    config["schedule"] = {"name": "cosine", "warmup_epochs": 1.0, "min_lr": 0.0}  # lr changes every step
    config["training"].update(epochs=2, log_every=1000, cuda_graph=cuda_graph)
    return validate_config(config)


def _train(tmp_path, cuda_graph: str, dense: bool, label: str, on_step=None):
    run = build_run(_config(cuda_graph, dense), _tiny())
    trainer = Trainer(run, tmp_path / label, echo=lambda s: None, progress_bar=False, on_step=on_step)
    result = trainer.fit()
    return trainer, result


def test_capturable_step_equals_the_eager_step_bit_for_bit(tmp_path, emulated_backend):
    """Same kernels for every GEMM (no dense layer): params, BN statistics, optimizer state and
    metrics of cuda_graph = on are exactly those of off, over 2 epochs of 3 steps with a last
    partial batch, an lr that changes every step, two lr scales and dropout."""
    eager, r_eager = _train(tmp_path, "off", dense=False, label="off")
    capt, r_capt = _train(tmp_path, "on", dense=False, label="on")
    assert eager.cuda_graph is None and capt.cuda_graph == "on"
    assert sorted(capt._steps) == [8, 16]  # the full and the last partial batch: own buffers each
    assert all(s.graph.mode == "eager" for s in capt._steps.values())  # no graphs on a CPU
    a, b = eager.model.state_dict(), capt.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    va, vb = eager.optimizer.state_dict(), capt.optimizer.state_dict()
    assert va.keys() == vb.keys() and all(np.array_equal(va[k], vb[k]) for k in va)
    keep = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "steps")
    assert [{k: r[k] for k in keep} for r in eager.metrics_log.records] == \
           [{k: r[k] for k in keep} for r in capt.metrics_log.records]
    assert r_eager.last_record["train_loss"] > 0 and capt.optimizer.lr_source is None  # unbound after


def test_capturable_step_with_dense_stays_within_float32_rounding_of_eager(tmp_path, emulated_backend):
    """With a dense layer the capturable step multiplies through igemm, eager through matmul: the
    same products summed in another order, so a few ulp after a few steps, not bit for bit."""
    eager, _ = _train(tmp_path, "off", dense=True, label="off")
    capt, _ = _train(tmp_path, "auto", dense=True, label="auto")
    assert capt.cuda_graph == "auto"
    a, b = eager.model.state_dict(), capt.model.state_dict()
    differs = False
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=2e-6, err_msg=key)
        differs |= not np.array_equal(a[key], b[key])
    assert differs  # the GEMMs really were different kernels
    ra, rb = eager.metrics_log.records[-1], capt.metrics_log.records[-1]
    assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-5


def test_the_dropout_seeds_are_the_eager_ones(tmp_path, emulated_backend):
    from gpucnn.train import dropout_seed

    seen = []
    _train(tmp_path, "on", dense=False, label="on",
           on_step=lambda t: seen.append(int(t.model.layers[4].last_seed[0])))
    assert seen == [dropout_seed(0, e, s, 4) for e in range(2) for s in range(3)]


def test_a_blocker_makes_auto_eager_and_on_an_error(tmp_path, emulated_backend):
    run = build_run(_config("auto", dense=False, optimizer="adam"), _tiny())
    trainer = Trainer(run, tmp_path / "a", echo=lambda s: None, progress_bar=False)
    assert trainer.cuda_graph is None  # Adam: the eager step
    with pytest.raises(ConfigError) as info:
        build_run(_config("on", dense=False, optimizer="adam"), _tiny())
    assert "\n" not in str(info.value) and "optimizer adam" in str(info.value)


def test_a_changed_trainable_set_rebuilds_the_step(tmp_path, emulated_backend):
    frozen = {}

    def freeze_after_first_epoch(t):
        if t.progress.global_step == 3:
            t.model.layers[0].frozen = True
            frozen["W"] = t.model.layers[0].params["W"].copy()
            frozen["signature"] = t._steps[16].signature

    trainer, _ = _train(tmp_path, "on", dense=False, label="on", on_step=freeze_after_first_epoch)
    before, after = frozen["signature"][0], trainer._steps[16].signature[0]
    assert "0.W" in before and "0.W" not in after and "5.W" in after  # epoch 2's step was built anew
    np.testing.assert_array_equal(trainer.model.layers[0].params["W"], frozen["W"])


def test_an_interrupted_capturable_run_resumes_exactly(tmp_path, emulated_backend):
    """Stopped mid-epoch (step 2 of epoch 2) and resumed: the capturable step's sums, seeds and
    params continue exactly as in the uninterrupted run."""
    from gpucnn.checkpoint import load_checkpoint

    full, _ = _train(tmp_path, "on", dense=False, label="full")
    config, data = _config("on", dense=False), _tiny()
    stop = Trainer(build_run(config, data), tmp_path / "part", echo=lambda s: None, progress_bar=False,
                   on_step=lambda t: t.progress.global_step == 5 and t.request_stop())
    assert stop.fit().status == "interrupted"
    checkpoint = load_checkpoint(tmp_path / "part" / "last.npz")
    assert (checkpoint.progress.epoch, checkpoint.progress.step_in_epoch) == (1, 2)
    resumed = Trainer(build_run(checkpoint.config, data, checkpoint), tmp_path / "part", echo=lambda s: None,
                      progress_bar=False)
    assert resumed.fit().status == "completed"
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    keep = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [{k: r[k] for k in keep} for r in full.metrics_log.records] == \
           [{k: r[k] for k in keep} for r in resumed.metrics_log.records]


# ---- replayability, proven on the CPU ------------------------------------------------------

class _Recorder:
    """Records every launch of the emulated launcher: (name, grid, block, args), a pointer as
    ("ptr", address, bytes), a by-value scalar as ("val", value)."""

    def __init__(self, launcher):
        self.launcher, self.real = launcher, launcher.launch
        self.launches: list[tuple] = []

    def __call__(self, name, grid, block, args):
        sig = self.launcher.index[name]
        entry = tuple(("ptr", _address(a), int(a.nbytes)) if p.pointer else ("val", a.item())
                      for p, a in zip(sig.params, args))
        self.launches.append((name, tuple(np.atleast_1d(grid)), tuple(np.atleast_1d(block)), entry))
        return self.real(name, grid, block, args)


class _HostReadGuard(np.ndarray):
    """A NumPy array that records reads of its values by the host (what a sync is on a GPU)."""

    reads: list[str] = []

    def __float__(self):
        _HostReadGuard.reads.append("float()")
        return float(np.asarray(self))

    def __int__(self):
        _HostReadGuard.reads.append("int()")
        return int(np.asarray(self))

    def __bool__(self):
        _HostReadGuard.reads.append("bool()")
        return bool(np.asarray(self))

    def item(self, *args):
        _HostReadGuard.reads.append("item()")
        return np.asarray(self).item(*args)

    def tolist(self):
        _HostReadGuard.reads.append("tolist()")
        return np.asarray(self).tolist()


class _GuardingModule:
    """``xp`` for the step: every array it creates is a _HostReadGuard (so is what ufuncs derive)."""

    MAKERS = {"empty", "zeros", "ones", "empty_like", "zeros_like", "ascontiguousarray", "asarray", "array"}

    def __init__(self, xp):
        self._xp = xp

    def __getattr__(self, name):
        value = getattr(self._xp, name)
        if name in self.MAKERS:
            def made(*args, **kwargs):
                out = value(*args, **kwargs)
                return out.view(_HostReadGuard) if isinstance(out, np.ndarray) else out

            return made
        return value


def _arrays_held(roots, depth: int = 3) -> list:
    """Every NumPy array reachable from ``roots`` through attributes, dicts, lists and tuples."""
    found, seen = [], set()

    def walk(obj, d):
        if id(obj) in seen or d < 0:
            return
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            found.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v, d - 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, d - 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            for v in vars(obj).values():
                walk(v, d - 1)

    for root in roots:
        walk(root, depth)
    return found


def test_the_capturable_step_is_replayable(tmp_path, emulated_backend, monkeypatch):
    """Two consecutive capturable steps with different lr and seeds: the same launches with the
    same by-value scalars (nothing per step passed by value), the persistent arrays at the same
    addresses, no launch touching an array from before the step that is not persistent (what a
    replay would read stale), no host read or sync and no library call inside the step.

    Host reads are caught on every array the step's xp calls create (they are _HostReadGuard
    arrays); the static batch buffers are plain arrays because the loss's host-side label range
    check reads NumPy labels, a check that does not run on device (CuPy) arrays."""
    backend = emulated_backend
    run = build_run(_config("on", dense=True), _tiny())
    trainer = Trainer(run, tmp_path / "r", echo=lambda s: None, progress_bar=False)
    from gpucnn.metrics import RunningMetrics

    rng = np.random.default_rng(9)
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3] * 4, dtype=np.int32)
    running = RunningMetrics(backend)
    trainer._train_step(0, 0, x, y, 0.05, running)  # the first step builds the capturable step
    captured = trainer._steps[16]
    persistent = [captured.x, captured.y, captured.scalars.words, trainer._sums._loss, trainer._sums._correct]
    persistent += [layer.params[n] for _, layer, n in trainer.model.parameters()]
    persistent += [a for store in trainer.optimizer.buffers.values() for a in store.values()]
    persistent += [a for _, layer in trainer.model.named_layers() for a in layer.state().values()]
    ranges = [(_address(a), _address(a) + a.nbytes) for a in persistent]
    before = [_address(a) for a in persistent]
    assert len(persistent) > 12

    inner, steps, syncs = captured.graph.step_fn, [], []

    def instrumented():
        held = _arrays_held([layer for _, layer in trainer.model.named_layers()] +
                            [trainer.loss_fn, trainer.optimizer, trainer._sums, running])
        stale = [(_address(a), _address(a) + a.nbytes) for a in held
                 if not any(lo <= _address(a) < hi for lo, hi in ranges)]
        recorder, _HostReadGuard.reads = _Recorder(backend.ops.launcher), []
        with monkeypatch.context() as patch:
            patch.setattr(backend.ops.launcher, "launch", recorder)
            guard = _GuardingModule(np)
            patch.setattr(backend, "xp", guard)
            patch.setattr(backend.ops, "xp", guard)
            for name in ("to_host", "synchronize"):
                patch.setattr(backend, name, lambda *a, name=name: syncs.append(name))
            patch.setattr(backend.ops.launcher, "synchronize", lambda: syncs.append("launcher.synchronize"))
            blockers = graph.capture_blockers(inner, backend.ops, backend)
        steps.append((recorder.launches, list(_HostReadGuard.reads), blockers, stale))

    captured.graph.step_fn = instrumented
    trainer._train_step(0, 1, x, y, 0.04, running)
    trainer._train_step(0, 2, x[::-1].copy(), y[::-1].copy(), 0.03, running)
    assert trainer._steps[16] is captured and [_address(a) for a in persistent] == before
    assert captured.scalars.lr(1.0)[0] == np.float32(0.03)  # the last write reached the device words
    (first, reads1, blockers1, stale1), (second, reads2, blockers2, stale2) = steps
    assert blockers1 == blockers2 == [] and reads1 == reads2 == [] and syncs == []
    assert len(first) > 20 and [(n, g, b) for n, g, b, _ in first] == [(n, g, b) for n, g, b, _ in second]
    values = lambda launches: [[a for a in args if a[0] == "val"] for *_, args in launches]  # noqa: E731
    assert values(first) == values(second)  # lr and seeds differ, yet no by-value argument does
    names = {n for n, *_ in first}
    assert {"sgd_update_dev", "dropout_forward_dev", "conv2d_forward_igemm"} <= names
    assert not names & {"sgd_update", "dropout_forward", "im2col", "col2im"}
    for launches, stale in ((first, stale1), (second, stale2)):
        assert len(stale) > 3  # the previous step's caches (activations, masks, probabilities)
        for name, _, _, args in launches:
            for _, address, size in (a for a in args if a[0] == "ptr"):
                assert not any(lo < address + size and address < hi for lo, hi in stale), name
    lo, hi = ranges[2]  # the StepScalars words: what the per-step kernels read lr and seed from
    for name, _, _, args in first:
        if name in ("sgd_update_dev", "dropout_forward_dev"):
            assert args[4][0] == "ptr" and lo <= args[4][1] < hi, name


# ---- on a GPU -------------------------------------------------------------------------------

@pytest.mark.gpu
def test_graph_replay_trains_exactly_like_eager_steps(tmp_path, cuda_backend):
    """cuda_graph = on (captured, replayed) vs off: bit-identical params after 2 epochs of 3 steps
    (fp32, igemm convolutions in both runs, no dense layer: the same kernels either way)."""
    cuda_backend.set_precision("fp32")
    ops = cuda_backend.ops
    results = {}
    try:
        for setting in ("off", "on"):
            for op in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter"):
                ops.set_variant(op, "igemm")
            trainer, _ = _train(tmp_path, setting, dense=False, label=setting)
            results[setting] = trainer
    finally:
        for op in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter"):
            ops.set_variant(op, "auto")
    on = results["on"]
    assert on._steps[16].graph.mode == "graph" and on._steps[16].graph.replays == 3  # 4 full steps, 1 eager
    a, b = results["off"].model.state_dict(), on.model.state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert results["off"].metrics_log.records[-1]["train_loss"] == on.metrics_log.records[-1]["train_loss"]
