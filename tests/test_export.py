"""ONNX export (caffe_surgery.onnx_export): parity with OpenCV's Caffe importer and with numpy
references of Caffe's semantics, checker/strict shape inference, names, taps, errors."""
import dataclasses
import math
import re

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2, layers
from caffe_surgery.errors import UnsupportedLayerError
from caffe_surgery.graph import build_net
from caffe_surgery.layers.resize import interp_geometry
from caffe_surgery.layers.yolo import reorg_stride
from caffe_surgery.model import load_model
from caffe_surgery.onnx_export import export_onnx, graph_outputs, save_onnx, supported_types, tensor_names
from caffe_surgery.shapes import infer_shapes
from caffe_surgery.textproto import preserved_texts
from conftest import REAL_MODELS
from netgen import CORPUS, generate, parse
from opencv_layers import fork_layers
import ssd_reference

RNG_SEED = 7


def check_model(model: onnx.ModelProto) -> None:
    """What every export must pass: the full checker and strict shape inference."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model with onnxruntime on the CPU; results by output name."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def assert_close(actual: np.ndarray, reference: np.ndarray, what: str) -> None:
    """The parity criterion: max |difference| <= 1e-4 * max(1, max |reference|)."""
    reference = np.asarray(reference, dtype=np.float32)
    assert actual.size == reference.size, f"{what}: {actual.shape} vs reference {reference.shape}"
    reference = reference.reshape(actual.shape)
    tolerance = 1e-4 * max(1.0, float(np.abs(reference).max(initial=0)))
    error = float(np.abs(actual - reference).max(initial=0))
    assert error <= tolerance, f"{what}: max difference {error:.3g} exceeds {tolerance:.3g}"


def opencv_forward(prototxt, caffemodel, feeds, layer_names, fusion=True) -> list[np.ndarray]:
    """OpenCV's forward of a Caffe net; one result per layer name (its first top)."""
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.enableFusion(fusion)
    for name, value in feeds.items():
        net.setInput(value, name)
    return [np.asarray(r) for r in net.forward(list(layer_names))]


def model_from_text(text: str, weights: dict[str, list[np.ndarray]] | None = None):
    """A loaded-model stand-in built from prototxt text: (net, shapes), with given weights."""
    net = build_net(text_format.Parse(text, caffe_pb2.NetParameter()))
    for name, blobs in (weights or {}).items():
        net.layer(name).blobs = [np.asarray(b, dtype=np.float32) for b in blobs]
    return net, infer_shapes(net)


# ------------------------------------------------------------------------ real models

REAL = {
    "lenet_v1_everpeace": ("lenet.prototxt", "lenet_iter_10000.caffemodel"),
    "cifar10_quick_v1_everpeace": ("cifar10_quick.prototxt", "cifar10_quick_iter_5000.caffemodel"),
    "cifar10_full_v1_everpeace": ("cifar10_full.prototxt", "cifar10_full_iter_70000.caffemodel"),
    "mtcnn_det1": ("det1.prototxt", "det1.caffemodel"),
    "mtcnn_det2": ("det2.prototxt", "det2.caffemodel"),
    "ultraface_slim320": ("slim-320.prototxt", "slim-320.caffemodel"),
    "landmark106_dq": ("landmark106.prototxt", "landmark106.caffemodel"),
    "yufacedetectnet_v1": ("yufacedetectnet-open-v1.prototxt", "yufacedetectnet-open-v1.caffemodel"),
    "yoloface500k_v2": ("yoloface-500k-v2.prototxt", "yoloface-500k-v2.caffemodel"),
}


def batch_one(net) -> dict[str, tuple[int, ...]]:
    """Input shapes of the net's data layers at batch 1."""
    shapes = infer_shapes(net)
    return {top.name: (1,) + tuple(shapes.blob(top))[1:]
            for layer in net.layers if layers.is_data(layer.type) for top in layer.tops}


@pytest.mark.parametrize("directory", sorted(REAL))
def test_real_model_matches_opencv(directory):
    prototxt, caffemodel = (REAL_MODELS / directory / name for name in REAL[directory])
    probe = load_model(prototxt)
    model = load_model(prototxt, caffemodel, input_shapes=batch_one(probe.net))
    detection = [layer for layer in model.net.layers if layer.type == "DetectionOutput"]
    # Everything up to the blobs feeding DetectionOutput (its rows: test_detection_output.py).
    outputs = detection[0].bottoms if detection else None
    exported = export_onnx(model.net, model.shapes, outputs=outputs)
    check_model(exported)
    versions = graph_outputs(model.net, outputs=outputs)
    rng = np.random.default_rng(RNG_SEED)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in exported.graph.input}
    results = run_onnx(exported, feeds)
    with fork_layers():
        references = opencv_forward(prototxt, caffemodel, feeds, [v.producer for v in versions])
    assert [o.name for o in exported.graph.output] == [v.name for v in versions]
    for version, reference in zip(versions, references):
        assert_close(results[version.name], reference, f"{directory}: {version.key}")


