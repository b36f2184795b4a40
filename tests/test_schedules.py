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


# --------------------------------------------------------------------------- warm-up as a fraction, clamping
def test_warmup_fraction_keeps_its_share_of_any_run():
    for epochs in (1, 3, 10):
        s = LRSchedule("linear", 1.0, steps_per_epoch=20, epochs=epochs, warmup_fraction=0.25, min_lr=0.1)
        assert s.warmup_steps == 5 * epochs and not s.warmup_clamped
        assert s(s.warmup_steps - 1) == pytest.approx(1.0)
        assert s(s.total_steps) == pytest.approx(0.1)


def test_warmup_longer_than_the_run_is_clamped_not_refused():
    # cifar10-fast's 2.3 warm-up epochs on a 1-epoch run: the whole run warms up
    s = LRSchedule("linear", 1.0, steps_per_epoch=10, epochs=1, warmup_epochs=2.3, warmup_start_factor=0.2, min_lr=0.1)
    assert s.warmup_clamped and s.warmup_steps == 10
    assert [s(k) for k in (0, 5, 9)] == pytest.approx([0.2, 0.2 + 0.8 * 0.5, 0.2 + 0.8 * 0.9])
    assert not LRSchedule("linear", 1.0, steps_per_epoch=10, epochs=3, warmup_epochs=2.3).warmup_clamped


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"warmup_fraction": 1.5}, r"schedule: warmup_fraction must be in \[0, 1\], got 1.5"),
    ({"warmup_fraction": float("nan")}, r"schedule: warmup_fraction must be in \[0, 1\], got nan"),
    ({"warmup_fraction": 0.1, "warmup_epochs": 1.0}, r"give warmup_epochs \(1.0\) or warmup_fraction \(0.1\), not both"),
    ({"warmup_epochs": float("inf")}, r"schedule: warmup_epochs must be a finite number >= 0, got inf"),
    ({"gamma": 0.0}, r"schedule: gamma must be in \(0, 1\], got 0.0"),
    ({"min_lr": -1.0}, r"schedule: min_lr must be a finite number >= 0"),
    ({"warmup_start_factor": 2.0}, r"schedule: warmup_start_factor must be in \[0, 1\], got 2.0"),
])
def test_bad_schedule_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LRSchedule("cosine", 0.1, 10, 2, **kwargs)


def test_schedule_from_config_reads_warmup_fraction():
    config = validate_config(load_config("lenet5"))
    config["schedule"].update(name="cosine", warmup_epochs=0.0, warmup_fraction=0.1)
    config["training"]["epochs"] = 5
    assert schedule_from_config(config, steps_per_epoch=10).warmup_steps == 5


# --------------------------------------------------------------------------- against torch.optim.lr_scheduler
def torch_lrs(torch, base_lr, steps, make):
    """The lr torch's scheduler gives each of ``steps`` updates (read before each scheduler.step())."""
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=base_lr)
    sched = make(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("start_factor", [None, 0.2])
@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_warmup_then_decay_matches_torch_sequential_lr(name, start_factor):
    torch = pytest.importorskip("torch", reason="torch.optim.lr_scheduler is the reference")
    sched_mod = torch.optim.lr_scheduler
    base, low = 0.4, 0.01
    s = LRSchedule(name, base, steps_per_epoch=7, epochs=6, warmup_fraction=0.2, min_lr=low,
                   warmup_start_factor=start_factor)
    w, total = s.warmup_steps, s.total_steps

    def make(opt):
        if start_factor is None:  # base * (k + 1) / w reaches base at k = w - 1
            warm = sched_mod.LinearLR(opt, start_factor=1.0 / w, end_factor=1.0, total_iters=w - 1)
        else:
            warm = sched_mod.LinearLR(opt, start_factor=start_factor, end_factor=1.0, total_iters=w)
        if name == "cosine":
            decay = sched_mod.CosineAnnealingLR(opt, T_max=total - w, eta_min=low)
        else:
            decay = sched_mod.LinearLR(opt, start_factor=1.0, end_factor=low / base, total_iters=total - w)
        return sched_mod.SequentialLR(opt, [warm, decay], milestones=[w])

    want = torch_lrs(torch, base, total, make)
    assert [s(k) for k in range(total)] == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_step_schedule_matches_torch_step_lr():
    torch = pytest.importorskip("torch", reason="torch.optim.lr_scheduler is the reference")
    s = LRSchedule("step", 0.5, steps_per_epoch=4, epochs=9, step_size=2, gamma=0.3)
    want = torch_lrs(torch, 0.5, s.total_steps, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=8, gamma=0.3))
    assert [s(k) for k in range(s.total_steps)] == pytest.approx(want, rel=1e-12)
