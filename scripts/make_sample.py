"""Write samples/lenet_maxout.caffemodel: Xavier-initialised weights for samples/lenet_maxout.prototxt.

Caffe's xavier filler (uniform in +-sqrt(3 / fan_in)), zero biases, seed 0, so
the file is reproducible. Usage: python scripts/make_sample.py
"""
import pathlib

import numpy as np

from caffe_surgery.model import load_model
from caffe_surgery.save import save_caffemodel

SAMPLES = pathlib.Path(__file__).resolve().parent.parent / "samples"


def main() -> None:
    """Fill every weighted layer and save the caffemodel beside the prototxt."""
    model = load_model(SAMPLES / "lenet_maxout.prototxt")
    rng = np.random.default_rng(0)
    for layer in model.net.layers:
        shapes = model.shapes.layer(layer.name).param_shapes or []
        if not shapes:
            continue
        weight_shape = shapes[0]
        limit = np.sqrt(3.0 / int(np.prod(weight_shape[1:])))
        layer.blobs = [rng.uniform(-limit, limit, weight_shape).astype(np.float32)]
        layer.blobs += [np.zeros(s, dtype=np.float32) for s in shapes[1:]]
    save_caffemodel(model.net, SAMPLES / "lenet_maxout.caffemodel")


if __name__ == "__main__":
    main()
