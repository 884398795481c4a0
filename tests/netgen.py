"""Small Caffe nets with random weights, written as prototxt + caffemodel files for tests.

``CORPUS`` holds deploy nets that together use every layer type the ONNX exporter
supports, with non-trivial parameters (odd sizes, padding that exercises Caffe's
ceil rounding, groups, negative slopes, coefficients ...). ``generate(name, dir)``
writes one of them with weights drawn for the shapes ``caffe_surgery.shapes``
infers; ``write_net(text, dir)`` does the same for any prototxt text.

    net = generate("conv_pool", tmp_path)
    model = load_model(net.prototxt, net.caffemodel)
    feeds = net.inputs(np.random.default_rng(0))
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caffe_surgery import caffe_pb2, textproto
from caffe_surgery.blobs import array_to_blob
from caffe_surgery.graph import build_net
from caffe_surgery.io import write_binary, write_text
from caffe_surgery.shapes import infer_shapes


@dataclass(frozen=True)
class Feed:
    """How to draw one input blob: standard normal, uniform in [low, high), or whole numbers in [low, high)."""

    shape: tuple[int, ...]
    low: float | None = None
    high: float | None = None
    integers: bool = False
    column_scale: tuple[float, ...] | None = None

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A draw; with ``column_scale``, the last axis's entries are multiplied column by column (ROI rows)."""
        if self.integers:
            value = rng.integers(int(self.low), int(self.high), self.shape).astype(np.float32)
        elif self.low is not None:
            value = rng.uniform(self.low, self.high, self.shape).astype(np.float32)
        else:
            value = rng.standard_normal(self.shape).astype(np.float32)
        return value if self.column_scale is None else value * np.asarray(self.column_scale, np.float32)


@dataclass(frozen=True)
class NetSpec:
    """A corpus entry: the prototxt text and how to draw its inputs (by Input top name)."""

    text: str
    feeds: dict[str, Feed]


