"""Shape rules of the Caffe layer types: top shapes, expected weight shapes, MACs.

One function per layer type (or per family of types with the same rule),
registered by type name. A rule gets the layer and its bottom shapes and
returns a ``Rule``; the rules of data layers (no bottoms) get a ``SourceContext``
that resolves the shapes the prototxt cannot tell.

MAC rule: only matrix products count multiply-accumulates -- Convolution,
Deconvolution, InnerProduct, RNN and LSTM. Element-wise, normalisation,
pooling, data-movement, loss and SSD layers count 0 MACs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import ceil, floor, prod
from typing import NoReturn

from . import caffe_pb2
from .errors import ShapeError
from .graph import Layer
from .priors import box_sizes

Shape = tuple[int, ...]


@dataclass
class Rule:
    """What a layer makes: its top shapes, the shapes of its learned blobs, its MACs."""

    tops: list[Shape]
    params: list[Shape] = field(default_factory=list)
    macs: int = 0


@dataclass(frozen=True)
class Arity:
    """How many bottoms and tops a layer type takes (``None`` = no upper bound)."""

    bottoms: tuple[int, int | None]
    tops: tuple[int, int | None]


RULES: dict[str, tuple[Callable[[Layer, list[Shape]], Rule], Arity]] = {}
SOURCES: dict[str, tuple[Callable[[Layer, "SourceContext"], list[Shape]], Arity]] = {}


def _range(count: int | tuple[int, int | None]) -> tuple[int, int | None]:
    return (count, count) if isinstance(count, int) else count


def rule(*types: str, bottoms: int | tuple[int, int | None] = 1, tops: int | tuple[int, int | None] = 1):
    """Register a shape rule for the given layer types."""
    def register(fn):
        for name in types:
            RULES[name] = (fn, Arity(_range(bottoms), _range(tops)))
        return fn
    return register


def source(*types: str, tops: int | tuple[int, int | None] = (1, None)):
    """Register the shape rule of a data layer (no bottoms)."""
    def register(fn):
        for name in types:
            SOURCES[name] = (fn, Arity((0, 0), _range(tops)))
        return fn
    return register


def fail(problem: str) -> NoReturn:
    """Raise a ShapeError; the caller fills in the layer and the file."""
    raise ShapeError(problem)


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex: -ndim <= axis < ndim, negatives count from the end."""
    if not -ndim <= axis < ndim:
        fail(f"axis {axis} is out of range for a {ndim}-D bottom")
    return axis % ndim


def _same_as_bottom(bottoms: list[Shape]) -> Rule:
    return Rule([bottoms[0]])


# ---------------------------------------------------------------- data layers


class SourceContext:
    """Resolves a data layer's top shapes: ``input_shapes`` > prototxt > resolver.

    The resolver (``data_shapes``) returns, for each top, the shape of ONE item
    (e.g. C, H, W) as the data source holds it; the batch axis comes from the
    layer's batch_size.
    """

    def __init__(self, layer: Layer, overrides: dict[str, Shape],
                 resolver: Callable[[Layer], list[Shape]] | None):
        self.layer = layer
        self.overrides = overrides
        self.resolver = resolver
        self._resolved: list[Shape] | None = None

    def top_shape(self, index: int, declared: Shape | None, batch: int | None = None) -> Shape:
        """Shape of top ``index``: the user's override, else ``declared``, else (batch, *item from the resolver)."""
        name = self.layer.tops[index].name
        if name in self.overrides:
            return tuple(self.overrides[name])
        if declared is not None:
            return tuple(declared)
        if self.resolver is not None and batch is not None:
            if self._resolved is None:
                self._resolved = [tuple(s) for s in self.resolver(self.layer)]
            if index < len(self._resolved):
                return (batch,) + self._resolved[index]
        fail(f"cannot tell the shape of data blob '{name}' from the prototxt; "
             f"pass --input {name}=N,C,H,W")


def _labels(ctx: SourceContext, data: Shape) -> list[Shape]:
    """Data, then one (N,) label top per further top."""
    return [data] + [ctx.top_shape(i, (data[0],)) for i in range(1, len(ctx.layer.tops))]


