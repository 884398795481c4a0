"""Magnitude weight pruning (Han et al., 2015): zero the smallest weights, keep the caffemodel dense.

Only blob 0 (the weights) of Convolution, Deconvolution and InnerProduct
layers changes; biases stay. Three rules say what goes: a target ``sparsity``
(per layer, or one cut over all chosen layers with ``scope="global"``), an
absolute ``threshold`` (|w| < t), or ``std_factor`` q (|w| < q * std(W), per
layer, or with the std of all chosen weights pooled when global). Weights
already zero count as pruned. The written caffemodel holds exact zeros, so
Caffe and OpenCV load it unchanged; the report says what a sparse encoding
would save: non-zeros, CSR bytes (float32 values + int32 column indices +
int32 row pointers; rows = output channels, columns = the flattened fan-in)
and the deflated (zip) size of the caffemodel files.
"""
from __future__ import annotations

import copy
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CaffeSurgeryError, UnsupportedLayerError
from .graph import Layer, Net
from .io import atomic_write
from .report import format_table

WEIGHTED = ("Convolution", "Deconvolution", "InnerProduct")
SCOPES = ("per-layer", "global")


def csr_bytes(nonzero: int, rows: int) -> int:
    """Bytes of a CSR matrix: float32 values and int32 column indices per non-zero, rows + 1 int32 pointers."""
    return 8 * nonzero + 4 * (rows + 1)


@dataclass
class LayerSparsity:
    """One layer's weight blob after pruning."""

    name: str
    type: str
    params: int
    nonzero: int
    rows: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.params if self.params else 0.0

    @property
    def dense_bytes(self) -> int:
        return 4 * self.params

    @property
    def csr_bytes(self) -> int:
        return csr_bytes(self.nonzero, self.rows)

    def as_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "params": self.params, "nonzero": self.nonzero,
                "sparsity": self.sparsity, "dense_bytes": self.dense_bytes, "csr_bytes": self.csr_bytes}


@dataclass
class SparsityReport:
    """Per-layer figures, the rule used, and (once measured) file sizes ``[input, output]`` by kind."""

    rule: dict
    layers: list[LayerSparsity]
    files: dict[str, list[int]] = field(default_factory=dict)

    def totals(self) -> dict:
        params = sum(entry.params for entry in self.layers)
        nonzero = sum(entry.nonzero for entry in self.layers)
        return {"params": params, "nonzero": nonzero, "sparsity": 1.0 - nonzero / params if params else 0.0,
                "dense_bytes": 4 * params, "csr_bytes": sum(entry.csr_bytes for entry in self.layers)}

    def as_dict(self) -> dict:
        return {"rule": dict(self.rule), "layers": [entry.as_dict() for entry in self.layers],
                "totals": self.totals(), "files": {kind: list(sizes) for kind, sizes in self.files.items()}}


def compressed_size(path: str | os.PathLike) -> int:
    """Bytes of the file deflated as a zip archive stores it (raw deflate, zip's default level)."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    total = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


def _rule(sparsity: float | None, threshold: float | None, std_factor: float | None, scope: str) -> dict:
    given = {name: value for name, value in (("sparsity", sparsity), ("threshold", threshold),
                                             ("std_factor", std_factor)) if value is not None}
    if len(given) != 1:
        raise CaffeSurgeryError("give exactly one of sparsity, threshold or std_factor")
    if scope not in SCOPES:
        raise CaffeSurgeryError(f"unknown scope '{scope}' (choose one of {', '.join(SCOPES)})")
    (name, value), = given.items()
    if value < 0 or (name == "sparsity" and value > 1):
        raise CaffeSurgeryError(f"{name} must be {'in [0, 1]' if name == 'sparsity' else 'non-negative'}, got {value}")
    return {name: float(value)} if name == "threshold" else {name: float(value), "scope": scope}


def _chosen_layers(net: Net, names: list[str] | None) -> list[Layer]:
    """The named layers (checked), or every weighted layer that has weights."""
    if names is None:
        chosen = [layer for layer in net.layers if layer.type in WEIGHTED and layer.blobs]
        if not chosen:
            raise CaffeSurgeryError("the net has no Convolution, Deconvolution or InnerProduct weights",
                                    file=net.source)
        return chosen
    chosen = [net.layer(name) for name in dict.fromkeys(names)]
    for layer in chosen:
        if layer.type not in WEIGHTED:
            raise UnsupportedLayerError(f"a {layer.type} layer has no weights to sparsify", layer=layer.name)
        if not layer.blobs:
            raise CaffeSurgeryError("the layer has no weights (no caffemodel?)", layer=layer.name)
    return chosen


def _smallest(magnitudes: np.ndarray, fraction: float) -> np.ndarray:
    """A mask of the ceil(fraction * n) smallest entries (a hair of slack for float rounding)."""
    count = min(magnitudes.size, max(0, math.ceil(fraction * magnitudes.size - 1e-6)))
    mask = np.zeros(magnitudes.size, dtype=bool)
    if count:
        mask[np.argpartition(magnitudes, count - 1)[:count]] = True
    return mask


def _masks(weights: list[np.ndarray], rule: dict) -> list[np.ndarray]:
    """Per layer, a mask (flat, like ``weights``) of the weights to zero."""
    magnitudes = [np.abs(w) for w in weights]
    if "threshold" in rule:
        return [m < rule["threshold"] for m in magnitudes]
    pooled = rule["scope"] == "global"
    if "std_factor" in rule:
        if pooled:
            cut = rule["std_factor"] * np.concatenate(weights).std()
            return [m < cut for m in magnitudes]
        return [m < rule["std_factor"] * w.std() for w, m in zip(weights, magnitudes)]
    if not pooled:
        return [_smallest(m, rule["sparsity"]) for m in magnitudes]
    mask = _smallest(np.concatenate(magnitudes), rule["sparsity"])
    return np.split(mask, np.cumsum([m.size for m in magnitudes])[:-1])


def _output_rows(layer: Layer) -> int:
    """Output channels: the CSR rows of the layer's weight matrix."""
    if layer.type == "InnerProduct":
        return int(layer.param.inner_product_param.num_output)
    return int(layer.param.convolution_param.num_output)


