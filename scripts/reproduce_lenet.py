"""Reproduce the LeNet maxout neuron-pruning experiment: the same as ``caffe-surgery reproduce lenet``.

Example (full Fashion-MNIST from Debian's dataset-fashion-mnist):
    python scripts/reproduce_lenet.py \\
        --data idx:/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz:/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz \\
        --test-data idx:/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz:/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz \\
        -o results/lenet_fashion
"""
import argparse
import sys

from caffe_surgery.cli import cmd_reproduce, reproduce_arguments, run_command


def main() -> int:
    """Parse the arguments and run the experiment."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reproduce_arguments(parser)
    return run_command(cmd_reproduce, parser.parse_args(), debug=False)


if __name__ == "__main__":
    sys.exit(main())
