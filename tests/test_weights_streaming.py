"""The fast paths of the weights: loading streams a current-format caffemodel (io.read_weight_layers),
saving writes blob values straight from the arrays, and a net needing no upgrade is not copied; each
must give exactly what the plain protobuf path gives."""
import numpy as np
import pytest

from caffe_surgery import caffe_pb2
from caffe_surgery.blobs import array_to_blob, blob_shape, blob_to_array, is_legacy_shape
from caffe_surgery.errors import CaffeSurgeryError
from caffe_surgery.io import read_net_text, read_weight_layers, read_weights
from caffe_surgery.model import load_model, read_stored_weights, weights_by_layer
from caffe_surgery.save import save_caffemodel
from caffe_surgery.upgrade import needs_upgrade, upgrade_net
from caffe_surgery.wire import length_delimited
from conftest import REAL_MODELS, REPO

SAMPLE = REPO / "samples" / "lenet_maxout"


def _reference(path):
    """What loading did before the streaming reader: parse whole, upgrade, convert every blob."""
    try:
        stored = weights_by_layer(upgrade_net(read_weights(path)), str(path))
    except CaffeSurgeryError as exc:
        return ("error", str(exc))
    return {name: [(blob_to_array(b), is_legacy_shape(b), blob_shape(b)) for blobs in copies for b in blobs]
            for name, copies in stored.items() if any(copies)}


def _streamed(path):
    try:
        stored = read_stored_weights(path)
    except CaffeSurgeryError as exc:
        return ("error", str(exc))
    out = {}
    for name, copies in ((n, c) for n, c in stored.items() if any(c)):
        pairs = [b if isinstance(b, tuple) else (b, None) for blobs in copies for b in blobs]
        out[name] = [(blob_to_array(b, d), is_legacy_shape(b), blob_shape(b)) for b, d in pairs]
    return out


def _assert_same(path):
    expected, got = _reference(path), _streamed(path)
    if isinstance(expected, tuple) or isinstance(got, tuple):
        assert got == expected
        return
    assert list(got) == list(expected)
    for name in expected:
        assert len(got[name]) == len(expected[name]), name
        for (a, legacy_a, shape_a), (b, legacy_b, shape_b) in zip(got[name], expected[name]):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True), name
            assert (legacy_a, shape_a) == (legacy_b, shape_b), name


@pytest.mark.parametrize("path", sorted(REAL_MODELS.glob("*/*.caffemodel")) + [SAMPLE.with_suffix(".caffemodel")],
                         ids=lambda p: p.parent.name)
def test_streamed_weights_equal_the_whole_parse(path):
    _assert_same(path)


def test_streamed_weights_unusual_blobs_and_bad_files(tmp_path):
    weights = read_weights(SAMPLE.with_suffix(".caffemodel"))
    conv1, fc3 = (next(l for l in weights.layer if l.name == n) for n in ("conv1", "fc_3"))
    values = np.array(conv1.blobs[0].data, dtype=np.float32)
    conv1.blobs[0].ClearField("data")
    conv1.blobs[0].raw_data, conv1.blobs[0].raw_data_type = values.astype("<f2").tobytes(), caffe_pb2.FLOAT16
    bias = np.array(conv1.blobs[1].data)
    conv1.blobs[1].ClearField("data")
    conv1.blobs[1].double_data.extend(bias + 0.5)
    count = len(fc3.blobs[1].data)
    fc3.blobs[1].ClearField("shape")
    fc3.blobs[1].num, fc3.blobs[1].channels, fc3.blobs[1].height, fc3.blobs[1].width = 1, 1, 1, count
    fc3.blobs[0].diff.extend([1.0] * 10)
    weights.input.append("images")
    weights.input_dim.extend([1, 1, 28, 28])
    mixed = tmp_path / "mixed.caffemodel"
    mixed.write_bytes(weights.SerializeToString())
    assert read_weight_layers(mixed) is not None
    _assert_same(mixed)

    shape = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2, 3])).SerializeToString()
    halves = caffe_pb2.BlobProto(data=[1, 2, 3]).SerializeToString() + caffe_pb2.BlobProto(data=[4, 5, 6]).SerializeToString()
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct").SerializeToString()
    split = tmp_path / "split.caffemodel"
    split.write_bytes(length_delimited(100, layer + length_delimited(7, shape + halves)))
    _assert_same(split)
    assert _streamed(split)["ip"][0][0].tolist() == [[1, 2, 3], [4, 5, 6]]

    weights.input_dim.append(5)  # a header error the upgrade reports
    bad_header = tmp_path / "bad_header.caffemodel"
    bad_header.write_bytes(weights.SerializeToString())
    assert _streamed(bad_header)[0] == "error"
    _assert_same(bad_header)

    data = SAMPLE.with_suffix(".caffemodel").read_bytes()
    for cut in (0, 10, 1000, len(data) // 2, len(data) - 1):
        truncated = tmp_path / f"cut{cut}.caffemodel"
        truncated.write_bytes(data[:cut])
        assert read_weight_layers(truncated) is None
        assert _streamed(truncated)[0] == "error"
        _assert_same(truncated)


def test_v1_caffemodel_falls_back_to_the_whole_parse():
    v1 = REAL_MODELS / "lenet_v1_everpeace" / "lenet_iter_10000.caffemodel"
    assert read_weight_layers(v1) is None
    _assert_same(v1)


def _old_save_bytes(net):
    chunks = [net.header.SerializeToString()]
    for layer in net.layers:
        record = caffe_pb2.LayerParameter()
        record.CopyFrom(layer.param)
        del record.blobs[:]
        for array in layer.blobs:
            record.blobs.append(array_to_blob(array))
        chunks.append(length_delimited(100, record.SerializeToString()))
    return b"".join(chunks)


def test_saved_caffemodel_is_byte_for_byte_what_protobuf_serializes(tmp_path):
    model = load_model(f"{SAMPLE}.prototxt", f"{SAMPLE}.caffemodel")
    out = tmp_path / "out.caffemodel"
    save_caffemodel(model.net, out)
    assert out.read_bytes() == _old_save_bytes(model.net)
    layer = model.net.layers[1]
    layer.blobs = [np.float32(3.0).reshape(()), np.zeros((0,), np.float32), np.arange(6.0).reshape(2, 3),
                   np.arange(12, dtype=np.float32).reshape(3, 4).T]
    layer.param.ClearField("convolution_param")
    layer.param.propagate_down.append(True)  # a field numbered after blobs
    save_caffemodel(model.net, out)
    assert out.read_bytes() == _old_save_bytes(model.net)


@pytest.mark.parametrize("path", sorted(REAL_MODELS.glob("*/*.prototxt")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_needs_upgrade_is_false_only_when_upgrading_changes_nothing(path):
    net = read_net_text(path)
    try:
        upgraded = upgrade_net(net)
    except CaffeSurgeryError:
        assert needs_upgrade(net)
        return
    assert needs_upgrade(net) or upgraded == net
