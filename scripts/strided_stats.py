"""What statistics on a strided subset of spatial positions would do to the ranking of channels.

    python scripts/strided_stats.py [--images 64] [--strides 2,4]

For every real model with weights (``../shared/real-models``), the blobs the data-driven criteria tap
(``pruning.statistics_plan``) are computed whole on real images (Fashion-MNIST test images, resized to
the model's input and replicated to its channels, scaled to about [-1, 1]); per channel, the mean
activation, the mean square and APoZ (fraction <= 0) over every position are compared with the same
figures over positions ``[::s, ::s]``. Printed per model and stride: the Spearman rank correlation of
each tapped blob's channels (median and minimum over its blobs with spatial extent > 1).
"""
from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from bench_backends import real_models  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
FIGURES = {"mean": lambda a: a.mean(axis=(0, 2, 3)), "mean square": lambda a: np.square(a).mean(axis=(0, 2, 3)),
           "APoZ": lambda a: (a <= 0).mean(axis=(0, 2, 3))}


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (1.0 when both are constant)."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if ra.std() == rb.std() else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def images_for(shape: tuple[int, ...], count: int) -> np.ndarray:
    """Fashion-MNIST test images as an (count, C, H, W) float32 batch of the given per-sample shape."""
    import cv2

    raw = gzip.decompress(FASHION.read_bytes())
    digits = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    channels, height, width = shape
    resized = np.stack([cv2.resize(d, (width, height), interpolation=cv2.INTER_LINEAR) for d in digits])
    batch = np.repeat(resized[:, None], channels, axis=1).astype(np.float32)
    return (batch - 127.5) / 128.0


def model_rows(name: str, prototxt: Path, weights: Path, count: int, strides: list[int]) -> list[str]:
    from caffe_surgery.criteria import get_criterion
    from caffe_surgery.errors import CaffeSurgeryError
    from caffe_surgery.groups import build_groups
    from caffe_surgery.model import load_model
    from caffe_surgery.pruning import chosen_groups, statistics_plan
    from caffe_surgery.runtime import Runtime

    try:
        model = load_model(prototxt, weights)
        groups = build_groups(model.net, model.shapes)
        plan = statistics_plan(model, groups, chosen_groups(groups, None), get_criterion("apoz"))
        taps = [v for v in plan.summaries if len(model.shapes.blob(v)) == 4 and np.prod(model.shapes.blob(v)[2:]) > 1]
        if not taps:
            return [f"| {name} | no spatial taps | | | |"]
        runtime = Runtime(model.net, model.shapes, taps=taps, outputs=(), device="cpu")
    except CaffeSurgeryError as exc:
        return [f"| {name} | skipped: {exc.one_line()} | | | |"]
    (shape,) = runtime.inputs.values()
    images, values = images_for(tuple(shape[1:]), count), {}
    for start in range(0, count, 16):  # in small batches
        for key, array in runtime.run(images[start:start + 16]).items():
            values.setdefault(key, []).append(array)
    activations = {key: np.concatenate(parts) for key, parts in values.items()}
    rows = []
    for stride in strides:
        cells = []
        for figure, compute in FIGURES.items():
            rhos = [spearman(compute(a), compute(a[:, :, ::stride, ::stride])) for a in activations.values()]
            cells.append(f"{np.median(rhos):.4f} / {min(rhos):.4f}")
        rows.append(f"| {name} ({len(activations)} blobs) | {stride} | " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--strides", default="2,4")
    args = parser.parse_args(argv)
    strides = [int(s) for s in args.strides.split(",")]
    print("| model | stride | mean: Spearman median / min | mean square | APoZ |\n|---|---|---|---|---|")
    for name, prototxt, weights in real_models():
        for row in model_rows(name, prototxt, weights, args.images, strides):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
