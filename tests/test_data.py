"""Tests of caffe_surgery.data: reading data the way Caffe's TEST-phase data layers do."""

import gzip
import os
import struct
import threading

import cv2
import lmdb
import numpy as np
import pytest

from caffe_surgery import caffe_pb2
from caffe_surgery.data import (
    ArraySource, ImageListSource, LmdbSource, Transformer, array_to_datum, convert_data,
    convert_to_lmdb, datum_to_array, idx_source, layer_batch_size,
    numpy_source, parse_data_spec, prefetch, read_idx, source_from_layer,
)
from caffe_surgery.errors import DataError
from caffe_surgery.io import read_mean
from caffe_surgery.progress import progress

FASHION = "/usr/share/datasets/fashion-mnist"


def collect(source, batch_size=4, **kwargs):
    """All batches of a source, concatenated."""
    batches = list(source.iter_batches(batch_size, **kwargs))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def write_idx(path, array, magic, compress):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_lmdb(path, arrays, labels):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, (array, label) in enumerate(zip(arrays, labels)):
            txn.put(b"%08d" % i, array_to_datum(array, label).SerializeToString())
    env.close()


def transform_param(**fields):
    mean_value = fields.pop("mean_value", [])
    param = caffe_pb2.TransformationParameter(**fields)
    param.mean_value.extend(mean_value)
    return param


def write_mean(path, mean, legacy):
    blob = caffe_pb2.BlobProto()
    if legacy:
        blob.num, (blob.channels, blob.height, blob.width) = 1, mean.shape
    else:
        blob.shape.dim.extend((1,) + mean.shape)
    blob.data.extend(mean.ravel().tolist())
    path.write_bytes(blob.SerializeToString())


# --- Datum -----------------------------------------------------------------

def test_datum_round_trip_raw():
    image = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    datum = array_to_datum(image, label=7)
    assert (datum.channels, datum.height, datum.width, datum.encoded) == (2, 3, 4, False)
    decoded, label = datum_to_array(caffe_pb2.Datum.FromString(datum.SerializeToString()))
    assert label == 7 and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, image)


def test_datum_round_trip_float_data():
    values = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 2, 2)
    datum = array_to_datum(values, label=3)
    assert not datum.data and len(datum.float_data) == 12
    decoded, label = datum_to_array(datum)
    assert label == 3 and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, values)


def test_datum_encoded_png_decodes_to_chw_bgr():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", hwc)
    assert ok
    datum = caffe_pb2.Datum(data=png.tobytes(), encoded=True, label=4)
    decoded, label = datum_to_array(datum)
    assert label == 4
    np.testing.assert_array_equal(decoded, hwc.transpose(2, 0, 1))
    gray, _ = datum_to_array(datum, force_gray=True)
    assert gray.shape == (1, 5, 6)  # OpenCV's own grayscale decode, as Caffe's force_gray
    np.testing.assert_array_equal(gray[0], cv2.imdecode(png, cv2.IMREAD_GRAYSCALE))
    # array_to_datum's own encoding round-trips too.
    again, _ = datum_to_array(array_to_datum(hwc.transpose(2, 0, 1), 4, encoding=".png"))
    np.testing.assert_array_equal(again, decoded)


def test_datum_encoded_gray_force_color_gives_three_channels():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    datum = array_to_datum(gray, encoding=".png")
    native, _ = datum_to_array(datum)
    color, _ = datum_to_array(datum, force_color=True)
    assert native.shape == (1, 4, 5) and color.shape == (3, 4, 5)
    for channel in color:
        np.testing.assert_array_equal(channel, gray)


def test_datum_errors():
    with pytest.raises(DataError, match="needs 12"):
        datum_to_array(caffe_pb2.Datum(channels=3, height=2, width=2, data=b"\0" * 5))
    with pytest.raises(DataError, match="cannot be decoded"):
        datum_to_array(caffe_pb2.Datum(data=b"not an image", encoded=True))
    with pytest.raises(DataError, match="force_color and force_gray"):
        datum_to_array(caffe_pb2.Datum(data=b"x", encoded=True), force_color=True, force_gray=True)


