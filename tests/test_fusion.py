"""Folding BatchNorm2D + activation and Conv2D/Dense + ReLU (gpucnn.fusion): which pairs fuse,
that the fused model computes what the unfused one does, and that it launches fewer kernels.

The fused and unfused runs use ONE model toggled with ``set_fusion`` and restored from a
state_dict snapshot in between, so weights and running statistics start identical.
"""

import numpy as np
import pytest

from gpucnn import layers as L
from gpucnn.bench.counters import count_step
from gpucnn.build import build_model
from gpucnn.config import apply_overrides, load_config, validate_config
from gpucnn.distributed.sync_bn import SyncBatchNormStats
from gpucnn.ema import EMA
from gpucnn.errors import ConfigError
from gpucnn.losses import SoftmaxCrossEntropy
from gpucnn.model import Sequential
from gpucnn.ops import ACTIVATIONS, BN_FUSED_ACTIVATIONS, GEMM_FUSED_ACTIVATIONS

from finite_differences import numeric_grad, relative_error

UNFUSABLE = [a.name for a in ACTIVATIONS if a.name not in BN_FUSED_ACTIVATIONS]


def act(name):
    return L.ACTIVATION_LAYERS[name]()


def random_affine(model, seed):
    """Every BatchNorm2D's gamma and beta drawn away from 1 and 0 (which would hide rounding
    differences: invstd * 1 is exact), as after some training. Returns the model."""
    rng = np.random.default_rng(seed)
    for _, layer, name in model.parameters():
        if name in ("gamma", "beta"):
            shape = layer.params[name].shape
            layer.set_param(name, rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape) if name == "gamma"
                            else 0.5 * rng.standard_normal(shape))
    return model


def fast_like(dtype, channels=4, classes=3, seed=0):
    """cifar10-fast's shape in small: conv, pool, BN, GELU, conv, BN, GELU, then a BN+ReLU pair.

    Input (N, 3, 8, 8) -> logits (N, classes); 3 BN+activation pairs.
    """
    rng = np.random.default_rng(seed)
    c = channels
    return random_affine(Sequential([
        L.Conv2D(3, c, 3, padding=1, bias=False, dtype=dtype, rng=rng),
        L.MaxPool2D(2),                                              # c x 4x4
        L.BatchNorm2D(c, dtype=dtype),
        L.GELU(),
        L.Conv2D(c, c, 3, padding=1, bias=False, dtype=dtype, rng=rng),
        L.BatchNorm2D(c, dtype=dtype),
        L.GELU(),
        L.Conv2D(c, c, 3, padding=1, dtype=dtype, rng=rng),
        L.BatchNorm2D(c, dtype=dtype),
        L.ReLU(),
        L.MaxPool2D(4),                                              # c x 1x1
        L.Flatten(),
        L.Dense(c, classes, dtype=dtype, rng=rng),
    ]), seed)


def residual_model(dtype, c=3, seed=1):
    """stem conv-BN-ReLU, then a Residual whose body ends in BN, with the block's ReLU after the add."""
    rng = np.random.default_rng(seed)
    return random_affine(Sequential([
        L.Conv2D(3, c, 3, padding=1, dtype=dtype, rng=rng),
        L.BatchNorm2D(c, dtype=dtype),
        L.ReLU(),
        L.Residual([L.Conv2D(c, c, 3, padding=1, dtype=dtype, rng=rng), L.BatchNorm2D(c, dtype=dtype), L.ReLU(),
                    L.Conv2D(c, c, 3, padding=1, dtype=dtype, rng=rng), L.BatchNorm2D(c, dtype=dtype)]),
        L.ReLU(),
        L.GlobalAvgPool2D(),
        L.Dense(c, 2, dtype=dtype, rng=rng),
    ]), seed)


