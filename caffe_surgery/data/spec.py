"""Building sources from command-line specs and from a net's own data layers."""

from caffe_surgery import caffe_pb2
from caffe_surgery.data.arrays import csv_source, idx_source, numpy_source
from caffe_surgery.data.base import Source
from caffe_surgery.data.image_list import ImageListSource
from caffe_surgery.data.lmdb_source import LEVELDB_UNSUPPORTED, LmdbSource
from caffe_surgery.data.paths import resolve_path
from caffe_surgery.data.transform import Transformer
from caffe_surgery.errors import DataError

SPEC_FORMS = "lmdb:PATH, list:FILE[:ROOT], idx:IMAGES[:LABELS], npy:PATH (.npy or .npz) or csv:PATH"


def parse_data_spec(spec: str, transform_param: caffe_pb2.TransformationParameter | None = None,
                    base_dir: str | None = None) -> Source:
    """Open the source a command-line spec names, e.g. ``idx:images.gz:labels.gz``.

    A ``list:`` spec's ROOT is a folder (a ``/`` is added when missing).

    ``transform_param`` (e.g. a net's data layer's) is applied to the samples;
    relative paths, the mean file's included, are tried against ``base_dir`` then the cwd.
    """
    kind, _, rest = spec.partition(":")
    if not rest:
        raise DataError(f"bad data spec {spec!r}: expected {SPEC_FORMS}")
    transformer = Transformer(transform_param, base_dir)
    first, _, second = rest.partition(":")
    if kind == "lmdb":
        return LmdbSource(resolve_path(rest, base_dir), transformer)
    if kind == "list":
        root = second if not second or second.endswith("/") else second + "/"
        return ImageListSource(resolve_path(first, base_dir), root_folder=root,
                               transformer=transformer, base_dir=base_dir)
    if kind == "idx":
        labels = resolve_path(second, base_dir) if second else None
        return idx_source(resolve_path(first, base_dir), labels, transformer)
    if kind == "npy":
        return numpy_source(resolve_path(rest, base_dir), transformer)
    if kind == "csv":
        return csv_source(resolve_path(rest, base_dir), transformer)
    raise DataError(f"bad data spec {spec!r}: unknown kind {kind!r}, expected {SPEC_FORMS}")


def source_from_layer(layer: caffe_pb2.LayerParameter, base_dir: str | None = None) -> Source:
    """Open the source of a net's Data (LMDB backend) or ImageData layer, with its transform_param."""
    try:
        transformer = Transformer(layer.transform_param, base_dir)
        if layer.type == "Data":
            param = layer.data_param
            if param.backend != caffe_pb2.DataParameter.LMDB:
                raise DataError(LEVELDB_UNSUPPORTED, file=param.source or None)
            return LmdbSource(resolve_path(param.source, base_dir), transformer)
        if layer.type == "ImageData":
            param = layer.image_data_param
            return ImageListSource(resolve_path(param.source, base_dir), param.root_folder,
                                   param.new_height, param.new_width, param.is_color,
                                   transformer, base_dir)
        raise DataError(f"layer type {layer.type!r} has no data source that can be read; "
                        "use a Data (LMDB) or ImageData layer, or pass a data spec")
    except DataError as exc:
        raise _in_layer(exc, layer.name)


def layer_batch_size(layer: caffe_pb2.LayerParameter) -> int:
    """The batch size a Data or ImageData layer asks for."""
    if layer.type == "Data":
        size = layer.data_param.batch_size
    elif layer.type == "ImageData":
        size = layer.image_data_param.batch_size
    else:
        raise _in_layer(DataError(f"layer type {layer.type!r} is not a Data or ImageData layer"),
                        layer.name)
    if size < 1:
        raise _in_layer(DataError("batch_size must be positive"), layer.name)
    return size


def _in_layer(exc: DataError, name: str) -> DataError:
    """Fill in the layer an error happened in when it was not known."""
    if exc.layer is None and name:
        exc.layer = name
        exc.args = (exc.one_line(),)
    return exc