# ------------------------------------------------------ generated corpus against OpenCV

def corpus_departures(name: str) -> list[layers.Departure]:
    """Where OpenCV departs from Caffe on the corpus net, as the layer declarations record it."""
    net = build_net(parse(CORPUS[name].text))
    return [d for layer in net.layers for d in layers.lookup(layer.type).departures_for(layer)]


# Corpus nets OpenCV does not run as Caffe does are checked against the numpy references below instead;
# the reasons are the departures the layer declarations record. Departures in row order and padding only
# compare rows as sets; departures caused only by OpenCV's
# layer fusion just turn fusion off.
def _semantic(departure: layers.Departure) -> bool:
    """A departure in values, not only in fusion or in the order/padding of rows."""
    return not (departure.fusion or departure.as_sets)


NUMPY_NETS = {name: "; ".join(dict.fromkeys(d.what for d in corpus_departures(name) if _semantic(d)))
              for name in CORPUS if any(_semantic(d) for d in corpus_departures(name))}
OPENCV_NETS = sorted(set(CORPUS) - set(NUMPY_NETS))


def test_corpus_has_nets_for_both_references():
    assert OPENCV_NETS and NUMPY_NETS and all(NUMPY_NETS.values())


def test_corpus_covers_every_exportable_layer_type():
    used = {layer.type for spec in CORPUS.values()
            for layer in parse(spec.text).layer}
    assert layers.types_of_kind(layers.DATA) - {"Input"} == set(DATA_PARAMS)  # tested by test_data_layers_become_inputs...
    assert set(supported_types()) - set(DATA_PARAMS) <= used


def load_generated(name, tmp_path, **input_shapes):
    generated = generate(name, tmp_path)
    return generated, load_model(generated.prototxt, generated.caffemodel, input_shapes=input_shapes or None)


@pytest.mark.parametrize("name", OPENCV_NETS)
def test_corpus_matches_opencv_at_every_blob(name, tmp_path):
    generated, model = load_generated(name, tmp_path)
    net = model.net
    # Every final blob written by a single-top layer, so OpenCV can name it by its layer.
    taps = [v for layer in net.layers if not layers.is_data(layer.type) and len(layer.tops) == 1
            for v in layer.tops if v == net.final(v.name)]
    exported = export_onnx(net, model.shapes, taps=taps)
    check_model(exported)
    feeds = generated.inputs(np.random.default_rng(RNG_SEED))
    results = run_onnx(exported, feeds)
    references = opencv_forward(generated.prototxt, generated.caffemodel, feeds, [v.producer for v in taps],
                                fusion=not any(d.fusion for d in corpus_departures(name)))
    for version, reference in zip(taps, references):
        result = results[version.name]
        producer = net.producer(version)
        if any(d.as_sets for d in layers.lookup(producer.type).departures_for(producer)):  # the same set of rows
            result, reference = ssd_reference.comparable(result), ssd_reference.comparable(reference)
        assert_close(result, reference, f"{name}: {version.key}")


# -------------------------------------------------- numpy references of Caffe's semantics

def _pair(p, name, common):
    if p.HasField(f"{name}_h") or p.HasField(f"{name}_w"):
        return getattr(p, f"{name}_h"), getattr(p, f"{name}_w")
    return getattr(p, common), getattr(p, common)


def ref_pooling(layer, x):
    """Caffe's PoolingLayer::Forward_cpu, window by window."""
    p = layer.param.pooling_param
    (kh, kw), (sh, sw), (ph, pw) = _pair(p, "kernel", "kernel_size"), _pair(p, "stride", "stride"), _pair(p, "pad", "pad")
    n, c, height, width = x.shape

    def pooled(size, k, s, pad):
        span = (size + 2 * pad - k) / s
        out = (math.floor(span) if p.round_mode == caffe_pb2.PoolingParameter.FLOOR else math.ceil(span)) + 1
        return out - 1 if pad and (out - 1) * s >= size + pad else out

    out = np.zeros((n, c, pooled(height, kh, sh, ph), pooled(width, kw, sw, pw)), np.float32)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            h0, w0 = i * sh - ph, j * sw - pw
            h1, w1 = min(h0 + kh, height + ph), min(w0 + kw, width + pw)
            pool_size = (h1 - h0) * (w1 - w0)
            window = x[:, :, max(h0, 0):min(h1, height), max(w0, 0):min(w1, width)]
            if p.pool == caffe_pb2.PoolingParameter.MAX:
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / pool_size
    return out


