"""Per-layer-type ONNX converters; importing the package registers them all."""
from . import activation, arithmetic, conv, data, detection_output, normalization, pooling, priorbox, tensor  # noqa: F401
from .registry import CONVERTERS, DATA_TYPES, converter, is_dropped, supported_types

__all__ = ["CONVERTERS", "DATA_TYPES", "converter", "is_dropped", "supported_types"]
