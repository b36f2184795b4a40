"""airbench94's pieces: Lookahead, alternating flips, the bias freeze hook, translate TTA, config keys."""

import numpy as np
import pytest

import reference_models as zoo
from gpucnn import layers
from gpucnn.config import load_config, validate_config
from gpucnn.data.augment import Augment
from gpucnn.data.loader import BatchLoader
from gpucnn.errors import ConfigError
from gpucnn.lookahead import Lookahead
from gpucnn.model import Sequential
from gpucnn.tta import predict_tta


def test_lookahead_update_matches_hand_computation(numpy_backend):
    model = Sequential([layers.Dense(3, 2, rng=0, dtype=np.float64)])
    look = Lookahead(model, every=2, decay=0.5, power=1.0, total_steps=4)
    w0 = model.layers[0].params["W"].copy()
    model.layers[0].params["W"][...] = w0 + 1.0  # the optimizer moved it
    look.after_step(1)  # not a multiple of 2: nothing
    np.testing.assert_array_equal(model.layers[0].params["W"], w0 + 1.0)
    look.after_step(2)  # d = 0.5 * 2/4 = 0.25: s = w0 + 0.75 * 1
    np.testing.assert_allclose(model.layers[0].params["W"], w0 + 0.75, rtol=0, atol=1e-15)
    model.layers[0].params["W"][...] = w0 + 2.0
    look.after_step(4)  # d = 0.5: s = (w0+.75) + 0.5*(1.25) = w0 + 1.375, then d = 1 keeps it
    np.testing.assert_allclose(model.layers[0].params["W"], w0 + 1.375, rtol=0, atol=1e-15)


def test_alternate_flips_are_complements_and_crops_stay_random(numpy_backend):
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 8, 8), dtype=np.uint8)
    loader = BatchLoader(images, np.zeros(16, int), 16, seed=3,
                         augment=Augment(flip=True, crop_padding=2, padding_mode="reflect", alternate_flip=True))
    o0, p0 = loader.epoch_plan(0)
    o1, p1 = loader.epoch_plan(1)
    o2, p2 = loader.epoch_plan(2)
    f0, f1, f2 = (np.empty(16, bool) for _ in range(3))
    f0[o0], f1[o1], f2[o2] = p0.flip, p1.flip, p2.flip
    np.testing.assert_array_equal(f1, ~f0)
    np.testing.assert_array_equal(f2, f0)
    assert 0 < f0.sum() < 16
    assert not np.array_equal(p0.dx, p1.dx) or not np.array_equal(p0.dy, p1.dy)


def test_set_epoch_freezes_the_bias_from_epoch_n(numpy_backend):
    conv = layers.Conv2D(3, 4, 2, rng=0)
    conv.train_epochs = {"b": 3}
    conv.set_epoch(2)
    assert conv.is_trainable("b")
    conv.set_epoch(3)
    assert not conv.is_trainable("b") and conv.is_trainable("W")