@source("Input")
def _input(layer: Layer, ctx: SourceContext) -> list[Shape]:
    declared = [tuple(int(d) for d in s.dim) for s in layer.param.input_param.shape]
    if len(declared) not in (0, 1, len(layer.tops)):
        fail(f"input_param has {len(declared)} shapes for {len(layer.tops)} tops (give one, or one per top)")
    if len(declared) == 1:
        declared = declared * len(layer.tops)
    return [ctx.top_shape(i, declared[i] if declared else None) for i in range(len(layer.tops))]


@source("Data", "WindowData", tops=(1, 2))
def _data(layer: Layer, ctx: SourceContext) -> list[Shape]:
    """C, H and W live in the database; only the user or the data module can tell them."""
    p = layer.param.data_param if layer.type == "Data" else layer.param.window_data_param
    return _labels(ctx, ctx.top_shape(0, None, p.batch_size))


@source("HDF5Data")
def _hdf5_data(layer: Layer, ctx: SourceContext) -> list[Shape]:
    """Every top is a data set of the HDF5 files; their shapes are not in the prototxt."""
    batch = layer.param.hdf5_data_param.batch_size
    return [ctx.top_shape(i, None, batch) for i in range(len(layer.tops))]


@source("ImageData", tops=(1, 2))
def _image_data(layer: Layer, ctx: SourceContext) -> list[Shape]:
    p = layer.param.image_data_param
    crop = layer.param.transform_param.crop_size
    channels = 3 if p.is_color else 1
    declared = None
    if crop:
        declared = (p.batch_size, channels, crop, crop)
    elif p.new_height and p.new_width:
        declared = (p.batch_size, channels, p.new_height, p.new_width)
    return _labels(ctx, ctx.top_shape(0, declared, p.batch_size))


@source("MemoryData", tops=2)
def _memory_data(layer: Layer, ctx: SourceContext) -> list[Shape]:
    p = layer.param.memory_data_param
    return _labels(ctx, ctx.top_shape(0, (p.batch_size, p.channels, p.height, p.width)))


@source("DummyData")
def _dummy_data(layer: Layer, ctx: SourceContext) -> list[Shape]:
    """``shape`` (one, or one per top) or the legacy num/channels/height/width (each one or one per top)."""
    p = layer.param.dummy_data_param
    n = len(layer.tops)
    if len(p.shape):
        declared = [tuple(int(d) for d in s.dim) for s in p.shape]
    else:
        legacy = (p.num, p.channels, p.height, p.width)
        if any(len(values) not in (1, n) for values in legacy):
            fail(f"num, channels, height and width each need one value or one per top ({n})")
        declared = [tuple(values[i if len(values) == n else 0] for values in legacy) for i in range(n)]
    if len(declared) == 1:
        declared = declared * n
    if len(declared) != n:
        fail(f"dummy_data_param gives {len(declared)} shapes for {n} tops (give one, or one per top)")
    return [ctx.top_shape(i, declared[i]) for i in range(n)]


# ----------------------------------------------------------- convolutions


def _conv_dims(p, name: str, hw: tuple[str, str] | None, n: int, default: int | None) -> list[int]:
    """A spatial setting given as a repeated field (one value or one per axis) or as _h/_w."""
    values = [int(v) for v in getattr(p, name)]
    if hw and (p.HasField(hw[0]) or p.HasField(hw[1])):
        if n != 2:
            fail(f"{hw[0]}/{hw[1]} can only be used for 2-D convolution")
        if values:
            fail(f"give either {name} or {hw[0]}/{hw[1]}, not both")
        return [int(getattr(p, hw[0])), int(getattr(p, hw[1]))]
    if not values:
        if default is None:
            fail(f"{name} is not given")
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        fail(f"{name} has {len(values)} values for {n} spatial axes")
    return values


@dataclass
class _Conv:
    axis: int
    channels: int
    num_output: int
    group: int
    kernel: list[int]
    stride: list[int]
    pad: list[int]
    dilation: list[int]


