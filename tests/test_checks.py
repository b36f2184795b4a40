"""gpucnn.checks.finite_number and the constructor checks built on it (layers; optimizers in their own tests)."""

import numpy as np
import pytest

from gpucnn import layers
from gpucnn.checks import finite_number

NAN, INF = float("nan"), float("inf")


def test_finite_number_accepts_the_range_and_returns_a_float():
    assert finite_number("X", "a", 0, 0.0, 1.0, high_open=True) == 0.0
    value = finite_number("X", "a", np.float32(0.5), 0.0, 1.0)
    assert value == 0.5 and type(value) is float
    assert finite_number("X", "a", 1.0, 0.0, 1.0) == 1.0
    assert finite_number("X", "a", -3) == -3.0


@pytest.mark.parametrize(("value", "kwargs", "message"), [
    (NAN, {}, r"^X: a must be a finite number, got nan$"),
    (-INF, {"low": 0.0}, r"^X: a must be a finite number >= 0, got -inf$"),
    (0.0, {"low": 0.0, "low_open": True}, r"^X: a must be a finite number > 0, got 0.0$"),
    (2.0, {"high": 1.0, "high_open": True}, r"^X: a must be a finite number < 1, got 2.0$"),
    (1.0, {"low": 0.0, "high": 1.0, "high_open": True}, r"^X: a must be in \[0, 1\), got 1.0$"),
    (0.0, {"low": 0.0, "high": 1.0, "low_open": True}, r"^X: a must be in \(0, 1\], got 0.0$"),
    (True, {"low": 0.0}, r"^X: a must be a finite number >= 0, got True$"),
    ("0.1", {"low": 0.0}, r"^X: a must be a finite number >= 0, got '0.1'$"),
])
def test_finite_number_refuses_with_one_line_naming_owner_argument_and_range(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        finite_number("X", "a", value, **kwargs)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: layers.BatchNorm2D(3, eps=0.0), r"BatchNorm2D: eps must be a finite number > 0, got 0.0"),
    (lambda: layers.BatchNorm2D(3, eps=NAN), r"BatchNorm2D: eps must be a finite number > 0, got nan"),
    (lambda: layers.BatchNorm2D(3, momentum=NAN), r"BatchNorm2D: momentum must be in \(0, 1\], got nan"),
    (lambda: layers.BatchNorm2D(3, momentum=1.5), r"BatchNorm2D: momentum must be in \(0, 1\], got 1.5"),
    (lambda: layers.Dropout(NAN), r"Dropout: p must be in \[0, 1\), got nan"),
    (lambda: layers.Dropout(1.0), r"Dropout: p must be in \[0, 1\), got 1.0"),
    (lambda: layers.Dropout(-0.1), r"Dropout: p must be in \[0, 1\), got -0.1"),
])
def test_layer_constructors_refuse_out_of_range_numbers(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_layer_constructors_keep_valid_values():
    bn = layers.BatchNorm2D(3, eps=1e-3, momentum=1.0)
    assert (bn.eps, bn.momentum) == (1e-3, 1.0)
    assert layers.Dropout(0).p == 0.0