def test_translate_tta_matches_the_formula(numpy_backend):
    model = zoo.cifar10_fast(rng=0, widths=(4, 8, 8), dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32))
    f = lambda a: np.asarray(model.forward(np.ascontiguousarray(a), training=False))
    mirror = lambda a: 0.5 * f(a) + 0.5 * f(a[..., ::-1])
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    want = 0.5 * mirror(x) + 0.5 * (mirror(pad[:, :, 0:32, 0:32]) + mirror(pad[:, :, 2:34, 2:34])) / 2
    np.testing.assert_allclose(predict_tta(model, x, batch_size=2, level=2), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(predict_tta(model, x, level=1), mirror(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("section,key,value", [
    ("training", "lookahead", {"every": -1}), ("training", "lookahead", {"decay": 1.5}),
    ("training", "tta", "translate"), ("data", "augment", {"alternate_flip": 1}),
])
def test_bad_values_name_the_key(section, key, value):
    config = load_config("cifar10-fast")
    config[section][key] = value
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        validate_config(config)


def test_bad_bias_epochs_names_the_key():
    config = load_config("cifar10-fast")
    config["model"]["layers"][0]["bias_epochs"] = -1
    with pytest.raises(ConfigError, match=r"model.layers\[0\].bias_epochs"):
        validate_config(config)


def test_lookahead_and_alternate_flips_resume_exactly(tmp_path, numpy_backend):
    from gpucnn.build import build_run
    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.config import apply_overrides
    from gpucnn.data import load_dataset
    from gpucnn.train import Trainer

    overrides = ["training.epochs=2", "data.augment.flip=true", "data.augment.crop_padding=2",
                 "data.augment.alternate_flip=true", "training.lookahead.every=4", "training.tta=\"mirror_translate\""]
    config = validate_config(apply_overrides(load_config("digits"), overrides))
    digits = load_dataset("digits")

    def fit(out, checkpoint=None, stop_at=None):
        def on_step(t):
            if stop_at is not None and t.progress.global_step == stop_at:
                t.request_stop()
        trainer = Trainer(build_run(config if checkpoint is None else checkpoint.config, digits, checkpoint), out,
                          echo=lambda s: None, progress_bar=False, on_step=on_step)
        return trainer, trainer.fit()

    full, _ = fit(tmp_path / "full")
    part, result = fit(tmp_path / "part", stop_at=30)
    assert result.status == "interrupted"
    ckpt = load_checkpoint(tmp_path / "part" / "last.npz")
    assert ckpt.lookahead_state
    resumed, result = fit(tmp_path / "part", checkpoint=ckpt)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # the run ends on the slow weights
    for key, slow in full.run.lookahead.state().items():
        assert np.array_equal(slow, a[key]), key
    assert full.metrics_log.records[-1]["test_acc_tta"] is not None


def test_frozen_whitening_bias_is_bit_identical_from_epoch_n(tmp_path, numpy_backend):
    from gpucnn.build import build_run
    from gpucnn.config import apply_overrides
    from gpucnn.data import load_dataset
    from gpucnn.train import Trainer

    config = validate_config(apply_overrides(load_config("digits"), ["training.epochs=3"]))
    config["model"]["layers"].insert(0, {"type": "whitening_conv2d", "kernel_size": 2, "bias_epochs": 1})
    config = validate_config(config)
    seen = {}

    def on_step(t):
        layer = t.model.layers[0]
        seen[(t.progress.epoch, t.progress.step_in_epoch)] = (layer.params["b"].copy(), t.model.layers[-1].params["W"].copy())

    trainer = Trainer(build_run(config, load_dataset("digits")), tmp_path, echo=lambda s: None,
                      progress_bar=False, on_step=on_step)
    trainer.fit()
    keys = sorted(seen)
    epoch0 = [seen[k][0] for k in keys if k[0] == 0]
    later = [seen[k] for k in keys if k[0] >= 1]
    assert not np.array_equal(epoch0[0], epoch0[-1])  # trained in epoch 0
    assert all(np.array_equal(b, epoch0[-1]) for b, _ in later)  # untouched afterwards
    assert not np.array_equal(later[0][1], later[-1][1])  # while the rest moves


def test_cifar10_fast_one_epoch_reports_translate_tta(tmp_path, numpy_backend):
    """The shipped config end to end on 64 random 32x32 images: one epoch, test_acc_tta in metrics and summary."""
    from gpucnn.build import build_run
    from gpucnn.config import apply_overrides
    from gpucnn.data import Dataset
    from gpucnn.train import Trainer

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 64)
    small = Dataset("tiny", x, y, x[:20], y[:20], [str(i) for i in range(10)])
    config = validate_config(apply_overrides(load_config("cifar10-fast"),
                                             ["training.epochs=1", "data.batch_size=32", "data.val_fraction=0",
                                              "model.layers[0].images=64", "training.curves=false"]))
    lines = []
    trainer = Trainer(build_run(config, small), tmp_path, echo=lines.append, progress_bar=False)
    trainer.fit()
    record = trainer.metrics_log.records[-1]
    assert 0.0 <= record["test_acc_tta"] <= 1.0 and record["test_loss_tta"] > 0
    assert "test acc tta (mirror_translate)" in lines[-1]