def _conv_setup(layer: Layer, bottoms: list[Shape]) -> _Conv:
    """Read and check the convolution_param against the first bottom (Caffe's BaseConvolutionLayer)."""
    p = layer.param.convolution_param
    shape = bottoms[0]
    if any(b != shape for b in bottoms[1:]):
        fail(f"all bottoms must have the same shape, got {', '.join(map(str, bottoms))}")
    if len(layer.tops) != len(bottoms):
        fail(f"needs one top per bottom, has {len(bottoms)} bottoms and {len(layer.tops)} tops")
    axis = canonical_axis(p.axis, len(shape))
    n = len(shape) - axis - 1
    if n < 1:
        fail(f"bottom shape {shape} has no spatial axes after axis {axis}")
    kernel = _conv_dims(p, "kernel_size", ("kernel_h", "kernel_w"), n, None)
    stride = _conv_dims(p, "stride", ("stride_h", "stride_w"), n, 1)
    pad = _conv_dims(p, "pad", ("pad_h", "pad_w"), n, 0)
    dilation = _conv_dims(p, "dilation", None, n, 1)
    for name, values in (("kernel size", kernel), ("stride", stride), ("dilation", dilation)):
        if min(values) <= 0:
            fail(f"{name} must be positive, got {values}")
    if p.num_output <= 0:
        fail("num_output must be positive")
    group = p.group
    channels = shape[axis]
    if group <= 0:
        fail("group must be positive")
    if channels % group:
        fail(f"input channels {channels} are not divisible by group {group}")
    if p.num_output % group:
        fail(f"num_output {p.num_output} is not divisible by group {group}")
    return _Conv(axis, channels, p.num_output, group, kernel, stride, pad, dilation)


def _check_positive(out: list[int], bottom: Shape) -> None:
    if min(out) <= 0:
        fail(f"kernel does not fit the bottom {bottom}: output spatial size would be {tuple(out)}")


