"""Upgrade legacy Caffe nets and solvers to the current format.

The rules are Caffe's own (``src/caffe/util/upgrade_proto.cpp``), applied by
:func:`upgrade_net` in Caffe's order:

1. V0 -> V1: ``padding`` layers are folded into the conv/pool layer that reads
   them, then each V0 layer's flat fields move into typed ``*_param`` messages.
2. Data transformation: V1 data layers' scale/mean_file/crop_size/mirror move
   from the data parameter into ``transform_param``.
3. V1 -> V2: enum layer types become type strings; per-blob ``param`` names,
   ``blob_share_mode``, ``blobs_lr`` and ``weight_decay`` become ``ParamSpec``s;
   everything else (blobs included) is copied.
4. Input header: ``input`` + ``input_shape``/``input_dim`` become a leading
   ``Input`` layer.
5. BatchNorm: layers declaring the three old ``param`` specs get lr_mult and
   decay_mult 0 (the other ParamSpec fields are kept).

Where Caffe would log and carry on with a half-upgraded net, these functions
raise a :class:`~caffe_surgery.errors.CaffeSurgeryError` naming the layer.
"""
from google.protobuf import unknown_fields

from caffe_surgery import caffe_pb2
from caffe_surgery.errors import CaffeSurgeryError, GraphError, ParseError, UnsupportedLayerError

V1Layer = caffe_pb2.V1LayerParameter

# V1 LayerType enum name -> current type string (one entry per enum value).
V1_TYPE_NAMES = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# V0 type string -> V1 LayerType enum name (Caffe's UpgradeV0LayerType).
V0_TYPE_NAMES = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

_CONV, _IP, _POOL = "convolution_param", "inner_product_param", "pooling_param"
_DATA, _HDF5, _IMAGES, _WINDOW = ("data_param", "hdf5_data_param", "image_data_param",
                                  "window_data_param")

