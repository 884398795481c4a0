"""Layers that move, split, join or reduce values: Concat, Slice, Split, Flatten, Reshape, Crop,
Permute, Tile, Softmax, Reduction, ArgMax, BatchReindex, Filter, ShuffleChannel."""
from __future__ import annotations

from dataclasses import replace

from math import prod

import numpy as np
from onnx import TensorProto

from ..caffe_pb2 import ReductionParameter
from ..errors import PlanError
from ..export.context import LayerContext
from ..graph import Layer
from .channels import PASS_THROUGH, PIN, custom, keep_or_pin, pin_all
from .fork_params import fork_param
from .registry import Departure, LayerType, NotApplicable, Train, declare
from .shape_rules import Rule, Shape, canonical_axis, fail


def concat(ctx: LayerContext) -> None:
    """Concat along ``axis`` (or the legacy ``concat_dim`` when given)."""
    ctx.node("Concat", ctx.bottoms(), ctx.top(), axis=concat_axis(ctx.param.concat_param, len(ctx.bottom_shape())))


def slice_sizes(ctx: LayerContext, dim: int) -> list[int]:
    """Sizes of the Slice layer's pieces: between slice points, or equal parts."""
    points = list(ctx.param.slice_param.slice_point)
    count = len(ctx.layer.tops)
    if not points:
        if dim % count:
            raise ctx.unsupported(f"splitting {dim} into {count} equal parts")
        return [dim // count] * count
    if len(points) != count - 1:
        raise ctx.unsupported(f"with {len(points)} slice points for {count} tops")
    bounds = [0] + points + [dim]
    return [end - start for start, end in zip(bounds, bounds[1:])]


def slice_layer(ctx: LayerContext) -> None:
    """ONNX Split with explicit sizes along ``axis`` (or the legacy ``slice_dim``)."""
    shape = ctx.bottom_shape()
    axis = slice_axis(ctx.param.slice_param, len(shape))
    if len(ctx.layer.tops) == 1:
        ctx.identity(ctx.bottom(), ctx.top())
        return
    sizes = slice_sizes(ctx, shape[axis])
    ctx.multi("Split", [ctx.bottom(), ctx.ints(sizes, "split")], ctx.tops(), axis=axis)


def split(ctx: LayerContext) -> None:
    """Caffe's Split copies its bottom to every top."""
    for top in ctx.tops():
        ctx.identity(ctx.bottom(), top)


def flatten(ctx: LayerContext) -> None:
    """Reshape to the inferred shape; dim 0 stays the batch unless the flattened range includes it."""
    axis = canonical_axis(ctx.param.flatten_param.axis, len(ctx.bottom_shape()))
    ctx.reshape(ctx.bottom(), ctx.top_shape(), keeps_batch=axis > 0, out=ctx.top())


def reshape(ctx: LayerContext) -> None:
    """Caffe's dims taken literally: a fixed batch reshapes to the inferred shape; a dynamic batch copies
    the axes before the span (0), writes the span's dims as given (0 copies and -1 infers, as in Caffe)
    and fixes the axes after it. Dims that tie the batch axis to a number make the result depend on the
    batch size, which a dynamic-batch graph cannot follow: that is reported (``ctx.batch_dependent``)."""
    if not ctx.builder.dynamic_batch:
        ctx.reshape(ctx.bottom(), ctx.top_shape(), keeps_batch=True, out=ctx.top())
        return
    bottom, top = ctx.bottom_shape(), ctx.top_shape()
    start, end, dims = reshape_span(ctx.param.reshape_param, len(bottom))
    aligned = len(dims) == end - start
    target = [0] * start + dims + ([0] * (len(bottom) - end) if aligned else list(bottom[end:]))
    if not _batch_wise(start, end, dims, bottom, top):
        ctx.batch_dependent(f"reshape_param.shape {dims} fixes the batch axis (Caffe's result depends on the "
                            "batch size)")
    ctx.node("Reshape", [ctx.bottom(), ctx.ints(target, "shape")], ctx.top())


def _batch_wise(start: int, end: int, dims: list[int], bottom: Shape, top: Shape) -> bool:
    """The literal reshape keeps every sample apart at any batch size: the batch axis is copied, or -1
    takes a whole number of rows per sample."""
    if start > 0 or (end == 0 and not dims):
        return True
    if end == 0 or not dims:
        return False
    if dims[0] == 0:
        return True
    return dims[0] == -1 and prod(bottom[1:]) % max(prod(top[1:]), 1) == 0


def crop(ctx: LayerContext) -> None:
    """Cut bottom 0 to bottom 1's size on the axes from ``axis`` on, starting at the offsets."""
    p = ctx.param.crop_param
    shape, reference = ctx.bottom_shape(), ctx.bottom_shape(1)
    axis = canonical_axis(p.axis, len(shape))
    axes = list(range(axis, len(shape)))
    offsets = list(p.offset)
    if len(offsets) == 1:
        offsets = offsets * len(axes)
    offsets = offsets or [0] * len(axes)
    if len(offsets) != len(axes):
        raise ctx.unsupported(f"with {len(offsets)} offsets for {len(axes)} cropped axes")
    ends = [offset + reference[a] for offset, a in zip(offsets, axes)]
    ctx.node("Slice", [ctx.bottom(), ctx.ints(offsets, "starts"), ctx.ints(ends, "ends"), ctx.ints(axes, "axes")],
             ctx.top())


def permute(ctx: LayerContext) -> None:
    """SSD's Permute: Transpose by ``order``, the axes it leaves out following in their order."""
    order = list(ctx.param.permute_param.order)
    ndim = len(ctx.bottom_shape())
    perm = order + [axis for axis in range(ndim) if axis not in order]
    if sorted(perm) != list(range(ndim)):
        raise ctx.unsupported(f"with order {order} for a {ndim}-D bottom")
    ctx.node("Transpose", [ctx.bottom()], ctx.top(), perm=perm)


def tile(ctx: LayerContext) -> None:
    """Repeat the block from ``axis`` on ``tiles`` times."""
    p = ctx.param.tile_param
    ndim = len(ctx.bottom_shape())
    repeats = [1] * ndim
    repeats[canonical_axis(p.axis, ndim)] = p.tiles
    ctx.node("Tile", [ctx.bottom(), ctx.ints(repeats, "repeats")], ctx.top())


def softmax(ctx: LayerContext) -> None:
    """ONNX Softmax (opset >= 13) normalizes along one axis, as Caffe does."""
    axis = canonical_axis(ctx.param.softmax_param.axis, len(ctx.bottom_shape()))
    ctx.node("Softmax", [ctx.bottom()], ctx.top(), axis=axis)


_REDUCTIONS = {
    ReductionParameter.SUM: "ReduceSum",
    ReductionParameter.ASUM: "ReduceL1",
    ReductionParameter.SUMSQ: "ReduceSumSquare",
    ReductionParameter.MEAN: "ReduceMean",
}


def reduction(ctx: LayerContext) -> None:
    """Reduce every axis from ``axis`` on (SUM, ASUM, SUMSQ or MEAN), times ``coeff``."""
    p = ctx.param.reduction_param
    ndim = len(ctx.bottom_shape())
    axes = list(range(canonical_axis(p.axis, ndim), ndim))
    reduced = ctx.reduce(_REDUCTIONS[p.operation], ctx.bottom(), axes, keepdims=False)
    ctx.scaled(reduced, p.coeff, ctx.top(), "coeff")


def argmax(ctx: LayerContext) -> None:
    """Top-k indices (as floats) or values along ``axis``; without an axis, per sample over all its values,
    giving (N, 1, k) indices or (N, 2, k) indices-then-values padded to the inferred shape."""
    p = ctx.param.argmax_param
    k = ctx.ints([p.top_k], "k")
    if p.HasField("axis"):
        axis = canonical_axis(p.axis, len(ctx.bottom_shape()))
        values, indices = ctx.multi("TopK", [ctx.bottom(), k], [ctx.fresh("values"), ctx.fresh("indices")],
                                    axis=axis)
        if p.out_max_val:
            ctx.identity(values, ctx.top())
        else:
            ctx.node("Cast", [indices], ctx.top(), to=TensorProto.FLOAT)
        return
    flat = ctx.node("Flatten", [ctx.bottom()], axis=1)
    values, indices = ctx.multi("TopK", [flat, k], [ctx.fresh("values"), ctx.fresh("indices")], axis=1)
    rows = [ctx.unsqueeze(ctx.node("Cast", [indices], to=TensorProto.FLOAT), [1])]
    if p.out_max_val:
        rows.append(ctx.unsqueeze(values, [1]))
    stacked = rows[0] if len(rows) == 1 else ctx.node("Concat", rows, axis=1)
    ctx.reshape(stacked, ctx.top_shape(), keeps_batch=True, out=ctx.top())


def shuffle_groups(layer: Layer) -> int:
    """ShuffleNet's ``shuffle_channel_param.group`` (a fork message the schema lacks; default 1)."""
    group = fork_param(layer.param, "shuffle_channel_param", {"group": 1})["group"]
    if group < 1:
        fail(f"shuffle_channel_param.group must be positive, got {group}")
    return group


def shuffle_channel(ctx: LayerContext) -> None:
    """ShuffleNet's channel shuffle: (N, g, C/g, ...) transposed to (N, C/g, g, ...), so output channel
    i * g + k is input channel k * C/g + i."""
    shape = ctx.bottom_shape()
    group = shuffle_groups(ctx.layer)
    split = ctx.reshape(ctx.bottom(), (shape[0], group, shape[1] // group) + shape[2:], keeps_batch=True)
    perm = [0, 2, 1] + list(range(3, len(shape) + 1))
    ctx.reshape(ctx.node("Transpose", [split], perm=perm), shape, keeps_batch=True, out=ctx.top())


# ------------------------------------------------------------------ axes


def legacy_axis(p, legacy: str, ndim: int) -> int:
    """Concat's/Slice's axis: the legacy ``concat_dim``/``slice_dim`` when given, else ``axis``; Caffe refuses both."""
    if p.HasField(legacy) and p.HasField("axis"):
        fail(f"give either axis or {legacy}, not both (Caffe refuses both)")
    if p.HasField(legacy):
        if getattr(p, legacy) >= ndim:
            fail(f"{legacy} {getattr(p, legacy)} is out of range for a {ndim}-D bottom")
        return getattr(p, legacy)
    return canonical_axis(p.axis, ndim)


def concat_axis(p, ndim: int) -> int:
    return legacy_axis(p, "concat_dim", ndim)


def slice_axis(p, ndim: int) -> int:
    return legacy_axis(p, "slice_dim", ndim)


def reshape_span(p, ndim: int) -> tuple[int, int, list[int]]:
    """(start, end, dims) of a Reshape: the bottom axes [start, end) become ``dims``."""
    if not -(ndim + 1) <= p.axis <= ndim:
        fail(f"axis {p.axis} is out of range for a {ndim}-D bottom")
    start = p.axis + ndim + 1 if p.axis < 0 else p.axis
    if p.num_axes < -1:
        fail(f"num_axes must be -1 or non-negative, got {p.num_axes}")
    end = ndim if p.num_axes == -1 else start + p.num_axes
    if end > ndim:
        fail(f"axis {p.axis} + num_axes {p.num_axes} exceed the bottom's {ndim} axes")
    return start, end, [int(d) for d in p.shape.dim]


# ------------------------------------------------------------------ shapes


def _concat_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    first = bottoms[0]
    axis = concat_axis(layer.param.concat_param, len(first))
    for blob, shape in zip(layer.bottoms[1:], bottoms[1:]):
        if len(shape) != len(first) or shape[:axis] + shape[axis + 1:] != first[:axis] + first[axis + 1:]:
            fail(f"bottom '{blob.name}' {shape} does not match '{layer.bottoms[0].name}' {first} "
                 f"outside axis {axis}")
    total = sum(shape[axis] for shape in bottoms)
    return Rule([first[:axis] + (total,) + first[axis + 1:]])


def _slice_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.slice_param
    shape = bottoms[0]
    axis = slice_axis(p, len(shape))
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


def _split_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    return Rule([bottoms[0]] * len(layer.tops))


def _flatten_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.flatten_param
    shape = bottoms[0]
    start = canonical_axis(p.axis, len(shape))
    end = canonical_axis(p.end_axis, len(shape))
    if end < start:
        fail(f"end_axis {p.end_axis} comes before axis {p.axis}")
    return Rule([shape[:start] + (prod(shape[start:end + 1]),) + shape[end + 1:]])


def _reshape_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """0 copies the bottom dimension at that place, -1 takes what is left; axis/num_axes pick the span."""
    shape = bottoms[0]
    ndim = len(shape)
    start, end, dims = reshape_span(layer.param.reshape_param, ndim)
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


def _crop_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
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


def _permute_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """SSD's Permute: the given order, then the axes it leaves out in increasing order."""
    shape = bottoms[0]
    order = [int(o) for o in layer.param.permute_param.order]
    if len(set(order)) != len(order) or any(o >= len(shape) for o in order):
        fail(f"order {order} must name distinct axes of the {len(shape)}-D bottom")
    order += [axis for axis in range(len(shape)) if axis not in order]
    return Rule([tuple(shape[o] for o in order)])


def _tile_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    p = layer.param.tile_param
    shape = list(bottoms[0])
    axis = canonical_axis(p.axis, len(shape))
    if p.tiles <= 0:
        fail("tiles must be positive")
    shape[axis] *= p.tiles
    return Rule([tuple(shape)])


def _reduction_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Reduces all axes from ``axis`` on: top = bottom.shape[:axis]."""
    shape = bottoms[0]
    return Rule([shape[:canonical_axis(layer.param.reduction_param.axis, len(shape))]])


def _argmax_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
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


def _batch_reindex_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    data, index = bottoms
    if len(index) != 1:
        fail(f"index bottom must be 1-D, got {index}")
    return Rule([index + data[1:]])


def _shuffle_channel_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    shape = bottoms[0]
    if len(shape) < 2 or shape[1] % shuffle_groups(layer):
        fail(f"the {shape[1] if len(shape) > 1 else 0} channels of {shape} do not split into "
             f"{shuffle_groups(layer)} groups")
    return Rule([shape])


def _filter_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Data-dependent in Caffe (the first axis is the number of selected items); the declared
    shapes here are the unfiltered bottoms, an upper bound."""
    if len(layer.tops) != len(bottoms) - 1:
        fail(f"needs {len(bottoms) - 1} tops (one per bottom but the selector), has {len(layer.tops)}")
    selector = bottoms[-1]
    for blob, shape in zip(layer.bottoms, bottoms[:-1]):
        if shape[:1] != selector[:1]:
            fail(f"bottom '{blob.name}' {shape} and the selector {selector} differ in the first axis")
    return Rule(list(bottoms[:-1]))


# ------------------------------------------------------------------ channels


@custom("along the channels: joins its bottoms' channels in order; along other axes: couples its bottoms")
def _concat_channels(builder, layer, bottoms) -> None:
    if concat_axis(layer.param.concat_param, len(builder.shapes.blob(layer.bottoms[0]))) == 1:
        joined = [p for layout in bottoms for p in layout]
        builder.member(joined, layer, "structure")
        builder.layouts[layer.tops[0]] = joined
        return
    builder.merge(layer, bottoms)


@custom("along the channels: cuts its bottom's channels by offsets (slice points follow); else keeps them")
def _slice_channels(builder, layer, bottoms) -> None:
    if slice_axis(layer.param.slice_param, len(builder.shapes.blob(layer.bottoms[0]))) != 1:
        builder.pass_through(layer, bottoms[0], "structure")
        return
    start = 0
    for top in layer.tops:
        stop = start + builder.channels(top)
        piece = builder.cut(bottoms[0], start, stop)
        if piece is None:
            pin_all(builder, layer, bottoms[:1], f"Slice '{layer.name}' cuts inside a flattened channel",
                    f"output of Slice '{layer.name}'")
            return
        builder.layouts[top] = piece
        start = stop
    builder.member(bottoms[0], layer, "structure")


@custom("from the channels to the end: widens each channel to a block; from a later axis: keeps them")
def _flatten_channels(builder, layer, bottoms) -> None:
    param = layer.param.flatten_param
    shape = builder.shapes.blob(layer.bottoms[0])
    start, end = canonical_axis(param.axis, len(shape)), canonical_axis(param.end_axis, len(shape))
    if start == 1 and end == len(shape) - 1:
        builder.member(bottoms[0], layer, "structure")
        builder.layouts[layer.tops[0]] = builder.flattened(bottoms[0], layer.bottoms[0])
        return
    keep_or_pin(builder, layer, bottoms,
                None if start >= 2 else f"Flatten '{layer.name}' folds the channels into the batch axis")


@custom("to (N, C*H*W): widens each channel to a block; a maxout reshape builds units; else pins")
def _reshape_channels(builder, layer, bottoms) -> None:
    before, after = builder.shapes.blob(layer.bottoms[0]), builder.shapes.blob(layer.tops[0])
    if len(after) == 2 and after[0] == before[0]:
        builder.member(bottoms[0], layer, "structure")
        builder.layouts[layer.tops[0]] = builder.flattened(bottoms[0], layer.bottoms[0])
        return
    if builder.maxout_reshape(layer, bottoms[0], before, after):
        return
    keep_or_pin(builder, layer, bottoms[:1],
                None if tuple(before) == tuple(after) else f"Reshape '{layer.name}' regroups the channels")


@custom("crops spatial axes only: keeps the channels; crops the channels: pins; its reference is pinned")
def _crop_channels(builder, layer, bottoms) -> None:
    builder.pin(bottoms[1], f"reference shape of Crop '{layer.name}'")
    spatial_only = canonical_axis(layer.param.crop_param.axis, len(builder.shapes.blob(layer.bottoms[0]))) >= 2
    keep_or_pin(builder, layer, bottoms[:1],
                None if spatial_only else f"cropped along the channels by Crop '{layer.name}'")


@custom("interleaves its channel groups: pins the channels it reads (a subset would shuffle differently)")
def _shuffle_channels(builder, layer, bottoms) -> None:
    groups = shuffle_groups(layer)
    keep_or_pin(builder, layer, bottoms,
                None if groups == 1 else f"ShuffleChannel '{layer.name}' interleaves its {groups} channel groups")


# ------------------------------------------------------------------ surgery


def _rewrite_slice(s, layer: Layer, param, blobs):
    """Slice points follow the surviving channels of each top."""
    if s.groups.maxout_built_by(layer.name) is not None:
        return blobs
    slice_param = param.slice_param
    if slice_axis(slice_param, len(s.shapes.blob(layer.bottoms[0]))) != 1:
        return blobs
    widths = [s.new_width(top) for top in layer.tops]
    slice_param.ClearField("slice_point")
    slice_param.slice_point.extend(np.cumsum(widths[:-1]).tolist())
    return blobs


def _rewrite_reshape(s, layer: Layer, param, blobs):
    """Dims counting channels (a flatten to (N, C*H*W), a maxout's units and k) follow the survivors."""
    dims = param.reshape_param.shape.dim
    after = s.shapes.blob(layer.tops[0])
    group = s.groups.maxout_built_by(layer.name)
    if group is not None:
        if group.id not in s.renumber:
            return blobs
        alive = s.renumber[group.id][group.maxout.neurons] >= 0
        target = {1: int(alive.any(axis=1).sum()), 2: s.kept_k(group)}
    else:
        if len(after) != 2 or s.blob_positions(layer.bottoms[0]) is None:
            return blobs
        spatial = int(np.prod(s.shapes.blob(layer.bottoms[0])[2:], dtype=np.int64))
        target = {1: s.new_width(layer.bottoms[0]) * spatial}
    if param.reshape_param.axis != 0 or param.reshape_param.num_axes != -1 or len(dims) != len(after):
        raise PlanError("cannot rewrite a Reshape with axis/num_axes around pruned channels", layer=layer.name)
    for axis, value in target.items():
        if dims[axis] > 0:
            dims[axis] = value
    return blobs


# ------------------------------------------------------------------ training


def _concat_op(layer, bottoms, phase):
    import torch
    axis = concat_axis(layer.param.concat_param, len(bottoms[0]))
    return lambda x, blobs: [torch.cat(x, dim=axis)]


def _slice_op(layer, bottoms, phase):
    import torch
    axis = slice_axis(layer.param.slice_param, len(bottoms[0]))
    sizes = [shape[axis] for shape in _slice_shape(layer, bottoms).tops]
    return lambda x, blobs: list(torch.split(x[0], sizes, dim=axis))


def _split_op(layer, bottoms, phase):
    return lambda x, blobs: [x[0]] * len(layer.tops)


def _reshape_op(layer, bottoms, phase):
    return lambda x, blobs: [x[0].reshape(_reshape_shape(layer, [tuple(x[0].shape)]).tops[0])]


def _flatten_op(layer, bottoms, phase):
    p = layer.param.flatten_param
    ndim = len(bottoms[0])
    start, end = canonical_axis(p.axis, ndim), canonical_axis(p.end_axis, ndim)
    return lambda x, blobs: [x[0].flatten(start, end)]


def _softmax_op(layer, bottoms, phase):
    import torch.nn.functional as F
    axis = canonical_axis(layer.param.softmax_param.axis, len(bottoms[0]))
    return lambda x, blobs: [F.softmax(x[0], dim=axis)]


def _shuffle_channel_op(layer, bottoms, phase):
    group = shuffle_groups(layer)

    def run(x, blobs):
        shape = tuple(x[0].shape)
        split = x[0].reshape(shape[0], group, shape[1] // group, *shape[2:])
        return [split.transpose(1, 2).reshape(shape)]
    return run


def _softmax_shape(layer: Layer, bottoms: list[Shape]) -> Rule:
    canonical_axis(layer.param.softmax_param.axis, len(bottoms[0]))
    return Rule([bottoms[0]])


# ------------------------------------------------------------------ declarations

_COUNTS_NO_CHANNELS = NotApplicable("nothing in its params counts channels")
_PINNED = NotApplicable("it mixes channels (pinned)")
_NO_TORCH = NotApplicable("no torch op is written for it yet")

declare(
    LayerType("Concat", shape=_concat_shape, export=concat, channels=_concat_channels, rewrite=_COUNTS_NO_CHANNELS,
              train=Train(_concat_op), bottoms=(1, None)),
    LayerType("Slice", shape=_slice_shape, export=slice_layer, channels=_slice_channels, rewrite=_rewrite_slice,
              train=Train(_slice_op), tops=(1, None)),
    LayerType("Split", shape=_split_shape, export=split, channels=PASS_THROUGH, rewrite=_COUNTS_NO_CHANNELS,
              train=Train(_split_op), tops=(1, None)),
    LayerType("Flatten", shape=_flatten_shape, export=flatten, channels=_flatten_channels,
              rewrite=_COUNTS_NO_CHANNELS, train=Train(_flatten_op)),
    LayerType("Reshape", shape=_reshape_shape, export=reshape, channels=_reshape_channels, rewrite=_rewrite_reshape,
              train=Train(_reshape_op)),
    LayerType("Crop", shape=_crop_shape, export=crop, channels=_crop_channels,
              rewrite=NotApplicable("its offsets on the channel axis are pinned"), train=_NO_TORCH, bottoms=2),
    LayerType("Permute", shape=_permute_shape, export=permute, channels=PIN, rewrite=_PINNED, train=_NO_TORCH),
    LayerType("Tile", shape=_tile_shape, export=tile, channels=PIN, rewrite=_PINNED, train=_NO_TORCH,
              departures=(Departure("OpenCV cannot read Caffe's Tile"),)),
    LayerType("Reduction", shape=_reduction_shape, export=reduction, channels=PIN, rewrite=_PINNED, train=_NO_TORCH,
              departures=(Departure("OpenCV has no Reduction layer"),)),
    LayerType("ArgMax", shape=_argmax_shape, export=argmax, channels=PIN, rewrite=_PINNED, train=_NO_TORCH,
              departures=(Departure("OpenCV has no ArgMax layer"),)),
    LayerType("BatchReindex", shape=_batch_reindex_shape,
              export=NotApplicable("no ONNX converter is written for BatchReindex"), channels=PIN, rewrite=_PINNED,
              train=_NO_TORCH, bottoms=2),
    LayerType("Filter", shape=_filter_shape,
              export=NotApplicable("data-dependent output size; no ONNX converter is written for Filter"),
              channels=PIN, rewrite=_PINNED, train=_NO_TORCH, bottoms=(2, None), tops=(1, None)),
    LayerType("ShuffleChannel", shape=_shuffle_channel_shape, export=shuffle_channel, channels=_shuffle_channels,
              rewrite=NotApplicable("its channels are pinned (group 1 keeps them as they are)"),
              train=Train(_shuffle_channel_op)),
)
SOFTMAX = declare(LayerType("Softmax", shape=_softmax_shape, export=softmax, channels=PIN, rewrite=_PINNED,
                            train=Train(_softmax_op)))
declare(replace(SOFTMAX, name="SoftMax",  # the spelling OpenCV's importer also accepts
                departures=(Departure("OpenCV's SoftMax normalizes along the last axis unless softmax_param.axis "
                                      "is given", lambda layer: not layer.param.softmax_param.HasField("axis")),)))
