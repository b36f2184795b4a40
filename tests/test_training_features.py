"""Training features through the real config -> build_run -> Trainer path (numpy backend, digits):
early stopping (and across a resume), best.npz chosen on validation only, clip_grad_norm and
EMA from the config, an Adam + EMA run resumed bit-exactly, AdamW from the config against
torch.optim.AdamW, and cifar10-fast's fractional warm-up on a 1-epoch run."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import gpucnn
from gpucnn import optim
from gpucnn.backend import use_backend
from gpucnn.build import build_dataset, build_run
from gpucnn.checkpoint import load_checkpoint
from gpucnn.cli import cli
from gpucnn.config import apply_overrides, load_config, validate_config
from gpucnn.data import Dataset, load_dataset
from gpucnn.evaluate import evaluate_model
from gpucnn.train import Trainer

QUIET = {"echo": lambda s: None, "progress_bar": False}
# digits, big batches so an epoch is ~23 steps; no warm-up, so the lr of step k is easy to state
FAST = ["data.batch_size=64", "schedule.warmup_epochs=0", "training.curves=false", "training.log_every=1000"]


def digits_config(*overrides):
    return validate_config(apply_overrides(load_config("digits"), [*FAST, *overrides]))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def small(digits):
    """320 digits images (5 batches of 64 after the validation split): for runs whose numbers do not matter."""
    return Dataset("digits", digits.x_train[:320], digits.y_train[:320], digits.x_test[:64], digits.y_test[:64],
                   digits.classes)


def with_val(config, dataset):
    return dataset.with_validation(config["data"]["val_fraction"], seed=config["training"]["seed"])


def fit(config, dataset, out, checkpoint=None, on_step=None, echo=None):
    trainer = Trainer(build_run(config, dataset, checkpoint), out, **{**QUIET, **({"echo": echo} if echo else {})},
                      on_step=on_step)
    return trainer, trainer.fit()


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def arrays(path, prefix):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith(prefix)}


# --------------------------------------------------------------------------- early stopping
def scripted_evaluation(monkeypatch, val_acc):
    """Trainer evaluation returns val_acc[epoch - 1] (val_loss = 1 - it, test fixed): no training dependence."""
    def fake(self, record):
        acc = val_acc[record["epoch"] - 1]
        record.update(val_loss=1.0 - acc, val_acc=acc, test_loss=2.0, test_acc=0.5)
    monkeypatch.setattr(Trainer, "_evaluate_splits", fake)


VAL = [0.5, 0.7, 0.6, 0.7, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99]  # best at epoch 2, tied at 4, beaten at 5


@pytest.mark.parametrize("metric", ["val_acc", "val_loss"])
def test_early_stopping_stops_when_the_metric_has_not_improved_for_patience_epochs(tmp_path, small, monkeypatch,
                                                                                    metric):
    scripted_evaluation(monkeypatch, VAL)
    config = digits_config("training.epochs=10", f'training.early_stopping={{metric = "{metric}", patience = 2}}')
    said = []
    trainer, result = fit(config, with_val(config, small), tmp_path, echo=said.append)
    # epoch 2 is best; 3 is worse and 4 only ties it: two epochs without improvement -> stop after 4
    assert result.status == "completed" and result.epochs_done == 4
    assert [r["epoch"] for r in rows(tmp_path)] == [1, 2, 3, 4]
    assert f"early stopping: {metric} has not improved for 2 epochs" in said
    assert load_checkpoint(tmp_path / "best.npz").progress.epoch == 2  # chosen on val_acc
    assert load_checkpoint(tmp_path / "last.npz").progress.epoch == 4


@pytest.mark.parametrize("where", ["end of epoch 3", "mid epoch 4"])
def test_early_stopping_counts_across_a_resume(tmp_path, small, monkeypatch, where):
    """Best at epoch 2, no improvement at 3: a resumed run still counts epoch 3 and stops after 4, not 5."""
    scripted_evaluation(monkeypatch, VAL)
    config = digits_config("training.epochs=10", 'training.early_stopping={metric = "val_acc", patience = 2}')
    data = with_val(config, small)
    steps = len(build_run(config, data).train_loader)
    if where == "end of epoch 3":
        first = validate_config(apply_overrides(config, ["training.epochs=3"]))
        _, part = fit(first, data, tmp_path)
        assert part.status == "completed" and part.epochs_done == 3
    else:
        _, part = fit(config, data, tmp_path, on_step=lambda t: t.progress.global_step == 3 * steps + 2
                      and t.request_stop())
        assert part.status == "interrupted" and part.epochs_done == 3
    ckpt = load_checkpoint(tmp_path / "last.npz")
    longer = validate_config(apply_overrides(ckpt.config, ["training.epochs=10"]))
    _, result = fit(longer, data, tmp_path, checkpoint=ckpt)
    assert result.epochs_done == 4 and [r["epoch"] for r in rows(tmp_path)] == [1, 2, 3, 4]


def test_early_stopping_on_a_real_plateau(tmp_path, small):
    """lr 1e-12: the weights hardly move, so val_acc is the same every epoch and epoch 1 stays the best."""
    config = digits_config("training.epochs=6", "optimizer.lr=1e-12", "optimizer.weight_decay=0.0",
                           'training.early_stopping={metric = "val_acc", patience = 2}')
    _, result = fit(config, with_val(config, small), tmp_path)
    records = rows(tmp_path)
    assert len({r["val_acc"] for r in records}) == 1
    assert result.epochs_done == 3 and [r["epoch"] for r in records] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "best.npz").progress.epoch == 1


# --------------------------------------------------------------------------- validation picks best.npz
def test_best_is_the_best_val_epoch_and_the_test_set_never_chooses(tmp_path, digits):
    config = digits_config("training.epochs=5", "optimizer.lr=0.02", "data.batch_size=128")
    data = with_val(config, digits)
    _, _ = fit(config, data, tmp_path / "a")
    rng = np.random.default_rng(1)
    # other test labels (a permutation) and other test images: every test number changes
    shuffled = Dataset(data.name, data.x_train, data.y_train, data.x_test[::-1].copy(),
                       rng.permutation(data.y_test), data.classes, data.x_val, data.y_val)
    _, _ = fit(config, shuffled, tmp_path / "b")
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["test_acc"] for r in a] != [r["test_acc"] for r in b]
    assert [r["val_acc"] for r in a] == [r["val_acc"] for r in b]
    best_epoch = max(a, key=lambda r: (r["val_acc"], -r["epoch"]))["epoch"]
    for run in "ab":
        best = load_checkpoint(tmp_path / run / "best.npz")
        assert best.progress.epoch == best_epoch
        assert best.progress.best_acc == max(r["val_acc"] for r in a)
    assert arrays(tmp_path / "a" / "best.npz", "model/").keys() == arrays(tmp_path / "b" / "best.npz", "model/").keys()
    for key, value in arrays(tmp_path / "a" / "best.npz", "model/").items():
        assert np.array_equal(value, arrays(tmp_path / "b" / "best.npz", "model/")[key]), key


def test_without_validation_best_is_chosen_on_train_acc(tmp_path, digits):
    config = digits_config("training.epochs=3", "data.val_fraction=0.0")
    trainer, _ = fit(config, with_val(config, digits), tmp_path)
    records = rows(tmp_path)
    assert trainer.monitor == "train_acc" and all(r["val_acc"] is None for r in records)
    best_epoch = max(records, key=lambda r: (r["train_acc"], -r["epoch"]))["epoch"]
    assert load_checkpoint(tmp_path / "best.npz").progress.epoch == best_epoch


# --------------------------------------------------------------------------- clip_grad_norm
def first_step_by_hand(config, dataset, max_norm):
    """Step 0 of the run, done by hand with optim.clip_grad_norm: (params after it, grad norm before clipping)."""
    run = build_run(config, dataset)
    run.train_loader.set_epoch(0)
    x, y = next(iter(run.train_loader))
    logits = run.model.forward(x, training=True)
    run.loss_fn.forward(logits, y)
    run.model.backward(run.loss_fn.backward())
    total = optim.clip_grad_norm(run.model, max_norm) if max_norm else None
    run.optimizer.lr = run.schedule(0)
    run.optimizer.step()
    return run.model.state_dict(), total


def trainer_first_step(config, dataset, out):
    seen = {}

    def on_step(t):
        if t.progress.global_step == 1:
            seen.update(t.model.state_dict())
            t.request_stop()

    fit(config, dataset, out, on_step=on_step)
    return seen


def test_clip_grad_norm_from_the_config_is_optim_clip_grad_norm(tmp_path, digits):
    config = digits_config("training.clip_grad_norm=0.25", "optimizer.momentum=0.0", "optimizer.weight_decay=0.0")
    data = with_val(config, digits)
    got = trainer_first_step(config, data, tmp_path / "clipped")
    want, total = first_step_by_hand(config, data, 0.25)
    assert total > 0.25  # the clip is active on this step
    unclipped, _ = first_step_by_hand(digits_config("optimizer.momentum=0.0", "optimizer.weight_decay=0.0"), data, 0.0)
    assert got.keys() == want.keys()
    for key in want:
        assert np.array_equal(got[key], want[key]), key
    # and it changed the step: plain SGD moves by lr * g, the clipped one by lr * g * 0.25 / |g|
    start = build_run(config, data).model.state_dict()
    for key in want:
        np.testing.assert_allclose(want[key] - start[key], (unclipped[key] - start[key]) * (0.25 / (total + 1e-6)),
                                   rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- EMA
@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, digits):
    config = digits_config("training.epochs=2", "training.ema={decay = 0.9, warmup = 1.0}")
    out = tmp_path_factory.mktemp("ema")
    with use_backend("numpy"):
        trainer, result = fit(config, build_dataset(config), out)
    assert result.status == "completed"
    return trainer, out


def test_ema_numbers_are_those_of_the_averaged_weights(ema_run, numpy_backend):
    trainer, out = ema_run
    run, last = trainer.run, rows(out)[-1]
    with run.ema.averaged():
        val = evaluate_model(run.model, run.loss_fn, run.val_loader, 10)
        test = evaluate_model(run.model, run.loss_fn, run.test_loader, 10)
    live = evaluate_model(run.model, run.loss_fn, run.test_loader, 10)
    assert (last["val_loss"], last["val_acc"]) == (val.loss, val.accuracy)
    assert (last["test_loss"], last["test_acc"]) == (test.loss, test.accuracy)
    assert live.loss != test.loss  # the live weights would have given other numbers


def test_ema_checkpoint_keys_and_load_and_evaluate_use_them(ema_run, numpy_backend):
    trainer, out = ema_run
    ema = trainer.run.ema
    saved = arrays(out / "last.npz", "ema/")
    state = ema.state()
    assert saved.keys() == {f"ema/{k}" for k in state}
    assert int(saved["ema/num_updates"]) == trainer.progress.global_step == ema.num_updates
    for key, value in state.items():
        assert np.array_equal(saved[f"ema/{key}"], value), key
    model = arrays(out / "last.npz", "model/")
    assert any(not np.array_equal(model[f"model/{k}"], v) for k, v in state.items() if k != "num_updates")
    # gpucnn.load gives the averaged weights, not the live ones
    loaded = gpucnn.load(out / "last.npz", device="cpu").model.state_dict()
    for key, value in loaded.items():
        assert np.array_equal(value, state[key]), key
    # gpucnn evaluate prints the averaged weights' test numbers
    with ema.averaged():
        want = evaluate_model(trainer.model, trainer.loss_fn, trainer.test_loader, 10)
    result = CliRunner().invoke(cli, ["evaluate", str(out / "last.npz"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"test loss {want.loss:.4f}  accuracy {100 * want.accuracy:.2f}%" in result.output


RESUME = ["training.epochs=2", "data.batch_size=32", "schedule.warmup_epochs=0.5", 'optimizer.name="adam"',
          "optimizer.lr=0.002", "optimizer.weight_decay=0.01", "optimizer.amsgrad=true",
          "training.ema={decay = 0.95, warmup = 1.0}", "data.augment.flip=true", "data.augment.crop_padding=2",
          'model.layers[8]={type = "dropout", p = 0.25}']


@pytest.mark.parametrize("where", ["mid-epoch", "end of epoch 1"])
def test_adam_with_ema_interrupted_and_resumed_equals_uninterrupted(tmp_path, digits, where):
    config = digits_config(*RESUME)
    data = with_val(config, digits)
    steps = len(build_run(config, data).train_loader)
    stop_at = steps // 2 if where == "mid-epoch" else steps
    full, _ = fit(config, data, tmp_path / "full")
    _, part = fit(config, data, tmp_path / "part",
                  on_step=lambda t: t.progress.global_step == stop_at and t.request_stop())
    assert part.status == "interrupted"
    ckpt = load_checkpoint(tmp_path / "part" / "last.npz")
    assert int(ckpt.ema_state["num_updates"]) == stop_at
    resumed, result = fit(ckpt.config, data, tmp_path / "part", checkpoint=ckpt)
    assert result.status == "completed"
    for a, b in ((full.model.state_dict(), resumed.model.state_dict()),
                 (full.optimizer.state_dict(), resumed.optimizer.state_dict()),
                 (full.run.ema.state(), resumed.run.ema.state())):
        assert a.keys() == b.keys() and a
        for key in a:
            assert np.array_equal(a[key], b[key]), key
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s", "time")} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "full")) == strip(rows(tmp_path / "part"))


# --------------------------------------------------------------------------- AdamW from the config
def test_adamw_from_the_config_matches_torch_with_groups(digits):
    torch = pytest.importorskip("torch")
    config = digits_config(
        'optimizer.name="adamw"', "optimizer.lr=0.01", "optimizer.weight_decay=0.05", "optimizer.betas=[0.8, 0.99]",
        "optimizer.eps=1e-6", "optimizer.amsgrad=true",
        'optimizer.groups=[{kind = "bias", lr_scale = 2.0}, {layer = "dense", weight_decay = 0.2, lr_scale = 0.5}]',
        'schedule.name="constant"')
    run = build_run(config, with_val(config, digits))
    assert type(run.optimizer) is optim.AdamW
    # by hand from the groups: biases lr x2 and no decay (bias default); dense weights lr x0.5, decay 0.2
    settings = {}
    for path, layer in run.model.named_layers():
        for name in layer.params:
            if name == "b":
                settings[(path, name)] = (0.02, 0.0)
            elif type(layer).__name__ == "Dense":
                settings[(path, name)] = (0.005, 0.2)
            else:
                settings[(path, name)] = (0.01, 0.05)
    assert {p for p, _ in settings} == {1, 4, 7, 9}
    params = {key: torch.tensor(np.array(dict(run.model.named_layers())[key[0]].params[key[1]]), requires_grad=True)
              for key in settings}
    reference = torch.optim.AdamW([{"params": [params[k]], "lr": lr, "weight_decay": wd}
                                   for k, (lr, wd) in settings.items()], betas=(0.8, 0.99), eps=1e-6, amsgrad=True)
    run.train_loader.set_epoch(0)
    layers = dict(run.model.named_layers())
    for step, (x, y) in zip(range(6), run.train_loader):
        run.loss_fn.forward(run.model.forward(x, training=True), y)
        run.model.backward(run.loss_fn.backward())
        for (path, name), tensor in params.items():
            tensor.grad = torch.tensor(np.array(layers[path].grads[name]))
        run.optimizer.lr = run.schedule(step)
        run.optimizer.step()
        reference.step()
        for (path, name), tensor in params.items():
            np.testing.assert_allclose(layers[path].params[name], tensor.detach().numpy(), rtol=2e-5, atol=2e-6,
                                       err_msg=f"step {step} {path}.{name}")


# --------------------------------------------------------------------------- cifar10-fast --epochs 1
def test_cifar10_fast_one_epoch_validates_and_warms_up_23_percent(digits):
    config = validate_config(apply_overrides(load_config("cifar10-fast"), ["training.epochs=1"]))
    assert config["schedule"]["warmup_fraction"] == 0.23 and config["schedule"]["warmup_epochs"] == 0.0
    x = np.repeat(digits.x_train[:1100], 1, axis=0)  # 1100 train images: 990 after the split, 30 batches of 32
    small = Dataset("tiny", x, digits.y_train[:1100], digits.x_test[:50], digits.y_test[:50], digits.classes)
    config["data"]["batch_size"] = 32
    config["model"]["layers"][0]["images"] = 64
    run = build_run(config, with_val(config, small))
    s = run.schedule
    steps = len(run.train_loader)
    assert s.total_steps == steps and s.warmup_steps == round(0.23 * steps) and not s.warmup_clamped
    peak, w = 1.5, s.warmup_steps
    assert s(0) == pytest.approx(0.2 * peak)
    assert s(w // 2) == pytest.approx(peak * (0.2 + 0.8 * (w // 2) / w))
    assert s(w) == pytest.approx(peak)
    assert s(steps) == pytest.approx(0.105)
