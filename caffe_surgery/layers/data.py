"""Data layers (their tops that the exported graph reads become graph inputs), Parameter and HDF5Output."""
from __future__ import annotations

from ..export.context import LayerContext
from ..graph import Layer
from .channels import NET_INPUT, PIN
from .registry import DATA, LayerType, NotApplicable, declare
from .shape_rules import Rule, Shape, SourceContext, fail


def data_layer(ctx: LayerContext) -> None:
    """Declare every used top as a graph input named after its blob (labels only when read)."""
    for top in ctx.layer.tops:
        if top in ctx.builder.used:
            ctx.builder.add_input(top)


def _labels(ctx: SourceContext, data: Shape) -> list[Shape]:
    """Data, then one (N,) label top per further top."""
    return [data] + [ctx.top_shape(i, (data[0],)) for i in range(1, len(ctx.layer.tops))]


def _input(layer: Layer, ctx: SourceContext) -> list[Shape]:
    declared = [tuple(int(d) for d in s.dim) for s in layer.param.input_param.shape]
    if len(declared) not in (0, 1, len(layer.tops)):
        fail(f"input_param has {len(declared)} shapes for {len(layer.tops)} tops (give one, or one per top)")
    if len(declared) == 1:
        declared = declared * len(layer.tops)
    return [ctx.top_shape(i, declared[i] if declared else None) for i in range(len(layer.tops))]


def _data(layer: Layer, ctx: SourceContext) -> list[Shape]:
    """C, H and W live in the database; only the user or the data module can tell them."""
    p = layer.param.data_param if layer.type == "Data" else layer.param.window_data_param
    return _labels(ctx, ctx.top_shape(0, None, p.batch_size))


def _hdf5_data(layer: Layer, ctx: SourceContext) -> list[Shape]:
    """Every top is a data set of the HDF5 files; their shapes are not in the prototxt."""
    batch = layer.param.hdf5_data_param.batch_size
    return [ctx.top_shape(i, None, batch) for i in range(len(layer.tops))]


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


def _memory_data(layer: Layer, ctx: SourceContext) -> list[Shape]:
    p = layer.param.memory_data_param
    return _labels(ctx, ctx.top_shape(0, (p.batch_size, p.channels, p.height, p.width)))


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


def _parameter_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Its top is its own learned blob."""
    shape = tuple(int(d) for d in layer.param.parameter_param.shape.dim)
    return Rule([shape], [shape])


def _sink_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    return Rule([])


# ------------------------------------------------------------------ declarations

_FED = NotApplicable("a data layer has no params that count channels")
FED_BY_TRAINER = NotApplicable("the trainer feeds its tops")
_NOT_FED = NotApplicable("the trainer cannot feed it")


def _data_layer(name: str, shape, tops=(1, None), dataset: bool = False, fed: bool = False) -> LayerType:
    return LayerType(name, shape=shape, export=data_layer, channels=NET_INPUT, rewrite=_FED,
                     train=FED_BY_TRAINER if fed or dataset else _NOT_FED, kind=DATA, tops=tops, dataset=dataset)


declare(
    _data_layer("Input", _input, fed=True),
    _data_layer("Data", _data, tops=(1, 2), dataset=True),
    _data_layer("ImageData", _image_data, tops=(1, 2), dataset=True),
    _data_layer("WindowData", _data, tops=(1, 2)),
    _data_layer("HDF5Data", _hdf5_data),
    _data_layer("MemoryData", _memory_data, tops=2),
    _data_layer("DummyData", _dummy_data),
    LayerType("Parameter", shape=_parameter_shape,
              export=NotApplicable("no ONNX converter is written for Parameter"), channels=NET_INPUT,
              rewrite=NotApplicable("its blob feeds the net as an input (pinned)"),
              train=NotApplicable("no torch op is written for it yet"), bottoms=0),
    LayerType("HDF5Output", shape=_sink_shape, export=NotApplicable("it writes files, not tensors"), channels=PIN,
              rewrite=NotApplicable("it has no tops"), train=NotApplicable("it writes files, not tensors"),
              bottoms=(1, None), tops=0),
)