def ref_deconvolution(layer, x):
    """Caffe's deconvolution: every input value scatters kernel * value to s*h - pad + d*i."""
    p = layer.param.convolution_param
    weight = layer.blobs[0]
    kh, kw = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else (p.kernel_size[0],) * 2
    sh, sw = (p.stride_h, p.stride_w) if p.HasField("stride_h") else ((p.stride or [1])[0],) * 2
    ph, pw = (p.pad_h, p.pad_w) if p.HasField("pad_h") else ((p.pad or [0])[0],) * 2
    dh = dw = (p.dilation or [1])[0]
    n, c_in, height, width = x.shape
    group_in, group_out = c_in // p.group, weight.shape[1]
    full = np.zeros((n, group_out * p.group, sh * (height - 1) + dh * (kh - 1) + 1,
                     sw * (width - 1) + dw * (kw - 1) + 1), np.float64)
    for g in range(p.group):
        x_g = x[:, g * group_in:(g + 1) * group_in]
        w_g = weight[g * group_in:(g + 1) * group_in]
        for i in range(kh):
            for j in range(kw):
                contribution = np.einsum("nchw,co->nohw", x_g, w_g[:, :, i, j])
                full[:, g * group_out:(g + 1) * group_out,
                     i * dh:i * dh + sh * (height - 1) + 1:sh, j * dw:j * dw + sw * (width - 1) + 1:sw] += contribution
    out = full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]
    return out + layer.blobs[1].reshape(1, -1, 1, 1) if p.bias_term else out


def ref_log(layer, x):
    p = layer.param.log_param
    value = np.log(p.shift + p.scale * x.astype(np.float64))
    return value if p.base == -1 else value / np.log(p.base)


def ref_lrn(layer, x):
    """ACROSS_CHANNELS: x * (k + alpha / size * sum of squares over the channel window) ^ -beta."""
    p = layer.param.lrn_param
    half = (p.local_size - 1) // 2
    squares = np.pad(x.astype(np.float64) ** 2, ((0, 0), (half, half), (0, 0), (0, 0)))
    window = sum(squares[:, i:i + x.shape[1]] for i in range(p.local_size))
    return x * (p.k + p.alpha / p.local_size * window) ** -p.beta


def ref_mvn(layer, x):
    """Caffe: (x - mean) / (sqrt(E[(x - mean)^2]) + eps)."""
    p = layer.param.mvn_param
    axes = tuple(range(1 if p.across_channels else 2, x.ndim))
    centered = x - x.mean(axis=axes, keepdims=True, dtype=np.float64)
    if not p.normalize_variance:
        return centered
    return centered / (np.sqrt((centered ** 2).mean(axis=axes, keepdims=True)) + p.eps)


def _outer_dim_inner(x, operand, axis):
    """Caffe's Scale/Bias loop: x as (outer, operand size, inner) and the operand as (1, size, 1)."""
    axis = 0 if operand.ndim == 0 else axis % x.ndim
    dim = operand.size
    return x.reshape(int(np.prod(x.shape[:axis])), dim, -1), operand.reshape(1, dim, 1)


def ref_scale(layer, x, *more):
    p = layer.param.scale_param
    blobs = list(layer.blobs)
    scale = more[0] if more else blobs.pop(0)
    x3, s3 = _outer_dim_inner(x, scale, p.axis)
    out = x3 * s3
    if p.bias_term:
        out = out + blobs[0].reshape(s3.shape)
    return out.reshape(x.shape)


def ref_bias(layer, x, *more):
    bias = more[0] if more else layer.blobs[0]
    x3, b3 = _outer_dim_inner(x, bias, layer.param.bias_param.axis)
    return (x3 + b3).reshape(x.shape)


def ref_inner_product(layer, x):
    p = layer.param.inner_product_param
    axis = p.axis % x.ndim
    weight = layer.blobs[0] if p.transpose else layer.blobs[0].T
    out = x.reshape(int(np.prod(x.shape[:axis])), -1) @ weight + (layer.blobs[1] if p.bias_term else 0)
    return out.reshape(x.shape[:axis] + (p.num_output,))


def ref_tile(layer, x):
    p = layer.param.tile_param
    axis = p.axis % x.ndim
    outer = int(np.prod(x.shape[:axis]))
    tiled = np.tile(x.reshape(outer, 1, -1), (1, p.tiles, 1))
    return tiled.reshape(x.shape[:axis] + (x.shape[axis] * p.tiles,) + x.shape[axis + 1:])


