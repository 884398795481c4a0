"""Shared test locations: the workplace's shared/ folder sits beside the repository."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL_MODELS = SHARED / "real-models"
REFERENCE = SHARED / "reference" / "maxout_pruning"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# (folder, deploy prototxt, caffemodel) of every real model with weights (../shared/real-models/README.md)
REAL_PAIRS = [
    ("lenet_v1_everpeace", "lenet.prototxt", "lenet_iter_10000.caffemodel"),
    ("cifar10_quick_v1_everpeace", "cifar10_quick.prototxt", "cifar10_quick_iter_5000.caffemodel"),
    ("cifar10_full_v1_everpeace", "cifar10_full.prototxt", "cifar10_full_iter_70000.caffemodel"),
    ("mtcnn_det1", "det1.prototxt", "det1.caffemodel"),
    ("mtcnn_det2", "det2.prototxt", "det2.caffemodel"),
    ("ultraface_slim320", "slim-320.prototxt", "slim-320.caffemodel"),
    ("landmark106_dq", "landmark106.prototxt", "landmark106.caffemodel"),
    ("yufacedetectnet_v1", "yufacedetectnet-open-v1.prototxt", "yufacedetectnet-open-v1.caffemodel"),
]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared/ folder; tests that need it fail loudly if it is missing."""
    assert SHARED.is_dir(), f"shared/ folder expected beside the repository at {SHARED}"
    return SHARED
