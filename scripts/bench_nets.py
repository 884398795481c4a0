"""Benchmark nets: real layer shapes, generated weights, written straight to disk.

Deploy prototxts for VGG-16 (the ImageNet shapes, ~138M parameters), a
conv-heavy VGG-like CIFAR-10 net, Caffe's ``cifar10_full`` and a ResNet-18-like
net with BatchNorm/Scale and residual sums; each can be scaled down (``width``
divides every channel count, ``size`` sets the input side) for smoke runs.

Caffemodels are streamed: every weighted layer's record is written as
protobuf wire bytes with its blobs' float32 values drawn chunk by chunk and
written as they are drawn, so generating the ~550 MB VGG-16 file needs a few
MB of memory. Files are cached by content (name + prototxt text + seed).

    from bench_nets import ensure_net
    net = ensure_net("vgg16", cache_dir)          # -> BenchNet(prototxt, caffemodel, ...)
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffe_surgery import caffe_pb2
from caffe_surgery.graph import build_net
from caffe_surgery.io import read_net_text
from caffe_surgery.wire import encode_varint, field_key
from caffe_surgery.shapes import infer_shapes
from caffe_surgery.upgrade import upgrade_net

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
DEFAULT_CACHE = Path(os.environ.get("CAFFE_SURGERY_BENCH_CACHE",
                                    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "caffe-surgery-bench"))

_LAYER_FIELD = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number
_BLOBS_FIELD = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number
_SHAPE_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["shape"].number
_DATA_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].number
_DIM_FIELD = caffe_pb2.BlobShape.DESCRIPTOR.fields_by_name["dim"].number
CHUNK_VALUES = 1 << 22  # 16 MB of float32 per draw


# ------------------------------------------------------------------------------ prototxts

def _input(shape) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'


def _conv(name, bottom, out, kernel, pad=0, stride=1, bias=True) -> str:
    extra = "" if bias else " bias_term: false"
    stride_text = f" stride: {stride}" if stride != 1 else ""
    pad_text = f" pad: {pad}" if pad else ""
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f'  convolution_param {{ num_output: {out} kernel_size: {kernel}{pad_text}{stride_text}{extra} }} }}\n')


def _relu(name, blob) -> str:
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def _pool(name, bottom, kernel=2, stride=2, kind="MAX", pad=0) -> str:
    pad_text = f" pad: {pad}" if pad else ""
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"\n'
            f'  pooling_param {{ pool: {kind} kernel_size: {kernel} stride: {stride}{pad_text} }} }}\n')


def _fc(name, bottom, out) -> str:
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"\n'
            f'  inner_product_param {{ num_output: {out} }} }}\n')


def _dropout(name, blob) -> str:
    return (f'layer {{ name: "{name}" type: "Dropout" bottom: "{blob}" top: "{blob}" '
            f'dropout_param {{ dropout_ratio: 0.5 }} }}\n')


def _softmax(bottom) -> str:
    return f'layer {{ name: "prob" type: "Softmax" bottom: "{bottom}" top: "prob" }}\n'


def _w(channels: int, width: int) -> int:
    return max(channels // width, 2)


VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _vgg_features(stages, width: int) -> tuple[str, str]:
    """The 3x3 conv + ReLU stages of a VGG, each ending in a 2x2 max pool: (layers' text, last blob)."""
    text, bottom = "", "data"
    for stage, widths in enumerate(stages, start=1):
        for index, channels in enumerate(widths, start=1):
            name = f"conv{stage}_{index}"
            text += _conv(name, bottom, _w(channels, width), 3, pad=1) + _relu(f"relu{stage}_{index}", name)
            bottom = name
        text += _pool(f"pool{stage}", bottom)
        bottom = f"pool{stage}"
    return text, bottom


def vgg16_text(size: int = 224, width: int = 1, classes: int = 1000) -> str:
    """VGG-16 (configuration D) deploy net; ``width`` divides every channel/neuron count."""
    features, bottom = _vgg_features(VGG16_STAGES, width)
    text = 'name: "VGG_ILSVRC_16_layers"\n' + _input((1, 3, size, size)) + features
    for name in ("fc6", "fc7"):
        text += _fc(name, bottom, _w(4096, width)) + _relu(f"relu{name[2:]}", name) + _dropout(f"drop{name[2:]}", name)
        bottom = name
    return text + _fc("fc8", bottom, classes) + _softmax("fc8")


CIFAR_VGG_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def cifar_vgg_text(width: int = 1, size: int = 32) -> str:
    """A conv-heavy VGG-like CIFAR-10 net (3x32x32 in, 13 conv layers, fc 512, fc 10)."""
    features, bottom = _vgg_features(CIFAR_VGG_STAGES, width)
    text = 'name: "cifar10_vgg"\n' + _input((1, 3, size, size)) + features
    text += _fc("fc1", bottom, _w(512, width)) + _relu("relu_fc1", "fc1")
    return text + _fc("fc2", "fc1", 10) + _softmax("fc2")


def cifar10_full_text() -> str:
    """Caffe's examples/cifar10 ``cifar10_full`` deploy net (conv32/conv32/conv64 + ip10)."""
    text = 'name: "CIFAR10_full"\n' + _input((1, 3, 32, 32))
    text += _conv("conv1", "data", 32, 5, pad=2) + _pool("pool1", "conv1", 3, 2) + _relu("relu1", "pool1")
    text += ('layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"\n'
             '  lrn_param { local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL } }\n')
    text += _conv("conv2", "norm1", 32, 5, pad=2) + _relu("relu2", "conv2") + _pool("pool2", "conv2", 3, 2, "AVE")
    text += ('layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2"\n'
             '  lrn_param { local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL } }\n')
    text += _conv("conv3", "norm2", 64, 5, pad=2) + _relu("relu3", "conv3") + _pool("pool3", "conv3", 3, 2, "AVE")
    return text + _fc("ip1", "pool3", 10) + _softmax("ip1")


def _bn_scale(name, blob) -> str:
    return (f'layer {{ name: "bn_{name}" type: "BatchNorm" bottom: "{blob}" top: "{blob}" }}\n'
            f'layer {{ name: "scale_{name}" type: "Scale" bottom: "{blob}" top: "{blob}" '
            f'scale_param {{ bias_term: true }} }}\n')


def resnet18_text(size: int = 224, width: int = 1, classes: int = 1000) -> str:
    """A ResNet-18-like net: 7x7 stem, four stages of two basic blocks (projection shortcuts), BN + Scale."""
    text = 'name: "ResNet-18"\n' + _input((1, 3, size, size))
    text += _conv("conv1", "data", _w(64, width), 7, pad=3, stride=2, bias=False) + _bn_scale("conv1", "conv1")
    text += _relu("conv1_relu", "conv1") + _pool("pool1", "conv1", 3, 2)
    bottom, channels = "pool1", _w(64, width)
    for stage, planes in enumerate((64, 128, 256, 512), start=2):
        planes = _w(planes, width)
        for block in range(2):
            name = f"res{stage}{'ab'[block]}"
            stride = 2 if block == 0 and stage > 2 else 1
            a, b = f"{name}_branch2a", f"{name}_branch2b"
            text += _conv(a, bottom, planes, 3, pad=1, stride=stride, bias=False) + _bn_scale(a, a) + _relu(f"{a}_relu", a)
            text += _conv(b, a, planes, 3, pad=1, bias=False) + _bn_scale(b, b)
            shortcut = bottom
            if stride != 1 or channels != planes:
                shortcut = f"{name}_branch1"
                text += _conv(shortcut, bottom, planes, 1, stride=stride, bias=False) + _bn_scale(shortcut, shortcut)
            text += (f'layer {{ name: "{name}" type: "Eltwise" bottom: "{shortcut}" bottom: "{b}" top: "{name}" '
                     f'eltwise_param {{ operation: SUM }} }}\n') + _relu(f"{name}_relu", name)
            bottom, channels = name, planes
    text += (f'layer {{ name: "pool5" type: "Pooling" bottom: "{bottom}" top: "pool5" '
             f'pooling_param {{ pool: AVE global_pooling: true }} }}\n')
    return text + _fc("fc1000", "pool5", classes) + _softmax("fc1000")


@dataclass(frozen=True)
class NetKind:
    """How to write one benchmark net and what its images look like."""

    text: str
    input_shape: tuple[int, int, int]


def net_kind(name: str, smoke: bool = False) -> NetKind:
    """The benchmark nets by name; ``smoke`` gives the same topology, tiny."""
    if name == "lenet":
        return NetKind((SAMPLES / "lenet_maxout.prototxt").read_text(), (1, 28, 28))
    if name == "vgg16":
        size = 32 if smoke else 224
        return NetKind(vgg16_text(size, 16 if smoke else 1, 10 if smoke else 1000), (3, size, size))
    if name == "cifar_vgg":
        return NetKind(cifar_vgg_text(8 if smoke else 1), (3, 32, 32))
    if name == "cifar10_full":
        return NetKind(cifar10_full_text(), (3, 32, 32))
    if name == "resnet18":
        size = 32 if smoke else 224
        return NetKind(resnet18_text(size, 8 if smoke else 1, 10 if smoke else 1000), (3, size, size))
    raise KeyError(f"unknown benchmark net {name!r}")


NETS = ("lenet", "cifar10_full", "cifar_vgg", "resnet18", "vgg16")


# ------------------------------------------------------------------------------- weights

def _blob_head(shape: tuple[int, ...]) -> tuple[bytes, int]:
    """The bytes of a float32 BlobProto before its packed values, and the blob's total size."""
    dims = b"".join(field_key(_DIM_FIELD, 0) + encode_varint(d) for d in shape)
    shape_part = field_key(_SHAPE_FIELD) + encode_varint(len(dims)) + dims
    values = 4 * int(np.prod(shape, dtype=np.int64))
    head = shape_part + field_key(_DATA_FIELD) + encode_varint(values)
    return head, len(head) + values


def _draws(layer_type: str, shapes: list[tuple[int, ...]]):
    """(shape, sampler(rng, count) -> float32 values) per blob of a layer."""
    def normal(scale):
        return lambda rng, n: rng.standard_normal(n, dtype=np.float32) * np.float32(scale)

    def uniform(low, high):
        return lambda rng, n: rng.uniform(low, high, n).astype(np.float32)

    def constant(value):
        return lambda rng, n: np.full(n, value, dtype=np.float32)

    if layer_type == "BatchNorm":
        return list(zip(shapes, (normal(0.1), uniform(0.5, 1.5), constant(1.0))))
    if layer_type == "Scale":
        return list(zip(shapes, (uniform(0.8, 1.2), normal(0.05))))
    draws = []
    for index, shape in enumerate(shapes):
        if index == 0 and len(shape) > 1:  # He-normal weights keep ReLU activations near unit size
            draws.append((shape, normal(np.sqrt(2.0 / int(np.prod(shape[1:]))))))
        else:
            draws.append((shape, normal(0.01)))
    return draws


def write_caffemodel(prototxt: str | os.PathLike, path: str | os.PathLike, seed: int = 0) -> int:
    """Write random weights for ``prototxt`` as a current-format caffemodel, streaming; return its size.

    Each weighted layer becomes one ``layer`` record (the layer's own parameters
    plus float32 blobs with ``shape``) whose values are drawn and written in
    chunks, so memory stays small whatever the size of the net.
    """
    net_param = upgrade_net(read_net_text(prototxt))
    net = build_net(net_param)
    shapes = infer_shapes(net)
    rng = np.random.default_rng(seed)
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as out:
        out.write(caffe_pb2.NetParameter(name=net_param.name).SerializeToString())
        for layer in net.layers:
            param_shapes = [tuple(int(d) for d in s) for s in (shapes.layer(layer.name).param_shapes or [])]
            own = layer.param.SerializeToString()
            heads = [_blob_head(s) for s in param_shapes]
            payload = len(own) + sum(len(field_key(_BLOBS_FIELD)) + len(encode_varint(size)) + size for _, size in heads)
            out.write(field_key(_LAYER_FIELD) + encode_varint(payload) + own)
            for (shape, draw), (head, size) in zip(_draws(layer.type, param_shapes), heads):
                out.write(field_key(_BLOBS_FIELD) + encode_varint(size) + head)
                remaining = int(np.prod(shape, dtype=np.int64))
                while remaining:
                    count = min(remaining, CHUNK_VALUES)
                    out.write(draw(rng, count).astype("<f4", copy=False).tobytes())
                    remaining -= count
    os.replace(temp, path)
    return path.stat().st_size


@dataclass(frozen=True)
class BenchNet:
    """A benchmark net on disk."""

    name: str
    prototxt: Path
    caffemodel: Path
    input_shape: tuple[int, int, int]

    @property
    def megabytes(self) -> float:
        return self.caffemodel.stat().st_size / 1e6


def ensure_net(name: str, cache_dir: str | os.PathLike = DEFAULT_CACHE, smoke: bool = False, seed: int = 0) -> BenchNet:
    """The net's prototxt and caffemodel in the cache, generated on first use (LeNet: the repository sample)."""
    kind = net_kind(name, smoke)
    if name == "lenet":
        return BenchNet(name, SAMPLES / "lenet_maxout.prototxt", SAMPLES / "lenet_maxout.caffemodel", kind.input_shape)
    digest = hashlib.sha1(f"{name}\n{seed}\n{kind.text}".encode()).hexdigest()[:10]
    directory = Path(cache_dir) / "nets"
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{name}{'_smoke' if smoke else ''}_{digest}"
    prototxt, caffemodel = directory / f"{stem}.prototxt", directory / f"{stem}.caffemodel"
    if not prototxt.exists():
        temp = prototxt.with_name(f".{prototxt.name}.tmp")
        temp.write_text(kind.text)
        os.replace(temp, prototxt)
    if not caffemodel.exists():
        write_caffemodel(prototxt, caffemodel, seed)
    return BenchNet(name, prototxt, caffemodel, kind.input_shape)


def main(argv: list[str]) -> int:
    """``python scripts/bench_nets.py [--smoke] [--cache DIR] NAME...``: generate and print the files."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NETS), help=f"nets ({', '.join(NETS)})")
    parser.add_argument("--smoke", action="store_true", help="tiny versions")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="cache folder")
    args = parser.parse_args(argv)
    for name in args.names:
        net = ensure_net(name, args.cache, args.smoke)
        print(f"{name}: {net.prototxt} {net.caffemodel} ({net.megabytes:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