@rule("Convolution", bottoms=(1, None), tops=(1, None))
def _convolution(layer: Layer, bottoms: list[Shape]) -> Rule:
    c = _conv_setup(layer, bottoms)
    shape = bottoms[0]
    spatial = shape[c.axis + 1:]
    out = [(size + 2 * p - (d * (k - 1) + 1)) // s + 1
           for size, k, s, p, d in zip(spatial, c.kernel, c.stride, c.pad, c.dilation)]
    _check_positive(out, shape)
    top = shape[:c.axis] + (c.num_output,) + tuple(out)
    params = [(c.num_output, c.channels // c.group, *c.kernel)]
    if layer.param.convolution_param.bias_term:
        params.append((c.num_output,))
    macs = prod(shape[:c.axis]) * c.num_output * prod(out) * (c.channels // c.group) * prod(c.kernel)
    return Rule([top] * len(bottoms), params, macs * len(bottoms))


@rule("Deconvolution", bottoms=(1, None), tops=(1, None))
def _deconvolution(layer: Layer, bottoms: list[Shape]) -> Rule:
    c = _conv_setup(layer, bottoms)
    shape = bottoms[0]
    spatial = shape[c.axis + 1:]
    out = [s * (size - 1) + d * (k - 1) + 1 - 2 * p
           for size, k, s, p, d in zip(spatial, c.kernel, c.stride, c.pad, c.dilation)]
    _check_positive(out, shape)
    top = shape[:c.axis] + (c.num_output,) + tuple(out)
    params = [(c.channels, c.num_output // c.group, *c.kernel)]
    if layer.param.convolution_param.bias_term:
        params.append((c.num_output,))
    macs = prod(shape[:c.axis]) * c.channels * prod(spatial) * (c.num_output // c.group) * prod(c.kernel)
    return Rule([top] * len(bottoms), params, macs * len(bottoms))


@rule("Im2col")
def _im2col(layer: Layer, bottoms: list[Shape]) -> Rule:
    c = _conv_setup(layer, bottoms)
    shape = bottoms[0]
    out = [(size + 2 * p - (d * (k - 1) + 1)) // s + 1
           for size, k, s, p, d in zip(shape[c.axis + 1:], c.kernel, c.stride, c.pad, c.dilation)]
    _check_positive(out, shape)
    return Rule([shape[:c.axis] + (c.channels * prod(c.kernel),) + tuple(out)])


@rule("InnerProduct")
def _inner_product(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Weight (N, K), or (K, N) with ``transpose``; K = product of the bottom axes from ``axis`` on."""
    p = layer.param.inner_product_param
    shape = bottoms[0]
    axis = canonical_axis(p.axis, len(shape))
    if p.num_output <= 0:
        fail("num_output must be positive")
    k = prod(shape[axis:])
    n = p.num_output
    params = [(k, n) if p.transpose else (n, k)]
    if p.bias_term:
        params.append((n,))
    return Rule([shape[:axis] + (n,)], params, prod(shape[:axis]) * k * n)


@rule("Embed")
def _embed(layer: Layer, bottoms: list[Shape]) -> Rule:
    """A lookup table (input_dim, num_output): no MACs."""
    p = layer.param.embed_param
    if p.num_output <= 0 or p.input_dim <= 0:
        fail("num_output and input_dim must be positive")
    params = [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])
    return Rule([bottoms[0] + (p.num_output,)], params)


def _recurrent(layer: Layer, bottoms: list[Shape], gates: int, hidden_states: int) -> Rule:
    """Shared rule of RNN (1 gate, 1 hidden state) and LSTM (4 gates, 2 hidden states)."""
    p = layer.param.recurrent_param
    h = p.num_output
    if h <= 0:
        fail("num_output must be positive")
    x = bottoms[0]
    if len(x) < 2:
        fail(f"input x must be (T, N, ...), got {x}")
    t, n = x[0], x[1]
    if bottoms[1] != (t, n):
        fail(f"cont must have shape {(t, n)}, got {bottoms[1]}")
    exposed = hidden_states if p.expose_hidden else 0
    if len(bottoms) not in (2 + exposed, 3 + exposed):
        fail(f"takes {2 + exposed} or {3 + exposed} bottoms, got {len(bottoms)}")
    if len(layer.tops) != 1 + exposed:
        fail(f"needs {1 + exposed} tops, has {len(layer.tops)}")
    d = prod(x[2:])
    params = [(gates * h, d), (gates * h,)]
    macs = t * n * gates * h * d
    if len(bottoms) == 3 + exposed:
        static = bottoms[2]
        if static[0] != n:
            fail(f"static input must have {n} rows, got {static}")
        params.append((gates * h, prod(static[1:])))
        macs += n * gates * h * prod(static[1:])
    params.append((gates * h, h))
    macs += t * n * gates * h * h
    if gates == 1:
        params += [(h, h), (h,)]
        macs += t * n * h * h
    return Rule([(t, n, h)] + [(1, n, h)] * exposed, params, macs)


@rule("RNN", bottoms=(2, 4), tops=(1, 2))
def _rnn(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Blobs W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o, in the unrolled net's order."""
    return _recurrent(layer, bottoms, gates=1, hidden_states=1)


@rule("LSTM", bottoms=(2, 5), tops=(1, 3))
def _lstm(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Blobs W_xc, b_c, [W_xc_static], W_hc, in the unrolled net's order."""
    return _recurrent(layer, bottoms, gates=4, hidden_states=2)


@rule("LSTMUnit", bottoms=3, tops=2)
def _lstm_unit(layer: Layer, bottoms: list[Shape]) -> Rule:
    c_prev, gates, _ = bottoms
    if gates[:2] != c_prev[:2] or gates[2] != 4 * c_prev[2]:
        fail(f"gate input {gates} does not fit the cell {c_prev} (needs 4x its channels)")
    return Rule([c_prev, c_prev])


# ------------------------------------------------------------------ pooling


def _pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Caffe's pooled size, before the 'last window starts inside' correction."""
    return int((ceil if ceil_mode else floor)((size + 2 * pad - kernel) / stride)) + 1


def pool_output(shape: Shape, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
                ceil_mode: bool = True) -> tuple[int, int]:
    """Pooled (H, W) as Caffe computes it, including its rule that with padding the
    last window must start inside the image: if (out-1)*stride >= size+pad, out -= 1."""
    out = [_pooled_size(size, k, s, p, ceil_mode) for size, k, s, p in zip(shape[2:], kernel, stride, pad)]
    if pad[0] or pad[1]:
        out = [o - 1 if (o - 1) * s >= size + p else o for o, size, s, p in zip(out, shape[2:], stride, pad)]
    if min(out) <= 0:
        fail(f"pooling window {kernel} does not fit the bottom {shape}")
    return out[0], out[1]


def _pair(p, name: str, hw: tuple[str, str], default: int | None) -> tuple[int, int]:
    """PoolingParameter's single value or its _h/_w pair."""
    if p.HasField(hw[0]) or p.HasField(hw[1]):
        if p.HasField(name):
            fail(f"give either {name} or {hw[0]}/{hw[1]}, not both")
        if not (p.HasField(hw[0]) and p.HasField(hw[1])):
            fail(f"give both {hw[0]} and {hw[1]}")
        return int(getattr(p, hw[0])), int(getattr(p, hw[1]))
    if default is None and not p.HasField(name):
        fail(f"{name} is not given")
    value = int(getattr(p, name))
    return value, value


@rule("Pooling", tops=(1, 2))
def _pooling(layer: Layer, bottoms: list[Shape]) -> Rule:
    """MAX/AVE/STOCHASTIC; CEIL rounding unless round_mode FLOOR; a MAX second top is the mask."""
    p = layer.param.pooling_param
    shape = bottoms[0]
    if len(shape) != 4:
        fail(f"pooling needs a 4-D bottom, got {shape}")
    if len(layer.tops) == 2 and p.pool != caffe_pb2.PoolingParameter.MAX:
        fail("only MAX pooling has a second (mask) top")
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            fail("global pooling takes no kernel size")
        kernel = shape[2], shape[3]
    else:
        kernel = _pair(p, "kernel_size", ("kernel_h", "kernel_w"), None)
    pad = _pair(p, "pad", ("pad_h", "pad_w"), 0)
    stride = _pair(p, "stride", ("stride_h", "stride_w"), 1)
    if min(kernel) <= 0 or min(stride) <= 0:
        fail(f"kernel {kernel} and stride {stride} must be positive")
    if p.global_pooling and (max(pad) or max(stride) != 1):
        fail("global pooling needs pad 0 and stride 1")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        fail(f"pad {pad} must be smaller than the kernel {kernel}")
    out = pool_output(shape, kernel, stride, pad, p.round_mode == caffe_pb2.PoolingParameter.CEIL)
    return Rule([shape[:2] + out] * len(layer.tops))


@rule("SPP")
def _spp(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Level l pools into 2^l x 2^l bins; levels are flattened and concatenated (one level: N,C,1,1)."""
    shape = bottoms[0]
    if len(shape) != 4:
        fail(f"SPP needs a 4-D bottom, got {shape}")
    height = layer.param.spp_param.pyramid_height
    if height <= 0:
        fail("pyramid_height must be positive")
    if height == 1:
        return Rule([shape[:2] + (1, 1)])
    total = 0
    for level in range(height):
        bins = 2 ** level
        kernel = tuple(ceil(size / bins) for size in shape[2:])
        pad = tuple((k * bins - size + 1) // 2 for k, size in zip(kernel, shape[2:]))
        out = pool_output(shape, kernel, kernel, pad)
        total += shape[1] * out[0] * out[1]
    return Rule([(shape[0], total)])


# ------------------------------------------------------- same-shape layers


@rule("ReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log", "Threshold",
      "Dropout", "Clip", "Swish", "LRN", "MVN", "Softmax")
def _elementwise(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Element-wise or normalising layers: top shape = bottom shape, no weights."""
    if layer.type == "Softmax":
        canonical_axis(layer.param.softmax_param.axis, len(bottoms[0]))
    return _same_as_bottom(bottoms)


@rule("PReLU")
def _prelu(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Slopes (C,), or a 0-axis scalar blob () with channel_shared, as Caffe allocates it."""
    shape = bottoms[0]
    if len(shape) < 2:
        fail(f"PReLU needs at least 2 axes, got {shape}")
    return Rule([shape], [() if layer.param.prelu_param.channel_shared else (shape[1],)])


@rule("BatchNorm")
def _batch_norm(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Blobs: running mean (C,), running variance (C,), moving-average factor (1,)."""
    shape = bottoms[0]
    channels = shape[1] if len(shape) > 1 else 1
    return Rule([shape], [(channels,), (channels,), (1,)])


def _broadcast_shape(layer: Layer, bottoms: list[Shape], axis: int, num_axes: int) -> Shape:
    """Shape of the scale/bias operand: bottom[1], or bottom[0][axis:axis+num_axes] (-1 = to the end)."""
    shape = bottoms[0]
    if len(bottoms) == 2:
        operand = bottoms[1]
        start = 0 if not operand else canonical_axis(axis, len(shape))
        if shape[start:start + len(operand)] != operand:
            fail(f"bottom '{layer.bottoms[1].name}' {operand} does not match "
                 f"bottom '{layer.bottoms[0].name}' {shape} from axis {start}")
        return operand
    if num_axes < -1:
        fail(f"num_axes must be -1 or non-negative, got {num_axes}")
    start = canonical_axis(axis, len(shape)) if shape else 0
    end = len(shape) if num_axes == -1 else start + num_axes
    if end > len(shape):
        fail(f"axis {axis} + num_axes {num_axes} exceed the bottom's {len(shape)} axes")
    return shape[start:end]


@rule("Scale", bottoms=(1, 2))
def _scale(layer: Layer, bottoms: list[Shape]) -> Rule:
    """One bottom: learned scale (+ bias); two bottoms: bottom[1] is the scale, only the bias is learned."""
    p = layer.param.scale_param
    operand = _broadcast_shape(layer, bottoms, p.axis, p.num_axes)
    params = ([] if len(bottoms) == 2 else [operand]) + ([operand] if p.bias_term else [])
    return Rule([bottoms[0]], params)


@rule("Bias", bottoms=(1, 2))
def _bias(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.bias_param
    operand = _broadcast_shape(layer, bottoms, p.axis, p.num_axes)
    return Rule([bottoms[0]], [] if len(bottoms) == 2 else [operand])


@rule("Normalize")
def _normalize(layer: Layer, bottoms: list[Shape]) -> Rule:
    """SSD's L2 normalisation; scale blob (C,), or a 0-axis scalar () with channel_shared as Caffe-SSD allocates it."""
    shape = bottoms[0]
    if len(shape) < 2:
        fail(f"Normalize needs at least 2 axes, got {shape}")
    return Rule([shape], [() if layer.param.norm_param.channel_shared else (shape[1],)])


@rule("Parameter", bottoms=0)
def _parameter(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Its top is its own learned blob."""
    shape = tuple(int(d) for d in layer.param.parameter_param.shape.dim)
    return Rule([shape], [shape])


@rule("Eltwise", bottoms=(2, None))
def _eltwise(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.eltwise_param
    for blob, shape in zip(layer.bottoms[1:], bottoms[1:]):
        if shape != bottoms[0]:
            fail(f"Eltwise bottoms differ: '{layer.bottoms[0].name}' is {bottoms[0]}, '{blob.name}' is {shape}")
    if len(p.coeff):
        if p.operation != caffe_pb2.EltwiseParameter.SUM:
            fail("only SUM takes coefficients")
        if len(p.coeff) != len(bottoms):
            fail(f"{len(p.coeff)} coefficients for {len(bottoms)} bottoms")
    return _same_as_bottom(bottoms)


# ------------------------------------------------------------- data movement


@rule("Concat", bottoms=(1, None))
def _concat(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.concat_param
    first = bottoms[0]
    axis = p.concat_dim if p.HasField("concat_dim") else canonical_axis(p.axis, len(first))
    if axis >= len(first):
        fail(f"concat_dim {axis} is out of range for {first}")
    for blob, shape in zip(layer.bottoms[1:], bottoms[1:]):
        if len(shape) != len(first) or shape[:axis] + shape[axis + 1:] != first[:axis] + first[axis + 1:]:
            fail(f"bottom '{blob.name}' {shape} does not match '{layer.bottoms[0].name}' {first} "
                 f"outside axis {axis}")
    total = sum(shape[axis] for shape in bottoms)
    return Rule([first[:axis] + (total,) + first[axis + 1:]])


@rule("Slice", tops=(1, None))
def _slice(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.slice_param
    shape = bottoms[0]
    axis = p.slice_dim if p.HasField("slice_dim") else canonical_axis(p.axis, len(shape))
    if axis >= len(shape):
        fail(f"slice_dim {axis} is out of range for {shape}")
    size, count = shape[axis], len(layer.tops)
    points = list(p.slice_point)
    if points:
        if len(points) != count - 1:
            fail(f"{len(points)} slice points for {count} tops (need {count - 1})")
        bounds = [0] + points + [size]
        if any(b <= a for a, b in zip(bounds, bounds[1:])):
            fail(f"slice points {points} must increase strictly inside (0, {size})")
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    else:
        if size % count:
            fail(f"axis {axis} of size {size} does not split evenly into {count} tops")
        sizes = [size // count] * count
    return Rule([shape[:axis] + (s,) + shape[axis + 1:] for s in sizes])


@rule("Split", tops=(1, None))
def _split(layer: Layer, bottoms: list[Shape]) -> Rule:
    return Rule([bottoms[0]] * len(layer.tops))


@rule("Flatten")
def _flatten(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.flatten_param
    shape = bottoms[0]
    start = canonical_axis(p.axis, len(shape))
    end = canonical_axis(p.end_axis, len(shape))
    if end < start:
        fail(f"end_axis {p.end_axis} comes before axis {p.axis}")
    return Rule([shape[:start] + (prod(shape[start:end + 1]),) + shape[end + 1:]])


@rule("Reshape")
def _reshape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """0 copies the bottom dimension at that place, -1 takes what is left; axis/num_axes pick the span."""
    p = layer.param.reshape_param
    shape = bottoms[0]
    ndim = len(shape)
    if not -(ndim + 1) <= p.axis <= ndim:
        fail(f"axis {p.axis} is out of range for a {ndim}-D bottom")
    start = p.axis + ndim + 1 if p.axis < 0 else p.axis
    if p.num_axes < -1:
        fail(f"num_axes must be -1 or non-negative, got {p.num_axes}")
    end = ndim if p.num_axes == -1 else start + p.num_axes
    if end > ndim:
        fail(f"axis {p.axis} + num_axes {p.num_axes} exceed the bottom's {ndim} axes")
    dims = [int(d) for d in p.shape.dim]
    if dims.count(-1) > 1:
        fail("only one dimension can be -1")
    middle = []
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                fail(f"dim {i} is 0 (copy) but the bottom has no axis {start + i}")
            middle.append(shape[start + i])
        elif d < -1:
            fail(f"dim {i} is {d}; dimensions must be positive, 0 (copy) or -1 (infer)")
        else:
            middle.append(d)
    top = list(shape[:start]) + middle + list(shape[end:])
    known = prod(d for d in top if d != -1)
    count = prod(shape)
    if -1 in top:
        if known == 0 or count % known:
            fail(f"cannot infer the -1 dimension: {count} values of {shape} do not divide by {known}")
        top[top.index(-1)] = count // known
    if prod(top) != count:
        fail(f"shape {tuple(top)} holds {prod(top)} values, the bottom {shape} holds {count}")
    return Rule([tuple(top)])


@rule("Crop", bottoms=2)
def _crop(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Axes from ``axis`` on take the size of bottom[1]; offsets are one for all or one per cropped axis."""
    p = layer.param.crop_param
    shape, reference = bottoms
    if len(shape) != len(reference):
        fail(f"bottoms have different numbers of axes: {shape} and {reference}")
    axis = canonical_axis(p.axis, len(shape))
    offsets = list(p.offset)
    cropped = len(shape) - axis
    if len(offsets) not in (0, 1, cropped):
        fail(f"{len(offsets)} offsets for {cropped} cropped axes (give one, or one per axis)")
    top = list(shape)
    for i in range(axis, len(shape)):
        offset = 0 if not offsets else offsets[0 if len(offsets) == 1 else i - axis]
        if offset + reference[i] > shape[i]:
            fail(f"crop of size {reference[i]} at offset {offset} exceeds axis {i} of {shape}")
        top[i] = reference[i]
    return Rule([tuple(top)])


@rule("Permute")
def _permute(layer: Layer, bottoms: list[Shape]) -> Rule:
    """SSD's Permute: the given order, then the axes it leaves out in increasing order."""
    shape = bottoms[0]
    order = [int(o) for o in layer.param.permute_param.order]
    if len(set(order)) != len(order) or any(o >= len(shape) for o in order):
        fail(f"order {order} must name distinct axes of the {len(shape)}-D bottom")
    order += [axis for axis in range(len(shape)) if axis not in order]
    return Rule([tuple(shape[o] for o in order)])


@rule("Tile")
def _tile(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.tile_param
    shape = list(bottoms[0])
    axis = canonical_axis(p.axis, len(shape))
    if p.tiles <= 0:
        fail("tiles must be positive")
    shape[axis] *= p.tiles
    return Rule([tuple(shape)])


@rule("Reduction")
def _reduction(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Reduces all axes from ``axis`` on: top = bottom.shape[:axis]."""
    shape = bottoms[0]
    return Rule([shape[:canonical_axis(layer.param.reduction_param.axis, len(shape))]])


@rule("ArgMax")
def _argmax(layer: Layer, bottoms: list[Shape]) -> Rule:
    """With axis: that axis becomes top_k. Without: (N, 1 or 2 with out_max_val, top_k, 1...)."""
    p = layer.param.argmax_param
    shape = bottoms[0]
    if p.HasField("axis"):
        axis = canonical_axis(p.axis, len(shape))
        if p.top_k > shape[axis]:
            fail(f"top_k {p.top_k} exceeds axis {axis} of {shape}")
        return Rule([shape[:axis] + (p.top_k,) + shape[axis + 1:]])
    if p.top_k > prod(shape[1:]):
        fail(f"top_k {p.top_k} exceeds the {prod(shape[1:])} values per item")
    top = [1] * max(3, len(shape))
    top[0], top[1], top[2] = shape[0], 2 if p.out_max_val else 1, p.top_k
    return Rule([tuple(top)])


@rule("BatchReindex", bottoms=2)
def _batch_reindex(layer: Layer, bottoms: list[Shape]) -> Rule:
    data, index = bottoms
    if len(index) != 1:
        fail(f"index bottom must be 1-D, got {index}")
    return Rule([index + data[1:]])


@rule("Filter", bottoms=(2, None), tops=(1, None))
def _filter(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Data-dependent in Caffe (the first axis is the number of selected items); the declared
    shapes here are the unfiltered bottoms, an upper bound."""
    if len(layer.tops) != len(bottoms) - 1:
        fail(f"needs {len(bottoms) - 1} tops (one per bottom but the selector), has {len(layer.tops)}")
    selector = bottoms[-1]
    for blob, shape in zip(layer.bottoms, bottoms[:-1]):
        if shape[:1] != selector[:1]:
            fail(f"bottom '{blob.name}' {shape} and the selector {selector} differ in the first axis")
    return Rule(list(bottoms[:-1]))


@rule("Silence", "HDF5Output", bottoms=(1, None), tops=0)
def _sink(layer: Layer, bottoms: list[Shape]) -> Rule:
    return Rule([])


# --------------------------------------------------------------- losses, SSD


@rule("Accuracy", bottoms=2, tops=(1, 2))
def _accuracy(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Top 0 is a scalar; the optional top 1 holds one accuracy per class."""
    shape = bottoms[0]
    axis = canonical_axis(layer.param.accuracy_param.axis, len(shape))
    return Rule([(), (shape[axis],)][:len(layer.tops)])


@rule("SoftmaxWithLoss", "InfogainLoss", bottoms=(2, 3), tops=(1, 2))
def _softmax_loss(layer: Layer, bottoms: list[Shape]) -> Rule:
    """A scalar loss; the optional second top is the softmax of bottom[0]."""
    return Rule([(), bottoms[0]][:len(layer.tops)])


@rule("EuclideanLoss", "HingeLoss", "MultinomialLogisticLoss", "SigmoidCrossEntropyLoss",
      "MultiBoxLoss", bottoms=(2, None))
def _loss(layer: Layer, bottoms: list[Shape]) -> Rule:
    return Rule([()])


@rule("ContrastiveLoss", bottoms=3)
def _contrastive_loss(layer: Layer, bottoms: list[Shape]) -> Rule:
    return Rule([()])


def _num_priors(p: caffe_pb2.PriorBoxParameter) -> int:
    """Caffe-SSD's count: one prior per min_size and aspect ratio, plus one per max_size."""
    if not len(p.min_size):
        fail("prior_box_param needs at least one min_size")
    if len(p.max_size) and len(p.max_size) != len(p.min_size):
        fail(f"{len(p.max_size)} max_size values for {len(p.min_size)} min_size values")
    return len(box_sizes(p))


@rule("PriorBox", bottoms=2)
def _prior_box(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(1, 2, H*W*num_priors*4): box corners, then their variances."""
    shape = bottoms[0]
    if len(shape) != 4:
        fail(f"PriorBox needs a 4-D feature map, got {shape}")
    return Rule([(1, 2, shape[2] * shape[3] * _num_priors(layer.param.prior_box_param) * 4)])


@rule("DetectionOutput", bottoms=(3, 4))
def _detection_output(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Data-dependent in Caffe: forward reshapes to (1, 1, detections kept, 7). The declared
    shape here is (1, 1, keep_top_k, 7), or (1, 1, 1, 7) without keep_top_k (Caffe's pre-forward shape)."""
    keep = layer.param.detection_output_param.keep_top_k
    return Rule([(1, 1, keep if keep > 0 else 1, 7)])
