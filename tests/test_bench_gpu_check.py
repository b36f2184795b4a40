"""scripts/gpu_check.sh: valid bash, every step under a timeout inside the 9-minute budget,
at most 8 files directly in $OUT (what the device tool brings back), the steps it promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_script_syntax():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _dry_run(tmp_path, budget=None):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_DRY_RUN": "1", "PYTHON": sys.executable}
    if budget is not None:
        env["GPU_CHECK_BUDGET_S"] = str(budget)
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout.splitlines()


def test_dry_run_schedule_files_and_steps(tmp_path):
    out, lines = _dry_run(tmp_path)
    runs = [line for line in lines if ": would run (timeout " in line]
    limits = [int(re.search(r"timeout (\d+)s", line).group(1)) for line in runs]
    assert sum(limits) <= 540  # worst case: each step uses its whole limit
    assert lines[-1].startswith("gpu_check: done in ") and int(re.search(r"(\d+)s$", lines[-1]).group(1)) <= 540
    files = [p for p in out.rglob("*")]
    assert all(p.is_file() and p.parent == out for p in files)  # flat: nothing deeper than $OUT
    assert len(files) <= 8
    assert {p.name for p in files} == {"summary.log", "gpu-tests.log", "info-kernels.txt", "train-fp32.json",
                                       "airbench.json", "kernels-fp32.json", "train-tf32-bf16.json", "full-suite.log"}
    text = "\n".join(runs)
    sets = "--set lenet --set vgg --set fast --batches 512 --all-variants"
    for needle in ("-m pytest -m gpu", "info --kernels", sets,
                   "--train --train-models lenet5,vgg,fast", "--precision tf32", "--precision bf16",
                   "scripts/airbench_race.py", "-m pytest -q"):
        assert needle in text, needle
    assert all("--device cuda" in line for line in runs if " bench " in line)


def test_a_short_budget_skips_the_last_steps(tmp_path):
    out, lines = _dry_run(tmp_path, budget=100)
    assert lines[1].startswith("gpu-tests: would run (timeout 75s)")
    assert any(line.startswith("full-suite: skipped") for line in lines)
    assert int(re.search(r"(\d+)s$", lines[-1]).group(1)) <= 100