def ref_reduction(layer, x):
    p = layer.param.reduction_param
    axis = p.axis % x.ndim
    rows = x.reshape(int(np.prod(x.shape[:axis])), -1).astype(np.float64)
    op = caffe_pb2.ReductionParameter
    reduced = {op.SUM: rows.sum(1), op.ASUM: np.abs(rows).sum(1), op.SUMSQ: (rows ** 2).sum(1),
               op.MEAN: rows.mean(1)}[p.operation]
    return (reduced * p.coeff).reshape(x.shape[:axis])


def _top_k(values, k):
    """Caffe's partial_sort of (value, index) pairs with std::greater: indices of the k largest."""
    return [i for _, i in sorted(((v, i) for i, v in enumerate(values)), reverse=True)[:k]]


def ref_argmax(layer, x):
    p = layer.param.argmax_param
    if p.HasField("axis"):
        moved = np.moveaxis(x, p.axis % x.ndim, -1)
        rows = moved.reshape(-1, moved.shape[-1])
        picks = np.array([_top_k(row, p.top_k) for row in rows])
        result = np.take_along_axis(rows, picks, 1) if p.out_max_val else picks
        return np.moveaxis(result.reshape(moved.shape[:-1] + (p.top_k,)), -1, p.axis % x.ndim)
    shape = [1] * max(3, x.ndim)
    shape[0], shape[1], shape[2] = x.shape[0], 2 if p.out_max_val else 1, p.top_k
    out = []
    for row in x.reshape(x.shape[0], -1):
        picks = _top_k(row, p.top_k)
        out.append([picks, row[picks]] if p.out_max_val else [picks])
    return np.array(out, dtype=np.float32).reshape(shape)


def ref_embed(layer, x):
    out = layer.blobs[0][x.astype(int)]
    return out + layer.blobs[1] if layer.param.embed_param.bias_term else out


