"""caffe-surgery: read, inspect, export, prune and write legacy Caffe models.

The Python API (see the README's "Python API" section) is imported on first
use, so ``import caffe_surgery`` stays fast and never imports PyTorch.
"""
__version__ = "0.1.0"

_API = ("load", "summary", "channel_groups", "export_onnx", "run", "open_data", "accuracy", "gather_statistics",
        "make_plan", "prune", "save_pair")
_CLASSES = {"Model": "model", "Net": "graph", "Layer": "graph", "Plan": "plan", "Group": "groups",
            "Statistics": "statistics", "CaffeSurgeryError": "errors"}
__all__ = ["__version__", *_API, *_CLASSES]


def __getattr__(name: str):
    from importlib import import_module

    if name in _API:
        return getattr(import_module(".api", __name__), name)
    if name in _CLASSES:
        return getattr(import_module(f".{_CLASSES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