# --- IDX -------------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
def test_idx_reading(tmp_path, compress):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    write_idx(tmp_path / "img", images, 0x803, compress)
    write_idx(tmp_path / "lbl", labels, 0x801, compress)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "img")), images)
    source = idx_source(str(tmp_path / "img"), str(tmp_path / "lbl"))
    assert len(source) == 7 and source.shape == (1, 5, 4)
    got, got_labels = collect(source, batch_size=3)
    assert got.dtype == np.float32 and got_labels.dtype == np.int64
    np.testing.assert_array_equal(got[:, 0], images)
    np.testing.assert_array_equal(got_labels, labels)
    _, no_labels = collect(idx_source(str(tmp_path / "img")))
    np.testing.assert_array_equal(no_labels, np.zeros(7))


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(str(tmp_path / "bad"))
    write_idx(tmp_path / "img", np.zeros((3, 2, 2)), 0x803, False)
    write_idx(tmp_path / "lbl", np.zeros(4), 0x801, False)
    with pytest.raises(DataError, match="3 images but 4 labels"):
        idx_source(str(tmp_path / "img"), str(tmp_path / "lbl"))
    (tmp_path / "short").write_bytes((tmp_path / "img").read_bytes()[:-1])
    with pytest.raises(DataError, match="holds 11"):
        read_idx(str(tmp_path / "short"))


@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"Fashion-MNIST not installed at {FASHION}")
def test_fashion_mnist_to_lmdb_and_back(tmp_path):
    images = f"{FASHION}/t10k-images-idx3-ubyte.gz"
    labels = f"{FASHION}/t10k-labels-idx1-ubyte.gz"
    out = str(tmp_path / "fashion_lmdb")
    assert convert_data(f"idx:{images}:{labels}", out, limit=500) == 500
    env = lmdb.open(out, readonly=True, lock=False)
    with env.begin() as txn:
        keys = [key for key, _ in txn.cursor()]
    env.close()
    assert keys == [b"%08d" % i for i in range(500)]

    source = LmdbSource(out, Transformer(transform_param(scale=1 / 255)))
    assert len(source) == 500 and source.shape == (1, 28, 28)
    got, got_labels = collect(source, batch_size=64)
    pixels = read_idx(images)[:500]
    # Caffe multiplies by the float scale: pixel * float(1/255).
    np.testing.assert_array_equal(got[:, 0], pixels.astype(np.float32) * np.float32(1 / 255))
    np.testing.assert_allclose(got[:, 0], pixels / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(got_labels, read_idx(labels)[:500])


# --- transformation --------------------------------------------------------

def test_transform_crop_then_mean_then_scale_by_hand():
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, size=(2, 3, 7, 6), dtype=np.uint8)
    mean_values, scale, crop = [10.0, 20.0, 30.0], 0.5, 4
    transformer = Transformer(transform_param(mean_value=mean_values, scale=scale,
                                              crop_size=crop, mirror=True))
    assert transformer.output_shape((3, 7, 6)) == (3, 4, 4)
    got = transformer(batch)
    h_off, w_off = (7 - crop) // 2, (6 - crop) // 2
    assert (h_off, w_off) == (1, 1)
    for n in range(2):
        for c in range(3):
            for h in range(crop):
                for w in range(crop):
                    expected = (float(batch[n, c, h_off + h, w_off + w]) - mean_values[c]) * scale
                    assert got[n, c, h, w] == np.float32(expected)


def test_transform_single_mean_value_broadcasts_and_bad_counts_fail():
    batch = np.full((1, 3, 2, 2), 100, dtype=np.uint8)
    got = Transformer(transform_param(mean_value=[40], scale=2))(batch)
    np.testing.assert_array_equal(got, np.full((1, 3, 2, 2), 120, dtype=np.float32))
    with pytest.raises(DataError, match="2 mean_value entries for 3 channels"):
        Transformer(transform_param(mean_value=[1, 2])).output_shape((3, 2, 2))
    with pytest.raises(DataError, match="crop_size 5"):
        Transformer(transform_param(crop_size=5)).output_shape((1, 4, 8))


@pytest.mark.parametrize("legacy", [True, False])
def test_mean_file_binaryproto_cropped_like_the_image(tmp_path, legacy):
    rng = np.random.default_rng(3)
    mean = rng.uniform(0, 255, size=(2, 5, 5)).astype(np.float32)
    write_mean(tmp_path / "mean.binaryproto", mean, legacy)
    np.testing.assert_array_equal(read_mean(str(tmp_path / "mean.binaryproto")), mean)
    param = transform_param(mean_file="mean.binaryproto", crop_size=3, scale=0.25)
    transformer = Transformer(param, base_dir=str(tmp_path))
    batch = rng.integers(0, 256, size=(3, 2, 5, 5), dtype=np.uint8)
    expected = (batch[:, :, 1:4, 1:4].astype(np.float32) - mean[:, 1:4, 1:4]) * np.float32(0.25)
    np.testing.assert_array_equal(transformer(batch), expected)
    with pytest.raises(DataError, match="mean image is 2x5x5, the data is 2x6x6"):
        transformer.output_shape((2, 6, 6))