def lenet_like(dtype, seed=2):
    """LeNet's shape in small: conv-ReLU-pool twice, dense-ReLU, dense. Input (N, 3, 8, 8) ->
    logits (N, 3); 3 Conv2D/Dense + ReLU pairs (the ReLU in the GEMM's epilogue)."""
    rng = np.random.default_rng(seed)
    return Sequential([
        L.Conv2D(3, 4, 3, padding=1, dtype=dtype, rng=rng),
        L.ReLU(),
        L.MaxPool2D(2),                                              # 4 x 4x4
        L.Conv2D(4, 4, 3, dtype=dtype, rng=rng),                      # 4 x 2x2
        L.ReLU(),
        L.Flatten(),
        L.Dense(16, 5, dtype=dtype, rng=rng),
        L.ReLU(),
        L.Dense(5, 3, dtype=dtype, rng=rng),
    ])


def pair_paths(model):
    """The fused pairs as (path, path) of ``named_layers``."""
    path_of = {id(layer): path for path, layer in model.named_layers()}
    return [(path_of[id(a)], path_of[id(b)]) for a, b in model.fusion.pairs]


def train_step(model, x, dlogits):
    """Forward (training), backward with dL/dx; host copies of the output, dL/dx, every grad, the state."""
    backend = model.backend
    y = model.forward(x, training=True)
    dx = model.backward(dlogits)
    grads = {f"{p}.{n}": np.array(backend.to_host(layer.grads[n])) for p, layer, n in model.parameters()}
    return np.array(backend.to_host(y)), np.array(backend.to_host(dx)), grads, model.state_dict()


def fused_and_unfused(model, x, dlogits):
    """train_step with fusion on and off from the same starting state, plus each one's inference output."""
    start = model.state_dict()
    results = []
    for fuse in (True, False):
        model.set_fusion(fuse)
        model.load_state_dict(start)
        step = train_step(model, x, dlogits)
        inference = np.array(model.backend.to_host(model.forward(x, training=False)))
        results.append((*step, inference))
    model.set_fusion(True)
    return results


# ------------------------------------------------------------------ the plan


def test_pairs_of_a_flat_model_and_the_absorbed_layers_pass_through(numpy_backend):
    model = fast_like(np.float64)
    assert pair_paths(model) == [(2, 3), (5, 6), (8, 9)]
    bn, gelu = model.layers[2], model.layers[3]
    assert bn.fused_activation == "gelu" and gelu.absorbed
    assert model.layers[9].absorbed and model.layers[8].fused_activation == "relu"
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3))
    assert gelu.forward(x) is x and gelu.backward(x) is x  # pass-through: the BN did the work
    model.set_fusion(False)
    assert model.fusion.pairs == [] and not gelu.absorbed and bn.fused_activation is None
    y = gelu.forward(x)
    assert y is not x and np.all(y[x < 0] < 0)  # GELU's own op again


def test_conv_and_dense_absorb_the_relu_after_them_and_nothing_else(numpy_backend):
    model = lenet_like(np.float64)
    assert pair_paths(model) == [(0, 1), (3, 4), (6, 7)]
    assert [model.layers[i].fused_activation for i in (0, 3, 6, 8)] == ["relu", "relu", "relu", None]
    assert all(model.layers[i].absorbed for i in (1, 4, 7))
    conv = L.Conv2D(3, 4, 3, dtype=np.float64)
    for name in (a.name for a in ACTIVATIONS if a.name not in GEMM_FUSED_ACTIVATIONS):
        assert not conv.can_absorb(act(name))
        with pytest.raises(TypeError, match="fuses only relu"):
            conv.absorb(act(name))
    assert not L.Dense(4, 2).can_absorb(L.BatchNorm2D(2))
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8))
    y = model.layers[0].forward(x)
    assert y.min() == 0.0 and np.any(y > 0)  # the ReLU applied in the conv's op
    ops = numpy_backend.ops
    with pytest.raises(ValueError, match="conv2d_forward: activation 'gelu' cannot be fused; expected None or one of relu"):
        ops.conv2d_forward(x, conv.params["W"], None, (1, 1), (0, 0), activation="gelu")
    with pytest.raises(ValueError, match="dense_forward: activation 'tanh' cannot be fused"):
        ops.dense_forward(np.ones((2, 4)), np.ones((3, 4)), None, activation="tanh")


