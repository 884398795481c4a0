"""Time parsing prototxt text with N unknown (fork) fields: the one-pass scanner is linear in N.

    python scripts/bench_textproto.py [--counts 50,100,200,400,1600]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caffe_surgery import caffe_pb2, textproto  # noqa: E402


def fork_text(count: int) -> str:
    """A net of ReLU layers carrying ``count`` unknown fields, half scalars and half blocks."""
    return 'name: "fork"\n' + "".join(
        f'layer {{ name: "r{i}" type: "ReLU" bottom: "x" top: "x" fork_field_{i}: {i} fork_block {{ a: 1 b: "s" }} }}\n'
        for i in range(count // 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="50,100,200,400,1600")
    args = parser.parse_args()
    for count in (int(c) for c in args.counts.split(",")):
        text = fork_text(count)
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            kept = textproto.parse(text, caffe_pb2.NetParameter())
            runs.append(time.perf_counter() - started)
        print(f"{count:6d} unknown fields: {sorted(runs)[1]:8.3f} s median of 3 ({len(kept)} kept)")


if __name__ == "__main__":
    main()
