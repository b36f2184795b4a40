"""LeNet-5 training step on the numpy backend vs PyTorch CPU (thin wrapper).

Same as: gpucnn bench --device cpu --train --train-models lenet5 --train-batch 128 --train-images 12800
"""

import sys

from gpucnn.bench.command import bench

if __name__ == "__main__":
    bench.main(["--device", "cpu", "--train", "--train-models", "lenet5", "--train-batch", "128",
                "--train-images", "12800", *sys.argv[1:]], prog_name="gpucnn bench")
