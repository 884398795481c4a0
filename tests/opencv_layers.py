"""Fork layers OpenCV's Caffe importer cannot create, lent to it as Python layers written from the forks'
semantics, so a real net holding one (darknet2caffe's Upsample) still runs in OpenCV: every other layer
is OpenCV's own. Only inside ``fork_layers()``; outside it OpenCV is left as it ships (the corpus checks
that it still lacks them)."""
from contextlib import contextmanager

import cv2
import numpy as np


class Upsample:
    """darknet2caffe's Upsample: output (y, x) is input (y // scale, x // scale)."""

    def __init__(self, params, blobs):
        self.scale = int(params.get("scale", 1))

    def getMemoryShapes(self, inputs):
        n, c, h, w = inputs[0]
        return [[n, c, h * self.scale, w * self.scale]]

    def forward(self, inputs):
        return [np.repeat(np.repeat(inputs[0], self.scale, axis=2), self.scale, axis=3)]


FORK_LAYERS = {"Upsample": Upsample}


@contextmanager
def fork_layers():
    """OpenCV with the fork layers registered, for the duration of the block."""
    for name, layer in FORK_LAYERS.items():
        cv2.dnn_registerLayer(name, layer)
    try:
        yield
    finally:
        for name in FORK_LAYERS:
            cv2.dnn_unregisterLayer(name)
