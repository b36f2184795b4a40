"""The race (a thin wrapper of gpucnn.bench.airbench): gpucnn's cifar10-fast vs airbench94 on one GPU.

    python scripts/airbench_race.py --epochs 2 --json benchmarks/results/<date>-<gpu>-airbench.json

Needs a CUDA GPU, CuPy, torch and ``pip install airbench==0.1.8`` (with torchvision); data are
synthetic CIFAR-shaped tensors written to a temporary folder, so nothing downloads.
"""

import sys

from gpucnn.bench.airbench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
