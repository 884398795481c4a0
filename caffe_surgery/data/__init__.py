"""Reading data the way Caffe's data layers read it in the TEST phase.

Sources (LMDB of Datum records, ImageData list files, IDX, ``.npy``/``.npz``)
yield transformed float32 batches through a prefetch thread; see ``Source``.
"""

from caffe_surgery.data.arrays import ArraySource, csv_source, idx_source, numpy_source, read_idx
from caffe_surgery.data.base import Source
from caffe_surgery.data.convert import convert_data, convert_to_lmdb
from caffe_surgery.data.datum import array_to_datum, datum_to_array, decode_image
from caffe_surgery.data.image_list import ImageListSource, read_image_list
from caffe_surgery.data.lmdb_source import LmdbSource
from caffe_surgery.data.prefetch import prefetch
from caffe_surgery.data.spec import layer_batch_size, parse_data_spec, source_from_layer
from caffe_surgery.data.transform import Transformer

__all__ = [
    "ArraySource", "ImageListSource", "LmdbSource", "Source", "Transformer",
    "array_to_datum", "convert_data", "csv_source", "convert_to_lmdb", "datum_to_array", "decode_image",
    "idx_source", "layer_batch_size", "numpy_source", "parse_data_spec",
    "prefetch", "read_idx", "read_image_list", "source_from_layer",
]
