"""One declaration per Caffe layer type, with every facet of it (see ``registry``).

Built-in types live in one module per family (convolution, pooling, activation,
normalization, arithmetic, tensor, recurrent, detection, yolo, data, loss, resize, flow) and load on
the first lookup; plugins add types with the same API (``plugins``). Importing
this package imports neither the families nor torch.
"""
from .channels import (ELEMENTWISE, NET_INPUT, PASS_THROUGH, PER_CHANNEL, PIN, TRAINING_OUTPUT, ChannelRule, custom,
                       drop_channel_entries, pin_all)
from .fork_params import ForkParam, fork_param
from .plugins import PLUGIN_GROUP, load_entry_points, load_plugin_file
from .registry import (DATA, FACETS, LAYER, TRAINING_ONLY, Departure, LayerType, NotApplicable, RegistryError, Train,
                       declarations, declare, lookup, types_of_kind, types_with)
from .shape_rules import Rule, Shape, SourceContext, canonical_axis, fail, same_shape

__all__ = ["DATA", "ELEMENTWISE", "FACETS", "LAYER", "NET_INPUT", "PASS_THROUGH", "PER_CHANNEL", "PIN",
           "PLUGIN_GROUP", "TRAINING_ONLY", "TRAINING_OUTPUT", "ChannelRule", "Departure", "LayerType",
           "ForkParam", "NotApplicable", "RegistryError", "Rule", "Shape", "SourceContext", "Train", "canonical_axis",
           "carries_channels", "custom", "declarations", "declare", "drop_channel_entries", "fail", "fed_by_trainer", "fork_param", "reads_dataset",
           "is_data", "is_training_only", "load_entry_points", "load_plugin_file", "lookup", "pin_all",
           "produces_channels", "same_shape", "types_of_kind", "types_with"]


def reads_dataset(type_name: str) -> bool:
    """A data layer whose own source (LMDB, image list) the tool reads (Data, ImageData)."""
    declaration = lookup(type_name)
    return declaration is not None and declaration.dataset


def fed_by_trainer(type_name: str) -> bool:
    """A data layer whose tops the trainer feeds (Data, ImageData, Input)."""
    from .data import FED_BY_TRAINER
    declaration = lookup(type_name)
    return declaration is not None and declaration.train is FED_BY_TRAINER


def is_data(type_name: str) -> bool:
    """A data layer: its tops are fed from outside (graph inputs)."""
    declaration = lookup(type_name)
    return declaration is not None and declaration.kind == DATA


def is_training_only(type_name: str) -> bool:
    """A training-only layer (loss, Accuracy, Silence) that deploy graphs leave out."""
    declaration = lookup(type_name)
    return declaration is not None and declaration.kind == TRAINING_ONLY


def carries_channels(type_name: str, weighted: bool | None = None) -> bool:
    """Top channel j depends only on bottom channel j; ``weighted`` narrows to layers with (True) or
    without (False) per-channel weights."""
    declaration = lookup(type_name)
    if declaration is None or not declaration.channels.per_channel:
        return False
    return weighted is None or declaration.channels.weighted == weighted


def produces_channels(type_name: str) -> bool:
    """The type opens a group of output channels from a weight matrix (Convolution, Deconvolution, InnerProduct)."""
    declaration = lookup(type_name)
    return declaration is not None and declaration.channels.produces
