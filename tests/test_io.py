"""Reading and writing Caffe files: round trips on real files, half precision, bad input."""
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_surgery import caffe_pb2
from caffe_surgery.blobs import array_to_blob, blob_to_array, to_float32_blob
from caffe_surgery.errors import ParseError
from caffe_surgery.io import atomic_write, read_mean, read_net_text, read_weights, write_binary, write_text
from caffe_surgery.save import save_float32_weights
from conftest import REAL_MODELS, REFERENCE

PROTOTXTS = sorted(REAL_MODELS.glob("*/*.prototxt")) + sorted(REFERENCE.glob("*.prototxt"))
CAFFEMODELS = sorted(REAL_MODELS.glob("*/*.caffemodel"))


def test_real_files_are_present():
    manifest = (REAL_MODELS / "MANIFEST.tsv").read_text().splitlines()[1:]
    pairs = [row for row in manifest if row.split("\t")[1].startswith("pair")]
    assert len(PROTOTXTS) >= 30 and len(CAFFEMODELS) == len(pairs) >= 9


@pytest.mark.parametrize("path", PROTOTXTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_prototxt_round_trip(path, tmp_path):
    original = read_net_text(path) if "solver" not in path.name else None
    if original is None:
        solver = caffe_pb2.SolverParameter()
        text_format.Merge(path.read_text(), solver)
        out = tmp_path / "solver.prototxt"
        write_text(out, solver)
        again = caffe_pb2.SolverParameter()
        text_format.Merge(out.read_text(), again)
        assert again == solver
        return
    out = tmp_path / "net.prototxt"
    write_text(out, original)
    assert read_net_text(out) == original


@pytest.mark.parametrize("path", CAFFEMODELS, ids=lambda p: p.parent.name)
def test_caffemodel_round_trip_keeps_every_field(path, tmp_path):
    original = read_weights(path)
    out = tmp_path / "copy.caffemodel"
    save_float32_weights(original, out)
    assert read_weights(out) == original


def test_unknown_fields_survive_a_round_trip(tmp_path):
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct")
    layer.blobs.append(array_to_blob(np.arange(6, dtype=np.float32).reshape(2, 3)))
    unknown = bytes([0xB8, 0x9C, 0x01, 0x2A])  # field 5000, varint 42: not in the schema
    net_bytes = b"\xa2\x06" + bytes([len(layer.SerializeToString()) + len(unknown)]) + layer.SerializeToString() + unknown
    source = tmp_path / "unknown.caffemodel"
    source.write_bytes(net_bytes)
    loaded = read_weights(source)
    out = tmp_path / "out.caffemodel"
    save_float32_weights(loaded, out)
    assert unknown in out.read_bytes()
    assert read_weights(out) == loaded


def test_half_precision_blob_reads_as_float32():
    values = np.array([[0.5, -1.25, 3.0], [65504.0, 1e-3, 0.0]], dtype=np.float16)
    blob = caffe_pb2.BlobProto(raw_data_type=caffe_pb2.FLOAT16, raw_data=values.tobytes())
    blob.shape.dim.extend(values.shape)
    array = blob_to_array(blob)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, values.astype(np.float32))
    plain = to_float32_blob(blob)
    assert not plain.HasField("raw_data") and list(plain.shape.dim) == [2, 3]
    np.testing.assert_array_equal(np.array(plain.data, dtype=np.float32), values.astype(np.float32).ravel())


def test_double_and_legacy_blobs():
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=2)
    blob.double_data.extend([1.5, 2.5, -3.0, 4.0])
    np.testing.assert_array_equal(blob_to_array(blob), np.array([1.5, 2.5, -3, 4], dtype=np.float32).reshape(1, 1, 2, 2))
    converted = to_float32_blob(blob)
    assert (converted.num, converted.channels, converted.height, converted.width) == (1, 1, 2, 2)
    assert not converted.HasField("shape") and list(converted.data) == [1.5, 2.5, -3.0, 4.0]


def test_blob_value_count_must_match_shape():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0] * 5)
    with pytest.raises(ParseError, match=r"shape \(2, 3\) holds 5 values"):
        blob_to_array(blob)


def test_truncated_caffemodel_is_a_clear_error(tmp_path):
    data = (REAL_MODELS / "lenet_v1_everpeace" / "lenet_iter_10000.caffemodel").read_bytes()
    broken = tmp_path / "broken.caffemodel"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ParseError) as info:
        read_weights(broken)
    assert str(broken) in str(info.value) and "truncated" in str(info.value)


def test_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom "data"\n}\n')
    with pytest.raises(ParseError) as info:
        read_net_text(path)
    assert str(path) in str(info.value) and "5:" in str(info.value)


def test_mean_binaryproto(tmp_path):
    mean = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=5)
    blob.data.extend(mean.ravel())
    path = tmp_path / "mean.binaryproto"
    write_binary(path, blob)
    np.testing.assert_array_equal(read_mean(path), mean)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def chunks():
        yield b"partial"
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.bin", chunks())
    assert list(tmp_path.iterdir()) == []


def test_fork_fields_unknown_to_the_schema_survive_in_text(tmp_path):
    source = REAL_MODELS / "yufacedetectnet_v1" / "yufacedetectnet-open-v1.prototxt"
    net = read_net_text(source)
    out = tmp_path / "copy.prototxt"
    write_text(out, net)
    written = out.read_text()
    block = written[written.index("detection_output_param"):]
    block = block[: block.index("\n  }\n")]
    assert "visualize: false" in block and "visualize_threshold: 0.3" in block
    assert read_net_text(out) == net


def test_unknown_block_is_kept_in_its_enclosing_message(tmp_path):
    path = tmp_path / "fork.prototxt"
    path.write_text('layer {\n  name: "d"\n  type: "Data"\n  top: "x"\n  transform_param {\n    scale: 0.5\n'
                    '    resize_param { height: 300 width: 300 interp_mode: LINEAR }\n  }\n}\n'
                    'layer {\n  name: "r"\n  type: "ReLU"\n  bottom: "x"\n  top: "x"\n  relu_param { fancy: 2 }\n}\n')
    net = read_net_text(path)
    assert net.layer[0].transform_param.scale == 0.5
    out = tmp_path / "out.prototxt"
    write_text(out, net)
    again = read_net_text(out)
    assert again == net
    text = out.read_text()
    assert text.index("resize_param") > text.index("transform_param") and "fancy: 2" in text
