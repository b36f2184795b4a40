"""Run ``gpucnn bench`` (a thin wrapper): same options, e.g.

    python scripts/bench_kernels.py --device cuda --set lenet --set vgg --all-variants \
        --json benchmarks/results/h100.json --markdown benchmarks/results/h100.md
"""

import sys

from gpucnn.bench.command import bench

if __name__ == "__main__":
    bench.main(args=sys.argv[1:], prog_name="gpucnn bench")
