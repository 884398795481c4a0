"""What converters write with: the graph under construction and a per-layer view of it."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..errors import ShapeError, UnsupportedLayerError
from ..graph import BlobVersion, Layer

BATCH = "N"
"""The symbolic name of dim 0 of the graph inputs when the batch is dynamic."""


class GraphBuilder:
    """Nodes and initializers of one ONNX graph, with unique tensor names."""

    def __init__(self, shapes, names: dict[BlobVersion, str], used: set[BlobVersion], opset: int,
                 dynamic_batch: bool):
        self.shapes = shapes
        self.names = names
        self.used = used
        self.opset = opset
        self.dynamic_batch = dynamic_batch
        self.inputs: list = []
        self.nodes: list = []
        self.initializers: list = []
        self.batch_dependent: list[tuple[str, str]] = []
        self.declared_shapes: dict[str, list] = {}
        self._taken = set(names.values())

    def unique(self, base: str) -> str:
        """A tensor or node name not used yet, derived from ``base``."""
        name, index = base, 1
        while name in self._taken:
            index += 1
            name = f"{base}_{index}"
        self._taken.add(name)
        return name

    def value_info(self, name: str, shape: Sequence[int], batch_dim: str | None):
        """A float tensor's declaration; with a dynamic batch, dim 0 is ``batch_dim`` (None: unknown)."""
        if name in self.declared_shapes:
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, self.declared_shapes[name])
        dims: list = list(shape)
        if self.dynamic_batch and dims:
            dims[0] = batch_dim
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    def add_input(self, version: BlobVersion) -> None:
        """Declare a blob as a graph input, with its inferred shape."""
        self.inputs.append(self.value_info(self.names[version], self.shapes.blob(version), BATCH))

    def const(self, value, hint: str, dtype=np.float32) -> str:
        """Add an initializer holding ``value``; return its name."""
        name = self.unique(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def declare_output(self, name: str, dims: Sequence) -> None:
        """Declare a tensor's shape for when it is a graph output: ints and symbolic dim names, e.g. a
        data-dependent row count (the inferred Caffe shape is used otherwise)."""
        self.declared_shapes[name] = list(dims)


class LayerContext:
    """One layer as a converter sees it: its param, tensor names, shapes, weights and builders."""

    def __init__(self, builder: GraphBuilder, layer: Layer):
        self.builder = builder
        self.layer = layer
        self.param = layer.param

    # --- tensors of the layer -------------------------------------------------------------
    def bottom(self, index: int = 0) -> str:
        return self.builder.names[self.layer.bottoms[index]]

    def bottoms(self) -> list[str]:
        return [self.builder.names[b] for b in self.layer.bottoms]

    def top(self, index: int = 0) -> str:
        return self.builder.names[self.layer.tops[index]]

    def tops(self) -> list[str]:
        return [self.builder.names[t] for t in self.layer.tops]

    def bottom_shape(self, index: int = 0) -> tuple[int, ...]:
        return tuple(self.builder.shapes.blob(self.layer.bottoms[index]))

    def top_shape(self, index: int = 0) -> tuple[int, ...]:
        return tuple(self.builder.shapes.blob(self.layer.tops[index]))

    def weights(self, count: int) -> list[np.ndarray]:
        """The layer's first ``count`` weight blobs as float32 arrays; an error if it has fewer."""
        if len(self.layer.blobs) < count:
            raise ShapeError(f"layer has {len(self.layer.blobs)} weight blobs, export needs {count} "
                             "(load the caffemodel first)", layer=self.layer.name)
        return [np.asarray(b, dtype=np.float32) for b in self.layer.blobs[:count]]

    def batch_dependent(self, why: str) -> None:
        """Report that this layer's Caffe result depends on the batch size (refused with a dynamic batch)."""
        self.builder.batch_dependent.append((self.layer.name, why))

    def unsupported(self, what: str) -> UnsupportedLayerError:
        """An error for a form of this layer that cannot be exported."""
        return UnsupportedLayerError(f"{self.layer.type} {what} cannot be exported to ONNX", layer=self.layer.name)

    # --- builders -------------------------------------------------------------------------
    def const(self, value, hint: str, dtype=np.float32) -> str:
        return self.builder.const(value, f"{self.layer.name}/{hint}", dtype)

    def ints(self, values: Sequence[int], hint: str) -> str:
        """An int64 1-D constant (shapes, axes, sizes)."""
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), hint, np.int64)

    def node(self, op: str, inputs: Sequence[str], out: str | None = None, **attrs) -> str:
        """Emit a one-output node; return its output (``out``, or a fresh name from the layer and op)."""
        return self.multi(op, inputs, [out or self.builder.unique(f"{self.layer.name}/{op}")], **attrs)[0]

    def multi(self, op: str, inputs: Sequence[str], outs: Sequence[str], **attrs) -> list[str]:
        """Emit a node writing the named outputs; return them."""
        node_name = self.builder.unique(f"{self.layer.name}/{op}#")
        self.builder.nodes.append(helper.make_node(op, list(inputs), list(outs), name=node_name, **attrs))
        return list(outs)

    def fresh(self, hint: str) -> str:
        """A fresh intermediate tensor name for this layer."""
        return self.builder.unique(f"{self.layer.name}/{hint}")

    def reshape(self, x: str, shape: Sequence[int], keeps_batch: bool, out: str | None = None) -> str:
        """Reshape to a static ``shape``; with a dynamic batch, dim 0 becomes 0 (copied) or -1 (inferred).

        ``keeps_batch`` says whether output dim 0 is the input's dim 0 (the batch).
        """
        target = [int(d) for d in shape]
        if self.builder.dynamic_batch and target:
            target[0] = 0 if keeps_batch else -1
        return self.node("Reshape", [x, self.ints(target, "shape")], out)

    def reduce(self, op: str, x: str, axes: Sequence[int], keepdims: bool, out: str | None = None) -> str:
        """A Reduce* node, passing axes as an input where the opset wants it (ReduceSum >= 13, others >= 18)."""
        if op == "ReduceSum" or self.builder.opset >= 18:
            return self.node(op, [x, self.ints(axes, "axes")], out, keepdims=int(keepdims))
        return self.node(op, [x], out, axes=list(axes), keepdims=int(keepdims))

    def batch_channels_then(self, x: str, tail: Sequence[int]) -> str:
        """A shape tensor: ``x``'s own dims 0 and 1 (so a dynamic batch keeps its batch), then ``tail``."""
        batch_channels = self.node("Slice", [self.node("Shape", [x]), self.ints([0], "from"), self.ints([2], "to")])
        return self.node("Concat", [batch_channels, self.ints(list(tail), "size")], axis=0)

    def unsqueeze(self, x: str, axes: Sequence[int], out: str | None = None) -> str:
        return self.node("Unsqueeze", [x, self.ints(axes, "axes")], out)

    def scaled(self, x: str, factor: float, out: str | None = None, hint: str = "scale") -> str:
        """``x * factor``; no node when the factor is 1 (an Identity when ``out`` is named)."""
        if factor != 1:
            return self.node("Mul", [x, self.const(factor, hint)], out)
        return self.identity(x, out) if out else x

    def shifted(self, x: str, shift: float, out: str | None = None, hint: str = "shift") -> str:
        """``x + shift``; no node when the shift is 0 (an Identity when ``out`` is named)."""
        if shift != 0:
            return self.node("Add", [x, self.const(shift, hint)], out)
        return self.identity(x, out) if out else x

    def identity(self, x: str, out: str) -> str:
        return self.node("Identity", [x], out)

    def leaky_relu(self, slopes: np.ndarray, out: str | None = None) -> str:
        """The bottom where positive, else ``slope * bottom``, one slope per channel (axis 1) or one for all.

        One slope (or all equal) is a LeakyRelu, which onnxruntime fuses into a preceding Conv. Several
        are ``relu(x) * (1 - slope) + x * slope``: onnxruntime keeps those ops in its blocked conv layout,
        where its PRelu kernel is a slow broadcast that also forces layout reorders around it (2-6x
        slower on the PReLU models); the two agree to float rounding.
        """
        x, ndim = self.bottom(), len(self.bottom_shape())
        slopes = np.asarray(slopes, dtype=np.float32).reshape(-1)
        if np.all(slopes == slopes[0]):
            return self.node("LeakyRelu", [x], out, alpha=float(slopes[0]))
        positive = self.node("Mul", [self.node("Relu", [x]), self.const(channel_broadcast(1 - slopes, ndim), "keep")])
        negative = self.node("Mul", [x, self.const(channel_broadcast(slopes, ndim), "slope")])
        return self.node("Add", [positive, negative], out)


def channel_broadcast(values: np.ndarray, ndim: int, axis: int = 1) -> np.ndarray:
    """Reshape per-channel values so they broadcast against an ``ndim`` tensor along ``axis``."""
    values = np.asarray(values, dtype=np.float32)
    return values.reshape(values.shape + (1,) * (ndim - axis - values.ndim))

