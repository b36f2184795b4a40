"""Learning-rate schedules: hand-computed values at chosen steps, warm-up, config wiring."""

import math

import pytest

from gpucnn.config import load_config, validate_config
from gpucnn.schedules import LRSchedule, schedule_from_config


def test_constant_without_warmup_is_flat():
    s = LRSchedule("constant", 0.1, steps_per_epoch=10, epochs=3)
    assert [s(k) for k in (0, 5, 29)] == [0.1, 0.1, 0.1]


def test_warmup_rises_linearly_then_hands_over():
    # 2 warm-up steps (0.5 epoch of 4 steps): lr = 0.2 * (k + 1) / 2
    s = LRSchedule("constant", 0.2, steps_per_epoch=4, epochs=2, warmup_epochs=0.5)
    assert s.warmup_steps == 2
    assert [s(k) for k in range(4)] == pytest.approx([0.1, 0.2, 0.2, 0.2])


def test_step_decays_every_step_size_epochs():
    s = LRSchedule("step", 1.0, steps_per_epoch=5, epochs=6, step_size=2, gamma=0.5)
    # epochs 0-1 -> 1.0, epochs 2-3 -> 0.5, epochs 4-5 -> 0.25
    assert [s(0), s(9), s(10), s(19), s(20), s(29)] == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.25])


def test_cosine_matches_formula_and_reaches_min_lr():
    s = LRSchedule("cosine", 0.1, steps_per_epoch=10, epochs=2, warmup_epochs=0.5, min_lr=0.01)
    # warm-up 5 steps; then T = 15 steps of cosine from 0.1 down to 0.01
    assert s(4) == pytest.approx(0.1)
    assert s(5) == pytest.approx(0.1)
    t = 12 - 5
    assert s(12) == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * t / 15)))
    assert s(20) == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 15 / 15)))
    assert s(20) == pytest.approx(0.01)
    values = [s(k) for k in range(5, 20)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_linear_decays_to_min_lr():
    s = LRSchedule("linear", 1.0, steps_per_epoch=4, epochs=1, min_lr=0.2)
    assert [s(k) for k in range(4)] == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert s(4) == pytest.approx(0.2)


def test_unknown_schedule_and_bad_sizes_raise():
    with pytest.raises(ValueError, match="unknown schedule 'exp'"):
        LRSchedule("exp", 0.1, 10, 1)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        LRSchedule("constant", 0.1, 0, 1)


def test_schedule_from_config_uses_optimizer_lr_and_epochs():
    config = validate_config(load_config("lenet5"))
    config["optimizer"]["lr"] = 0.5
    config["schedule"].update(name="linear", warmup_epochs=0.0, min_lr=0.0)
    config["training"]["epochs"] = 2
    s = schedule_from_config(config, steps_per_epoch=10)
    assert s.total_steps == 20
    assert s(0) == pytest.approx(0.5)
    assert s(10) == pytest.approx(0.25)