def test_mean_file_and_mean_value_together_fail(tmp_path):
    write_mean(tmp_path / "m.binaryproto", np.zeros((1, 2, 2), np.float32), legacy=False)
    with pytest.raises(DataError, match="mean_file and mean_value"):
        Transformer(transform_param(mean_file=str(tmp_path / "m.binaryproto"), mean_value=[1]))


# --- sources ---------------------------------------------------------------

def make_images(folder, count=5, size=(9, 12)):
    """Write colour PNGs with cv2.imwrite; return (names, BGR HWC arrays)."""
    folder.mkdir()
    rng = np.random.default_rng(4)
    names, arrays = [], []
    for i in range(count):
        image = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
        names.append(f"im{i}.png")
        arrays.append(image)
        assert cv2.imwrite(str(folder / names[-1]), image)
    return names, arrays


def test_image_list_source_root_folder_resize_gray(tmp_path):
    names, arrays = make_images(tmp_path / "imgs")
    (tmp_path / "list.txt").write_text("".join(f"{n} {i * 2}\n" for i, n in enumerate(names)) + "\n")
    layer = caffe_pb2.LayerParameter(name="data", type="ImageData")
    layer.image_data_param.source = "list.txt"
    layer.image_data_param.root_folder = "imgs/"
    layer.image_data_param.new_height, layer.image_data_param.new_width = 6, 8
    layer.image_data_param.is_color = False
    layer.image_data_param.batch_size = 2
    source = source_from_layer(layer, base_dir=str(tmp_path))
    assert isinstance(source, ImageListSource) and layer_batch_size(layer) == 2
    assert len(source) == 5 and source.shape == (1, 6, 8)
    got, labels = collect(source, batch_size=2)
    for i, name in enumerate(names):
        gray = cv2.imread(str(tmp_path / "imgs" / name), cv2.IMREAD_GRAYSCALE)
        expected = cv2.resize(gray, (8, 6), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(got[i, 0], expected)
    np.testing.assert_array_equal(labels, [0, 2, 4, 6, 8])


def test_image_list_source_colour_and_errors(tmp_path):
    names, arrays = make_images(tmp_path / "imgs", count=2)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{names[0]} 1\n{names[1]} 0\n")
    got, _ = collect(parse_data_spec(f"list:{listing}:{tmp_path}/imgs"))
    np.testing.assert_array_equal(got[1], arrays[1].transpose(2, 0, 1))
    listing.write_text(f"{names[0]} 1\nmissing.png 0\n")
    source = ImageListSource(str(listing), root_folder=f"{tmp_path}/imgs/")
    with pytest.raises(DataError, match="missing.png: image is missing or cannot be decoded"):
        collect(source)
    listing.write_text(f"{names[0]}\n")
    with pytest.raises(DataError, match="line 1: expected 'path label'"):
        ImageListSource(str(listing))
    with pytest.raises(DataError, match="set together"):
        ImageListSource(str(listing), new_height=4)


def test_npy_and_npz_sources(tmp_path):
    rng = np.random.default_rng(5)
    nhw = rng.integers(0, 256, size=(4, 3, 5), dtype=np.uint8)
    np.save(tmp_path / "a.npy", nhw)
    source = parse_data_spec(f"npy:{tmp_path}/a.npy")
    assert source.shape == (1, 3, 5)
    got, labels = collect(source)
    np.testing.assert_array_equal(got[:, 0], nhw)
    np.testing.assert_array_equal(labels, np.zeros(4))

    nchw = rng.normal(size=(6, 2, 3, 3)).astype(np.float32)
    np.savez(tmp_path / "b.npz", images=nchw, label=np.arange(6))
    got, labels = collect(numpy_source(str(tmp_path / "b.npz")))
    np.testing.assert_array_equal(got, nchw)
    np.testing.assert_array_equal(labels, np.arange(6))

    np.savez(tmp_path / "c.npz", pixels=nchw)
    with pytest.raises(DataError, match="no 'data' or 'images' array"):
        numpy_source(str(tmp_path / "c.npz"))


def test_lmdb_source_from_data_layer(tmp_path):
    rng = np.random.default_rng(6)
    arrays = rng.integers(0, 256, size=(5, 3, 4, 4), dtype=np.uint8)
    write_lmdb(tmp_path / "db", arrays, range(5))
    layer = caffe_pb2.LayerParameter(name="data", type="Data")
    layer.data_param.source, layer.data_param.batch_size = "db", 3
    layer.data_param.backend = caffe_pb2.DataParameter.LMDB
    layer.transform_param.mean_value.extend([1, 2, 3])
    layer.transform_param.crop_size = 2
    source = source_from_layer(layer, base_dir=str(tmp_path))
    assert layer_batch_size(layer) == 3 and source.shape == (3, 2, 2)
    got, labels = collect(source, batch_size=3)
    expected = arrays[:, :, 1:3, 1:3].astype(np.float32) - np.float32([1, 2, 3]).reshape(3, 1, 1)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(labels, np.arange(5))


def test_lmdb_source_rejects_mixed_sizes(tmp_path):
    write_lmdb(tmp_path / "db", [np.zeros((1, 2, 2), np.uint8), np.zeros((1, 3, 3), np.uint8)], [0, 1])
    with pytest.raises(DataError, match="record b'00000001' is 1x3x3 but the first sample is 1x2x2"):
        collect(LmdbSource(str(tmp_path / "db")))


def test_shards_cover_every_sample_once_in_order():
    images = np.arange(11 * 2 * 2, dtype=np.uint8).reshape(11, 1, 2, 2)
    source = ArraySource(images, np.arange(11), "test")
    whole, _ = collect(source)
    for count in range(1, 6):
        shards = [source.shard(i, count) for i in range(count)]
        assert sum(len(s) for s in shards) == 11
        _, labels = zip(*(collect(s, batch_size=3) for s in shards if len(s)))
        np.testing.assert_array_equal(np.concatenate(labels), np.arange(11))
    inner = source.shard(1, 2).shard(1, 2)  # samples 8..10
    np.testing.assert_array_equal(collect(inner)[1], [8, 9, 10])
    np.testing.assert_array_equal(collect(source, start=3, stop=7)[0], whole[3:7])
    with pytest.raises(ValueError):
        source.shard(2, 2)


def test_leveldb_is_rejected(tmp_path):
    layer = caffe_pb2.LayerParameter(name="mnist", type="Data")
    layer.data_param.source = "examples/mnist/mnist_test_leveldb"  # backend defaults to LEVELDB
    with pytest.raises(DataError, match="mnist: LevelDB is not supported, convert to LMDB"):
        source_from_layer(layer)
    (tmp_path / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(DataError, match="LevelDB is not supported, convert to LMDB"):
        parse_data_spec(f"lmdb:{tmp_path}")


@pytest.mark.parametrize("spec, message", [
    ("images.idx", "bad data spec 'images.idx'"),
    ("idx:", "bad data spec 'idx:'"),
    ("hdf5:x.h5", "unknown kind 'hdf5'"),
    ("lmdb:/no/such/db", "/no/such/db: no such LMDB"),
    ("idx:/no/such/file", "/no/such/file: cannot read file"),
    ("npy:/no/such.npy", "/no/such.npy: cannot read file"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        parse_data_spec(spec)


def test_unsupported_layer_type_names_the_layer():
    layer = caffe_pb2.LayerParameter(name="in", type="HDF5Data")
    with pytest.raises(DataError, match="^in: layer type 'HDF5Data'"):
        source_from_layer(layer)


# --- prefetch --------------------------------------------------------------

def test_prefetch_runs_ahead_in_order():
    produced = []
    ahead = threading.Event()

    def items():
        for i in range(10):
            produced.append(i)
            if len(produced) == 4:
                ahead.set()
            yield i

    stream = prefetch(items(), depth=4)
    assert next(stream) == 0
    assert ahead.wait(5), "the producer did not run ahead of the consumer"
    assert list(stream) == list(range(1, 10))


def test_prefetch_propagates_exceptions():
    def items():
        yield 1
        raise RuntimeError("decode failed")

    stream = prefetch(items())
    assert next(stream) == 1
    with pytest.raises(RuntimeError, match="decode failed"):
        next(stream)


def test_prefetch_stops_when_consumer_stops():
    closed = threading.Event()

    def items():
        try:
            for i in range(1000):
                yield i
        finally:
            closed.set()

    before = threading.active_count()
    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert closed.is_set()
    assert threading.active_count() == before


def test_source_batches_surface_decoding_errors(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 0\n")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((2, 2, 3), np.uint8))
    source = ImageListSource(str(tmp_path / "list.txt"), root_folder=f"{tmp_path}/")
    os.remove(tmp_path / "a.png")
    with pytest.raises(DataError, match="a.png: image is missing"):
        next(source.iter_batches(1))


# --- converter -------------------------------------------------------------

def test_convert_refuses_overwrite_and_overwrites_when_told(tmp_path):
    images = np.arange(3 * 4, dtype=np.uint8).reshape(3, 1, 2, 2)
    source = ArraySource(images, [5, 6, 7], "arr")
    out = str(tmp_path / "out")
    assert convert_to_lmdb(source, out) == 3
    with pytest.raises(DataError, match="output exists"):
        convert_to_lmdb(source, out)
    assert convert_to_lmdb(source, out, limit=2, overwrite=True) == 2
    got, labels = collect(LmdbSource(out))
    np.testing.assert_array_equal(got, images[:2])
    np.testing.assert_array_equal(labels, [5, 6])
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_convert_leaves_nothing_on_error(tmp_path):
    class Failing(ArraySource):
        def _read(self, lo, hi, batch_size):
            yield from super()._read(lo, lo + 1, batch_size)
            raise DataError("disk on fire")

    source = Failing(np.zeros((5, 1, 2, 2), np.uint8), None, "arr")
    with pytest.raises(DataError, match="disk on fire"):
        convert_to_lmdb(source, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_convert_grows_a_full_map(tmp_path, monkeypatch):
    import caffe_surgery.data.convert as convert

    monkeypatch.setattr(convert, "MAP_SLACK", 1 << 16)
    values = np.random.default_rng(7).normal(size=(40, 3, 16, 16)).astype(np.float32)
    out = str(tmp_path / "floats")
    assert convert_to_lmdb(ArraySource(values, None, "arr"), out) == 40
    got, _ = collect(LmdbSource(out), batch_size=16)
    np.testing.assert_array_equal(got, values)


def test_progress_is_silent_off_a_terminal(capsys):
    with progress(10, "test") as bar:
        bar.update(4)
        bar.update(6)
    assert capsys.readouterr().err == ""


def test_csv_images_with_the_label_last(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    labels = np.arange(5) % 3
    rows = "\n".join(",".join(map(str, list(img.ravel()) + [label])) for img, label in zip(images, labels))
    path = tmp_path / "digits.csv.gz"
    path.write_bytes(gzip.compress(rows.encode()))
    source = parse_data_spec(f"csv:{path}")
    batch, got = next(iter(source.iter_batches(5)))
    np.testing.assert_array_equal(batch[:, 0], images.astype(np.float32))
    np.testing.assert_array_equal(got, labels)
    (tmp_path / "bad.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match="square image"):
        parse_data_spec(f"csv:{tmp_path / 'bad.csv'}")


def test_an_lmdb_can_be_opened_by_several_sources(tmp_path):
    out = tmp_path / "db"
    convert_to_lmdb(ArraySource(np.arange(2 * 9, dtype=np.uint8).reshape(2, 1, 3, 3), np.array([1, 2]), "a"), str(out))
    first, second = parse_data_spec(f"lmdb:{out}"), parse_data_spec(f"lmdb:{out}")
    assert len(first) == len(second) == 2
    np.testing.assert_array_equal(next(iter(first.iter_batches(2)))[0], next(iter(second.iter_batches(2)))[0])


def test_a_replaced_lmdb_is_read_afresh(tmp_path):
    out = tmp_path / "db"
    convert_to_lmdb(ArraySource(np.zeros((2, 1, 3, 3), dtype=np.uint8), None, "a"), str(out))
    assert parse_data_spec(f"lmdb:{out}").shape == (1, 3, 3)
    convert_to_lmdb(ArraySource(np.ones((3, 1, 4, 4), dtype=np.uint8), None, "b"), str(out), overwrite=True)
    again = parse_data_spec(f"lmdb:{out}")
    assert len(again) == 3 and again.shape == (1, 4, 4)
