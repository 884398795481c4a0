"""ThiNet (Luo et al. 2017): rank a group's channels by what removing them does to the next layer's output.

For a consumer with input rows X and weights W, channel c contributes
Z_c = X_c W_c to the output. Removing a set S changes the output by the sum
of the Z_c in S, whose squared norm is sum over c, c' in S of
K[c, c'] = sum of G[i, j] (W W^T)[i, j] over the columns i of c and j of c',
G the consumer's input Gram matrix (the statistics of ``reconstruct``).
Greedily, the channel adding the least to that norm goes first; a channel's
score is its place in that order (first removed: lowest), so the channels
kept at any ratio are those the greedy search keeps. Consumers' K are added
after dividing by their output energy.
"""
from __future__ import annotations

import numpy as np

from .errors import CaffeSurgeryError
from .graph import Net
from .groups import Group, Groups
from .reconstruct import Batches, LeastSquares, accumulate, consumers, weight_matrix
from .shapes import NetShapes


def channel_columns(net: Net, shapes: NetShapes, groups: Groups, group: Group, name: str) -> np.ndarray:
    """(columns, channels) 0/1 matrix: which rows of the consumer's ``weight_matrix`` read which channel."""
    layer = net.layer(name)
    bottom = layer.bottoms[0]
    block = (int(np.prod(shapes.blob(bottom)[2:], dtype=np.int64)) if layer.type == "InnerProduct"
             else int(np.prod(layer.blobs[0].shape[2:], dtype=np.int64)))
    pieces = groups.layouts[bottom]
    width = sum(len(p.index) * p.block * block for p in pieces)
    columns = np.zeros((width, group.size))
    offset = 0
    for piece in pieces:
        span = piece.block * block
        if piece.group == group.id:
            for j, channel in enumerate(piece.index[:, 0]):
                columns[offset + j * span:offset + (j + 1) * span, channel] = 1.0
        offset += len(piece.index) * span
    return columns


def contribution_gram(sums: LeastSquares, weights: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """K[c, c'] = <Z_c, Z_c'> / ||Y||^2 for one consumer (see the module docstring)."""
    inputs = columns.shape[0]
    products = sums.gram[:inputs, :inputs] * (weights[:inputs] @ weights[:inputs].T)
    return columns.T @ products @ columns / max(sums.squares, np.finfo(float).tiny)


def greedy_order(gram: np.ndarray) -> np.ndarray:
    """Scores: the place of each channel in the greedy removal order (0 = removed first)."""
    size = len(gram)
    scores = np.zeros(size)
    removed = np.zeros(size, dtype=bool)
    link = np.zeros(size)  # sum over removed j of K[c, j]
    for step in range(size):
        cost = np.where(removed, np.inf, 2 * link + np.diag(gram))
        chosen = int(np.argmin(cost))
        scores[chosen] = step
        removed[chosen] = True
        link += gram[:, chosen]
    return scores


def thinet_scores(net: Net, shapes: NetShapes, groups: Groups, group_list: list[Group], batches: Batches,
                  runtime_options: dict | None = None) -> dict[int, np.ndarray]:
    """ThiNet scores per group id, from one pass of ``batches()`` through the original net."""
    readers = {}
    for group in group_list:
        if group.maxout is not None:
            raise CaffeSurgeryError("thinet ranks channels the next layer reads; a maxout group's neurons are "
                                    "not (use maxout-wins)", layer=group.name)
        names, _ = consumers(net, shapes, groups, {group.id: np.zeros(0, dtype=np.int64)})
        if not names:
            raise CaffeSurgeryError("thinet needs a Convolution or InnerProduct layer reading the channels",
                                    layer=group.name)
        readers[group.id] = names
    needed = sorted({name for names in readers.values() for name in names},
                    key=[layer.name for layer in net.layers].index)
    sums = accumulate(net, shapes, net, shapes, needed, batches(), runtime_options)
    scores = {}
    for group in group_list:
        gram = sum(contribution_gram(sums[name], weight_matrix(net.layer(name)),
                                     channel_columns(net, shapes, groups, group, name)) for name in readers[group.id])
        scores[group.id] = greedy_order(gram)
    return scores
