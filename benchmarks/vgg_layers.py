"""Time VGG16's 13 conv layers and 5 max-pools at 224x224, forward and forward+backward, on
our devices (and PyTorch in its own process when installed); print ms, GFLOP/s, the BLAS.

    python benchmarks/vgg_layers.py [--devices cpu numpy] [--no-torch] [--json out.json]

The same as `minifcn bench --sections convs pools`.
"""
import argparse
import sys

from minifcn.bench.command import add_arguments, main as bench_main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    args.sections = args.sections or ["convs", "pools"]
    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