def ref_convolution(layer, x):
    """Caffe's grouped convolution, window by window (square kernel, stride and pad, no dilation)."""
    p = layer.param.convolution_param
    weight = layer.blobs[0]
    k, s, pad = p.kernel_size[0], (p.stride or [1])[0], (p.pad or [0])[0]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, channels, height, width = padded.shape
    out = np.zeros((n, p.num_output, (height - k) // s + 1, (width - k) // s + 1))
    per_in, per_out = channels // p.group, p.num_output // p.group
    for g in range(p.group):
        w_g = weight[g * per_out:(g + 1) * per_out]
        for i in range(out.shape[2]):
            for j in range(out.shape[3]):
                window = padded[:, g * per_in:(g + 1) * per_in, i * s:i * s + k, j * s:j * s + k]
                out[:, g * per_out:(g + 1) * per_out, i, j] = np.einsum("nchw,ochw->no", window, w_g)
    return out + layer.blobs[1].reshape(1, -1, 1, 1) if p.bias_term else out


def ref_upsample(layer, x):
    """darknet2caffe: output (y, x) is input (y // scale, x // scale)."""
    scale = layer.param.upsample_param.scale
    return np.repeat(np.repeat(x, scale, axis=2), scale, axis=3)


def ref_interp(layer, x):
    """PSPNet's caffe_cpu_interp2 (align corners) on the input cut at -pad_beg to its effective size;
    the ratios and weights in float32 as Caffe computes them."""
    pad_beg, height, width, out_h, out_w = interp_geometry(layer, x.shape)
    source = x[:, :, -pad_beg:-pad_beg + height, -pad_beg:-pad_beg + width]
    if (out_h, out_w) == (height, width):
        return source.copy()

    def taps(size_in, size_out):
        ratio = np.float32((size_in - 1) / (size_out - 1)) if size_out > 1 else np.float32(0)
        position = ratio * np.arange(size_out, dtype=np.float32)
        low = position.astype(int)
        step = (low < size_in - 1).astype(int)
        weight = (position - low).astype(np.float32)
        return low, low + step, weight

    h0, h1, wh = taps(height, out_h)
    w0, w1, ww = taps(width, out_w)
    wh, ww = wh[:, None], ww[None, :]
    top = (1 - ww) * source[:, :, h0][:, :, :, w0] + ww * source[:, :, h0][:, :, :, w1]
    bottom = (1 - ww) * source[:, :, h1][:, :, :, w0] + ww * source[:, :, h1][:, :, :, w1]
    return (1 - wh) * top + wh * bottom


def ref_reorg(layer, x):
    """darknet's reorg_cpu (forward 0) with the bottom's sizes, index by index."""
    s = reorg_stride(layer)
    n, c, h, w = x.shape
    flat, top = x.reshape(-1), np.empty(x.size, np.float32)
    out_c = c // (s * s)
    for b, k, j, i in np.ndindex(n, c, h, w):
        offset = k // out_c
        source = i * s + offset % s + w * s * (j * s + offset // s + h * s * (k % out_c + out_c * b))
        top[i + w * (j + h * (k + c * b))] = flat[source]
    return top.reshape(n, c * s * s, h // s, w // s)


def ref_proposal(layer, scores, deltas, im_info):
    """py-faster-rcnn's proposal_layer.py forward (one image), step by step."""
    text = "".join(preserved_texts(layer.param))
    values = lambda key: [float(v) for v in re.findall(rf"\b{key}\s*:\s*([-+.\deE]+)", text)]
    first = lambda key, default: (values(key) or [default])[0]
    ratios, scales = values("ratio") or [0.5, 1, 2], values("scale") or [8, 16, 32]
    base, stride = first("base_size", 16), first("feat_stride", 16)
    anchors = []
    for ratio in ratios:  # _ratio_enum, then _scale_enum, around the base box [0, 0, base - 1, base - 1]
        ws = np.round(np.sqrt(base * base / ratio))
        hs = np.round(ws * ratio)
        for scale in scales:
            w, h, c = ws * scale, hs * scale, (base - 1) / 2
            anchors.append([c - 0.5 * (w - 1), c - 0.5 * (h - 1), c + 0.5 * (w - 1), c + 0.5 * (h - 1)])
    a, (height, width) = len(anchors), scores.shape[2:]
    sx, sy = np.meshgrid(np.arange(width) * stride, np.arange(height) * stride)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    boxes = (np.asarray(anchors)[None] + shifts[:, None]).reshape(-1, 4)
    d = deltas.transpose(0, 2, 3, 1).reshape(-1, 4).astype(np.float64)
    fg = scores[:, a:].transpose(0, 2, 3, 1).reshape(-1)
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    px, py, pw, ph = d[:, 0] * w + cx, d[:, 1] * h + cy, np.exp(d[:, 2]) * w, np.exp(d[:, 3]) * h
    img_h, img_w, img_scale = im_info.reshape(-1)[:3]
    boxes = np.stack([np.clip(px - 0.5 * pw, 0, img_w - 1), np.clip(py - 0.5 * ph, 0, img_h - 1),
                      np.clip(px + 0.5 * pw, 0, img_w - 1), np.clip(py + 0.5 * ph, 0, img_h - 1)], axis=1)
    min_size = first("min_size", 16) * img_scale
    big = np.flatnonzero((boxes[:, 2] - boxes[:, 0] + 1 >= min_size) & (boxes[:, 3] - boxes[:, 1] + 1 >= min_size))
    order = big[np.argsort(-fg[big], kind="stable")][:int(first("pre_nms_topn", 6000))]
    keep = []
    for i in order:  # greedy NMS with +1 areas
        ok = True
        for j in keep:
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1
            inter = max(iw, 0) * max(ih, 0)
            area = lambda k: (boxes[k, 2] - boxes[k, 0] + 1) * (boxes[k, 3] - boxes[k, 1] + 1)
            if inter / (area(i) + area(j) - inter) > first("nms_thresh", 0.7):
                ok = False
                break
        if ok:
            keep.append(i)
    keep = keep[:int(first("post_nms_topn", 300))]
    return np.concatenate([np.zeros((len(keep), 1)), boxes[keep]], axis=1), fg[keep].reshape(-1, 1)


REFERENCES = {
    "Pooling": ref_pooling, "Deconvolution": ref_deconvolution, "Log": ref_log, "LRN": ref_lrn, "MVN": ref_mvn,
    "Scale": ref_scale, "Bias": ref_bias, "InnerProduct": ref_inner_product, "Tile": ref_tile,
    "Reduction": ref_reduction, "ArgMax": ref_argmax, "Embed": ref_embed, "Upsample": ref_upsample,
    "Interp": ref_interp, "DepthwiseConvolution": ref_convolution,
    "Clip": lambda layer, x: np.clip(x, layer.param.clip_param.min, layer.param.clip_param.max),
    "SoftMax": lambda layer, x: np.exp(x) / np.exp(x).sum(axis=layer.param.softmax_param.axis, keepdims=True),
    "Swish": lambda layer, x: x / (1 + np.exp(-layer.param.swish_param.beta * x.astype(np.float64))),
    "Reorg": ref_reorg, "Proposal": ref_proposal,
    "Threshold": lambda layer, x: (x > layer.param.threshold_param.threshold).astype(np.float32),
}


def numpy_forward(net, feeds):
    """Every blob version of the net computed by the references (Split copies its bottom; a reference
    returns a tuple for several tops)."""
    values = {}
    for layer in net.layers:
        if layers.is_data(layer.type):
            tops = [feeds[top.name] for top in layer.tops]
        elif layer.type == "Split":
            tops = [values[layer.bottoms[0]]] * len(layer.tops)
        else:
            computed = REFERENCES[layer.type](layer, *(values[b] for b in layer.bottoms))
            tops = [np.asarray(top, np.float32) for top in (computed if isinstance(computed, tuple) else (computed,))]
        values.update(zip(layer.tops, tops))
    return values


@pytest.mark.parametrize("name", sorted(NUMPY_NETS))
def test_corpus_matches_caffe_semantics(name, tmp_path):
    generated, model = load_generated(name, tmp_path)
    net = model.net
    taps = [v for layer in net.layers if not layers.is_data(layer.type) for v in layer.tops]
    exported = export_onnx(net, model.shapes, taps=taps)
    check_model(exported)
    feeds = generated.inputs(np.random.default_rng(RNG_SEED))
    results = run_onnx(exported, feeds)
    references = numpy_forward(net, feeds)
    names = tensor_names(net)
    for version in taps:
        assert_close(results[names[version]], references[version], f"{name}: {version.key}")


@pytest.mark.parametrize("name", sorted(NUMPY_NETS))
def test_opencv_still_deviates_on_numpy_checked_nets(name, tmp_path):
    """Guards NUMPY_NETS: OpenCV still fails on these nets or differs from Caffe's semantics."""
    generated, model = load_generated(name, tmp_path)
    feeds = generated.inputs(np.random.default_rng(RNG_SEED))
    outputs = graph_outputs(model.net)
    try:
        opencv = opencv_forward(generated.prototxt, generated.caffemodel, feeds, [v.producer for v in outputs])
    except cv2.error:
        return
    caffe = numpy_forward(model.net, feeds)
    assert any(value.size != caffe[v].size or not np.allclose(value.reshape(caffe[v].shape), caffe[v], atol=1e-3)
               for v, value in zip(outputs, opencv))


# ------------------------------------------------------------------- names, taps, outputs

def test_inputs_outputs_and_in_place_versions_keep_caffe_names(tmp_path):
    generated, model = load_generated("conv_pool", tmp_path)
    net = model.net
    before_relu = net.resolve("fc@fc")
    exported = export_onnx(net, model.shapes, taps=[before_relu, "fc", "conv1@conv1"])
    check_model(exported)
    assert [i.name for i in exported.graph.input] == ["data"]
    # The net output, then the taps: fc before its in-place ReLU, fc's final version, conv1 before relu1.
    assert [o.name for o in exported.graph.output] == ["prob", "fc@fc", "fc", "conv1@conv1"]
    results = run_onnx(exported, generated.inputs(np.random.default_rng(RNG_SEED)))
    assert (results["fc@fc"] < 0).any(), "a tap of fc before relu_fc must keep negative values"
    np.testing.assert_array_equal(results["fc"], np.maximum(results["fc@fc"], 0))
    assert (results["conv1@conv1"] < 0).any()


def test_tap_before_relu_is_the_inner_product(tmp_path):
    generated, model = load_generated("conv_pool", tmp_path)
    net = model.net
    exported = export_onnx(net, model.shapes, taps=["conv3", "fc@fc"])
    results = run_onnx(exported, generated.inputs(np.random.default_rng(RNG_SEED)))
    weight, bias = net.layer("fc").blobs
    expected = results["conv3"].reshape(len(results["conv3"]), -1) @ weight.T + bias
    assert_close(results["fc@fc"], expected, "fc before relu_fc")


def test_rewritten_input_blob_keeps_the_input_name():
    net, shapes = model_from_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "double" type: "Power" bottom: "data" top: "data" power_param { scale: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
""", {"ip": [np.eye(2, 3), np.zeros(2)]})
    exported = export_onnx(net, shapes, taps=["data"])
    check_model(exported)
    assert [i.name for i in exported.graph.input] == ["data"]
    assert [o.name for o in exported.graph.output] == ["ip", "data@double"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    results = run_onnx(exported, {"data": x})
    np.testing.assert_allclose(results["data@double"], 2 * x)
    np.testing.assert_allclose(results["ip"], 2 * x[:, :2])


def test_outputs_restrict_the_graph_to_what_they_need(tmp_path):
    generated, model = load_generated("shape_ops", tmp_path)
    exported = export_onnx(model.net, model.shapes, outputs=["reshaped"])
    check_model(exported)
    assert [o.name for o in exported.graph.output] == ["reshaped"]
    layers = {node.name.split("/")[0] for node in exported.graph.node}
    assert layers == {"slice", "slice_equal", "cat_h", "flat_mid", "reshape"}


DATA_NET = """
layer { name: "data" type: "%s" top: "data" top: "label" %s }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" }
layer { name: "aux" type: "Power" bottom: "data" top: "aux" }
layer { name: "silence" type: "Silence" bottom: "label" bottom: "aux" }
"""

DATA_PARAMS = {
    "Data": 'data_param { source: "db" batch_size: 2 }',
    "ImageData": 'image_data_param { source: "list.txt" batch_size: 2 new_height: 4 new_width: 5 is_color: false }',
    "MemoryData": "memory_data_param { batch_size: 2 channels: 1 height: 4 width: 5 }",
    "DummyData": "dummy_data_param { shape { dim: 2 dim: 1 dim: 4 dim: 5 } shape { dim: 2 } }",
    "HDF5Data": 'hdf5_data_param { source: "files.txt" batch_size: 2 }',
    "WindowData": 'window_data_param { source: "windows.txt" batch_size: 2 }',
}


@pytest.mark.parametrize("layer_type", sorted(DATA_PARAMS))
def test_data_layers_become_inputs_without_unused_labels_and_losses(layer_type):
    net = build_net(text_format.Parse(DATA_NET % (layer_type, DATA_PARAMS[layer_type]), caffe_pb2.NetParameter()))
    net.layer("ip").blobs = [np.ones((3, 20), np.float32), np.zeros(3, np.float32)]
    shapes = infer_shapes(net, {"data": (2, 1, 4, 5), "label": (2,)})
    exported = export_onnx(net, shapes)
    check_model(exported)
    assert [i.name for i in exported.graph.input] == ["data"]
    assert [o.name for o in exported.graph.output] == ["ip"]
    assert {n.name.split("/")[0] for n in exported.graph.node} == {"ip"}
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(exported, {"data": x})["ip"], np.repeat(x.reshape(2, -1).sum(1, keepdims=True), 3, 1),
                               rtol=1e-5, atol=1e-5)


def test_label_read_by_an_exported_layer_is_an_input():
    net = build_net(text_format.Parse("""
layer { name: "data" type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 2 channels: 3 height: 1 width: 1 } }
layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
layer { name: "weighted" type: "Scale" bottom: "flat" bottom: "label" top: "weighted" scale_param { axis: 0 } }
""", caffe_pb2.NetParameter()))
    exported = export_onnx(net, infer_shapes(net))
    check_model(exported)
    assert [i.name for i in exported.graph.input] == ["data", "label"]
    x, label = np.ones((2, 3, 1, 1), np.float32), np.array([2, -1], np.float32)
    np.testing.assert_allclose(run_onnx(exported, {"data": x, "label": label})["weighted"], [[2] * 3, [-1] * 3])


def test_unsupported_layer_is_one_clear_error():
    net = build_net(text_format.Parse("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "pyramid" type: "SPP" bottom: "data" top: "spp" spp_param { pyramid_height: 2 } }
layer { name: "relu" type: "ReLU" bottom: "spp" top: "spp" }
layer { name: "cols" type: "Im2col" bottom: "data" top: "cols" convolution_param { num_output: 1 kernel_size: 2 } }
""", caffe_pb2.NetParameter()))
    with pytest.raises(UnsupportedLayerError) as info:
        export_onnx(net, infer_shapes(net))
    message = str(info.value)
    assert info.value.layer == "pyramid"
    assert message.startswith("pyramid: layer type 'SPP' cannot be exported to ONNX (supported: ")
    assert ", ".join(supported_types()) in message


# ------------------------------------------------------------- layer forms and options

PRIOR_FEATURE = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 24 dim: 30 } } }
%s
layer { name: "feature" type: "Pooling" bottom: "data" top: "feature" pooling_param { pool: MAX kernel_size: 6 stride: 6 } }
layer { name: "prior" type: "PriorBox" bottom: "feature" bottom: "%s" top: "prior"
  prior_box_param { min_size: 8 max_size: 15 aspect_ratio: 3 %s } }
