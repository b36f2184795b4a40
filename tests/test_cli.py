"""The command group: option handling, bad configs, evaluate, info, bench registration."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from gpucnn import cli as cli_module
from gpucnn.cli import cli


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    result = CliRunner().invoke(cli, ["train", "--config", "digits", "--device", "cpu", "--epochs", "3",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def flipped_run(tmp_path_factory):
    """A digits run trained with random flips, so mirror-TTA is allowed for it."""
    out = tmp_path_factory.mktemp("flipped")
    result = CliRunner().invoke(cli, ["train", "--config", "digits", "--device", "cpu", "--epochs", "1",
                                      "--set", "data.augment.flip=true", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    "args, key",
    [
        (["--set", "optimizer.lr=-0.1"], "optimizer.lr: expected a number > 0, got -0.1"),
        (["--lr", "-1"], "optimizer.lr: expected a number > 0, got -1.0"),
        (["--set", "optimizer.momentun=0.5"], "optimizer.momentun: unknown key (did you mean 'momentum'?)"),
        (["--set", "data.batch_size=many"], "data.batch_size: expected an integer >= 1, got 'many'"),
        (["--set", "model.layers[1].kernel_size=11"], "model.layers[1].kernel_size: got 11, but the conv2d input "
                                                      "at this depth is 8x8 (padded to 10x10)"),
        (["--set", "model.layers[9].out_features=3"], "model.layers[9].out_features: got 3, but the dataset has 10"),
        (["--set", "lr=0.1"], "lr: unknown section"),
        (["--set", "optimizer.lr"], "--set 'optimizer.lr': expected key=value"),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path, args, key):
    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["train", "--config", "digits", "--device", "cpu", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert key in result.output
    assert "Traceback" not in result.output
    assert not (out / "last.npz").exists()


def test_bad_config_file_and_unknown_name(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nlayers = 3\n")
    result = runner.invoke(cli, ["train", "--config", str(bad)])
    assert result.exit_code == 2 and f"{bad}: invalid TOML" in result.output
    bad.write_text('[model]\nlayers = [{type = "conv2d", out_channels = 4}]\n')
    result = runner.invoke(cli, ["train", "--config", str(bad)])
    assert result.exit_code == 2 and "model.layers[0].kernel_size: missing" in result.output
    result = runner.invoke(cli, ["train", "--config", "resnet9000"])
    assert result.exit_code == 2 and "no shipped config by that name (shipped: cifar10-fast, cifar10-vgg, digits, lenet5" in result.output


def test_usage_errors_exit_2(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["train", "--epochs", "0"]).exit_code == 2
    assert runner.invoke(cli, ["train", "--device", "tpu"]).exit_code == 2
    assert runner.invoke(cli, ["nonsense"]).exit_code == 2


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    from gpucnn.backend import cuda_unavailable_reason

    if cuda_unavailable_reason() is None:
        pytest.skip("a GPU is present")
    result = CliRunner().invoke(cli, ["train", "--config", "digits", "--device", "cuda", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "cuda backend unavailable" in result.output
    assert "Traceback" not in result.output


def test_evaluate_prints_loss_accuracy_and_per_class_table(digits_run):
    import json

    records = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    best = max(r["test_acc"] for r in records)
    result = CliRunner().invoke(cli, ["evaluate", str(digits_run / "best.npz"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"accuracy {100 * best:.2f}%" in result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("class"))
    rows = lines[header + 2: header + 12]
    assert [row.split()[0] for row in rows] == [str(d) for d in range(10)]
    images = [int(row.split()[1]) for row in rows]
    correct = [int(row.split()[2]) for row in rows]
    assert sum(images) == 359 and round(100 * sum(correct) / 359, 2) == round(100 * best, 2)
    tta = CliRunner().invoke(cli, ["evaluate", str(digits_run / "best.npz"), "--device", "cpu", "--tta",
                                   "--batch-size", "100"])
    # digits trains without flips: a mirrored digit is another digit, so mirror-TTA is refused
    assert tta.exit_code == 2 and "trained without flips" in tta.output and "Traceback" not in tta.output


def test_evaluate_missing_checkpoint():
    result = CliRunner().invoke(cli, ["evaluate", "no/such/file.npz"])
    assert result.exit_code == 1 and "no such file" in result.output


def test_written_checkpoints_load_without_pickle(digits_run):
    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.config import tomllib

    with np.load(digits_run / "last.npz", allow_pickle=False) as f:
        text = str(f["config/toml"])
        assert int(f["progress/epoch"]) == 3
    assert tomllib.loads(text)["data"]["dataset"] == "digits"
    assert load_checkpoint(digits_run / "last.npz").config["training"]["epochs"] == 3


def test_info_runs_and_every_kernel_compiles():
    from gpucnn.cuda import nvrtc_check, sources

    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    for field in ("gpucnn 0.1.0", "python ", "numpy ", "cupy ", "backend (auto):", "kernels:"):
        assert field in result.output
    kernels_line = next(line for line in result.output.splitlines() if line.startswith("kernels:"))
    if nvrtc_check.load_nvrtc() is None:
        assert "libnvrtc not found" in kernels_line
    else:  # the test extra installs NVRTC: then every shipped kernel file must compile
        assert f"all {len(sources.read_sources())} kernel files compile with NVRTC" in kernels_line, kernels_line


def test_bench_is_imported_only_when_used():
    code = ("import sys; from click.testing import CliRunner; from gpucnn.cli import cli; "
            "r = CliRunner().invoke(cli, ['train', '--help']); assert r.exit_code == 0, r.output; "
            "print('gpucnn.bench.command' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert cli_module.cli.get_command(None, "bench").name == "bench"


def test_python_dash_m_and_version():
    proc = subprocess.run([sys.executable, "-m", "gpucnn", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "0.1.0" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "gpucnn", "train", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    for option in ("--config", "--data-dir", "--device", "--epochs", "--batch-size", "--lr", "--seed", "--out",
                   "--resume", "--set"):
        assert option in proc.stdout


def test_evaluate_tta_is_the_mirror_averaged_prediction(flipped_run, numpy_backend):
    from gpucnn.build import build_model
    from gpucnn.checkpoint import load_checkpoint, restore
    from gpucnn.data import load_dataset

    ckpt = load_checkpoint(flipped_run / "best.npz")
    data = load_dataset("digits")
    model = build_model(ckpt.config, data.image_shape, 10)
    restore(ckpt, model)
    mean, std = ckpt.mean.reshape(1, 3, 1, 1), ckpt.std.reshape(1, 3, 1, 1)
    x = ((data.x_test / 255.0 - mean) / std).astype(np.float32)
    logits = 0.5 * (model.forward(x, training=False) + model.forward(np.ascontiguousarray(x[..., ::-1]),
                                                                     training=False))
    expected = float((logits.argmax(1) == data.y_test).mean())
    result = CliRunner().invoke(cli, ["evaluate", str(flipped_run / "best.npz"), "--device", "cpu", "--tta"])
    assert result.exit_code == 0, result.output
    assert f"accuracy {100 * expected:.2f}%" in result.output