@pytest.mark.parametrize("name", UNFUSABLE)
def test_bn_before_an_activation_the_op_cannot_apply_is_left_apart(numpy_backend, name):
    model = Sequential([L.BatchNorm2D(2, dtype=np.float64), act(name), L.BatchNorm2D(2, dtype=np.float64), L.ReLU()])
    assert pair_paths(model) == [(2, 3)]
    assert not model.layers[1].absorbed and model.layers[0].fused_activation is None


def test_activation_before_bn_last_bn_and_chains_of_activations(numpy_backend):
    f64 = np.float64
    model = random_affine(Sequential([L.ReLU(), L.BatchNorm2D(2, dtype=f64), L.GELU(), L.ReLU(),
                                      L.BatchNorm2D(2, dtype=f64)]), 15)
    # ReLU -> BN does not fuse; BN -> GELU does; the next ReLU stays (an absorbed layer absorbs nothing,
    # a BN absorbs one layer); the last BN has nothing to absorb.
    assert pair_paths(model) == [(1, 2)]
    assert [getattr(layer, "fused_activation", None) for layer in model.layers] == [None, "gelu", None, None, None]
    x = np.random.default_rng(2).standard_normal((3, 2, 4, 4))
    fused, unfused = fused_and_unfused(model, x, np.ones((3, 2, 4, 4)))
    for a, b in zip(fused[:2], unfused[:2]):
        np.testing.assert_array_equal(a, b)


def test_never_across_a_residual_add(numpy_backend):
    model = residual_model(np.float64)
    # stem BN + ReLU and the body's inner BN + ReLU fuse; the body's last BN (body.4) and
    # the ReLU after the add (layer 4) are in different chains and stay apart.
    assert pair_paths(model) == [(1, 2), ("3.body.1", "3.body.2")]
    assert model.layers[3].body[4].fused_activation is None and not model.layers[4].absorbed


def test_the_plan_follows_changes_of_the_layer_tree(numpy_backend):
    model = fast_like(np.float64)
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8))
    old_gelu = model.layers[3]
    model.layers[3] = L.Tanh()  # not fusable: the pair goes, the old GELU works again
    model.forward(x)
    assert pair_paths(model) == [(5, 6), (8, 9)]
    assert not old_gelu.absorbed and model.layers[2].fused_activation is None
    model.layers[3] = L.ReLU()
    model.forward(x)
    assert pair_paths(model) == [(2, 3), (5, 6), (8, 9)] and model.layers[2].fused_activation == "relu"


def test_switching_between_forward_and_backward_is_refused(numpy_backend):
    model = fast_like(np.float64)
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8))
    y = model.forward(x)
    model.set_fusion(False)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        model.backward(np.ones_like(y))


def test_summary_marks_the_absorbed_layers(numpy_backend):
    model = residual_model(np.float64)
    marked = [line.split(":")[0].strip() for line in model.summary((3, 6, 6)).splitlines()
              if "(fused into previous)" in line]
    assert marked == ["2", "body.2"]
    model.set_fusion(False)
    assert "fused" not in model.summary((3, 6, 6))


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("make", [fast_like, residual_model, lenet_like])
def test_numpy_float64_fused_equals_unfused_bit_for_bit(numpy_backend, make):
    """Bitwise: the NumPy op applies the activation layers' own forward/backward functions and
    recomputes act's input z in the forward's order of operations, so every float is the same."""
    model = make(np.float64)
    x = np.random.default_rng(5).standard_normal((4, 3, 8, 8))
    dlogits = np.random.default_rng(6).standard_normal(model.forward(x, training=False).shape)
    fused, unfused = fused_and_unfused(model, x, dlogits)
    y, dx, grads, state, inference = fused
    np.testing.assert_array_equal(y, unfused[0])
    np.testing.assert_array_equal(dx, unfused[1])
    assert grads.keys() == unfused[2].keys() and len(grads) >= 8
    for key in grads:
        np.testing.assert_array_equal(grads[key], unfused[2][key], err_msg=key)
        assert np.any(grads[key] != 0), key
    assert state.keys() == unfused[3].keys()
    for key in state:  # running statistics updated alike
        np.testing.assert_array_equal(state[key], unfused[3][key], err_msg=key)
    np.testing.assert_array_equal(inference, unfused[4])