"""


@pytest.mark.parametrize("image_param, image_hw", [("img_h: 20 img_w: 40", (20, 40)), ("img_size: 32", (32, 32))])
def test_prior_box_image_size_and_default_variance(image_param, image_hw):
    """OpenCV ignores img_size/img_h/img_w and requires a variance; Caffe-SSD uses them and defaults
    the variance to 0.1. So the reference is OpenCV on the same layer reading an image bottom of
    that size with variance 0.1 written out."""
    net, shapes = model_from_text(PRIOR_FEATURE % ("", "data", image_param))
    exported = export_onnx(net, shapes)
    check_model(exported)
    x = np.random.default_rng(0).standard_normal((1, 3, 24, 30)).astype(np.float32)
    priors = run_onnx(exported, {"data": x})["prior"]
    image = 'layer { name: "image" type: "Input" top: "image" input_param { shape { dim: 1 dim: 1 dim: %d dim: %d } } }'
    rewritten = PRIOR_FEATURE % (image % image_hw, "image", "variance: 0.1")
    opencv = cv2.dnn.readNetFromCaffe(bytearray(rewritten.encode()))
    opencv.setInput(x, "data")
    opencv.setInput(np.zeros((1, 1) + image_hw, np.float32), "image")
    assert_close(priors, opencv.forward("prior"), "prior")
    np.testing.assert_array_equal(priors[0, 1], np.float32(0.1))


BATCH_NORM = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 2 dim: 4 dim: 5 } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" batch_norm_param { %s } }
"""