@dataclass
class GeneratedNet:
    """A net written to disk: its files, its input shapes and how to draw inputs."""

    name: str
    prototxt: Path
    caffemodel: Path
    feeds: dict[str, Feed] = field(default_factory=dict)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: feed.shape for name, feed in self.feeds.items()}

    def inputs(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One random value per input blob."""
        return {name: feed.sample(rng) for name, feed in self.feeds.items()}


# ------------------------------------------------------------------------------- weights

WeightRule = Callable[[list[tuple[int, ...]], np.random.Generator], list[np.ndarray]]


def _fan_in_normal(shapes: list[tuple[int, ...]], rng: np.random.Generator) -> list[np.ndarray]:
    """Weights ~ N(0, 1/fan_in) so activations stay near unit size; other blobs (biases) ~ N(0, 0.5)."""
    blobs = []
    for index, shape in enumerate(shapes):
        fan_in = int(np.prod(shape[1:])) if index == 0 and len(shape) > 1 else 4
        blobs.append(rng.standard_normal(shape) / np.sqrt(fan_in))
    return blobs


def _batch_norm(shapes, rng):
    """Stored mean and (positive) variance, both multiplied by a non-trivial moving-average factor."""
    factor = 2.5
    mean = rng.standard_normal(shapes[0]) * factor
    variance = rng.uniform(0.3, 2.0, shapes[1]) * factor
    return [mean, variance, np.full(shapes[2], factor)]


def _slopes(shapes, rng):
    """PReLU slopes of both signs."""
    return [rng.uniform(-0.5, 0.8, shape) for shape in shapes]


def _positive(shapes, rng):
    """Scales that keep signs (Normalize)."""
    return [rng.uniform(0.5, 2.0, shape) for shape in shapes]


def _fresh_augmentation(shapes, rng):
    """A DataAugmentation that has not run yet: iteration count 0 (its stored means are then replaced)."""
    return [np.zeros(shapes[0])] + [rng.standard_normal(shape) for shape in shapes[1:]]


WEIGHT_RULES: dict[str, WeightRule] = {"BatchNorm": _batch_norm, "PReLU": _slopes, "Normalize": _positive,
                                       "Region": _positive, "DataAugmentation": _fresh_augmentation}
"""Layer types whose blobs need more than fan-in scaled normal values."""


def _blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    """A BlobProto of ``array``; a 0-axis scalar (PReLU/Normalize channel_shared) gets the legacy 1x1x1x1 dims."""
    if array.ndim:
        return array_to_blob(array)
    blob = array_to_blob(array.reshape(1))
    blob.ClearField("shape")
    blob.num = blob.channels = blob.height = blob.width = 1
    return blob


def random_weights(net_param: caffe_pb2.NetParameter, input_shapes: dict[str, tuple[int, ...]] | None,
                   rng: np.random.Generator) -> caffe_pb2.NetParameter:
    """A caffemodel for ``net_param``: every layer with learned blobs gets random ones of the inferred shapes."""
    net = build_net(net_param)
    shapes = infer_shapes(net, input_shapes)
    weights = caffe_pb2.NetParameter(name=net_param.name)
    for layer in net.layers:
        param_shapes = shapes.layer(layer.name).param_shapes or []
        stored = weights.layer.add()
        stored.CopyFrom(layer.param)
        rule = WEIGHT_RULES.get(layer.type, _fan_in_normal)
        for array in rule([tuple(s) for s in param_shapes], rng):
            stored.blobs.append(_blob(np.asarray(array, dtype=np.float32)))
    return weights


def parse(text: str) -> caffe_pb2.NetParameter:
    """A NetParameter from prototxt text, keeping fork params the schema lacks (as the tool reads files)."""
    net_param = caffe_pb2.NetParameter()
    textproto.parse(text, net_param)
    return net_param


def write_net(text: str, directory: str | Path, name: str = "net", *, feeds: dict[str, Feed] | None = None,
              seed: int = 0) -> GeneratedNet:
    """Write ``text`` as ``<name>.prototxt`` and random weights as ``<name>.caffemodel`` in ``directory``."""
    directory = Path(directory)
    net_param = parse(text)
    feeds = dict(feeds or {})
    generated = GeneratedNet(name, directory / f"{name}.prototxt", directory / f"{name}.caffemodel", feeds)
    write_text(generated.prototxt, net_param)
    write_binary(generated.caffemodel, random_weights(net_param, generated.input_shapes or None,
                                                      np.random.default_rng(seed)))
    return generated


def generate(name: str, directory: str | Path, seed: int = 0) -> GeneratedNet:
    """Write the corpus net ``name`` with random weights into ``directory``."""
    spec = CORPUS[name]
    return write_net(spec.text, directory, name, feeds=spec.feeds, seed=seed)


# -------------------------------------------------------------------------------- corpus

def _input(name: str, shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def _spec(feeds: dict[str, Feed], layers: str) -> NetSpec:
    """A net with one Input layer per feed, then ``layers``."""
    return NetSpec("".join(_input(name, feed.shape) for name, feed in feeds.items()) + layers, feeds)


def _unary(feed: Feed, types: list[str]) -> NetSpec:
    """One layer of each type, each on its own copy of the input (so no error of one reaches another)."""
    copies = " ".join(f'top: "x{i}"' for i in range(len(types)))
    return _spec({"data": feed}, f'layer {{ name: "split" type: "Split" bottom: "data" {copies} }}\n' + "".join(
        f'layer {{ name: "{kind.lower()}" type: "{kind}" bottom: "x{i}" top: "{kind.lower()}" }}\n'
        for i, kind in enumerate(types)))


CORPUS: dict[str, NetSpec] = {
    # Convolutions (pad, stride, dilation, groups, _h/_w forms, no bias), MAX pooling with ceil
    # rounding and padding, InnerProduct on axis 1, in-place ReLU with a negative slope, Dropout, Softmax.
    "conv_pool": _spec({"data": Feed((2, 3, 13, 11))}, """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 stride_h: 1 stride_w: 2
                      dilation: 2 group: 2 bias_term: false } }
