"""Training Caffe nets with PyTorch, with Caffe's layer, filler and solver semantics (optional: needs torch)."""

try:
    import torch  # noqa: F401
except ImportError:
    from ..errors import CaffeSurgeryError

    raise CaffeSurgeryError("training needs PyTorch: pip install 'caffe-surgery[train]'") from None

from .command import train_command
from .fillers import fill
from .schedule import learning_rate
from .solver import Solver
from .torch_net import TorchNet
from .trainer import TestScores, TrainResult, train

__all__ = ["Solver", "TestScores", "TorchNet", "TrainResult", "fill", "learning_rate", "train", "train_command"]
