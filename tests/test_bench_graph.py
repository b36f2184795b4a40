"""CUDA-graph groundwork (gpucnn.cuda.graph): the capture-blocker analysis, the setting's
resolution, the config key, and StepGraph's eager path on the emulated backend. The replay
test needs a GPU (marked ``gpu``; skipped here)."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import layers, losses, optim
from gpucnn.config import validate_config
from gpucnn.cuda import graph
from gpucnn.errors import ConfigError
from gpucnn.model import Sequential


def _model(dense: bool, seed: int = 0):
    """conv -> relu -> (dense | conv to 10 channels, global avg pool) -> logits (N, 10)."""
    rng = np.random.default_rng(seed)
    net = [layers.Conv2D(3, 8, 3, padding=1), layers.ReLU()]
    if dense:
        net += [layers.Flatten(), layers.Dense(8 * 6 * 6, 10)]
    else:
        net += [layers.Conv2D(8, 10, 3, padding=1), layers.AvgPool2D(6), layers.Flatten()]
    model = Sequential(net)
    for _, layer, name in model.parameters():
        value = rng.standard_normal(layer.params[name].shape).astype(np.float32) * np.float32(0.2)
        layer.params[name][...] = layer.backend.asarray(value)
    return model


def _step_fn(model, backend, seed=0):
    rng = np.random.default_rng(seed)
    x = backend.asarray(rng.standard_normal((4, 3, 6, 6)).astype(np.float32))
    y = backend.asarray(rng.integers(0, 10, 4).astype(np.int32))
    loss_fn = losses.SoftmaxCrossEntropy()
    opt = optim.SGD(model, 0.05, momentum=0.9)

    def step():
        loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    return step


def _igemm(ops):
    for op in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter"):
        ops.set_variant(op, "igemm")


def _auto(ops):
    for op in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter"):
        ops.set_variant(op, "auto")


def test_blockers_name_the_cublas_ops(emulated_backend):
    ops = emulated_backend.ops
    model = _model(dense=True)
    _igemm(ops)
    try:
        blockers = graph.capture_blockers(_step_fn(model, emulated_backend), ops)
        assert blockers == ["dense_backward (xp.matmul)", "dense_forward (xp.matmul)"]
        ops.set_variant("conv2d_forward", "im2col_gemm")
        blockers = graph.capture_blockers(_step_fn(_model(dense=False), emulated_backend), ops)
        assert blockers == ["conv2d_forward (xp.matmul)"]
    finally:
        _auto(ops)
    assert ops.xp is np  # the proxy is gone


def test_raw_kernel_step_has_no_blockers(emulated_backend):
    ops = emulated_backend.ops
    _igemm(ops)
    try:
        assert graph.capture_blockers(_step_fn(_model(dense=False), emulated_backend), ops) == []
    finally:
        _auto(ops)


def test_resolve_setting(emulated_backend, numpy_backend):
    emu = emulated_backend
    assert graph.resolve("off", emu, ["dense_forward (xp.matmul)"]) == "eager"
    assert graph.resolve("auto", emu, []) == "eager"  # no graphs on the CPU: same step, eagerly
    assert graph.resolve("on", emu, []) == "eager"
    with pytest.raises(graph.GraphCaptureError, match=r"not capturable.*dense_forward \(xp.matmul\)"):
        graph.resolve("on", emu, ["dense_forward (xp.matmul)"])
    with pytest.raises(graph.GraphCaptureError, match="needs a kernel backend"):
        graph.resolve("on", numpy_backend, [])

    class FakeCuda:  # what resolve asks of a backend: its capabilities
        kernels, on_device, name = True, True, "cuda"

    assert graph.resolve("auto", FakeCuda, []) == "graph"
    assert graph.resolve("auto", FakeCuda, ["dense_forward (xp.matmul)"]) == "eager"
    with pytest.raises(ConfigError, match="training.cuda_graph"):
        graph.resolve("sometimes", emu, [])


def test_check_setting_refuses_on_where_the_loop_cannot_capture(emulated_backend, numpy_backend):
    graph.check_cuda_graph_setting("on", emulated_backend)  # runs eagerly there: accepted
    graph.check_cuda_graph_setting("auto", numpy_backend)
    with pytest.raises(ConfigError, match="needs the cuda backend"):
        graph.check_cuda_graph_setting("on", numpy_backend)


def test_check_setting_names_the_config_blockers(emulated_backend):
    from gpucnn.config import load_config

    config = validate_config(load_config("lenet5"))
    graph.check_cuda_graph_setting("on", emulated_backend, config)  # sgd, no ema, no clipping: capturable
    config["optimizer"]["name"] = "adam"
    config["training"]["clip_grad_norm"] = 1.0
    with pytest.raises(ConfigError) as info:
        graph.check_cuda_graph_setting("on", emulated_backend, config, world_size=2)
    message = str(info.value)
    assert "\n" not in message
    assert "optimizer adam" in message and "clip_grad_norm" in message and "2 ranks" in message
    assert "training.ema" not in message
    graph.check_cuda_graph_setting("auto", emulated_backend, config, world_size=2)  # auto: eager instead


def test_config_key_validates():
    from gpucnn.config import load_config

    base = load_config("lenet5")
    assert validate_config(base)["training"]["cuda_graph"] == "auto"
    config = validate_config({**base, "training": {**base["training"], "cuda_graph": "off"}})
    assert config["training"]["cuda_graph"] == "off"
    with pytest.raises(ConfigError, match="cuda_graph"):
        validate_config({**base, "training": {**base["training"], "cuda_graph": "yes"}})


def test_step_graph_runs_the_same_step_eagerly_on_the_emulator(emulated_backend):
    """StepGraph on the emulator = the step function called directly, bit for bit; its first
    step is a real step (the probe runs it once), not an extra warm-up."""
    ops = emulated_backend.ops
    _igemm(ops)
    try:
        eager_model, graph_model = _model(dense=False, seed=3), _model(dense=False, seed=3)
        eager = _step_fn(eager_model, emulated_backend)
        stepper = graph.StepGraph(_step_fn(graph_model, emulated_backend), emulated_backend, setting="auto")
        fed = []
        for _ in range(4):
            eager()
            stepper.step(lambda: fed.append(1))
        assert stepper.mode == "eager" and stepper.blockers == [] and len(fed) == 4 and stepper.replays == 0
        for (_, a, name), (_, b, _) in zip(eager_model.parameters(), graph_model.parameters()):
            np.testing.assert_array_equal(a.params[name], b.params[name])
    finally:
        _auto(ops)


def test_a_failed_capture_under_auto_trains_eagerly_and_under_on_raises(emulated_backend, monkeypatch):
    """Capturing can fail on a GPU for reasons the probe does not see: ``auto`` then runs that
    step (and every later one) eagerly and says why; ``on`` raises."""
    class FakeCuda:  # resolve() makes the mode "graph"; the probe and steps run on the emulator
        kernels, on_device, name = True, True, "cuda"
        ops, xp = emulated_backend.ops, emulated_backend.xp

    def refuse(self):
        raise graph.GraphCaptureError("capturing the step failed: cudaErrorStreamCaptureUnsupported")

    monkeypatch.setattr(graph.StepGraph, "_capture", refuse)
    calls = []
    stepper = graph.StepGraph(lambda: calls.append(1), FakeCuda, setting="auto")
    for _ in range(3):
        stepper.step()
    assert calls == [1, 1, 1] and stepper.mode == "eager" and stepper.replays == 0
    assert "cudaErrorStreamCaptureUnsupported" in stepper.blockers[0]
    strict = graph.StepGraph(lambda: None, FakeCuda, setting="on")
    strict.step()  # the first step is the eager probe
    with pytest.raises(graph.GraphCaptureError, match="StreamCaptureUnsupported"):
        strict.step()


@pytest.mark.gpu
def test_graph_replay_equals_eager_bit_for_bit(cuda_backend):
    """On a GPU: an eager first step, then a captured raw-kernel step replayed 3 times = 4 eager steps."""
    ops = cuda_backend.ops
    _igemm(ops)
    try:
        eager_model, graph_model = _model(dense=False, seed=5), _model(dense=False, seed=5)
        eager = _step_fn(eager_model, cuda_backend)
        stepper = graph.StepGraph(_step_fn(graph_model, cuda_backend), cuda_backend, setting="on")
        for _ in range(4):
            eager()
            stepper.step()
        assert stepper.mode == "graph" and stepper.replays == 3
        cuda_backend.synchronize()
        for (_, a, name), (_, b, _) in zip(eager_model.parameters(), graph_model.parameters()):
            np.testing.assert_array_equal(cuda_backend.to_host(a.params[name]), cuda_backend.to_host(b.params[name]))
    finally:
        _auto(ops)
