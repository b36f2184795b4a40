"""Issue 13: nothing lost, nothing cryptic.

Run directories (existing --out, older checkpoints, disk full, unwritable --out), damaged
checkpoints through every command that reads one, impossible data and config settings,
host out-of-memory, offline downloads, backend selection honesty, empty batches on every
layer and backend, array-likes and 0-d values. kill -9 is in test_kill_points.py; SIGTERM /
SIGHUP in test_resume.py (test_stop_signals_save_last_and_exit_128_plus_signal).
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gpucnn import backend as backend_module
from gpucnn import layers, losses, optim
from gpucnn.checkpoint import load_checkpoint
from gpucnn.cli import cli
from gpucnn.config import apply_overrides, load_config, validate_config
from gpucnn.config_schema import SCHEMA
from gpucnn.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--device", "cpu", "--batch-size", "256", "--set", "data.val_fraction=0.1", "--set", "training.curves=false"]
DOUBLED = re.compile(r"\b(\w+) \1\b", re.IGNORECASE)


def invoke(args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def error_line(result) -> str:
    """The single ``gpucnn: error:`` line of a failed command (asserting it is one line, no traceback)."""
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("gpucnn: error:")]
    assert len(errors) == 1, result.output
    assert result.output.rstrip().endswith(errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A digits run of 2 epochs, and a copy of its last.npz after epoch 1."""
    root = tmp_path_factory.mktemp("robust")
    out = root / "run"
    result = invoke(["train", "--config", "digits", "--epochs", "1", "--out", out, *FAST])
    assert result.exit_code == 0, result.output
    shutil.copy(out / "last.npz", root / "epoch1.npz")
    result = invoke(["train", "--resume", out / "last.npz", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """A private copy of the 2-epoch run (tests may damage it)."""
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    return out


def epochs_in(out: Path) -> list[int]:
    import json

    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def no_data_load(monkeypatch):
    """Make loading a dataset a test failure: errors about --out must come before it."""
    def fail(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the --out check")

    monkeypatch.setattr("gpucnn.cli._load_dataset", fail)


# ---------------------------------------------------------------- 1. existing --out

def test_train_into_an_existing_run_refuses_and_names_the_ways_out(run_copy, monkeypatch):
    before = {name: (run_copy / name).read_bytes() for name in ("metrics.jsonl", "last.npz", "best.npz")}
    no_data_load(monkeypatch)
    result = invoke(["train", "--config", "digits", "--epochs", "1", "--out", run_copy, *FAST])
    assert result.exit_code == 1
    line = error_line(result)
    assert f"--resume {run_copy / 'last.npz'}" in line and "a new --out" in line and "--overwrite" in line
    assert {name: (run_copy / name).read_bytes() for name in before} == before


def test_overwrite_replaces_the_run_and_its_old_metrics_rows(run_copy):
    assert epochs_in(run_copy) == [1, 2]
    result = invoke(["train", "--config", "digits", "--epochs", "1", "--out", run_copy, "--overwrite", *FAST])
    assert result.exit_code == 0, result.output
    assert epochs_in(run_copy) == [1]  # epoch 2 of the old run is gone, not mixed in
    assert load_checkpoint(run_copy / "last.npz").progress.epoch == 1
    assert load_checkpoint(run_copy / "best.npz").progress.epoch == 1


def test_resume_from_an_older_checkpoint_refuses_without_overwrite(run_copy, run_dir, monkeypatch):
    """best.npz from epoch 1 while last.npz is from epoch 2: resuming it would drop epoch 2."""
    shutil.copy(run_dir.parent / "epoch1.npz", run_copy / "best.npz")
    last = (run_copy / "last.npz").read_bytes()
    rows = (run_copy / "metrics.jsonl").read_bytes()
    no_data_load(monkeypatch)
    result = invoke(["train", "--resume", run_copy / "best.npz", "--epochs", "3"])
    assert result.exit_code == 1
    line = error_line(result)
    assert "epoch 1" in line and "epoch 2" in line and f"resume from {run_copy / 'last.npz'}" in line
    assert "--overwrite" in line
    assert (run_copy / "last.npz").read_bytes() == last and (run_copy / "metrics.jsonl").read_bytes() == rows


def test_resume_from_an_older_checkpoint_with_overwrite_restarts_from_it(run_copy, run_dir):
    shutil.copy(run_dir.parent / "epoch1.npz", run_copy / "best.npz")
    result = invoke(["train", "--resume", run_copy / "best.npz", "--epochs", "2", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert epochs_in(run_copy) == [1, 2]  # epoch 2 once: the new one replaced the old row
    assert load_checkpoint(run_copy / "last.npz").progress.epoch == 2


def test_metrics_after_a_resume_hold_each_epoch_once_in_order(run_copy):
    result = invoke(["train", "--resume", run_copy / "last.npz", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert epochs_in(run_copy) == [1, 2, 3]
    assert [r["epoch"] for r in load_checkpoint(run_copy / "last.npz").history] == [1, 2, 3]


def test_a_folder_without_run_files_may_be_reused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text("# left by a run killed before its first checkpoint\n")
    (out / ".last.npz.abc123.tmp").write_bytes(b"half a checkpoint")
    result = invoke(["train", "--config", "digits", "--epochs", "1", "--out", out, *FAST])
    assert result.exit_code == 0, result.output
    assert epochs_in(out) == [1] and not (out / ".last.npz.abc123.tmp").exists()


# ---------------------------------------------------------------- 4. disk full, unwritable --out

def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(run_copy, monkeypatch):
    before = (run_copy / "last.npz").read_bytes()
    import gpucnn.checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gpucnn.checkpoint.np, "savez", full)
    result = invoke(["train", "--resume", run_copy / "last.npz", "--epochs", "3"])
    assert result.exit_code == 1
    line = error_line(result)
    assert f"cannot write {run_copy / 'last.npz'}: No space left on device" in line
    assert "previous checkpoint there is intact" in line
    assert (run_copy / "last.npz").read_bytes() == before
    assert not [p.name for p in run_copy.iterdir() if p.name.startswith(".")]


def _mount_tmpfs(where: Path, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes at ``where``; None on success, else why not."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"mount -t tmpfs failed: {done.stderr.strip()}"


def test_disk_full_on_a_real_tiny_tmpfs(run_dir, tmp_path):
    size = (run_dir / "last.npz").stat().st_size
    disk = tmp_path / "disk"
    # room for the run's files (last, best, metrics, config) and a little, not for a new checkpoint
    reason = _mount_tmpfs(disk, 2 * size + size // 2)
    if reason:
        pytest.skip(reason)
    try:
        out = disk / "run"
        shutil.copytree(run_dir, out)
        before = (out / "last.npz").read_bytes()
        result = invoke(["train", "--resume", out / "last.npz", "--epochs", "3"])
        assert result.exit_code == 1
        line = error_line(result)
        assert "No space left on device" in line and "intact" in line
        assert (out / "last.npz").read_bytes() == before
        assert load_checkpoint(out / "last.npz").progress.epoch == 2
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_out_under_a_regular_file_fails_before_loading_data(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("not a folder")
    no_data_load(monkeypatch)
    result = invoke(["train", "--config", "digits", "--out", tmp_path / "afile" / "run", *FAST])
    assert result.exit_code == 1
    assert error_line(result) == f"gpucnn: error: --out {tmp_path / 'afile' / 'run'}: cannot create it (Not a directory)"


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 555 does not stop root from writing "
                                                "(the injected PermissionError below covers the message)")
def test_out_in_a_read_only_folder_fails_before_loading_data(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    no_data_load(monkeypatch)
    try:
        result = invoke(["train", "--config", "digits", "--out", locked / "run", *FAST])
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 1
    assert "Permission denied" in error_line(result)


def test_unwritable_out_injected_fails_before_loading_data(tmp_path, monkeypatch):
    """What a read-only folder does for a non-root user, injected so that it runs as root too."""
    target = tmp_path / "locked" / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    no_data_load(monkeypatch)
    result = invoke(["train", "--config", "digits", "--out", target, *FAST])
    assert result.exit_code == 1
    assert error_line(result) == f"gpucnn: error: --out {target}: cannot create it (Permission denied)"


def test_existing_out_that_is_not_writable_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr("gpucnn.rundir.os.access",
                        lambda path, mode: False if Path(path) == out and mode & os.W_OK else real_access(path, mode))
    no_data_load(monkeypatch)
    result = invoke(["train", "--config", "digits", "--out", out, *FAST])
    assert result.exit_code == 1, result.output
    assert error_line(result) == f"gpucnn: error: --out {out}: the folder is not writable"


# ---------------------------------------------------------------- 5. damaged checkpoints

def _doctor(arrays: dict, change) -> dict:
    arrays = dict(arrays)
    change(arrays)
    return arrays


def _set(key, value):
    return lambda a: a.__setitem__(key, value)


def _drop(key):
    return lambda a: a.pop(key)


def _other_model(arrays):
    """The model of another config (digits with 8 instead of 16 first-conv channels) in a valid file."""
    from gpucnn.build import build_model

    config = validate_config(apply_overrides(load_config("digits"), ["model.layers[1].out_channels=8"]))
    with backend_module.use_backend("numpy"):
        state = build_model(config, (3, 32, 32), 10).state_dict()
    for key in [k for k in arrays if k.startswith(("model/", "optim/"))]:
        del arrays[key]
    arrays.update({f"model/{k}": v for k, v in state.items()})


DOCTORED = {  # name: (change to the arrays of a good checkpoint, what the message must say)
    "missing-array": (_drop("progress/epoch"), "missing progress/epoch"),
    "missing-param": (_drop("model/layers.1.W"), "missing keys ['layers.1.W']"),
    "epoch-float": (_set("progress/epoch", np.float64(1.0)), "progress/epoch must be an integer"),
    "epoch-string": (_set("progress/epoch", np.array("two")), "progress/epoch must be an integer"),
    "param-string": (_set("model/layers.1.W", np.array("weights")), "model/layers.1.W must be a float array"),
    "param-shape": (_set("model/layers.1.W", np.zeros((3, 3), np.float32)), "expected shape (16, 3, 3, 3), got (3, 3)"),
    "param-nan": (_set("model/layers.1.b", np.full(16, np.nan, np.float32)), "model/layers.1.b holds non-finite"),
    "epoch-negative": (_set("progress/epoch", np.int64(-1)), "progress/epoch = -1 is out of range"),
    "best-acc-5": (_set("progress/best_acc", np.float64(5.0)), "progress/best_acc = 5.0 is out of range"),
    "global-step-negative": (_set("progress/global_step", np.int64(-3)), "progress/global_step = -3"),
    "partial-sums": (_set("progress/partial_sums", np.array([1.0, -2.0, 3.0])), "progress/partial_sums"),
    "version": (_set("format/version", np.int64(99)), "format version 99"),
    "config-not-text": (_set("config/toml", np.arange(3)), "config/toml must be a text string"),
    "config-bad-toml": (_set("config/toml", np.array("[[[ model")), "config/toml: invalid TOML"),
    "metrics-bad-json": (_set("metrics/jsonl", np.array('{"epoch": 1}\n{oops')), "metrics/jsonl line 2"),
    "classes-numbers": (_set("data/classes", np.arange(10)), "data/classes must be a non-empty list"),
    "input-shape": (_set("data/input_shape", np.array([1.5])), "data/input_shape must be 3 positive integers"),
    "std-zero": (_set("data/std", np.zeros(3)), "data/std must be positive"),
    "other-model": (_other_model, "does not fit the model of its own config"),
}
RAW = {  # name: (bytes of the file from the good checkpoint's bytes, what the message must say)
    "random-bytes": (lambda good: np.random.default_rng(0).bytes(4000), "not a readable .npz file"),
    "truncated": (lambda good: good[: len(good) // 2], "truncated or corrupt"),
    "empty": (lambda good: b"", "(empty)"),
    "zip-header-only": (lambda good: good[:200], "truncated or corrupt"),
}
COMMANDS = ("train", "evaluate", "predict", "export")


@pytest.fixture(scope="module")
def damaged(run_dir, tmp_path_factory):
    """Every damaged checkpoint of DOCTORED/RAW written once, plus an input image for predict."""
    folder = tmp_path_factory.mktemp("damaged")
    good = run_dir / "last.npz"
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    paths = {}
    for name, (change, _) in DOCTORED.items():
        np.savez(folder / f"{name}.npz", **_doctor(arrays, change))
        paths[name] = folder / f"{name}.npz"
    for name, (make, _) in RAW.items():
        (folder / f"{name}.npz").write_bytes(make(good.read_bytes()))
        paths[name] = folder / f"{name}.npz"
    np.savez(folder / "pickled.npz", a=np.array([{"x": 1}], dtype=object))
    paths["pickled"] = folder / "pickled.npz"
    np.save(folder / "image.npy", np.zeros((1, 3, 32, 32), np.uint8))
    return folder, paths


def _command(command: str, path: Path, folder: Path) -> list:
    return {
        "train": ["train", "--resume", path, "--out", folder / f"out-{path.stem}", "--epochs", "3"],
        "evaluate": ["evaluate", path, "--device", "cpu"],
        "predict": ["predict", path, folder / "image.npy", "--device", "cpu"],
        "export": ["export", path, "-o", folder / f"{path.stem}.onnx"],
    }[command]


CASES = [(name, said) for name, (_, said) in {**DOCTORED, **RAW}.items()] + [("pickled", "pickled (object) arrays")]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name, said", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_checkpoint_is_one_line_naming_file_and_fault(damaged, command, name, said):
    folder, paths = damaged
    result = invoke(_command(command, paths[name], folder))
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert str(paths[name]) in line and said in line
    assert "allow_pickle" not in line and not DOUBLED.search(line), line
    assert not (folder / f"{paths[name].stem}.onnx").exists()


def test_a_step_beyond_the_epoch_is_refused_by_train_naming_the_file(run_dir, tmp_path):
    with np.load(run_dir / "last.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["progress/step_in_epoch"] = np.int64(1000)
    path = tmp_path / "step.npz"
    np.savez(path, **arrays)
    result = invoke(["train", "--resume", path, "--out", tmp_path / "out", "--epochs", "3"])
    assert result.exit_code == 1
    line = error_line(result)
    steps = load_checkpoint(run_dir / "last.npz").history[0]["steps"]  # optimizer steps of one epoch
    assert f"checkpoint {path} stopped at step 1000 of an epoch" in line and f"has {steps} steps" in line
    assert not DOUBLED.search(line)


def test_restore_without_a_path_says_the_checkpoint_once(run_dir):
    """build_run's default path used to print "checkpoint checkpoint does not fit"."""
    from gpucnn.build import build_model
    from gpucnn.checkpoint import CheckpointError, restore

    ckpt = load_checkpoint(run_dir / "last.npz")
    ckpt.path = None
    config = validate_config(apply_overrides(load_config("digits"), ["model.layers[1].out_channels=8"]))
    with backend_module.use_backend("numpy"):
        model = build_model(config, (3, 32, 32), 10)
    with pytest.raises(CheckpointError) as info:
        restore(ckpt, model)
    assert str(info.value).startswith("the checkpoint does not fit") and not DOUBLED.search(str(info.value))


# ---------------------------------------------------------------- 6. data

@pytest.mark.parametrize("mode, said", [("zeros", "must be smaller than the image (32x32)"),
                                        ("reflect", "reflect padding 32 needs images larger than that")])
def test_augmentation_padding_larger_than_the_image_is_a_config_error(mode, said, monkeypatch, tmp_path):
    result = invoke(["train", "--config", "digits", "--out", tmp_path / "run", *FAST,
                     "--set", "data.augment.crop_padding=32", "--set", f'data.augment.padding_mode="{mode}"'])
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith("gpucnn: error: data.augment.crop_padding = 32: ") and said in line


def test_the_largest_reflect_padding_allowed_matches_numpy_pad():
    """crop_padding = size - 1 is the most reflect padding can mirror; it gathers exactly np.pad's pixels."""
    from gpucnn.data.augment import Augment, gather_augmented

    images = np.random.default_rng(1).integers(0, 256, (2, 3, 5, 6), dtype=np.uint8)
    augment = Augment(flip=False, crop_padding=4, padding_mode="reflect")
    augment.check_image_size(5, 6)
    with pytest.raises(ValueError, match="reflect padding 5 needs images larger"):
        Augment(flip=False, crop_padding=5, padding_mode="reflect").check_image_size(5, 6)
    dy, dx = np.array([0, 8]), np.array([8, 3])
    out = gather_augmented(np, images, np.arange(2), np.zeros(2, bool), dy, dx, 4, "reflect")
    padded = np.pad(images, ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    for i in range(2):
        np.testing.assert_array_equal(out[i], padded[i, :, dy[i]:dy[i] + 5, dx[i]:dx[i] + 6])


def test_an_empty_folder_dataset_is_one_line(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split / "cat").mkdir(parents=True)
    result = invoke(["train", "--config", "digits", "--dataset", "folder", "--out", tmp_path / "run", *FAST,
                     "--set", f'data.path="{tmp_path / "images"}"'])
    assert result.exit_code == 1
    assert "has no PNG/JPEG images" in error_line(result)


def test_a_loader_of_zero_images_is_refused_and_augment_draws_nothing():
    from gpucnn.data import Augment, BatchLoader

    with backend_module.use_backend("numpy") as backend:
        with pytest.raises(ValueError, match=r"BatchLoader: x must be non-empty .* got \(0, 3, 8, 8\)"):
            BatchLoader(np.zeros((0, 3, 8, 8), np.uint8), np.zeros(0, np.int64), 4, backend,
                        np.zeros(3), np.ones(3))
    params = Augment(flip=True, crop_padding=2).draw(np.random.default_rng(0), 0)
    assert params.flip.shape == params.dy.shape == params.dx.shape == (0,)


# ---------------------------------------------------------------- 7. config

def test_deeply_nested_toml_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 10000 + "]" * 10000 + "\n")
    result = invoke(["train", "--config", path, "--out", tmp_path / "run"])
    assert result.exit_code == 2
    assert error_line(result).startswith(f"gpucnn: error: {path}: invalid TOML: arrays or tables nested too deeply")
    path.write_text("x = " + "[" * 100 + "]" * 100 + "\n")  # parses, but no config nests like that
    result = invoke(["train", "--config", path, "--out", tmp_path / "run"])
    assert result.exit_code == 2 and f"{path}: arrays or tables nested more than 32 levels" in error_line(result)


def test_deeply_nested_set_value_is_one_line(tmp_path):
    result = invoke(["train", "--config", "digits", "--out", tmp_path / "run",
                     "--set", "optimizer.lr=" + "[" * 5000 + "]" * 5000])
    assert result.exit_code == 2 and "arrays nested too deeply" in error_line(result)


def test_malformed_toml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optimizer]\nlr = 0.1\nmomentum = = 0.9\n")
    result = invoke(["train", "--config", path, "--out", tmp_path / "run"])
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith(f"gpucnn: error: {path}: invalid TOML: ") and "line 3" in line


def _digits_with(tmp_path, section: str, key: str, literal: str) -> Path:
    """configs/digits.toml with ``key = literal`` in ``[section]`` (replacing the key if it is there)."""
    text = (ROOT / "configs" / "digits.toml").read_text()
    head, found, rest = text.partition(f"[{section}]\n")
    if not found:
        text += f"\n[{section}]\n{key} = {literal}\n"
    elif re.search(rf"^{key} = .*$", rest.split("\n[", 1)[0], flags=re.M):
        text = head + found + re.sub(rf"^{key} = .*$", f"{key} = {literal}", rest, count=1, flags=re.M)
    else:
        text = head + found + f"{key} = {literal}\n" + rest
    path = tmp_path / "nonfinite.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("section, key, literal", [
    ("optimizer", "lr", "nan"), ("optimizer", "lr", "inf"), ("optimizer", "momentum", "nan"),
    ("optimizer", "weight_decay", "inf"), ("optimizer", "eps", "-inf"), ("loss", "label_smoothing", "nan"),
])
def test_non_finite_numbers_in_toml_are_refused(tmp_path, section, key, literal):
    path = _digits_with(tmp_path, section, key, literal)
    result = invoke(["train", "--config", path, "--out", tmp_path / "run"])
    assert result.exit_code == 2
    value = {"nan": "nan", "inf": "inf", "-inf": "-inf"}[literal]
    assert error_line(result) == f"gpucnn: error: {section}.{key}: expected a finite number, got {value}"


@pytest.mark.parametrize("override", ["optimizer.lr=nan", "optimizer.momentum=inf", "optimizer.weight_decay=nan",
                                      "model.layers[1].out_channels=nan"])
def test_non_finite_numbers_in_set_are_refused(tmp_path, override):
    result = invoke(["train", "--config", "digits", "--out", tmp_path / "run", "--set", override])
    assert result.exit_code == 2
    assert error_line(result).startswith(f"gpucnn: error: {override.split('=')[0]}: expected ")


def test_bn_eps_nan_in_a_layer_entry_is_refused(tmp_path):
    config = load_config("digits")
    config["model"]["layers"].insert(2, {"type": "batchnorm2d", "eps": float("nan")})
    with pytest.raises(ConfigError, match=r"model\.layers\[2\]\.eps: expected a finite number, got nan"):
        validate_config(config)


def _numeric_fields(fields: dict, prefix: str):
    """(dotted key, minimum, maximum, strict-low, is-int) of every number/integer Field, through tables."""
    for name, field in fields.items():
        check = field.check
        cells = dict(zip(check.__code__.co_freevars, (c.cell_contents for c in check.__closure__ or ())))
        if "fields" in cells and check.__qualname__.startswith("table."):
            yield from _numeric_fields(cells["fields"], f"{prefix}{name}.")
        elif check.__qualname__ in ("number.<locals>.check", "integer.<locals>.check"):
            yield (f"{prefix}{name}", cells.get("minimum"), cells.get("maximum"), cells.get("above", False),
                   check.__qualname__.startswith("integer"))


NUMERIC = [entry for section, fields in SCHEMA.items() for entry in _numeric_fields(fields, f"{section}.")]


def test_the_schema_walk_finds_the_numeric_settings():
    keys = {entry[0] for entry in NUMERIC}
    assert {"optimizer.lr", "optimizer.momentum", "optimizer.weight_decay", "optimizer.eps", "data.batch_size",
            "training.epochs", "training.ema.decay", "data.augment.crop_padding",
            "training.early_stopping.patience", "schedule.gamma"} <= keys


@pytest.mark.parametrize("key, minimum, maximum, strict, is_int", NUMERIC, ids=[e[0] for e in NUMERIC])
def test_every_numeric_setting_is_bounded_and_refuses_nan_and_too_small(key, minimum, maximum, strict, is_int):
    assert minimum is not None, f"{key} has no lower bound"
    base = load_config("digits")
    below = minimum - 1 if is_int else (minimum if strict else minimum - 0.5)
    for value in ("nan", repr(below)) + ((repr(maximum + 1),) if maximum is not None else ()):
        with pytest.raises(ConfigError) as info:
            validate_config(apply_overrides(base, [f"{key}={value}"]))
        assert str(info.value).startswith(f"{key}: expected "), str(info.value)
    # the smallest allowed value passes its own check (another key may still object to the pair)
    try:
        validate_config(apply_overrides(base, [f"{key}={minimum if not strict else minimum + 0.5}"]))
    except ConfigError as exc:
        assert not str(exc).startswith(f"{key}: expected"), str(exc)


def _sgd(**kw):
    from gpucnn.model import Sequential

    with backend_module.use_backend("numpy"):
        return optim.SGD(Sequential([layers.Dense(2, 2)]), **kw)


@pytest.mark.parametrize("make, said", [
    (lambda: _sgd(lr=math.nan), "SGD: lr must be a finite number >= 0, got nan"),
    (lambda: _sgd(lr=0.1, momentum=math.inf), "SGD: momentum must be in [0, 1), got inf"),
    (lambda: _sgd(lr=0.1, weight_decay=math.nan), "SGD: weight_decay must be a finite number >= 0, got nan"),
    (lambda: layers.BatchNorm2D(3, eps=0), "BatchNorm2D: eps must be a finite number > 0, got 0"),
    (lambda: layers.BatchNorm2D(3, eps=math.nan), "BatchNorm2D: eps must be a finite number > 0, got nan"),
    (lambda: layers.Scale(math.nan), "Scale: factor must be a finite number, got nan"),
    (lambda: layers.Conv2D(3, 4, 0), "Conv2D kernel_size must be >= 1, got 0"),
    (lambda: layers.Conv2D(3, 4, 3, stride=0), "Conv2D stride must be >= 1, got 0"),
    (lambda: layers.Conv2D(0, 4, 3), "Conv2D: in_channels must be an int >= 1, got 0"),
    (lambda: layers.Conv2D(3, 2.5, 3), "Conv2D: out_channels must be an int >= 1, got 2.5"),
    (lambda: layers.Dense(2.5, 3), "Dense: in_features must be an int >= 1, got 2.5"),
    (lambda: layers.Dense(4, 0), "Dense: out_features must be an int >= 1, got 0"),
    (lambda: layers.MaxPool2D(0), "MaxPool2D kernel_size must be >= 1, got 0"),
    (lambda: layers.AvgPool2D(2, padding=5), "AvgPool2D: padding (5, 5) must be at most half the kernel"),
    (lambda: layers.Dropout(math.nan), "Dropout: p must be in [0, 1), got nan"),
])
def test_constructors_refuse_what_the_config_refuses(make, said, numpy_backend):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(said), str(info.value)


# ---------------------------------------------------------------- 8. host memory

def test_host_out_of_memory_names_the_batch_size_and_how_to_lower_it(tmp_path, monkeypatch):
    def exhausted(self, x, training=True):
        raise MemoryError("Unable to allocate 12.0 GiB for an array")

    monkeypatch.setattr(layers.Dense, "forward", exhausted)
    result = invoke(["train", "--config", "digits", "--epochs", "1", "--out", tmp_path / "run", *FAST])
    assert result.exit_code == 1
    line = error_line(result)
    assert "ran out of memory at batch size 256 (MemoryError)" in line and "--batch-size 128" in line


# ---------------------------------------------------------------- 9. offline

def test_train_without_network_says_how_to_proceed_offline(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused, as with no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GPUCNN_CIFAR10_URL", f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz")
    result = invoke(["train", "--config", "lenet5", "--device", "cpu", "--data-dir", tmp_path / "data",
                     "--out", tmp_path / "run"])
    assert result.exit_code == 1
    line = error_line(result)
    assert f"could not download http://127.0.0.1:{port}/" in line
    assert "--data-dir DIR" in line and "--config digits" in line


# ---------------------------------------------------------------- 10. backend honesty

@pytest.fixture
def reset_backend():
    previous = backend_module._current
    yield
    backend_module._current = previous


@pytest.mark.parametrize("env, option, config_device, expected", [
    ("emulated", None, "cpu", "emulated"),   # the variable beats the config
    ("emulated", "cpu", "cpu", "numpy"),     # --device beats the variable
    (None, None, "emulated", "emulated"),    # the config when neither is given
    ("numpy", None, "emulated", "numpy"),
])
def test_train_honours_device_then_gpucnn_backend_then_config(tmp_path, monkeypatch, reset_backend, env, option,
                                                              config_device, expected):
    from gpucnn.train import FitResult, Trainer

    seen = {}

    def fit(self):  # the device line is printed before fit; no need to train on the emulator
        seen["layer_backend"] = self.model.layers[1].backend.name
        return FitResult("completed", 0, -1.0, None)

    monkeypatch.setattr(Trainer, "fit", fit)
    monkeypatch.delenv("GPUCNN_BACKEND", raising=False)
    if env:
        monkeypatch.setenv("GPUCNN_BACKEND", env)
    args = ["train", "--config", "digits", "--out", tmp_path / "run", "--set", f'training.device="{config_device}"',
            "--set", "training.curves=false"] + (["--device", option] if option else [])
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert f"({expected} backend)" in next(line for line in result.output.splitlines() if line.startswith("device:"))
    assert seen["layer_backend"] == expected


def test_evaluate_honours_gpucnn_backend(run_dir, monkeypatch, reset_backend):
    import gpucnn.evaluate
    from gpucnn.evaluate import EvalResult

    seen = {}

    def evaluate_model(model, loss_fn, loader, num_classes, tta=False):
        seen["backend"] = model.layers[1].backend.name
        return EvalResult(0.5, 0.75, np.eye(num_classes, dtype=np.int64))

    monkeypatch.setattr(gpucnn.evaluate, "evaluate_model", evaluate_model)
    monkeypatch.setenv("GPUCNN_BACKEND", "emulated")
    result = invoke(["evaluate", run_dir / "last.npz"])
    assert result.exit_code == 0, result.output
    assert "device: CPU (CUDA emulation)" in result.output.splitlines()[0] and seen["backend"] == "emulated"


@pytest.mark.skipif(backend_module.cuda_unavailable_reason() is None, reason="a GPU is usable here")
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_gpucnn_backend_cuda_without_a_gpu_is_an_error_not_a_cpu_run(run_dir, tmp_path, monkeypatch,
                                                                     reset_backend, command):
    monkeypatch.setenv("GPUCNN_BACKEND", "cuda")
    args = (["train", "--config", "digits", "--out", tmp_path / "run", *FAST[2:]] if command == "train"
            else ["evaluate", run_dir / "last.npz"])
    result = invoke(args)
    assert result.exit_code == 1
    assert error_line(result).startswith("gpucnn: error: cuda backend unavailable: ")
    assert not (tmp_path / "run" / "last.npz").exists()


def _fake_cupy(error: str | None, count: int = 1):
    def get_device_count():
        if error:
            raise RuntimeError(error)
        return count

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


INSUFFICIENT = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"


def test_no_driver_and_driver_too_old_are_told_apart(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(INSUFFICIENT))
    monkeypatch.setattr(backend_module, "driver_cuda_version", lambda: None)
    assert backend_module.cuda_unavailable_reason().startswith("no NVIDIA driver is installed (libcuda.so.1")
    monkeypatch.setattr(backend_module, "driver_cuda_version", lambda: (11, 4))
    reason = backend_module.cuda_unavailable_reason()
    assert reason.startswith("the NVIDIA driver is too old for this CuPy build: it supports CUDA 11.4")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy("cudaErrorNoDevice: no CUDA-capable device is detected"))
    assert backend_module.cuda_unavailable_reason() == "no CUDA device is visible (cudaErrorNoDevice)"
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(None, count=0))
    assert backend_module.cuda_unavailable_reason() == "no CUDA device is visible"


def test_driver_version_is_read_through_libcuda():
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        assert backend_module.driver_cuda_version() is None  # no driver on this machine
    else:
        major, minor = backend_module.driver_cuda_version()
        assert major >= 9 and 0 <= minor < 100


def test_cuda_extras_pull_in_nvrtc():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {extra: {re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0] for req in extras[extra]}
             for extra in ("cuda12", "cuda13")}
    assert {"cupy-cuda12x", "nvidia-cuda-nvrtc-cu12"} <= names["cuda12"]
    assert {"cupy-cuda13x", "nvidia-cuda-nvrtc"} <= names["cuda13"]


def test_nvrtc_check_finds_the_cu12_and_cu13_wheels(tmp_path, monkeypatch):
    from gpucnn.cuda import nvrtc_check

    site = tmp_path / "site-packages"
    cu12 = site / "nvidia" / "cuda_nvrtc" / "lib"  # nvidia-cuda-nvrtc-cu12
    cu13 = site / "nvidia" / "cu13" / "lib"       # nvidia-cuda-nvrtc 13
    for folder, names in ((cu12, ["libnvrtc.so.12", "libnvrtc-builtins.so.12.9", "libnvrtc.alt.so.12"]),
                          (cu13, ["libnvrtc.so.13"])):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"")
    monkeypatch.setattr(sys, "path", [str(site)])
    monkeypatch.delenv("GPUCNN_NVRTC", raising=False)
    found = nvrtc_check._candidates()
    assert str(cu12 / "libnvrtc.so.12") in found and str(cu13 / "libnvrtc.so.13") in found
    assert not [f for f in found if "builtins" in f or ".alt." in f]


# ---------------------------------------------------------------- 11. empty batches

def _layer_cases():
    """(name, factory, per-sample input shape) for every layer class gpucnn.layers exports."""
    cases = [
        ("Conv2D", lambda: layers.Conv2D(3, 4, 3, padding=1), (3, 6, 6)),
        ("Conv2D-stride", lambda: layers.Conv2D(3, 4, 3, stride=2, bias=False), (3, 7, 7)),
        ("MaxPool2D", lambda: layers.MaxPool2D(2), (3, 6, 6)),
        ("AvgPool2D", lambda: layers.AvgPool2D(3, stride=2, padding=1), (3, 6, 6)),
        ("GlobalAvgPool2D", lambda: layers.GlobalAvgPool2D(), (3, 6, 6)),
        ("Dense", lambda: layers.Dense(5, 3), (5,)),
        ("Flatten", lambda: layers.Flatten(), (3, 6, 6)),
        ("Dropout", lambda: layers.Dropout(0.5), (3, 6, 6)),
        ("BatchNorm2D", lambda: layers.BatchNorm2D(3), (3, 6, 6)),
        ("Scale", lambda: layers.Scale(0.5), (3, 6, 6)),
        ("SubsamplePad", lambda: layers.SubsamplePad(6), (3, 6, 6)),
        ("Add", lambda: layers.Add([layers.Conv2D(3, 3, 3, padding=1)], [layers.Scale(2.0)]), (3, 6, 6)),
        ("Residual", lambda: layers.Residual([layers.Conv2D(3, 3, 3, padding=1), layers.BatchNorm2D(3),
                                              layers.ReLU()]), (3, 6, 6)),
    ]
    cases += [(cls.__name__, cls, (3, 6, 6)) for cls in layers.ACTIVATION_LAYERS.values()]
    return cases


LAYER_CASES = _layer_cases()


def test_the_empty_batch_cases_cover_every_layer_class():
    exported = {name for name in layers.__all__ if isinstance(getattr(layers, name), type)
                and issubclass(getattr(layers, name), layers.Layer)} - {"Layer", "ActivationLayer"}
    assert exported <= {name.split("-")[0] for name, _, _ in LAYER_CASES}


def _all_grads(layer):
    yield from layer.grads.items()
    for _, child in layer.sublayers():
        yield from _all_grads(child)


def _has_batchnorm(layer) -> bool:
    return isinstance(layer, layers.BatchNorm2D) or any(_has_batchnorm(c) for _, c in layer.sublayers())


@pytest.mark.parametrize("backend_name", ["numpy", "emulated"])
@pytest.mark.parametrize("name, factory, shape", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_an_empty_batch_gives_empty_outputs_and_zero_parameter_gradients(backend_name, name, factory, shape,
                                                                         reset_backend):
    with backend_module.use_backend(backend_name):
        layer = factory()
        x = np.zeros((0, *shape), np.float32)
        expected = (0, *layer.output_shape(shape))
        for training in (False, True):
            if training and _has_batchnorm(layer):
                with pytest.raises(ValueError, match=r"empty batch \(N = 0\) has no batch statistics"):
                    layer.forward(x, training=True)
                continue
            y = layer.forward(x, training=training)
            assert y.shape == expected and y.dtype == np.float32
            if not training and _has_batchnorm(layer):
                continue  # BatchNorm2D's backward is that of a training-mode forward
            for _, grad in _all_grads(layer):
                grad[...] = 7.0  # what uninitialised memory could hold: it must be overwritten
            dx = layer.backward(np.zeros(expected, np.float32))
            assert dx.shape == x.shape
            for key, grad in _all_grads(layer):
                assert np.all(grad == 0), f"{name}.grads[{key!r}] = {grad.ravel()[:4]}..."


@pytest.mark.parametrize("backend_name", ["numpy", "emulated"])
def test_a_whole_model_step_on_an_empty_batch_stops_at_the_loss(backend_name, reset_backend):
    with backend_module.use_backend(backend_name):
        ce, mse = losses.SoftmaxCrossEntropy(), losses.MeanSquaredError()
        with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: the loss of an empty batch \(N = 0\)"):
            ce.forward(np.zeros((0, 10), np.float32), np.zeros(0, np.int64))
        with pytest.raises(ValueError, match=r"MeanSquaredError: the loss of an empty batch \(N = 0\)"):
            mse.forward(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
        # a batch of one still gives the hand-computed mean: log(10) for zero logits
        assert float(ce.forward(np.zeros((1, 10), np.float32), np.zeros(1, np.int64))) == pytest.approx(math.log(10))


def test_an_empty_batch_never_launches_a_zero_sized_grid(reset_backend, monkeypatch):
    """CUDA (and the emulator, test_emulator.py) refuses a zero-sized grid, and skipping one would hand
    back the op's uninitialised output; so layers keep N = 0 away from every reduction and GEMM, and
    only elementwise kernels run (on a grid of at least one block, over no element)."""
    from gpucnn.ops import ACTIVATIONS

    with backend_module.use_backend("emulated") as backend:
        real_launch, launches = backend.ops.launcher.launch, []

        def launch(name, grid, block, args):
            launches.append((name, grid))
            return real_launch(name, grid, block, args)

        monkeypatch.setattr(backend.ops.launcher, "launch", launch)
        for name, factory, shape in LAYER_CASES:
            layer = factory()
            y = layer.forward(np.zeros((0, *shape), np.float32), training=not _has_batchnorm(layer))
            if not _has_batchnorm(layer):
                layer.backward(np.zeros(y.shape, np.float32))
        elementwise = {f"{a}_{d}" for a in [*(act.name for act in ACTIVATIONS), "dropout"] for d in ("forward", "backward")}
        assert {name for name, _ in launches} <= elementwise
        assert all(0 not in ((grid,) if isinstance(grid, int) else tuple(grid)) for _, grid in launches)
        launches.clear()
        layers.Conv2D(3, 4, 3).forward(np.zeros((1, 3, 5, 5), np.float32))
        assert launches  # the recorder records: a batch of one launches the conv kernels


# ---------------------------------------------------------------- 12. lists and 0-d values

@pytest.mark.parametrize("factory, x", [
    (lambda: layers.Conv2D(1, 1, 1), [[[[1.0]]]]),
    (lambda: layers.Dense(2, 1), [[1.0, 2.0]]),
    (lambda: layers.ReLU(), [[1.0, -1.0]]),
    (lambda: layers.Flatten(), [[[1.0]]]),
    (lambda: layers.MaxPool2D(1), [[[[1.0]]]]),
])
def test_layers_refuse_lists_with_a_type_error_saying_how_to_convert(factory, x, numpy_backend):
    layer = factory()
    with pytest.raises(TypeError) as info:
        layer.forward(x)
    assert str(info.value) == (f"{layer.name}: expected an array of the numpy backend, got list; "
                               "convert it first, e.g. np.asarray(x, dtype=np.float32)")
    y = layer.forward(np.asarray(x, dtype=np.float32))  # what the message says works
    assert y.shape[0] == 1


def test_to_host_handles_0d_arrays_numpy_scalars_and_device_arrays(numpy_backend):
    backend = backend_module.get_backend()
    for value in (np.float64(1.5), np.array(1.5), np.float32(1.5), 1.5):
        host = backend.to_host(value)
        assert isinstance(host, np.ndarray) and host.shape == () and float(host) == 1.5
    assert backend.to_host(np.zeros(3, np.float32)).shape == (3,)

    class DeviceArray:  # a CuPy array's host copy is .get()
        def get(self):
            return np.array(2.5)

    assert float(backend.to_host(DeviceArray())) == 2.5
    loss = losses.SoftmaxCrossEntropy().forward(np.zeros((2, 4), np.float32), np.array([0, 1]))
    assert float(backend.to_host(loss)) == pytest.approx(math.log(4))