def test_batch_norm_with_batch_statistics():
    net, shapes = model_from_text(BATCH_NORM % "use_global_stats: false eps: 0.01")
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 5)).astype(np.float32) * 3 + 1
    exported = export_onnx(net, shapes)
    check_model(exported)
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    assert_close(run_onnx(exported, {"data": x})["data@bn"], (x - mean) / np.sqrt(var + 0.01), "bn")


@pytest.mark.parametrize("factor", [0.0, 4.0])
def test_batch_norm_divides_statistics_by_the_factor_blob(factor):
    mean, var = np.array([1.0, -2.0]), np.array([4.0, 0.5])
    net, shapes = model_from_text(BATCH_NORM % "eps: 0.001", {"bn": [mean, var, [factor]]})
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 5)).astype(np.float32)
    scale = 0.0 if factor == 0 else 1 / factor
    expected = (x - (mean * scale)[:, None, None]) / np.sqrt(var * scale + 0.001)[:, None, None]
    assert_close(run_onnx(export_onnx(net, shapes), {"data": x})["data@bn"], expected, "bn")


@pytest.mark.parametrize("pooling, problem", [
    ("pool: STOCHASTIC kernel_size: 2", "Pooling with pool STOCHASTIC cannot be exported"),
    ("pool: MAX kernel_size: 2 stride: 3", "window entirely outside the input"),
])
def test_pooling_forms_that_cannot_be_exported(pooling, problem):
    net, shapes = model_from_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 6 dim: 6 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { %s } }