layer { name: "pool1" type: "Pooling" bottom: "conv2" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "conv3" type: "Convolution" bottom: "pool1" top: "conv3"
  convolution_param { num_output: 4 kernel_size: 1 group: 4 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv3" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "relu_fc" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""),
    # AVE pooling whose ceil-rounded windows reach past H + pad (Caffe's divisor shrinks there),
    # AVE without padding, MAX with _h/_w settings, global pooling of both kinds.
    "pooling": _spec({"data": Feed((2, 3, 10, 9))}, """
layer { name: "split" type: "Split" bottom: "data" top: "a" top: "b" top: "c" top: "d" top: "e" }
layer { name: "ave_pad" type: "Pooling" bottom: "a" top: "ave_pad"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "ave_ceil" type: "Pooling" bottom: "b" top: "ave_ceil"
  pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 2 } }
layer { name: "max_hw" type: "Pooling" bottom: "c" top: "max_hw"
  pooling_param { pool: MAX kernel_h: 4 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 2 pad_w: 1 } }
layer { name: "gmax" type: "Pooling" bottom: "d" top: "gmax" pooling_param { pool: MAX global_pooling: true } }
layer { name: "gave" type: "Pooling" bottom: "e" top: "gave" pooling_param { pool: AVE global_pooling: true } }
"""),
    # FLOOR rounding, with and without padding.
    "pooling_floor": _spec({"data": Feed((2, 3, 10, 9))}, """
layer { name: "split" type: "Split" bottom: "data" top: "a" top: "b" }
layer { name: "max_floor" type: "Pooling" bottom: "a" top: "max_floor"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR } }
layer { name: "ave_floor" type: "Pooling" bottom: "b" top: "ave_floor"
  pooling_param { pool: AVE kernel_size: 2 stride: 3 round_mode: FLOOR } }
"""),
    # Deconvolution with groups, stride, pad, with and without bias, _h/_w kernel.
    "deconv": _spec({"data": Feed((2, 4, 5, 6))}, """
layer { name: "up1" type: "Deconvolution" bottom: "data" top: "up1"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2 } }
layer { name: "up2" type: "Deconvolution" bottom: "up1" top: "up2"
  convolution_param { num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 bias_term: false } }
"""),
    # Deconvolution with dilation.
    "deconv_dilated": _spec({"data": Feed((2, 4, 5, 6))}, """
layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
  convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 stride: 2 pad: 1 dilation: 2 group: 2 } }
"""),
    # Element-wise activations on branches, joined by Eltwise SUM with coefficients, PROD and MAX.
    "activations": _spec({"data": Feed((2, 4, 5, 7))}, """
layer { name: "prelu" type: "PReLU" bottom: "data" top: "x" }
layer { name: "split" type: "Split" bottom: "x" top: "x1" top: "x2" top: "x3" top: "x4" top: "x5" top: "x6" }
layer { name: "elu" type: "ELU" bottom: "x1" top: "elu" elu_param { alpha: 0.7 } }
layer { name: "sigmoid" type: "Sigmoid" bottom: "x2" top: "sigmoid" }
layer { name: "tanh" type: "TanH" bottom: "x3" top: "tanh" }
layer { name: "abs" type: "AbsVal" bottom: "x4" top: "abs" }
layer { name: "bnll" type: "BNLL" bottom: "x5" top: "bnll" }
layer { name: "leaky" type: "ReLU" bottom: "x6" top: "leaky" relu_param { negative_slope: -0.3 } }
layer { name: "sum" type: "Eltwise" bottom: "elu" bottom: "sigmoid" bottom: "tanh" top: "sum"
  eltwise_param { operation: SUM coeff: 0.5 coeff: -1.5 coeff: 2 } }
layer { name: "prod" type: "Eltwise" bottom: "abs" bottom: "bnll" bottom: "sum" top: "prod"
  eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "leaky" top: "max" eltwise_param { operation: MAX } }
layer { name: "prelu_shared" type: "PReLU" bottom: "max" top: "out" prelu_param { channel_shared: true } }
"""),
    # Power and Exp with bases, scales and shifts, on positive inputs.
    "power_exp": _spec({"data": Feed((2, 3, 4, 5), 0.2, 2.0)}, """
layer { name: "pow" type: "Power" bottom: "data" top: "pow" power_param { power: 1.5 scale: 0.7 shift: 0.3 } }
layer { name: "exp" type: "Exp" bottom: "pow" top: "exp" exp_param { base: 2 scale: 0.5 shift: 0.25 } }
layer { name: "exp_e" type: "Exp" bottom: "exp" top: "exp_e" exp_param { scale: -0.3 } }
layer { name: "square" type: "Power" bottom: "exp_e" top: "square" power_param { power: 2 shift: -0.5 } }
layer { name: "affine" type: "Power" bottom: "square" top: "affine" power_param { scale: -3 shift: 0.5 } }
"""),
    # BatchNorm (stored statistics with a moving-average factor) + Scale with bias, in place,
    # Scale by a second bottom, Scale over several axes, Concat, InnerProduct on axis 2.
    "batchnorm_scale": _spec({"data": Feed((2, 3, 7, 5)), "gain": Feed((2, 4))}, """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { eps: 0.001 } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "gain_scale" type: "Scale" bottom: "conv" bottom: "gain" top: "gained" scale_param { axis: 0 } }
layer { name: "scale_hw" type: "Scale" bottom: "gained" top: "scaled_hw"
  scale_param { axis: 2 num_axes: -1 bias_term: true } }
layer { name: "cat" type: "Concat" bottom: "gained" bottom: "scaled_hw" top: "cat" concat_param { axis: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "cat" top: "fc" inner_product_param { num_output: 3 axis: 2 } }
"""),
    # Scale and Bias forms: negative axis, num_axes 0 (a scalar) and 2, a second bottom; InnerProduct transpose.
    "scale_bias_ip": _spec({"data": Feed((2, 3, 4, 5)), "offset": Feed((3, 4))}, """
layer { name: "scale_neg" type: "Scale" bottom: "data" top: "a" scale_param { axis: -3 bias_term: true } }
layer { name: "scale_scalar" type: "Scale" bottom: "a" top: "b" scale_param { num_axes: 0 } }
layer { name: "bias" type: "Bias" bottom: "b" top: "c" bias_param { axis: 1 num_axes: 2 } }
layer { name: "bias_bottom" type: "Bias" bottom: "c" bottom: "offset" top: "d" }
layer { name: "fc_t" type: "InnerProduct" bottom: "d" top: "fc_t"
  inner_product_param { num_output: 3 axis: -2 transpose: true } }
"""),
    # Reshaping and routing: Slice, Concat on other axes, Flatten ranges, Reshape with 0/-1 and an axis,
    # Crop with an offset, Permute, Softmax on axis 2.
    "shape_ops": _spec({"data": Feed((2, 6, 5, 4))}, """
layer { name: "slice" type: "Slice" bottom: "data" top: "s1" top: "s2" top: "s3"
  slice_param { axis: 1 slice_point: 1 slice_point: 4 } }
layer { name: "slice_equal" type: "Slice" bottom: "s2" top: "e1" top: "e2" top: "e3" slice_param { slice_dim: 1 } }
layer { name: "cat_h" type: "Concat" bottom: "e1" bottom: "s1" top: "cat_h" concat_param { axis: 2 } }
layer { name: "flat_mid" type: "Flatten" bottom: "cat_h" top: "flat_mid" flatten_param { axis: 2 end_axis: 3 } }
layer { name: "reshape" type: "Reshape" bottom: "flat_mid" top: "reshaped"
  reshape_param { shape { dim: 0 dim: -1 dim: 5 } } }
layer { name: "softmax" type: "Softmax" bottom: "reshaped" top: "softmax" softmax_param { axis: 2 } }
layer { name: "pool" type: "Pooling" bottom: "e2" top: "pool" pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 } }
layer { name: "crop" type: "Crop" bottom: "s3" bottom: "pool" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "permute" type: "Permute" bottom: "crop" top: "permuted" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "flat" type: "Flatten" bottom: "permuted" top: "flat" }
layer { name: "flat_e3" type: "Flatten" bottom: "e3" top: "flat_e3" flatten_param { axis: 2 } }
layer { name: "reshape_tail" type: "Reshape" bottom: "flat_e3" top: "tail"
  reshape_param { axis: 1 shape { dim: 2 dim: -1 } } }
"""),
    # LRN across and within channels, MVN per channel, across channels and mean-only.
    "lrn_mvn": _spec({"data": Feed((2, 7, 6, 5))}, """
layer { name: "split" type: "Split" bottom: "data" top: "a" top: "b" top: "c" top: "d" top: "e" }
layer { name: "lrn_across" type: "LRN" bottom: "a" top: "lrn_across" lrn_param { local_size: 3 alpha: 0.3 beta: 0.6 } }
layer { name: "lrn_within" type: "LRN" bottom: "b" top: "lrn_within"
  lrn_param { local_size: 3 alpha: 0.4 beta: 0.8 norm_region: WITHIN_CHANNEL } }
layer { name: "mvn" type: "MVN" bottom: "c" top: "mvn" }
layer { name: "mvn_across" type: "MVN" bottom: "d" top: "mvn_across" mvn_param { across_channels: true } }
layer { name: "mvn_mean" type: "MVN" bottom: "e" top: "mvn_mean" mvn_param { normalize_variance: false } }
"""),
    # Log with base, scale and shift; LRN with k != 1; MVN with a large eps.
    "log_lrn_mvn": _spec({"data": Feed((2, 5, 4, 3), 0.2, 2.0)}, """
layer { name: "log" type: "Log" bottom: "data" top: "log" log_param { base: 3 scale: 2 shift: 0.5 } }
layer { name: "log_e" type: "Log" bottom: "log" top: "log_e" log_param { shift: 2 } }
layer { name: "lrn" type: "LRN" bottom: "log_e" top: "lrn" lrn_param { local_size: 5 alpha: 0.5 beta: 0.6 k: 2 } }
layer { name: "mvn" type: "MVN" bottom: "lrn" top: "mvn" mvn_param { eps: 0.1 } }
layer { name: "mvn_across" type: "MVN" bottom: "mvn" top: "mvn_across" mvn_param { eps: 0.05 across_channels: true } }
"""),
    # An SSD head: Normalize (per position with per-channel scale; across spatial with a shared one),
    # Permute + Flatten, PriorBox with several sizes, ratios, steps and offsets, Concat (legacy concat_dim
    # too), Reshape, Softmax.
    "ssd_head": _spec({"data": Feed((1, 3, 24, 30))}, """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 4 pad: 1 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "Normalize" bottom: "conv1" top: "norm1"
  norm_param { across_spatial: false channel_shared: false eps: 0.001 } }
layer { name: "norm2" type: "Normalize" bottom: "conv2" top: "norm2" norm_param { across_spatial: true channel_shared: true } }
layer { name: "loc1" type: "Convolution" bottom: "norm1" top: "loc1" convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "loc1_perm" type: "Permute" bottom: "loc1" top: "loc1_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc1_flat" type: "Flatten" bottom: "loc1_perm" top: "loc1_flat" }
layer { name: "loc2" type: "Convolution" bottom: "norm2" top: "loc2" convolution_param { num_output: 24 kernel_size: 1 } }
layer { name: "loc2_perm" type: "Permute" bottom: "loc2" top: "loc2_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc2_flat" type: "Flatten" bottom: "loc2_perm" top: "loc2_flat" }
layer { name: "loc" type: "Concat" bottom: "loc1_flat" bottom: "loc2_flat" top: "loc" concat_param { concat_dim: 1 } }
layer { name: "loc_reshape" type: "Reshape" bottom: "loc" top: "loc_boxes" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "loc_softmax" type: "Softmax" bottom: "loc_boxes" top: "loc_softmax" softmax_param { axis: 2 } }
layer { name: "prior1" type: "PriorBox" bottom: "norm1" bottom: "data" top: "prior1"
  prior_box_param { min_size: 6 max_size: 12 aspect_ratio: 2 flip: true clip: true
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "prior2" type: "PriorBox" bottom: "norm2" bottom: "data" top: "prior2"
  prior_box_param { min_size: 10 min_size: 16 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 2 flip: false
                    clip: false variance: 0.1 step: 7 offset: 0.25 } }
layer { name: "prior3" type: "PriorBox" bottom: "norm2" bottom: "data" top: "prior3"
  prior_box_param { min_size: 20 aspect_ratio: 0.5 step_h: 5 step_w: 9 variance: 0.2 } }
layer { name: "priors" type: "Concat" bottom: "prior1" bottom: "prior2" bottom: "prior3" top: "priors"
  concat_param { axis: 2 } }
"""),
    # OpenCV's PriorBoxClustered: explicit width/height pairs, a step, clipping or not, 4 or 1 variances.
    "prior_box_clustered": _spec({"data": Feed((1, 3, 24, 30))}, """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 4 pad: 1 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "prior1" type: "PriorBoxClustered" bottom: "conv1" bottom: "data" top: "prior1"
  prior_box_param { width: 5 width: 11.5 height: 7 height: 3 clip: false step: 4 offset: 0.5
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "prior2" type: "PriorBoxClustered" bottom: "conv2" bottom: "data" top: "prior2"
  prior_box_param { width: 30 height: 18 clip: true variance: 0.1 } }
"""),
    # An SSD detector: two DetectionOutput heads (CENTER_SIZE with shared locations, CORNER per class with
    # another background label), Normalize, Permute, Flatten, PriorBox, Softmax over classes.
    "ssd_detection": _spec({"data": Feed((2, 3, 24, 30))}, """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 4 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "Normalize" bottom: "conv1" top: "norm1"
  norm_param { across_spatial: false channel_shared: false eps: 0.001 } }
layer { name: "loc1" type: "Convolution" bottom: "norm1" top: "loc1" convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "loc1_perm" type: "Permute" bottom: "loc1" top: "loc1_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc" type: "Flatten" bottom: "loc1_perm" top: "loc" }
layer { name: "locc1" type: "Convolution" bottom: "norm1" top: "locc1" convolution_param { num_output: 48 kernel_size: 3 pad: 1 } }
layer { name: "locc1_perm" type: "Permute" bottom: "locc1" top: "locc1_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_per_class" type: "Flatten" bottom: "locc1_perm" top: "loc_per_class" }
layer { name: "conf1" type: "Convolution" bottom: "norm1" top: "conf1" convolution_param { num_output: 12 kernel_size: 3 pad: 1 } }
layer { name: "conf1_perm" type: "Permute" bottom: "conf1" top: "conf1_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf1_flat" type: "Flatten" bottom: "conf1_perm" top: "conf1_flat" }
layer { name: "conf_reshape" type: "Reshape" bottom: "conf1_flat" top: "conf_reshape" reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax" softmax_param { axis: 2 } }
layer { name: "conf" type: "Flatten" bottom: "conf_softmax" top: "conf" }
layer { name: "priors" type: "PriorBox" bottom: "norm1" bottom: "data" top: "priors"
  prior_box_param { min_size: 6 max_size: 12 aspect_ratio: 2 flip: true clip: true
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "detection_center" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "priors"
  top: "detection_center"
  detection_output_param { num_classes: 3 share_location: true background_label_id: 0 code_type: CENTER_SIZE
    nms_param { nms_threshold: 0.45 top_k: 20 } keep_top_k: 7 confidence_threshold: 0.3 } }
layer { name: "detection_corner" type: "DetectionOutput" bottom: "loc_per_class" bottom: "conf" bottom: "priors"
  top: "detection_corner"
  detection_output_param { num_classes: 3 share_location: false background_label_id: 1 code_type: CORNER
    nms_param { nms_threshold: 0.3 } keep_top_k: 100
    confidence_threshold: 0.34 } }
"""),
    # A YOLOv2 head: Reorg (OpenCV's channel order) concatenated with a strided branch, a Permute to NHWC and
    # two Region layers (softmax with NMS, logistic without), anchors as blob 0.
    "yolo_v2": _spec({"data": Feed((2, 3, 12, 16))}, """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "reorg" type: "Reorg" bottom: "conv1" top: "reorg" reorg_param { stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "concat" type: "Concat" bottom: "reorg" bottom: "conv2" top: "concat" }
layer { name: "head" type: "Convolution" bottom: "concat" top: "head" convolution_param { num_output: 16 kernel_size: 1 } }
layer { name: "head_perm" type: "Permute" bottom: "head" top: "head_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "region" type: "Region" bottom: "head_perm" top: "region"
  region_param { classes: 3 coords: 4 anchors: 2 softmax: 1 thresh: 0.1 nms_threshold: 0.3 } }
layer { name: "region_logistic" type: "Region" bottom: "head_perm" top: "region_logistic"
  region_param { classes: 3 coords: 4 anchors: 2 logistic: 1 thresh: 0.3 nms_threshold: 0 } }
"""),
    # Reorg by 3, which OpenCV does not read (it reorganises by 2).
    "reorg_stride3": _spec({"data": Feed((2, 18, 6, 9))}, """
layer { name: "reorg" type: "Reorg" bottom: "data" top: "reorg" reorg_param { stride: 3 } }
"""),
    # Faster R-CNN's ROIPooling and R-FCN's PSROIPooling over ROIs [batch, x1, y1, x2, y2] in image pixels
    # (some reversed, some past the map), at two batch images.
    "roi_pooling": _spec({"data": Feed((2, 3, 20, 24)), "rois": Feed((6, 5), -0.1, 1.0, column_scale=(1.99, 60, 50, 60, 50))},
                         """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "roi_pool" type: "ROIPooling" bottom: "conv" bottom: "rois" top: "roi_pool"
  roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 } }
layer { name: "psroi_pool" type: "PSROIPooling" bottom: "conv" bottom: "rois" top: "psroi_pool"
  psroi_pooling_param { spatial_scale: 0.25 output_dim: 2 group_size: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "roi_pool" top: "fc" inner_product_param { num_output: 4 } }
"""),
    # Faster R-CNN's RPN Proposal (6 anchors on a 10 x 12 map, stride 16) over probabilities, deltas and
    # im_info (about 160 x 190 pixels at scale about 1), with a scores top.
    "proposal": _spec({"rpn_prob": Feed((1, 12, 10, 12), 0.0, 1.0), "rpn_deltas": Feed((1, 24, 10, 12)),
                       "im_info": Feed((1, 3), 0.99, 1.0, column_scale=(160.0, 190.0, 1.0))}, """
layer { name: "proposal" type: "Proposal" bottom: "rpn_prob" bottom: "rpn_deltas" bottom: "im_info"
  top: "rois" top: "roi_scores"
  proposal_param { feat_stride: 16 base_size: 16 min_size: 16 ratio: 0.5 ratio: 1 ratio: 2 scale: 1 scale: 2
                   pre_nms_topn: 300 post_nms_topn: 40 nms_thresh: 0.6 } }
"""),
    # Threshold, Tile.
    "threshold_tile": _spec({"data": Feed((2, 3, 4, 5))}, """
layer { name: "threshold" type: "Threshold" bottom: "data" top: "threshold" threshold_param { threshold: 0.2 } }
layer { name: "tile" type: "Tile" bottom: "threshold" top: "tile" tile_param { axis: 2 tiles: 3 } }
layer { name: "tile_neg" type: "Tile" bottom: "data" top: "tile_neg" tile_param { axis: -3 tiles: 2 } }
"""),
    # Reduction: every operation, axes from 0 to the last, coefficients.
    "reduction": _spec({"data": Feed((2, 3, 4, 5))}, """
layer { name: "split" type: "Split" bottom: "data" top: "a" top: "b" top: "c" top: "d" }
layer { name: "sum" type: "Reduction" bottom: "a" top: "sum" reduction_param { operation: SUM axis: 1 coeff: 0.5 } }
layer { name: "asum" type: "Reduction" bottom: "b" top: "asum" reduction_param { operation: ASUM axis: 2 } }
layer { name: "sumsq" type: "Reduction" bottom: "c" top: "sumsq" reduction_param { operation: SUMSQ axis: -1 coeff: -2 } }
layer { name: "mean" type: "Reduction" bottom: "d" top: "mean" reduction_param { operation: MEAN } }
"""),
    # ArgMax: per sample (indices; indices and values), along an axis (indices; values).
    "argmax": _spec({"data": Feed((2, 3, 4, 5))}, """
layer { name: "split" type: "Split" bottom: "data" top: "a" top: "b" top: "c" top: "d" }
layer { name: "arg" type: "ArgMax" bottom: "a" top: "arg" }
layer { name: "arg_val" type: "ArgMax" bottom: "b" top: "arg_val" argmax_param { out_max_val: true top_k: 3 } }
layer { name: "arg_axis" type: "ArgMax" bottom: "c" top: "arg_axis" argmax_param { axis: 1 top_k: 2 } }
layer { name: "val_axis" type: "ArgMax" bottom: "d" top: "val_axis" argmax_param { axis: -1 top_k: 2 out_max_val: true } }
"""),
    # Embed with and without bias, on whole-number inputs.
    "embed": _spec({"words": Feed((2, 7), 0, 10, integers=True)}, """
layer { name: "embed" type: "Embed" bottom: "words" top: "embed" embed_param { num_output: 4 input_dim: 10 } }
layer { name: "embed_nobias" type: "Embed" bottom: "words" top: "embed_nobias"
  embed_param { num_output: 3 input_dim: 10 bias_term: false } }
"""),
    # The parameterless element-wise types OpenCV's importer accepts, on values in [-8, 8) (ReLU6 clips at 6).
    "unary": _unary(Feed((2, 3, 4, 5), -8.0, 8.0), [
        "ReLU6", "Mish", "HardSwish", "HardSigmoid", "Softplus", "Softsign", "Selu", "Celu", "Gelu",
        "GeluApproximation", "Erf", "Ceil", "Floor", "Round", "Sign", "Identity", "Atan", "Asinh", "Sin", "Cos",
        "Sinh", "Cosh", "ThresholdedRelu", "Shrink", "Swish", "Not"]),
    # ... those defined inside (-1, 1) (Tan kept away from its poles), and those needing values above 1.
    "unary_unit": _unary(Feed((2, 3, 4, 5), -0.95, 0.95), ["Acos", "Asin", "Atanh", "Tan"]),
    "unary_positive": _unary(Feed((2, 3, 4, 5), 1.05, 4.0), ["Acosh", "Sqrt", "Reciprocal"]),
    # Clip; Swish with a beta (OpenCV ignores it).
    "clip": _spec({"data": Feed((2, 3, 4, 5))}, """
layer { name: "clip" type: "Clip" bottom: "data" top: "clip" clip_param { min: -0.5 max: 0.7 } }
"""),
    "swish_beta": _spec({"data": Feed((2, 3, 4, 5))}, """
layer { name: "swish" type: "Swish" bottom: "data" top: "swish" swish_param { beta: 1.7 } }
"""),
    # MobileNet/ShuffleNet forks: ConvolutionDepthwise, ReLU6, ShuffleChannel (a fork param), and the
    # spellings OpenCV also accepts: SoftMax, ChannelsPReLU (and NormalizeBBox, not trainable, on its own).
    "mobile_forks": _spec({"data": Feed((2, 6, 7, 6))}, """
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw"
  convolution_param { num_output: 6 group: 6 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu6" type: "ReLU6" bottom: "dw" top: "dw" }
layer { name: "pw" type: "Convolution" bottom: "dw" top: "pw" convolution_param { num_output: 12 kernel_size: 1 } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "pw" top: "shuffle" shuffle_channel_param { group: 3 } }
layer { name: "prelu" type: "ChannelsPReLU" bottom: "shuffle" top: "prelu" }
layer { name: "prob" type: "SoftMax" bottom: "prelu" top: "prob" softmax_param { axis: 1 } }
"""),
    "normalize_bbox": _spec({"data": Feed((2, 6, 4, 3))}, """
layer { name: "norm" type: "NormalizeBBox" bottom: "data" top: "norm"
  norm_param { across_spatial: false channel_shared: false } }
"""),
    # SoftMax without an axis: Caffe's axis 1 (OpenCV takes the last axis).
    "softmax_spelling": _spec({"data": Feed((2, 5, 3, 4))}, """
layer { name: "prob" type: "SoftMax" bottom: "data" top: "prob" }
"""),
    # DepthwiseConvolution (OpenCV cannot create it), with stride, padding and a channel multiplier.
    "depthwise_fork": _spec({"data": Feed((2, 4, 7, 6))}, """
layer { name: "dw" type: "DepthwiseConvolution" bottom: "data" top: "dw"
  convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "dw2" type: "DepthwiseConvolution" bottom: "dw" top: "dw2"
  convolution_param { num_output: 8 group: 4 kernel_size: 2 bias_term: false } }
"""),
    # Interp (a fork's interp_param) to a given height/width, by a zoom factor, and to a single row.
    "interp": _spec({"data": Feed((2, 3, 5, 7))}, """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "to_size" type: "Interp" bottom: "conv" top: "to_size" interp_param { height: 9 width: 4 } }
layer { name: "zoom" type: "Interp" bottom: "to_size" top: "zoom" interp_param { zoom_factor: 3 } }
layer { name: "one_row" type: "Interp" bottom: "conv" top: "one_row" interp_param { height: 1 width: 11 } }
"""),
    # Upsample: nearest by an integer scale (OpenCV cannot create it).
    "upsample": _spec({"data": Feed((2, 3, 7, 6))}, """
layer { name: "up" type: "Upsample" bottom: "data" top: "up" upsample_param { scale: 2 } }
layer { name: "up3" type: "Upsample" bottom: "up" top: "up3" upsample_param { scale: 3 } }
"""),
    # OpenCV's factory types read from fork blocks (tests/test_opencv_factory_types.py covers every form);
    # batch 1, as OpenCV runs MaxUnpool.
    "opencv_factory": _spec({"data": Feed((1, 3, 7, 6)), "like": Feed((1, 2, 8, 9))}, """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "bilinear" type: "Resize" bottom: "conv" top: "bilinear" resize_param { interpolation: bilinear height: 5 width: 11 align_corners: 1 } }
layer { name: "nearest" type: "Resize" bottom: "bilinear" bottom: "like" top: "nearest" resize_param { interpolation: nearest } }
layer { name: "pool" type: "Pooling" bottom: "nearest" top: "pool" top: "mask" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "unpool" type: "MaxUnpool" bottom: "pool" bottom: "mask" top: "unpool"
        unpool_param { pool_k_h: 3 pool_k_w: 3 pool_stride_h: 2 pool_stride_w: 2 pool_pad_h: 0 pool_pad_w: 0 } }
layer { name: "max" type: "Reduce" bottom: "unpool" top: "max" reduce_param { reduce: MAX axes: 3 keepdims: 0 } }
layer { name: "gru" type: "GRU" bottom: "max" top: "gru" recurrent_param { num_output: 6 } }
layer { name: "mean" type: "Reduce" bottom: "gru" top: "mean" reduce_param { reduce: MEAN } }
"""),
    # Shift's blob and CropAndResize's image tie the batch (one image).
    "opencv_factory_batch_one": _spec({"data": Feed((1, 3, 7, 9)), "boxes": Feed((1, 1, 3, 7), 0.0, 1.0)}, """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "shift" type: "Shift" bottom: "conv" top: "shift" }
layer { name: "crop" type: "CropAndResize" bottom: "shift" bottom: "boxes" top: "crop" crop_and_resize_param { height: 4 width: 5 } }
"""),
    # Interp forms OpenCV ignores: shrink_factor, negative pads (a crop), shrink then zoom.
    "interp_caffe": _spec({"data": Feed((2, 3, 7, 6))}, """
layer { name: "split" type: "Split" bottom: "data" top: "b" top: "c" top: "d" }
layer { name: "shrink" type: "Interp" bottom: "b" top: "shrink" interp_param { shrink_factor: 2 } }
layer { name: "crop_zoom" type: "Interp" bottom: "c" top: "crop_zoom" interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -2 } }
layer { name: "shrink_zoom" type: "Interp" bottom: "d" top: "shrink_zoom" interp_param { shrink_factor: 3 zoom_factor: 2 } }
"""),
    # FlowNet's fork layers in the forms OpenCV computes as the fork does (batch 1: OpenCV's Accum and
    # DataAugmentation mishandle larger batches): the batch-mean subtraction of a fresh DataAugmentation,
    # a strided Correlation, a FlowWarp whose flow leaves the image, Accum to a given size.
    "flownet": _spec({"img0": Feed((1, 3, 9, 8)), "img1": Feed((1, 3, 9, 8)), "flow": Feed((1, 2, 9, 8), -3.0, 3.0)}, """
layer { name: "aug" type: "DataAugmentation" bottom: "img0" top: "aug"
  augmentation_param { recompute_mean: 1000 mean_per_pixel: false } }
layer { name: "conv0" type: "Convolution" bottom: "aug" top: "conv0" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "conv1" type: "Convolution" bottom: "img1" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "corr" type: "Correlation" bottom: "conv0" bottom: "conv1" top: "corr"
  correlation_param { pad: 3 kernel_size: 3 max_displacement: 4 stride_1: 2 stride_2: 2 } }
layer { name: "warp" type: "FlowWarp" bottom: "conv1" bottom: "flow" top: "warp" }
layer { name: "pool" type: "Pooling" bottom: "warp" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "accum" type: "Accum" bottom: "pool" bottom: "corr" top: "accum" accum_param { top_height: 11 top_width: 10 } }
"""),
}
