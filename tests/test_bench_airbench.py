"""The airbench race (gpucnn.bench.airbench): the data files airbench's loader reads, and the
one-line refusal on a machine without a GPU. The race itself is a ``gpu`` test."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpucnn.bench import airbench
from gpucnn.bench.torch_peers import load_torch

ROOT = Path(__file__).resolve().parents[1]
torch = load_torch()
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def test_synthetic_cifar_shapes_and_ranges():
    x, y, xt, yt = airbench.synthetic_cifar(7, 3, seed=1)
    assert x.shape == (7, 3, 32, 32) and x.dtype == np.uint8 and xt.shape == (3, 3, 32, 32)
    assert y.dtype == np.int64 and y.min() >= 0 and y.max() < 10 and yt.shape == (3,)
    np.testing.assert_array_equal(airbench.synthetic_cifar(7, 3, seed=1)[0], x)  # seeded


@needs_torch
def test_written_files_read_back_as_airbench_reads_them(tmp_path):
    x, y, xt, yt = airbench.synthetic_cifar(5, 2, seed=2)
    folder = airbench.write_cifar_files(tmp_path, x, y, xt, yt, torch)
    assert folder == tmp_path / "cifar10"
    assert sorted(p.name for p in folder.iterdir()) == ["test.pt", "train.pt"]
    # airbench 0.1.8 CifarLoader: torch.load(path, map_location=...), then
    # (images.half() / 255).permute(0, 3, 1, 2) -- HWC uint8 on disk back to NCHW
    data = torch.load(folder / "train.pt", map_location=torch.device("cpu"))  # torch's default: weights_only
    assert set(data) == {"images", "labels", "classes"}
    assert data["images"].dtype == torch.uint8 and tuple(data["images"].shape) == (5, 32, 32, 3)
    assert data["labels"].dtype == torch.int64 and data["labels"].tolist() == y.tolist()
    assert data["classes"] == airbench.CLASSES and len(data["classes"]) == 10
    images = (data["images"].half() / 255).permute(0, 3, 1, 2)
    np.testing.assert_array_equal(images.float().numpy(), (x.astype(np.float16) / np.float16(255)).astype(np.float32))
    test = torch.load(folder / "test.pt", map_location="cpu")
    np.testing.assert_array_equal(test["images"].permute(0, 3, 1, 2).numpy(), xt)
    assert test["labels"].tolist() == yt.tolist()


def test_gpucnn_side_of_the_race_is_the_trainer(numpy_backend):
    """The gpucnn side of the race is ``gpucnn train``'s Trainer (loader, schedule, Lookahead,
    steps), its epochs timed as metrics.jsonl times them; on numpy at a small batch."""
    from gpucnn.data import Dataset

    x, y, xt, yt = airbench.synthetic_cifar(24, 4, seed=3)
    dataset = Dataset("synthetic", x, y, xt, yt, list(airbench.CLASSES))
    ours = airbench.time_gpucnn(dataset, 2, device="numpy", batch_size=8)
    assert ours["steps_per_epoch"] == 3 and len(ours["samples_s"]) == 2 and ours["images_per_epoch"] == 24
    assert all(s > 0 for s in ours["samples_s"])
    assert ours["epoch_s"] == pytest.approx(sum(ours["samples_s"]) / 2)
    assert ours["math"] == "fp32" and ours["config"] == "configs/cifar10-fast.toml"
    assert ours["step"] == "eager" and ours["notes"] == []  # numpy: no graph, nothing to say
    assert 0.0 <= ours["test_acc"] <= 1.0  # evaluated once, after the timed epochs


def test_race_config_times_the_recipe_with_one_evaluation_and_no_figure():
    config = airbench.race_config("cifar10-fast", 3)
    training = config["training"]
    assert (training["epochs"], training["eval_every"], training["curves"]) == (3, 3, False)
    assert training["lookahead"]["every"] == 5 and config["data"]["augment"]["alternate_flip"]  # the recipe
    assert config["data"]["batch_size"] == 1024 and airbench.race_config("cifar10-fast", 1, 8)["data"]["batch_size"] == 8


def test_race_precision_reaches_the_backend(numpy_backend):
    """--precision is the backend's GEMM precision for the gpucnn side (bf16 by default)."""
    from gpucnn.data import Dataset

    x, y, xt, yt = airbench.synthetic_cifar(16, 4, seed=4)
    dataset = Dataset("synthetic", x, y, xt, yt, list(airbench.CLASSES))
    ours = airbench.time_gpucnn(dataset, 1, device="numpy", batch_size=8, precision="bf16")
    assert ours["math"] == "bf16"


def test_step_mode_names_how_the_trainer_ran_its_steps():
    """graph replay, the capturable step run eagerly (the emulator), or eager steps and why."""
    from types import SimpleNamespace

    step = SimpleNamespace(eager_reason=None, graph=SimpleNamespace(mode="eager"))
    assert airbench.step_mode(SimpleNamespace(cuda_graph="auto", captured_steps=[step])) == "capturable step, eager"
    step.graph.mode = "graph"
    assert airbench.step_mode(SimpleNamespace(cuda_graph="auto", captured_steps=[step, step])) == "cuda graph"
    step.eager_reason = "cuBLAS: matmul"
    assert airbench.step_mode(SimpleNamespace(cuda_graph="auto", captured_steps=[step])) == "eager (cuBLAS: matmul)"
    assert airbench.step_mode(SimpleNamespace(cuda_graph=None, captured_steps=[])) == "eager"


def _no_gpu() -> str | None:
    return airbench.gpu_unavailable_reason(torch)


@pytest.mark.skipif(_no_gpu() is None, reason="a GPU is present: the refusal path does not apply")
def test_script_without_gpu_exits_with_one_line(tmp_path):
    out = tmp_path / "race.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "airbench_race.py"), "--epochs", "1",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"airbench race: needs a CUDA GPU: {_no_gpu()}"]
    assert not out.exists()


def test_bad_options_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        airbench.main(["--epochs", "0"])
    assert exc.value.code == 2 and "--epochs >= 1" in capsys.readouterr().err
    assert airbench.main(["--json", "/no/such/folder/race.json"]) == 1
    assert capsys.readouterr().err.strip() == ("airbench race: error: cannot write /no/such/folder/race.json: "
                                               "its folder does not exist")


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("airbench") is None, reason="pip install airbench==0.1.8")
def test_race_on_gpu(tmp_path):
    out = tmp_path / "race.json"
    assert airbench.main(["--epochs", "1", "--images", "2048", "--test-images", "100", "--json", str(out)]) == 0
    section = json.loads(out.read_text())["airbench"]
    assert section["gpucnn_epoch_s"] > 0 and section["airbench_epoch_s"] > 0
    assert section["ratio"] == pytest.approx(section["gpucnn_epoch_s"] / section["airbench_epoch_s"])
