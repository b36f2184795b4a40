"""Precision modes end to end: fp32 / tf32 / bf16 / auto through backends, ops, CLI and bench.

The NumPy backend in tf32/bf16 rounds the GEMM operands (gpucnn.precision) and sums in float32;
it is the reference of the emulated tensor-core kernels. Once the operands are rounded alike,
every product is exact in fp32 (11x11 or 8x8 significant bits), so the two backends differ
only by the order of their float32 sums: each is within K u sum|a b| of the exact sum
(K: terms per output, u = 2**-24), so they agree within 2 (K + 1) u sum|a b| (the +1: the
bias add). The unrounded fp32 result must lie outside that band somewhere, or the test
could not tell whether the precision reached the kernels at all. Emulated shapes are tiny:
every GPU thread is a fiber on the CPU.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from click.testing import CliRunner

from gpucnn import backend as backend_module
from gpucnn import layers
from gpucnn.backend import Backend, choose_precision, create_backend, resolve_precision
from gpucnn.bench import report, torch_peers
from gpucnn.bench.command import bench
from gpucnn.cli import cli
from gpucnn.config import load_config, validate_config
from gpucnn.cuda import tc_ops
from gpucnn.errors import ConfigError
from gpucnn.ops import numpy_ops
from gpucnn.ops.np_conv import round_operands

U = 2.0**-24
REDUCED = ("tf32", "bf16")
CONV_CASES = [
    # (N, C, H, W), (O, KH, KW), stride, padding: channels off multiples of 8/16, odd sizes, batch 1
    ((1, 3, 7, 9), (5, 3, 3), (1, 1), (1, 1)),
    ((2, 5, 6, 5), (11, 3, 3), (2, 2), (1, 1)),
    ((3, 13, 5, 7), (7, 1, 1), (2, 2), (0, 0)),
]
DENSE_CASES = [(1, 13, 7), (5, 37, 19)]  # (N, I, O)


@pytest.fixture(autouse=True)
def _no_precision_env(monkeypatch):
    monkeypatch.delenv(backend_module.PRECISION_ENV_VAR, raising=False)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_same_sum_up_to_order(got, want, bound, k, unrounded=None):
    """|got - want| <= 2 (K + 1) u bound elementwise; ``unrounded`` (fp32) must break that band."""
    assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    tol = 2.0 * (k + 1) * U * bound + 1e-30
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"K={k}: error {err[worst]:.3g} > tolerance {tol[worst]:.3g} at {worst}"
    if unrounded is not None:
        assert np.max(np.abs(unrounded.astype(np.float64) - got) - tol) > 0, "fp32 result also fits: no rounding?"


def _abs64(precision, *arrays):
    return [np.abs(a).astype(np.float64) for a in round_operands(precision, *arrays)]


@pytest.fixture(scope="module")
def emulated():
    b = create_backend("emulated")
    yield b


def _numpy(precision):
    return create_backend("numpy", precision)


# ---- emulated tensor-core kernels == NumPy in the same precision --------------------------
@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"n{c[0][0]}c{c[0][1]}-{c[0][2]}x{c[0][3]}-o{c[1][0]}"
                                                            f"k{c[1][1]}-s{c[2][0]}p{c[3][0]}")
def test_emulated_conv_ops_equal_numpy_in_the_same_precision(emulated, precision, case):
    (n, c, h, w), (o, kh, kw), stride, padding = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x, wt, b = randn(rng, n, c, h, w), randn(rng, o, c, kh, kw), randn(rng, o)
    emulated.set_precision(precision)
    ref, fp32 = _numpy(precision).ops, _numpy("fp32").ops
    y = emulated.ops.conv2d_forward(x, wt, b, stride, padding)
    want = ref.conv2d_forward(x, wt, b, stride, padding)
    ax, aw = _abs64(precision, x, wt)
    bound = numpy_ops.conv2d_forward(ax, aw, np.abs(b).astype(np.float64), stride, padding)
    assert_same_sum_up_to_order(y, want, bound, c * kh * kw, fp32.conv2d_forward(x, wt, b, stride, padding))

    dy = randn(rng, *y.shape)
    dx = emulated.ops.conv2d_backward_data(dy, wt, x.shape, stride, padding)
    ady, aw = _abs64(precision, dy, wt)
    assert_same_sum_up_to_order(dx, ref.conv2d_backward_data(dy, wt, x.shape, stride, padding),
                                numpy_ops.conv2d_backward_data(ady, aw, x.shape, stride, padding), o * kh * kw,
                                fp32.conv2d_backward_data(dy, wt, x.shape, stride, padding))

    dw = emulated.ops.conv2d_backward_filter(dy, x, wt.shape, stride, padding)
    ady, ax = _abs64(precision, dy, x)
    assert_same_sum_up_to_order(dw, ref.conv2d_backward_filter(dy, x, wt.shape, stride, padding),
                                numpy_ops.conv2d_backward_filter(ady, ax, wt.shape, stride, padding),
                                n * y.shape[2] * y.shape[3],
                                fp32.conv2d_backward_filter(dy, x, wt.shape, stride, padding))


@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: "n{}i{}o{}".format(*c))
def test_emulated_dense_ops_equal_numpy_in_the_same_precision(emulated, precision, case):
    n, i, o = case
    rng = np.random.default_rng(n * 1000 + i)
    x, w, b = randn(rng, n, i), randn(rng, o, i), randn(rng, o)
    emulated.set_precision(precision)
    ref, fp32 = _numpy(precision).ops, _numpy("fp32").ops
    ax, aw = _abs64(precision, x, w)
    y = emulated.ops.dense_forward(x, w, b)
    assert_same_sum_up_to_order(y, ref.dense_forward(x, w, b), ax @ aw.T + np.abs(b), i, fp32.dense_forward(x, w, b))
    dy = randn(rng, n, o)
    dx, dw, db = emulated.ops.dense_backward(dy, x, w)
    rdx, rdw, rdb = ref.dense_backward(dy, x, w)
    fdx, fdw, _ = fp32.dense_backward(dy, x, w)
    ady, ax, aw = _abs64(precision, dy, x, w)
    assert_same_sum_up_to_order(dx, rdx, ady @ aw, o, fdx)
    assert_same_sum_up_to_order(dw, rdw, ady.T @ ax, n, fdw)
    # the bias gradient stays a full-precision sum of the unrounded dy
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=0), rtol=0,
                               atol=2 * n * U * np.abs(dy).sum(0).max())


def test_the_tensor_core_kernels_run_in_tf32_and_bf16_only(emulated, monkeypatch):
    """fp32 keeps today's kernels; tf32/bf16 call tc_ops (every routed op, the precision passed on)."""
    seen = []
    for name in ("conv2d_forward_tc", "conv2d_backward_data_tc", "conv2d_backward_filter_tc",
                 "dense_forward_tc", "dense_backward_tc"):
        original = getattr(tc_ops, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append((_name, [a for a in args if isinstance(a, str)][-1]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(tc_ops, name, spy)
    rng = np.random.default_rng(3)
    x, w, b = randn(rng, 1, 3, 5, 5), randn(rng, 4, 3, 3, 3), randn(rng, 4)
    xd, wd = randn(rng, 2, 6), randn(rng, 3, 6)

    def run_all():
        y = emulated.ops.conv2d_forward(x, w, b, (1, 1), (1, 1))
        emulated.ops.conv2d_backward_data(y, w, x.shape, (1, 1), (1, 1))
        emulated.ops.conv2d_backward_filter(y, x, w.shape, (1, 1), (1, 1))
        emulated.ops.dense_backward(emulated.ops.dense_forward(xd, wd, None), xd, wd)
        return y

    emulated.set_precision("fp32")
    y32 = run_all()
    assert seen == []
    np.testing.assert_allclose(y32, numpy_ops.conv2d_forward(x, w, b, (1, 1), (1, 1)), rtol=1e-5, atol=1e-5)
    emulated.set_precision("bf16")
    run_all()
    assert [s[0] for s in seen] == ["conv2d_forward_tc", "conv2d_backward_data_tc", "conv2d_backward_filter_tc",
                                    "dense_forward_tc", "dense_backward_tc"]
    assert {s[1] for s in seen} == {"bf16"}


# ---- fp32 is unchanged; layers see float32 in every mode -------------------------------------
def test_fp32_numpy_is_bit_identical_to_the_unrounded_ops():
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 3, 6, 7)
    a = round_operands("fp32", x)[0]
    assert a is x  # fp32 hands the very arrays to the GEMM: the same code as before precision modes
    ops = _numpy("fp32").ops
    w, b, dy = randn(rng, 4, 3, 3, 3), randn(rng, 4), randn(rng, 2, 4, 3, 4)
    y = ops.conv2d_forward(x, w, b, (2, 2), (1, 1))
    # the fp32 formula written out: im2col @ W, + b
    cols, oh, ow = numpy_ops.im2col(x, (3, 3), (2, 2), (1, 1))
    want = (w.reshape(4, -1) @ cols + b[:, None]).reshape(4, 2, oh, ow).transpose(1, 0, 2, 3)
    assert np.array_equal(y, want)
    assert np.array_equal(ops.conv2d_backward_filter(dy, x, w.shape, (2, 2), (1, 1)),
                          (dy.transpose(1, 0, 2, 3).reshape(4, -1) @ cols.T).reshape(w.shape))
    xd, wd, dyd = randn(rng, 3, 5), randn(rng, 2, 5), randn(rng, 3, 2)
    assert np.array_equal(ops.dense_forward(xd, wd, None), xd @ wd.T)
    got = ops.dense_backward(dyd, xd, wd)
    assert all(np.array_equal(g, e) for g, e in zip(got, (dyd @ wd, dyd.T @ xd, dyd.sum(0))))


@pytest.mark.parametrize("precision", ("fp32", *REDUCED))
def test_layers_return_float32_and_round_only_in_reduced_precision(precision):
    rng = np.random.default_rng(1)
    x = randn(rng, 2, 3, 5, 5)
    with backend_module.use_backend("numpy") as b:
        b.set_precision(precision)
        conv = layers.Conv2D(3, 4, 3, padding=1, rng=0)
        y = conv.forward(x)
        dx = conv.backward(np.ones_like(y))
        dense = layers.Dense(4 * 25, 3, rng=0)
        z = dense.forward(y.reshape(2, -1))
    assert {a.dtype for a in (y, dx, z, conv.grads["W"], conv.grads["b"])} == {np.dtype(np.float32)}
    w = conv.params["W"]
    exact = numpy_ops.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                                     conv.params["b"].astype(np.float64), (1, 1), (1, 1))
    err = np.max(np.abs(y - exact))
    # fp32 sums are ~1e-7 off; tf32 (2**-11 per operand) and bf16 (2**-8) are visibly off
    limit = {"fp32": 1e-5, "tf32": 1e-2, "bf16": 1e-1}[precision]
    assert err < limit
    if precision != "fp32":
        assert err > 1e-5


def test_float64_refuses_reduced_precision_but_not_fp32():
    x = np.ones((1, 1, 3, 3))
    w = np.ones((1, 1, 3, 3))
    assert float(_numpy("fp32").ops.conv2d_forward(x, w, None, (1, 1), (0, 0)).item()) == 9.0
    with pytest.raises(TypeError, match="precision bf16 rounds float32"):
        _numpy("bf16").ops.conv2d_forward(x, w, None, (1, 1), (0, 0))


# ---- auto, bad values, precedence -----------------------------------------------------------
def _fake_gpu(cc, name="Fake GPU"):
    return Backend("cuda", np, types.SimpleNamespace(precision="fp32"), name, float_dtypes=(np.float32,),
                   on_device=True, kernels=True, compute_capability=cc)


def test_auto_is_fp32_on_the_cpu_backends(emulated):
    assert _numpy("auto").precision == "fp32"
    emulated.set_precision("auto")
    assert emulated.precision == "fp32" and emulated.ops.precision == "fp32"
    assert emulated.requested_precision == "auto"


def test_auto_is_tf32_on_a_gpu_with_tensor_cores(monkeypatch):
    for cc, want in (((8, 0), "tf32"), ((9, 0), "tf32"), ((7, 0), "fp32"), ((7, 5), "fp32")):
        monkeypatch.setattr(backend_module, "cuda_unavailable_reason", lambda: None)
        monkeypatch.setattr(backend_module, "_make_cuda", lambda cc=cc: _fake_gpu(cc))
        b = create_backend("auto")
        assert (b.name, b.precision, b.ops.precision) == ("cuda", want, want), cc
        assert resolve_precision("auto", b) == want
    assert resolve_precision("bf16", _fake_gpu((8, 0))) == "bf16"
    with pytest.raises(ConfigError, match=r"--precision: tf32 needs tensor cores .* Fake V100 has 7\.0"):
        _fake_gpu((7, 0), "Fake V100").set_precision("tf32", "--precision")


def test_a_bad_value_is_an_error_naming_the_key(monkeypatch):
    config = load_config("digits")
    config["training"]["precision"] = "fp16"
    with pytest.raises(ConfigError, match=r"^training\.precision: expected one of 'auto', 'fp32', 'tf32', 'bf16', "
                                          r"got 'fp16'$"):
        validate_config(config)
    monkeypatch.setenv(backend_module.PRECISION_ENV_VAR, "half")
    with pytest.raises(ConfigError, match="^GPUCNN_PRECISION: expected one of auto, fp32, tf32, bf16, got 'half'$"):
        create_backend("numpy")
    result = CliRunner().invoke(cli, ["train", "--config", "digits", "--device", "cpu", "--epochs", "1",
                                      "--out", "/nonexistent/never"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == \
        "gpucnn: error: GPUCNN_PRECISION: expected one of auto, fp32, tf32, bf16, got 'half'"
    result = CliRunner().invoke(cli, ["train", "--precision", "fp16"])
    assert result.exit_code == 2 and "--precision" in result.output and "Traceback" not in result.output


def test_precedence_option_then_env_then_config(monkeypatch):
    assert choose_precision(None, "bf16") == ("bf16", "training.precision")
    assert choose_precision(None, None) == ("auto", "precision")
    monkeypatch.setenv(backend_module.PRECISION_ENV_VAR, "tf32")
    assert choose_precision(None, "bf16") == ("tf32", "GPUCNN_PRECISION")
    assert choose_precision("fp32", "bf16") == ("fp32", "--precision")
    assert create_backend("numpy").precision == "tf32"  # the Python API: a new backend starts in it


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """digits for 3 epochs in fp32 (config) and bf16 (--precision over GPUCNN_PRECISION=tf32)."""
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        for precision, args in (("fp32", ["--set", 'training.precision="fp32"']),
                                ("bf16", ["--precision", "bf16", "--set", 'training.precision="fp32"'])):
            mp.setenv(backend_module.PRECISION_ENV_VAR, "tf32" if precision == "bf16" else "")
            out = tmp_path_factory.mktemp(precision)
            result = CliRunner().invoke(cli, ["train", "--config", "digits", "--device", "cpu", "--epochs", "3",
                                              "--out", str(out), *args])
            assert result.exit_code == 0, result.output
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            runs[precision] = (result.output, rows, out)
    return runs


def test_the_run_says_its_precision_in_the_first_line_and_metrics(digits_runs):
    for precision, (output, rows, _) in digits_runs.items():
        first = next(line for line in output.splitlines() if line.startswith("device: "))
        assert first == f"device: CPU (NumPy) (numpy backend), precision: {precision}"
        assert [r["precision"] for r in rows] == [precision] * 3


def test_bf16_digits_lands_within_a_few_points_of_fp32(digits_runs):
    fp32 = digits_runs["fp32"][1][-1]["test_acc"]
    bf16 = digits_runs["bf16"][1][-1]["test_acc"]
    assert fp32 > 0.85  # both actually learned
    assert abs(bf16 - fp32) <= 0.03, (fp32, bf16)
    # ...and bf16 really trained differently (the rounding reached the GEMMs)
    assert digits_runs["fp32"][1][-1]["train_loss"] != digits_runs["bf16"][1][-1]["train_loss"]


def test_evaluate_takes_precision_from_option_env_and_config(digits_runs, monkeypatch):
    ckpt = str(digits_runs["bf16"][2] / "last.npz")  # its config says training.precision = "fp32"
    result = CliRunner().invoke(cli, ["evaluate", ckpt, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "device: CPU (NumPy) (numpy backend), precision: fp32" in result.output
    monkeypatch.setenv(backend_module.PRECISION_ENV_VAR, "tf32")
    result = CliRunner().invoke(cli, ["evaluate", ckpt, "--device", "cpu"])
    assert "precision: tf32\n" in result.output
    result = CliRunner().invoke(cli, ["evaluate", ckpt, "--device", "cpu", "--precision", "bf16"])
    assert "precision: bf16\n" in result.output


# ---- bench -----------------------------------------------------------------------------------
def test_gpu_peers_match_our_precision():
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True))
    gpu = _fake_gpu((9, 0))
    names = {}
    for precision in ("fp32", "tf32", "bf16"):
        gpu.set_precision(precision)
        names[precision] = [(m.name, m.tf32, m.bf16) for m in torch_peers.peer_modes(gpu, fake_torch)]
    assert names == {"fp32": [("torch-fp32", False, False), ("torch-default", None, False)],
                     "tf32": [("torch-tf32", True, False)], "bf16": [("torch-bf16", False, True)]}


def test_peak_table_by_device_name():
    assert report.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert report.peak_tflops("NVIDIA H100 PCIe", "tf32") == 378.0
    assert report.peak_tflops("NVIDIA H200", "tf32") == 494.7
    assert report.peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert report.peak_tflops("NVIDIA GeForce RTX 4090", "tf32") is None
    record = {"op": "conv2d_forward", "variant": None, "set": "custom", "layer": None, "shape": "conv:N=1",
              "metric": "GFLOP/s", "peers": {},
              "ours": {"ms": 1.0, "rate": 98940.0, "frac_ref": None, "timing": {"q1_ms": 1.0, "q3_ms": 1.0}}}
    headers, rows = report.kernel_rows([record], "cuda", 989.4)
    assert headers[-1] == "%peak" and rows[0][-1] == "10.0%"
    headers, rows = report.kernel_rows([record], "cuda", None)
    assert "%peak" not in headers


def test_bench_precision_gates_against_numpy_in_the_same_precision(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(bench, ["--device", "numpy", "--precision", "bf16", "--shape",
                                        "conv:N=2,C=3,H=7,W=6,O=5,K=3,S=2,P=1", "--shape", "dense:N=3,I=37,O=4",
                                        "--ops", "conv2d_*,dense_*", "--repeats", "1", "--warmup", "0",
                                        "--no-peers", "--sgemm-size", "16", "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["precision"] == "bf16" and data["peak_tflops"] is None
    assert "precision: bf16" in result.output
    assert {r["op"] for r in data["kernels"]} >= {"conv2d_forward", "conv2d_backward_filter", "dense_backward"}
    # the ops are bf16: an fp32 reference would be ~1e-2 off, the same-precision one is float32-sum close
    assert max(r["check"]["max_rel_err"] for r in data["kernels"]) < 1e-5
