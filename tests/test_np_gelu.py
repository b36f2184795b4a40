"""NumPy erf/erfc, normal CDF, GELU, sigmoid and softplus: accuracy against math.erf/erfc/exp on
dense grids (tails included), with scipy and with the pure-NumPy fallback (scipy forced away)."""

import math

import numpy as np
import pytest

from gpucnn.ops import np_activations as act

TINY = np.finfo(np.float64).tiny
GRID = np.concatenate([
    np.linspace(-7.0, 7.0, 28001),
    np.linspace(-30.0, 30.0, 6001),
    np.geomspace(1e-300, 30.0, 3000),
    -np.geomspace(1e-300, 30.0, 3000),
    [0.0, -0.0, 0.46875, -0.46875, 4.0, -4.0],  # Cody's region boundaries
])
ERF = np.array([math.erf(v) for v in GRID])
ERFC = np.array([math.erfc(v) for v in GRID])


@pytest.fixture(params=["scipy", "numpy"])
def path(request, monkeypatch):
    """Run a test with scipy.special (when installed) and with the pure-NumPy fallback."""
    if request.param == "numpy":
        monkeypatch.setattr(act, "_special", None)
    elif act._special is None:
        pytest.skip("scipy is not installed; the numpy path is tested")
    return request.param


def max_relative_error(got, want):
    ok = np.abs(want) >= TINY  # below that, subnormals hold fewer digits: compared absolutely below
    return float(np.max(np.abs(got[ok] - want[ok]) / np.abs(want[ok])))


def test_cody_erf_and_erfc_have_double_precision_everywhere():
    assert max_relative_error(act.erf_cody(GRID), ERF) < 2e-15
    got = act.erfc_cody(GRID)
    assert max_relative_error(got, ERFC) < 3e-15  # relative precision kept deep in the right tail
    assert np.max(np.abs(got - ERFC)[np.abs(ERFC) < TINY]) < 1e-320
    special = np.array([np.inf, -np.inf, 1e300, -1e300, np.nan])
    np.testing.assert_array_equal(act.erf_cody(special), [1.0, -1.0, 1.0, -1.0, np.nan])
    np.testing.assert_array_equal(act.erfc_cody(special), [0.0, 2.0, 0.0, 2.0, np.nan])
    assert math.copysign(1.0, act.erf_cody(np.array([-0.0]))[0]) == -1.0


def test_erf_np_and_erfc_np_on_either_path(path):
    assert max_relative_error(act.erf_np(GRID), ERF) < 2e-15
    assert max_relative_error(act.erfc_np(GRID), ERFC) < 1e-13  # scipy's erfc: ~6e-14 near x = 23


def gelu_reference(x):
    phi = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x])
    pdf = np.array([math.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi) for v in x])
    return x * phi, phi + x * pdf


def test_gelu_forward_and_backward_float64(path):
    x = np.concatenate([np.linspace(-12.0, 12.0, 24001), np.linspace(-38.0, 38.0, 761)])
    want_y, want_d = gelu_reference(x)
    dy = np.random.default_rng(0).standard_normal(x.shape)
    # relative 1e-12: the tails carry the rounding of x / sqrt(2) times ~x^2 (as the reference does)
    np.testing.assert_allclose(act.gelu_forward(x), want_y, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(act.gelu_backward(dy, x), dy * want_d, rtol=1e-12, atol=1e-300)
    mid = np.abs(x) <= 8
    np.testing.assert_allclose(act.gelu_forward(x[mid]), want_y[mid], rtol=3e-14, atol=1e-300)


def test_gelu_backward_matches_central_differences_of_forward(path):
    x = np.linspace(-6.0, 6.0, 1201)
    h = 1e-6
    numeric = (act.gelu_forward(x + h) - act.gelu_forward(x - h)) / (2 * h)
    np.testing.assert_allclose(act.gelu_backward(np.ones_like(x), x), numeric, rtol=1e-8, atol=1e-9)


def test_float32_inputs_stay_float32_and_round_the_float64_value(path):
    x = np.random.default_rng(1).standard_normal((64, 257)).astype(np.float32) * 4
    dy = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    for name, got, want in [
        ("gelu_forward", act.gelu_forward(x), act.gelu_forward(x64)),
        ("gelu_backward", act.gelu_backward(dy, x), act.gelu_backward(dy.astype(np.float64), x64)),
        ("sigmoid_forward", act.sigmoid_forward(x), act.sigmoid_forward(x64)),
        ("softplus_forward", act.softplus_forward(x), act.softplus_forward(x64)),
        ("softplus_backward", act.softplus_backward(dy, x), act.softplus_backward(dy.astype(np.float64), x64)),
    ]:
        assert got.dtype == np.float32, name
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7, err_msg=name)


def test_sigmoid_and_softplus_against_math_without_overflow(path):
    x = np.concatenate([np.linspace(-40.0, 40.0, 8001), [-1000.0, 1000.0, -745.0, 745.0]])
    sig = np.array([1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v)) for v in x])
    soft = np.array([max(v, 0.0) + math.log1p(math.exp(-abs(v))) for v in x])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        np.testing.assert_allclose(act.sigmoid_forward(x), sig, rtol=1e-15, atol=1e-300)
        np.testing.assert_allclose(act.softplus_forward(x), soft, rtol=1e-15, atol=1e-300)
        dy = np.full_like(x, 0.5)
        np.testing.assert_allclose(act.softplus_backward(dy, x), 0.5 * sig, rtol=1e-15, atol=1e-300)
        y = act.sigmoid_forward(x)
        np.testing.assert_allclose(act.sigmoid_backward(dy, y), 0.5 * y * (1 - y), rtol=1e-15, atol=1e-300)
