"""A ``Net`` (one phase) as a torch module: its layers in order, its blobs as Parameters, its loss.

Blobs are shared as Caffe shares them: by ``param { name }`` within a net, and
by layer name with another net (``share_with``, Caffe's ShareTrainedLayersWith:
a test net runs on the train net's blobs).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import layers
from ..errors import CaffeSurgeryError, ShapeError
from ..graph import TEST, Net
from ..shapes import NetShapes
from .layers import make_op
from .params import DEFAULT_SEED, BlobRule, blob_rules, initial_blobs



@dataclass
class Learnable:
    """A blob the solver updates, with its multipliers; ``name`` is ``layer[index]``."""

    tensor: nn.Parameter
    lr_mult: float
    decay_mult: float
    name: str


def _loss_weights(layer) -> list[float]:
    """Each top's loss weight: the prototxt's, else 1 for the first top of a *Loss layer, else 0."""
    given = list(layer.param.loss_weight)
    if given:
        if len(given) != len(layer.tops):
            raise CaffeSurgeryError(f"{len(given)} loss_weight values for {len(layer.tops)} tops", layer=layer.name)
        return given
    return [1.0 if i == 0 and layer.type.endswith("Loss") else 0.0 for i in range(len(layer.tops))]


def has_loss(net: Net) -> bool:
    """True when some top of the net has a non-zero loss weight (something to minimise)."""
    return any(weight for layer in net.layers for weight in _loss_weights(layer))


class TorchNet(nn.Module):
    """Runs a Caffe net's layers in order with Caffe's semantics for ``phase`` (TRAIN or TEST)."""

    def __init__(self, net: Net, shapes: NetShapes, phase: int = TEST, *, device: str | torch.device = "cpu",
                 rng: np.random.Generator | None = None, share_with: "TorchNet | None" = None):
        """Blobs come from the layers (loaded weights), else from their fillers drawn from ``rng``
        (default: seeded with ``DEFAULT_SEED``); layers named as in ``share_with`` use its blobs."""
        super().__init__()
        self.net = net
        self.phase = phase
        rng = rng if rng is not None else np.random.default_rng(DEFAULT_SEED)
        self.layer_blobs: dict[str, list[nn.Parameter]] = {}
        self.learnables: list[Learnable] = []
        self._ops = []
        self.loss_weights: list[tuple[str, float]] = []
        owners: dict[str, nn.Parameter] = {}
        for layer in net.layers:
            try:
                op = None if layers.fed_by_trainer(layer.type) else make_op(layer, [shapes.blob(b) for b in layer.bottoms],
                                                                    phase)
                param_shapes = shapes.layer(layer.name).param_shapes or []
                if share_with is not None and layer.name in share_with.layer_blobs:
                    blobs = share_with.layer_blobs[layer.name]
                    _check_shapes(blobs, param_shapes)
                else:
                    blobs = self._make_blobs(layer, param_shapes, rng, device, owners)
            except CaffeSurgeryError as exc:
                exc.layer, exc.file = exc.layer or layer.name, exc.file or net.source
                exc.args = (exc.one_line(),)
                raise
            self.layer_blobs[layer.name] = blobs
            self._ops.append((layer, op))
            self.loss_weights += [(top.key, w) for top, w in zip(layer.tops, _loss_weights(layer)) if w]
        self.blob_list = nn.ParameterList(_unique(p for blobs in self.layer_blobs.values() for p in blobs))

    def _make_blobs(self, layer, param_shapes, rng, device, owners: dict[str, nn.Parameter]) -> list[nn.Parameter]:
        """New Parameters for a layer; a blob whose ParamSpec name was seen before reuses the first one."""
        values = initial_blobs(layer, param_shapes, rng)
        blobs = []
        for index, (value, rule) in enumerate(zip(values, blob_rules(layer, len(values)))):
            if rule.share_name in owners:
                blob = owners[rule.share_name]
                _check_shapes([blob], [value.shape])
            else:
                blob = nn.Parameter(torch.from_numpy(value).to(device), requires_grad=rule.trainable)
                self._register(blob, rule, f"{layer.name}[{index}]", owners)
            blobs.append(blob)
        return blobs

    def _register(self, blob: nn.Parameter, rule: BlobRule, name: str, owners: dict[str, nn.Parameter]) -> None:
        if rule.share_name:
            owners[rule.share_name] = blob
        if rule.trainable:
            self.learnables.append(Learnable(blob, rule.lr_mult, rule.decay_mult, name))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every blob version's value by key; data and input layers take their tops from ``inputs`` by name."""
        values: dict[str, torch.Tensor] = {}
        for layer, op in self._ops:
            if op is None:
                missing = [t.name for t in layer.tops if t.name not in inputs]
                if missing:
                    raise CaffeSurgeryError(f"no input given for blob(s) {', '.join(missing)}", layer=layer.name)
                tops = [inputs[t.name] for t in layer.tops]
            else:
                tops = op([values[b.key] for b in layer.bottoms], self.layer_blobs[layer.name])
            values.update((top.key, value) for top, value in zip(layer.tops, tops))
        return values

    def loss(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The net's loss: the sum over loss tops of loss_weight x the top's sum (0 without loss layers)."""
        terms = [weight * values[key].sum() for key, weight in self.loss_weights]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def store_blobs(self) -> None:
        """Copy the current blob values into the Net's layers (``layer.blobs``) as float32 numpy arrays."""
        for layer in self.net.layers:
            layer.blobs = [blob.detach().cpu().numpy().copy() for blob in self.layer_blobs[layer.name]]


def _check_shapes(blobs: list[nn.Parameter], shapes: list) -> None:
    got = [tuple(b.shape) for b in blobs]
    if got != [tuple(s) for s in shapes]:
        raise ShapeError(f"shared blobs have shapes {got}, the layer expects {[tuple(s) for s in shapes]}")


def _unique(blobs) -> list[nn.Parameter]:
    seen, unique = set(), []
    for blob in blobs:
        if id(blob) not in seen:
            seen.add(id(blob))
            unique.append(blob)
    return unique
