"""The exactness oracle for surgery: the original net with the removed channels switched off.

Switching off is done on the original weights, independently of the surgery
code: every layer that reads a removed channel as an input column (a
consumer) gets those columns zeroed; for maxout, removed neurons get zero
weights and a very negative bias so they never win their unit. The pruned net
must then compute exactly what this masked net computes.
"""
import copy

import numpy as np

from caffe_surgery.groups import Groups

NEVER_WINS = -1e9


def _removed_positions(groups: Groups, blob, keep, spatial: int) -> np.ndarray:
    positions, offset = [], 0
    for piece in groups.layouts[blob]:
        block = piece.block * spatial
        kept = keep.get(piece.group)
        if kept is not None and piece.index.shape[1] == 1:
            gone = np.nonzero(~np.isin(piece.index[:, 0], kept))[0]
            positions.append((gone[:, None] * block + np.arange(block)).ravel() + offset)
        offset += len(piece.index) * block
    return np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)


def switch_off(net, shapes, groups: Groups, keep: dict) -> dict[str, list[np.ndarray]]:
    """Weights of the original net with the channels not in ``keep`` switched off (by layer name)."""
    weights = {layer.name: [b.copy() for b in layer.blobs] for layer in net.layers}
    for gid, kept in keep.items():
        group = groups.groups[gid]
        if group.maxout is None:
            continue
        removed = np.setdiff1d(np.arange(group.size), kept)
        for name in group.maxout.branches or group.producers:
            layer = net.layer(name)
            rows = removed
            if group.maxout.branches:
                branch = group.maxout.branches.index(name)
                rows = np.nonzero(~np.isin(group.maxout.neurons[:, branch], kept))[0]
            out_axis = 1 if layer.type == "InnerProduct" and layer.param.inner_product_param.transpose else 0
            w = weights[name]
            index = [slice(None)] * w[0].ndim
            index[out_axis] = rows
            w[0][tuple(index)] = 0
            w[1][rows] = NEVER_WINS
    for layer in net.layers:
        if layer.type not in ("Convolution", "InnerProduct", "Deconvolution") or not layer.blobs:
            continue
        if layer.name in groups.depthwise:
            continue
        bottom = layer.bottoms[0]
        spatial = int(np.prod(shapes.blob(bottom)[2:])) if layer.type == "InnerProduct" else 1
        gone = _removed_positions(groups, bottom, keep, spatial)
        if gone.size == 0:
            continue
        w = weights[layer.name][0]
        if layer.type == "InnerProduct":
            if layer.param.inner_product_param.transpose:
                w[gone, :] = 0
            else:
                w[:, gone] = 0
        elif layer.type == "Deconvolution":
            w[gone] = 0
        else:
            group_count = layer.param.convolution_param.group
            per_group = shapes.blob(bottom)[1] // group_count
            out_per_group = w.shape[0] // group_count
            for position in gone:
                g = position // per_group
                w[g * out_per_group:(g + 1) * out_per_group, position - g * per_group] = 0
    return weights


def masked_copy(net, weights):
    """A deep copy of ``net`` carrying ``weights``."""
    clone = copy.deepcopy(net)
    for layer in clone.layers:
        layer.blobs = weights[layer.name]
    return clone


def random_keep(groups: Groups, rng: np.random.Generator, fraction: float = 0.5) -> dict[int, np.ndarray]:
    """A random valid keep set for every prunable group (maxout: a random k' per unit, or whole units)."""
    keep = {}
    for group in groups.prunable():
        if group.maxout is not None:
            m = group.maxout
            if rng.random() < 0.5 and m.k > 1:
                k_new = int(rng.integers(1, m.k))
                chosen = [m.neurons[u, np.sort(rng.choice(m.k, k_new, replace=False))] for u in range(m.units)]
            else:
                units = np.sort(rng.choice(m.units, max(1, int(m.units * fraction)), replace=False))
                chosen = [m.neurons[u] for u in units]
            keep[group.id] = np.sort(np.concatenate(chosen))
        else:
            chunk = group.size // group.chunks
            per_chunk = max(1, int(chunk * fraction))
            keep[group.id] = np.sort(np.concatenate(
                [c * chunk + rng.choice(chunk, per_chunk, replace=False) for c in range(group.chunks)]))
    return keep