# V0 field -> {V0 layer type: (V1 parameter message, its field; None = the whole message)}.
_V0_TYPED_FIELDS = {
    "num_output": {"conv": (_CONV, "num_output"), "innerproduct": (_IP, "num_output")},
    "biasterm": {"conv": (_CONV, "bias_term"), "innerproduct": (_IP, "bias_term")},
    "weight_filler": {"conv": (_CONV, "weight_filler"), "innerproduct": (_IP, "weight_filler")},
    "bias_filler": {"conv": (_CONV, "bias_filler"), "innerproduct": (_IP, "bias_filler")},
    "pad": {"conv": (_CONV, "pad"), "pool": (_POOL, "pad")},
    "kernelsize": {"conv": (_CONV, "kernel_size"), "pool": (_POOL, "kernel_size")},
    "group": {"conv": (_CONV, "group")},
    "stride": {"conv": (_CONV, "stride"), "pool": (_POOL, "stride")},
    "pool": {"pool": (_POOL, "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": (_DATA, "source"), "hdf5_data": (_HDF5, "source"),
               "images": (_IMAGES, "source"), "window_data": (_WINDOW, "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "batchsize": {"data": (_DATA, "batch_size"), "hdf5_data": (_HDF5, "batch_size"),
                  "images": (_IMAGES, "batch_size"), "window_data": (_WINDOW, "batch_size")},
    "rand_skip": {"data": (_DATA, "rand_skip"), "images": (_IMAGES, "rand_skip")},
    "shuffle_images": {"images": (_IMAGES, "shuffle")},
    "new_height": {"images": (_IMAGES, "new_height")},
    "new_width": {"images": (_IMAGES, "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": (_WINDOW, "fg_threshold")},
    "det_bg_threshold": {"window_data": (_WINDOW, "bg_threshold")},
    "det_fg_fraction": {"window_data": (_WINDOW, "fg_fraction")},
    "det_context_pad": {"window_data": (_WINDOW, "context_pad")},
    "det_crop_mode": {"window_data": (_WINDOW, "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}

# V0 field -> TransformationParameter field (Caffe moves these for any layer type).
_V0_TRANSFORM_FIELDS = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size",
                        "mirror": "mirror"}

# V0 fields that keep their name on the V1 layer.
_V0_SAME_NAME_FIELDS = ("name", "blobs", "blobs_lr", "weight_decay")

# V1 data layer type -> its parameter message holding legacy transformation fields.
_V1_DATA_PARAMS = {"DATA": _DATA, "IMAGE_DATA": _IMAGES, "WINDOW_DATA": _WINDOW}
_LEGACY_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# V1 per-blob lists that become ParamSpec entries.
_V1_PARAM_SPEC_FIELDS = ("param", "blob_share_mode", "blobs_lr", "weight_decay")

# SolverParameter.SolverType enum name -> solver type string.
SOLVER_TYPE_NAMES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                     "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def net_format(net: caffe_pb2.NetParameter) -> str:
    """Return "V0", "V1" or "V2" for a net, or raise ParseError for an inconsistent mix.

    V0 nets hold ``layers`` that each carry a nested V0 ``layer``; V1 nets hold
    ``layers`` without it; V2 (current) nets hold ``layer``.
    """
    if not net.layers:
        return "V2"
    if net.layer:
        raise ParseError("the net has both 'layer' (current) and 'layers' (V1) entries; "
                         "Caffe refuses to upgrade such a net")
    nested = [connection.HasField("layer") for connection in net.layers]
    if all(nested):
        return "V0"
    if not any(nested):
        return "V1"
    v1_name = net.layers[nested.index(False)].name
    raise ParseError("the net mixes V0 layers (with a nested 'layer') and V1 layers",
                     layer=v1_name or None)


def needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Whether :func:`upgrade_net` would change ``net`` (or refuse it); cheap, copies nothing.

    False for a current-format net without an input header and without
    BatchNorm layers declaring the three old param specs: upgrading such a net
    returns an equal copy, so a caller that owns the message can use it as is.
    """
    if len(net.layers) or len(net.input):
        return True
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer)


def upgrade_net(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Return a current-format copy of ``net`` (prototxt or caffemodel); ``net`` is not changed.

    Fields the upgrade does not touch, unknown fields included, are kept.
    """
    fmt = net_format(net)
    upgraded = caffe_pb2.NetParameter()
    upgraded.CopyFrom(net)
    if fmt == "V0":
        _upgrade_v0_to_v1(upgraded)
    if fmt in ("V0", "V1"):
        _upgrade_data_transformation(upgraded)
        _upgrade_v1_to_v2(upgraded)
    _upgrade_input_header(upgraded)
    _upgrade_batch_norm(upgraded)
    return upgraded


def upgrade_solver(solver: caffe_pb2.SolverParameter) -> caffe_pb2.SolverParameter:
    """Return a copy of ``solver`` with the legacy ``solver_type`` enum turned into ``type``.

    Raises ParseError when both are given and disagree. Nets embedded in the
    solver (net_param, train_net_param, test_net_param) are upgraded too.
    """
    upgraded = caffe_pb2.SolverParameter()
    upgraded.CopyFrom(solver)
    if upgraded.HasField("solver_type"):
        enum_name = caffe_pb2.SolverParameter.SolverType.Name(upgraded.solver_type)
        legacy_type = SOLVER_TYPE_NAMES[enum_name]
        if upgraded.HasField("type") and upgraded.type != legacy_type:
            raise ParseError(f"solver_type {enum_name} and type '{upgraded.type}' disagree")
        upgraded.type = legacy_type
        upgraded.ClearField("solver_type")
    for name in ("net_param", "train_net_param"):
        if upgraded.HasField(name):
            getattr(upgraded, name).CopyFrom(upgrade_net(getattr(upgraded, name)))
    for test_net in upgraded.test_net_param:
        test_net.CopyFrom(upgrade_net(test_net))
    return upgraded


def _upgrade_v0_to_v1(net: caffe_pb2.NetParameter) -> None:
    """V0 -> V1 in place (Caffe's UpgradeV0Net); the net-level fields are kept."""
    connections = _fold_padding_layers(net)
    del net.layers[:]
    for connection in connections:
        _upgrade_v0_layer(connection, net.layers.add())


def _fold_padding_layers(net: caffe_pb2.NetParameter) -> list:
    """Return copies of the V0 layers without "padding" layers (Caffe's UpgradeV0PaddingLayers).

    A padding layer's pad moves to the conv or pool layer that reads its output,
    and that layer's bottom is rewired to the padding layer's own input.
    """
    last_writer = {blob: None for blob in net.input}  # blob -> index of padding layer writing it
    unread_padding = {}  # index of a padding layer nobody has read yet -> its name
    kept = []
    for position, connection in enumerate(net.layers):
        v0 = connection.layer
        copy = None if v0.type == "padding" else V1Layer()
        if copy is not None:
            copy.CopyFrom(connection)
            kept.append(copy)
        for index, blob in enumerate(connection.bottom):
            if blob not in last_writer:
                raise GraphError(f"bottom '{blob}' is not produced by an earlier layer "
                                 "or a net input", layer=v0.name or None)
            if last_writer[blob] is not None:
                padding = net.layers[last_writer[blob]]
                _check_padding_reader(padding, connection)
                copy.layer.pad = padding.layer.pad
                copy.bottom[index] = padding.bottom[0]
                unread_padding.pop(last_writer[blob], None)
        if v0.type == "padding":
            if len(connection.bottom) != 1 or len(connection.top) != 1:
                raise ParseError("a padding layer needs exactly one bottom and one top",
                                 layer=v0.name or None)
            unread_padding[position] = v0.name
        for blob in connection.top:
            last_writer[blob] = position if v0.type == "padding" else None
    if unread_padding:
        raise GraphError("the padding layer's output is not read by a convolution or pooling "
                         "layer, so its pad cannot be folded",
                         layer=next(iter(unread_padding.values())) or None)
    return kept


def _check_padding_reader(padding: V1Layer, reader: V1Layer) -> None:
    """Raise unless ``reader`` is a single-input conv/pool layer without a pad of its own."""
    v0 = reader.layer
    if v0.type not in ("conv", "pool"):
        raise ParseError(f"reads the output of padding layer '{padding.layer.name}', but only "
                         f"a conv or pool layer can take over its pad (this is '{v0.type}')",
                         layer=v0.name or None)
    if len(reader.bottom) != 1:
        raise ParseError(f"reads padding layer '{padding.layer.name}' but has "
                         f"{len(reader.bottom)} bottoms; it must have exactly one",
                         layer=v0.name or None)
    if v0.pad:
        raise ParseError(f"has pad {v0.pad} of its own and reads padding layer "
                         f"'{padding.layer.name}'; the two cannot be folded",
                         layer=v0.name or None)


def _upgrade_v0_layer(connection: V1Layer, v1: V1Layer) -> None:
    """Fill ``v1`` from a V0 layer connection (Caffe's UpgradeV0LayerParameter)."""
    v0 = connection.layer
    layer_name = v0.name or None
    outer = [field.name for field, _ in connection.ListFields()
             if field.name not in ("bottom", "top", "layer")]
    if outer:
        raise ParseError(f"V0 layer also sets V1 fields {', '.join(outer)} outside its "
                         "nested 'layer'", layer=layer_name)
    if v0.type not in V0_TYPE_NAMES:
        problem = f"unknown V0 layer type '{v0.type}'" if v0.type else "V0 layer has no type"
        raise UnsupportedLayerError(problem, layer=layer_name)
    v1.bottom.extend(connection.bottom)
    v1.top.extend(connection.top)
    v1.type = V1Layer.LayerType.Value(V0_TYPE_NAMES[v0.type])
    for field, value in v0.ListFields():
        if field.name == "type":
            continue
        if field.name in _V0_SAME_NAME_FIELDS:
            _set_field(v1, field.name, value)
        elif field.name in _V0_TRANSFORM_FIELDS:
            setattr(v1.transform_param, _V0_TRANSFORM_FIELDS[field.name], value)
        else:
            _move_v0_field(field, value, v0.type, v1, layer_name)


def _move_v0_field(field, value, v0_type: str, v1: V1Layer, layer_name) -> None:
    """Store one flat V0 field in the typed V1 parameter message that owns it."""
    target = _V0_TYPED_FIELDS.get(field.name, {}).get(v0_type)
    if target is None:
        raise ParseError(f"V0 field '{field.name}' does not apply to a '{v0_type}' layer "
                         "and cannot be upgraded", layer=layer_name)
    param_name, param_field = target
    param = getattr(v1, param_name)
    if param_field is None:
        param.CopyFrom(value)
        return
    destination = param.DESCRIPTOR.fields_by_name[param_field]
    if destination.enum_type is not None:  # e.g. V0 PoolMethod -> PoolingParameter.PoolMethod
        enum_name = field.enum_type.values_by_number[value].name
        value = destination.enum_type.values_by_name[enum_name].number
    _set_field(param, param_field, [value] if destination.is_repeated else value)


def _upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """Move V1 data layers' transformation fields into transform_param, in place.

    Caffe's UpgradeNetDataTransformation, for DATA, IMAGE_DATA and WINDOW_DATA.
    """
    for layer in net.layers:
        param_name = _V1_DATA_PARAMS.get(V1Layer.LayerType.Name(layer.type))
        if param_name is None or not layer.HasField(param_name):
            continue
        param = getattr(layer, param_name)
        for name in _LEGACY_TRANSFORM_FIELDS:
            if param.HasField(name):
                setattr(layer.transform_param, name, getattr(param, name))
                param.ClearField(name)


def _upgrade_v1_to_v2(net: caffe_pb2.NetParameter) -> None:
    """Replace V1 ``layers`` with current ``layer`` entries, in place (Caffe's UpgradeV1Net)."""
    for v1 in net.layers:
        _upgrade_v1_layer(v1, net.layer.add())
    net.ClearField("layers")


def _upgrade_v1_layer(v1: V1Layer, layer: caffe_pb2.LayerParameter) -> None:
    """Fill ``layer`` from one V1 layer (Caffe's UpgradeV1LayerParameter).

    Every V1 field other than type and the per-blob lists has a same-named
    LayerParameter field and is copied as is (blobs included). Unknown fields of
    the V1 layer itself are dropped: their numbers mean other things in LayerParameter.
    """
    unknown_type = _unknown_field_value(v1, "type")
    if unknown_type is not None:
        raise UnsupportedLayerError(f"V1 layer type number {unknown_type} is not in Caffe's "
                                    "V1 LayerType enum", layer=v1.name or None)
    for field, value in v1.ListFields():
        if field.name == "type":
            layer.type = V1_TYPE_NAMES[V1Layer.LayerType.Name(value)]
        elif field.name not in _V1_PARAM_SPEC_FIELDS:
            _set_field(layer, field.name, value)
    _upgrade_param_specs(v1, layer)


def _upgrade_param_specs(v1: V1Layer, layer: caffe_pb2.LayerParameter) -> None:
    """Turn V1's parallel per-blob lists into one ParamSpec per blob position."""
    count = max(len(getattr(v1, name)) for name in _V1_PARAM_SPEC_FIELDS)
    specs = [layer.param.add() for _ in range(count)]
    for spec, name in zip(specs, v1.param):
        spec.name = name
    for spec, mode in zip(specs, v1.blob_share_mode):
        spec.share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(
            V1Layer.DimCheckMode.Name(mode))
    for spec, lr in zip(specs, v1.blobs_lr):
        spec.lr_mult = lr
    for spec, decay in zip(specs, v1.weight_decay):
        spec.decay_mult = decay


def _upgrade_input_header(net: caffe_pb2.NetParameter) -> None:
    """Turn the input header into a leading "Input" layer, in place (Caffe's UpgradeNetInput).

    The layer gets one shape per input, or a single shape shared by all inputs.
    A header with names but no shapes (old caffemodels) is simply dropped.
    """
    if not net.input:
        return
    if net.input_shape and net.input_dim:
        raise ParseError("the net gives both input_shape and input_dim; use one of them")
    shapes = list(net.input_shape)
    if net.input_dim:
        if len(net.input_dim) % 4:
            raise ParseError(f"input_dim holds {len(net.input_dim)} numbers; "
                             "it needs 4 per input")
        dims = list(net.input_dim)
        shapes = [caffe_pb2.BlobShape(dim=dims[i:i + 4]) for i in range(0, len(dims), 4)]
    if shapes:
        if len(shapes) not in (1, len(net.input)):
            raise ParseError(f"the net has {len(net.input)} inputs but {len(shapes)} input "
                             "shapes; give one per input or one for all")
        input_layer = caffe_pb2.LayerParameter(name="input", type="Input", top=net.input)
        input_layer.input_param.shape.extend(shapes)
        net.layer.insert(0, input_layer)
    for name in ("input", "input_shape", "input_dim"):
        net.ClearField(name)


def _upgrade_batch_norm(net: caffe_pb2.NetParameter) -> None:
    """Zero lr_mult/decay_mult of BatchNorm layers with three param specs, in place.

    Caffe's UpgradeNetBatchNorm: the old BatchNorm definition required three
    ``param { lr_mult: 0 }`` entries; current Caffe forces the statistics to
    lr_mult 0 itself and rejects any other value.
    """
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


def _set_field(message, name: str, value) -> None:
    """Set ``message.name``: extend a repeated field, CopyFrom a message, assign a scalar."""
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        getattr(message, name).extend(value)
    elif field.message_type is not None:
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)


def _unknown_field_value(message, name: str):
    """The value of field ``name`` kept as an unknown field (an enum number the schema lacks)."""
    number = message.DESCRIPTOR.fields_by_name[name].number
    for unknown in unknown_fields.UnknownFieldSet(message):
        if unknown.field_number == number:
            return unknown.data
    return None


def upgrade_files(input_prototxt: str, output_prototxt: str, weights: str | None = None,
                  output_weights: str | None = None, precision: str = "fp32") -> list[str]:
    """Write a current-format copy of a V0/V1 prototxt and, with ``weights``, of its caffemodel at
    ``output_weights``; return the paths written."""
    from caffe_surgery.io import read_net_text, read_weights, write_text
    from caffe_surgery.save import save_float32_weights

    if (weights is None) != (output_weights is None):
        raise CaffeSurgeryError("-w and -o go together: give both or neither")
    upgraded = upgrade_net(read_net_text(input_prototxt))
    if weights is not None:
        save_float32_weights(upgrade_net(read_weights(weights)), output_weights, precision)
    write_text(output_prototxt, upgraded)
    return [output_prototxt] + ([output_weights] if weights is not None else [])