def sparsify(net: Net, *, sparsity: float | None = None, threshold: float | None = None,
             std_factor: float | None = None, layers: list[str] | None = None,
             scope: str = "per-layer") -> tuple[Net, SparsityReport]:
    """A copy of the net with its smallest weights zeroed by exactly one rule, and the report.

    ``sparsity`` zeroes ceil(sparsity * n) weights of smallest |w| per layer
    (``scope="per-layer"``) or over all chosen layers (``"global"``);
    ``threshold`` zeroes |w| < threshold; ``std_factor`` zeroes
    |w| < std_factor * std(W). ``layers`` limits the pruning to these layers
    (default: every Convolution/Deconvolution/InnerProduct with weights).
    """
    rule = _rule(sparsity, threshold, std_factor, scope)
    chosen = [layer.name for layer in _chosen_layers(net, layers)]
    pruned = copy.deepcopy(net)
    weights = [pruned.layer(name).blobs[0] for name in chosen]
    masks = _masks([w.astype(np.float64).ravel() for w in weights], rule)
    for weight, mask in zip(weights, masks):
        weight[mask.reshape(weight.shape)] = 0
    entries = [LayerSparsity(name, pruned.layer(name).type, int(w.size), int(np.count_nonzero(w)),
                             _output_rows(pruned.layer(name))) for name, w in zip(chosen, weights)]
    return pruned, SparsityReport(rule, entries)


def _percent(fraction: float) -> str:
    return f"{100.0 * fraction:.2f}%"


def format_sparsity_report(report: SparsityReport) -> str:
    """The per-layer table, the totals and the file sizes."""
    rows = [(e.name, e.type, f"{e.params:,}", f"{e.nonzero:,}", _percent(e.sparsity), f"{e.dense_bytes:,}",
             f"{e.csr_bytes:,}") for e in report.layers]
    totals = report.totals()
    rows.append(("total", "", f"{totals['params']:,}", f"{totals['nonzero']:,}", _percent(totals["sparsity"]),
                 f"{totals['dense_bytes']:,}", f"{totals['csr_bytes']:,}"))
    rule = ", ".join(f"{key} {value}" for key, value in report.rule.items())
    lines = [format_table(("layer", "type", "weights", "non-zero", "sparsity", "dense bytes", "CSR bytes"), rows,
                          right=(2, 3, 4, 5, 6)), "", f"rule: {rule}"]
    for kind, (before, after) in report.files.items():
        lines.append(f"{kind}: {before:,} -> {after:,} bytes")
    return "\n".join(lines)


def sparsify_command(prototxt, weights, output_prefix, sparsity=None, threshold=None, std_factor=None,
                     layers=None, scope="per-layer", input_shapes=None, precision: str = "fp32") -> int:
    """Load, sparsify, write PREFIX.prototxt/.caffemodel/.report.json and print the table.

    ``precision``: the caffemodel's blobs, fp32 or fp16 (see ``precision``).

    The report's files compare the input caffemodel with the written one, as
    stored and deflated.
    """
    from .model import load_model
    from .precision import fp16_note
    from .report import format_written
    from .reshape import reshape_net
    from .save import save_caffemodel, save_prototxt

    model = load_model(prototxt, weights, input_shapes=input_shapes or None)
    net, report = sparsify(model.net, sparsity=sparsity, threshold=threshold, std_factor=std_factor,
                           layers=layers, scope=scope)
    outputs = {kind: Path(f"{output_prefix}.{kind}") for kind in ("prototxt", "caffemodel", "report.json")}
    save_prototxt(reshape_net(net, input_shapes or {}), outputs["prototxt"])
    save_caffemodel(net, outputs["caffemodel"], precision)
    report.files = {"caffemodel": [Path(weights).stat().st_size, outputs["caffemodel"].stat().st_size],
                    "deflated caffemodel": [compressed_size(weights), compressed_size(outputs["caffemodel"])]}
    atomic_write(outputs["report.json"], [json.dumps(report.as_dict(), indent=1).encode("utf-8")])
    print(format_sparsity_report(report))
    if precision == "fp16":
        print(fp16_note(net, model.shapes, outputs["prototxt"], outputs["caffemodel"]))
    print(format_written(outputs.values(), precision))
    return 0