@pytest.mark.parametrize("make", [fast_like, residual_model, lenet_like])
def test_emulated_float32_fused_equals_unfused_to_rounding(emulated_backend, make):
    """Forward: the normalize kernel computes z as the unfused one and applies the same act formula.
    Backward: the kernel recomputes z = xhat * gamma + beta (the forward rounded (x - mean) * (invstd *
    gamma) + beta), so act'(z) may differ in the last bits: float32 rounding, not bitwise."""
    model = make(np.float32)
    x = np.random.default_rng(7).standard_normal((4, 3, 8, 8)).astype(np.float32)
    dlogits = np.random.default_rng(8).standard_normal(model.forward(x, training=False).shape).astype(np.float32)
    fused, unfused = fused_and_unfused(model, x, dlogits)
    for a, b in zip((fused[0], fused[1], fused[4]), (unfused[0], unfused[1], unfused[4])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in fused[2]:
        scale = np.abs(unfused[2][key]).max()
        np.testing.assert_allclose(fused[2][key], unfused[2][key], rtol=1e-4, atol=1e-5 * scale, err_msg=key)
    for key in fused[3]:
        np.testing.assert_allclose(fused[3][key], unfused[3][key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_emulated_relu_epilogue_equals_the_relu_layer_bit_for_bit(emulated_backend, precision):
    """The ReLU in the epilogue of every conv/dense kernel path (direct, igemm, tensor-core
    tf32/bf16; the im2col path's separate launch) is max(v, 0) of the value the unfused path
    stores, and the backward applies the ReLU layer's own kernel: the same floats."""
    emulated_backend.set_precision(precision)
    model = lenet_like(np.float32)
    x = np.random.default_rng(17).standard_normal((4, 3, 8, 8)).astype(np.float32)
    dlogits = np.random.default_rng(18).standard_normal((4, 3)).astype(np.float32)
    ops = emulated_backend.ops
    # fp32: each conv kernel path, and the capturable mode (dense layers as igemm 1x1 convs)
    variants = [("auto", False)] if precision != "fp32" else [(v, False) for v in ("direct", "igemm", "im2col_gemm")]
    variants += [("auto", True)] if precision == "fp32" else []
    for variant, capturable in variants:
        ops.set_variant("conv2d_forward", variant)
        ops.capturable = capturable
        fused, unfused = fused_and_unfused(model, x, dlogits)
        for a, b in zip((fused[0], fused[1], fused[4]), (unfused[0], unfused[1], unfused[4])):
            np.testing.assert_array_equal(a, b, err_msg=variant)
        for key in fused[2]:
            np.testing.assert_array_equal(fused[2][key], unfused[2][key], err_msg=f"{variant} {key}")
            assert np.any(fused[2][key] != 0), key


def assert_gradients_match_central_differences(model, x, r):
    """L = sum(model(x) * r) in training mode (float64): dL/dx and every param's gradient
    against central differences, each of them non-zero."""
    state = model.state_dict()

    def loss():
        model.load_state_dict(state)  # the running statistics play no part, but keep them put
        return float(np.sum(model.forward(x, training=True) * r))

    loss()
    dx = model.backward(r)
    analytic = {(p, n): np.array(layer.grads[n]) for p, layer, n in model.parameters()}
    assert relative_error(dx, numeric_grad(loss, x)) < 1e-6
    for p, layer, n in model.parameters():
        state_key = f"layers.{p}.{n}"
        param = state[state_key]  # loss() loads the state: perturb the snapshot
        assert np.any(analytic[(p, n)] != 0), state_key
        assert relative_error(analytic[(p, n)], numeric_grad(loss, param)) < 1e-6, state_key


@pytest.mark.parametrize("activation", BN_FUSED_ACTIVATIONS)
def test_fused_gradients_match_finite_differences(numpy_backend, activation):
    """BN + act + conv + BN + act (float64): dL/dx, dgamma, dbeta, dW."""
    rng = np.random.default_rng(9)
    model = Sequential([L.BatchNorm2D(2, dtype=np.float64), act(activation),
                        L.Conv2D(2, 2, 3, padding=1, dtype=np.float64, rng=rng, bias=False),  # BN cancels a bias
                        L.BatchNorm2D(2, dtype=np.float64), act(activation)])
    assert len(model.fusion.pairs) == 2
    random_affine(model, 14)
    assert_gradients_match_central_differences(model, rng.standard_normal((3, 2, 4, 4)),
                                               rng.standard_normal((3, 2, 4, 4)))


def test_relu_epilogue_gradients_match_finite_differences(numpy_backend):
    """lenet_like with the three ReLUs in the conv/dense epilogues (float64): dL/dx, every dW and db."""
    rng = np.random.default_rng(19)
    model = lenet_like(np.float64, seed=19)
    assert len(model.fusion.pairs) == 3
    assert_gradients_match_central_differences(model, rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((2, 3)))


def test_sync_batchnorm_runs_an_absorbed_activation_apart(numpy_backend):
    """The synchronized statistics have no fused form: the BN applies the activation's own ops."""

    class OneRank:  # a world of one: the all-reduce of a rank's sums is those sums
        def allreduce(self, array, op, what):
            return array.copy()

    model = fast_like(np.float64)
    for _, layer in model.named_layers():
        if isinstance(layer, L.BatchNorm2D):
            layer.stats_sync = SyncBatchNormStats(OneRank(), np)
    x = np.random.default_rng(10).standard_normal((4, 3, 8, 8))
    dlogits = np.random.default_rng(11).standard_normal((4, 3))
    fused, unfused = fused_and_unfused(model, x, dlogits)
    assert model.layers[3].absorbed
    np.testing.assert_array_equal(fused[0], unfused[0])
    np.testing.assert_array_equal(fused[1], unfused[1])
    for key in fused[2]:
        np.testing.assert_array_equal(fused[2][key], unfused[2][key], err_msg=key)


def test_ema_swap_and_load_state_with_fused_pairs(numpy_backend):
    model = fast_like(np.float64)
    x = np.random.default_rng(12).standard_normal((4, 3, 8, 8))
    ema = EMA(model, 0.5)
    model.forward(x)
    model.backward(np.ones((4, 3)))
    for _, layer, name in model.parameters():
        layer.params[name] -= 0.1 * layer.grads[name]
    ema.update()
    with ema.averaged():
        fused = model.forward(x, training=False)
        model.set_fusion(False)
        unfused = model.forward(x, training=False)
        model.set_fusion(True)
    np.testing.assert_array_equal(fused, unfused)
    # keys do not depend on fusion; a state_dict round trip restores the fused model's outputs
    saved = model.state_dict()
    model.set_fusion(False)
    assert model.state_dict().keys() == saved.keys()
    model.set_fusion(True)
    before = model.forward(x, training=False)
    model.load_state_dict({k: np.zeros_like(v) if "running" in k else v for k, v in saved.items()})
    assert not np.array_equal(model.forward(x, training=False), before)
    model.load_state_dict(saved)
    np.testing.assert_array_equal(model.forward(x, training=False), before)


# ------------------------------------------------------------------ config


def test_config_key_turns_folding_on_and_off(numpy_backend):
    config = validate_config(load_config("cifar10-fast"))
    assert config["model"]["fuse_batchnorm_activation"] is True
    model = build_model(config, (3, 32, 32), 10)
    assert len(model.fusion.pairs) == 6
    assert all((a.name, b.name) == ("BatchNorm2D", "GELU") for a, b in model.fusion.pairs)
    off = validate_config(apply_overrides(load_config("cifar10-fast"), ["model.fuse_batchnorm_activation=false"]))
    unfused = build_model(off, (3, 32, 32), 10)
    assert unfused.fusion.pairs == [] and unfused.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ConfigError, match="fuse_batchnorm_activation"):
        validate_config(apply_overrides(load_config("cifar10-fast"), ["model.fuse_batchnorm_activation=3"]))


@pytest.mark.parametrize("name, bn_pairs, gemm_pairs", [("cifar10-vgg", 6, 1), ("resnet20", 10, 0), ("lenet5", 0, 4)])
def test_shipped_relu_configs_fold_their_pairs(numpy_backend, name, bn_pairs, gemm_pairs):
    model = build_model(validate_config(load_config(name)), (3, 32, 32), 10)
    kinds = [(type(a).__name__, type(b).__name__) for a, b in model.fusion.pairs]
    assert kinds.count(("BatchNorm2D", "ReLU")) == bn_pairs
    assert sum(k in (("Conv2D", "ReLU"), ("Dense", "ReLU")) for k in kinds) == gemm_pairs
    assert len(kinds) == bn_pairs + gemm_pairs


# ------------------------------------------------------------------ launches


def launches_fused_and_unfused(backend, model, x, labels) -> dict[bool, tuple[int, int]]:
    """fusion on/off -> kernel launches of a training step (forward, loss, backward) and of an
    inference forward, from the same starting state."""
    loss_fn = SoftmaxCrossEntropy()
    start = model.state_dict()

    def step():
        loss_fn.forward(model.forward(x, training=True), labels)
        model.backward(loss_fn.backward(), input_grad=False)

    counts = {}
    for fuse in (True, False):
        model.set_fusion(fuse)
        model.load_state_dict(start)
        train = count_step(backend, step)["kernel_launches"]
        infer = count_step(backend, lambda: model.forward(x, training=False))["kernel_launches"]
        counts[fuse] = (train, infer)
    return counts


def test_fused_model_launches_two_kernels_fewer_per_pair_per_step(emulated_backend):
    """A training step (forward, loss, backward) of the cifar10-fast-shaped model: each fused pair
    saves its activation's forward and backward kernel; an inference forward saves one per pair."""
    x = np.random.default_rng(13).standard_normal((4, 3, 8, 8)).astype(np.float32)
    counts = launches_fused_and_unfused(emulated_backend, fast_like(np.float32), x, np.array([0, 1, 2, 0]))
    pairs = 3
    assert counts[False][0] - counts[True][0] == 2 * pairs
    assert counts[False][1] - counts[True][1] == pairs
    assert counts[True][0] > 0


def test_relu_epilogue_saves_the_relu_forward_launch(emulated_backend):
    """Conv2D/Dense + ReLU: the forward's ReLU launch is gone (training and inference); the
    backward still runs ReLU's backward kernel (in the absorbing layer), so one launch per pair."""
    emulated_backend.ops.set_variant("conv2d_forward", "igemm")  # a kernel with the epilogue on every shape
    x = np.random.default_rng(14).standard_normal((4, 3, 8, 8)).astype(np.float32)
    counts = launches_fused_and_unfused(emulated_backend, lenet_like(np.float32), x, np.array([0, 1, 2, 0]))
    # two conv pairs; the dense pair multiplies through cuBLAS (fp32, not capturable) and keeps its launch
    assert counts[False][0] - counts[True][0] == 2
    assert counts[False][1] - counts[True][1] == 2
    emulated_backend.ops.capturable = True  # dense layers as igemm 1x1 convs: their epilogue too
    counts = launches_fused_and_unfused(emulated_backend, lenet_like(np.float32), x, np.array([0, 1, 2, 0]))
    assert counts[False][0] - counts[True][0] == 3
    assert counts[False][1] - counts[True][1] == 3


def test_onnx_export_still_writes_batchnorm_then_the_activation(numpy_backend):
    pytest.importorskip("onnx")
    from gpucnn.export_onnx import build_onnx

    model = residual_model(np.float32)
    assert len(model.fusion.pairs) == 2
    fused_ops = [node.op_type for node in build_onnx(model, (3, 6, 6), ["a", "b"]).graph.node]
    model.set_fusion(False)
    assert [node.op_type for node in build_onnx(model, (3, 6, 6), ["a", "b"]).graph.node] == fused_ops
    follows = [b for a, b in zip(fused_ops, fused_ops[1:]) if a == "BatchNormalization"]
    assert follows.count("Relu") == 2  # the stem's and the body's inner pair, each as two nodes
