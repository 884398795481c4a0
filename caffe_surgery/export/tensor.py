"""Layers that move, split, join or reduce values: Concat, Slice, Split, Flatten, Reshape, Crop,
Permute, Tile, Softmax, Reduction, ArgMax."""
from onnx import TensorProto

from ..caffe_pb2 import ReductionParameter
from ..layer_shapes import canonical_axis
from .context import LayerContext
from .registry import converter


@converter("Concat")
def concat(ctx: LayerContext) -> None:
    """Concat along ``axis`` (or the legacy ``concat_dim`` when given)."""
    p = ctx.param.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") else canonical_axis(p.axis, len(ctx.bottom_shape()))
    ctx.node("Concat", ctx.bottoms(), ctx.top(), axis=axis)


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


@converter("Slice")
def slice_layer(ctx: LayerContext) -> None:
    """ONNX Split with explicit sizes along ``axis`` (or the legacy ``slice_dim``)."""
    p = ctx.param.slice_param
    shape = ctx.bottom_shape()
    axis = p.slice_dim if p.HasField("slice_dim") else canonical_axis(p.axis, len(shape))
    if len(ctx.layer.tops) == 1:
        ctx.identity(ctx.bottom(), ctx.top())
        return
    sizes = slice_sizes(ctx, shape[axis])
    ctx.multi("Split", [ctx.bottom(), ctx.ints(sizes, "split")], ctx.tops(), axis=axis)


@converter("Split")
def split(ctx: LayerContext) -> None:
    """Caffe's Split copies its bottom to every top."""
    for top in ctx.tops():
        ctx.identity(ctx.bottom(), top)


@converter("Flatten")
def flatten(ctx: LayerContext) -> None:
    """Reshape to the inferred shape; dim 0 stays the batch unless the flattened range includes it."""
    axis = canonical_axis(ctx.param.flatten_param.axis, len(ctx.bottom_shape()))
    ctx.reshape(ctx.bottom(), ctx.top_shape(), keeps_batch=axis > 0, out=ctx.top())


@converter("Reshape")
def reshape(ctx: LayerContext) -> None:
    """Reshape to the inferred shape; dim 0 stays the batch when Caffe copies it (axis > 0 or dim 0 is 0)."""
    p = ctx.param.reshape_param
    ndim = len(ctx.bottom_shape())
    start = p.axis if p.axis >= 0 else ndim + p.axis + 1
    dims = list(p.shape.dim)
    keeps_batch = start > 0 or (p.num_axes != 0 and bool(dims) and dims[0] == 0)
    ctx.reshape(ctx.bottom(), ctx.top_shape(), keeps_batch=keeps_batch, out=ctx.top())


@converter("Crop")
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


@converter("Permute")
def permute(ctx: LayerContext) -> None:
    """SSD's Permute: Transpose by ``order``, the axes it leaves out following in their order."""
    order = list(ctx.param.permute_param.order)
    ndim = len(ctx.bottom_shape())
    perm = order + [axis for axis in range(ndim) if axis not in order]
    if sorted(perm) != list(range(ndim)):
        raise ctx.unsupported(f"with order {order} for a {ndim}-D bottom")
    ctx.node("Transpose", [ctx.bottom()], ctx.top(), perm=perm)


@converter("Tile")
def tile(ctx: LayerContext) -> None:
    """Repeat the block from ``axis`` on ``tiles`` times."""
    p = ctx.param.tile_param
    ndim = len(ctx.bottom_shape())
    repeats = [1] * ndim
    repeats[canonical_axis(p.axis, ndim)] = p.tiles
    ctx.node("Tile", [ctx.bottom(), ctx.ints(repeats, "repeats")], ctx.top())


@converter("Softmax")
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


@converter("Reduction")
def reduction(ctx: LayerContext) -> None:
    """Reduce every axis from ``axis`` on (SUM, ASUM, SUMSQ or MEAN), times ``coeff``."""
    p = ctx.param.reduction_param
    ndim = len(ctx.bottom_shape())
    axes = list(range(canonical_axis(p.axis, ndim), ndim))
    reduced = ctx.reduce(_REDUCTIONS[p.operation], ctx.bottom(), axes, keepdims=False)
    ctx.scaled(reduced, p.coeff, ctx.top(), "coeff")


@converter("ArgMax")
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
