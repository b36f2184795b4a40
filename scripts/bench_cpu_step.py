"""Print the LeNet-5 CPU step time of the numpy backend vs PyTorch CPU (thin wrapper)."""

import argparse

from gpucnn.bench.cpu_step import time_cpu_step

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(time_cpu_step(batch_size=args.batch_size, repeats=args.repeats).format())