""" % pooling)
    with pytest.raises(UnsupportedLayerError, match=problem) as info:
        export_onnx(net, shapes)
    assert info.value.layer == "pool"


BATCHLESS = {"scale_bias_ip", "proposal"}  # an 'offset' input without a batch axis; one image per Proposal
BATCHLESS |= {"opencv_factory_batch_one"}  # Shift's blob spans the batch; CropAndResize crops one image


@pytest.mark.parametrize("name", sorted(set(CORPUS) - BATCHLESS))
def test_dynamic_batch_matches_a_static_export_at_another_batch(name, tmp_path):
    generated = generate(name, tmp_path)
    dynamic = load_model(generated.prototxt, generated.caffemodel)
    exported = export_onnx(dynamic.net, dynamic.shapes, dynamic_batch=True)
    check_model(exported)
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "N" for i in exported.graph.input)
    batch3 = {k: (3,) + v[1:] for k, v in generated.input_shapes.items()}
    static = load_model(generated.prototxt, generated.caffemodel, input_shapes=batch3)
    rng = np.random.default_rng(1)
    feeds = {k: dataclasses.replace(feed, shape=batch3[k]).sample(rng) for k, feed in generated.feeds.items()}
    expected = run_onnx(export_onnx(static.net, static.shapes), feeds)
    for key, value in run_onnx(exported, feeds).items():
        assert_close(value, expected[key], f"{name}: {key}")


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_other_opsets_give_the_same_results(opset, tmp_path):
    for name in ("reduction", "lrn_mvn", "ssd_head", "shape_ops"):
        generated, model = load_generated(name, tmp_path)
        feeds = generated.inputs(np.random.default_rng(0))
        exported = export_onnx(model.net, model.shapes, opset=opset)
        check_model(exported)
        assert exported.opset_import[0].version == opset
        expected = run_onnx(export_onnx(model.net, model.shapes), feeds)
        for key, value in run_onnx(exported, feeds).items():
            assert_close(value, expected[key], f"{name} at opset {opset}: {key}")


def test_opset_out_of_range_is_refused(tmp_path):
    _, model = load_generated("conv_pool", tmp_path)
    with pytest.raises(ValueError, match="opset 11"):
        export_onnx(model.net, model.shapes, opset=11)


def test_save_onnx_writes_atomically(tmp_path):
    _, model = load_generated("conv_pool", tmp_path)
    exported = export_onnx(model.net, model.shapes)
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"old")
    save_onnx(exported, target)
    assert onnx.load(str(target)) == exported
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]
