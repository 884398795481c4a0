"""Shared test locations: the workplace's shared/ folder sits beside the repository."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL_MODELS = SHARED / "real-models"
REFERENCE = SHARED / "reference" / "maxout_pruning"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared/ folder; tests that need it fail loudly if it is missing."""
    assert SHARED.is_dir(), f"shared/ folder expected beside the repository at {SHARED}"
    return SHARED
