"""Recurrent layers: RNN, LSTM and LSTMUnit (shapes; pinned for pruning; not exported), and OpenCV's GRU.

OpenCV's GRU (probed against numpy): a (T, N, I) bottom, blobs Wh (3H, H), Wx (3H, I), bias (6H: the input
biases, then the hidden ones) and h0 (N, H), gates in the order update z, reset r, new n;
``n = tanh(Wx_n x + b_n + r * (Wh_n h + bh_n))`` (ONNX's linear_before_reset), ``h' = (1 - z) n + z h``;
the top is every step's h, (T, N, H). Bidirectional, every blob holds the forward direction's rows, then
the backward one's (which runs from the last step), and the top is (T, N, 2H), forward then backward.
The hidden size comes from the blobs in OpenCV; the prototxt gives it here as ``recurrent_param.num_output``
(which OpenCV ignores).
"""
from __future__ import annotations

from math import prod

from ..export.context import LayerContext
from ..graph import Layer
from .channels import PIN
from .fork_params import fork_param
from .registry import LayerType, NotApplicable, Train, declare
from .shape_rules import Rule, Shape, fail


def _recurrent(layer: Layer, bottoms: list[Shape], gates: int, hidden_states: int) -> Rule:
    """Shared rule of RNN (1 gate, 1 hidden state) and LSTM (4 gates, 2 hidden states)."""
    p = layer.param.recurrent_param
    h = p.num_output
    if h <= 0:
        fail("num_output must be positive")
    x = bottoms[0]
    if len(x) < 2:
        fail(f"input x must be (T, N, ...), got {x}")
    t, n = x[0], x[1]
    if bottoms[1] != (t, n):
        fail(f"cont must have shape {(t, n)}, got {bottoms[1]}")
    exposed = hidden_states if p.expose_hidden else 0
    if len(bottoms) not in (2 + exposed, 3 + exposed):
        fail(f"takes {2 + exposed} or {3 + exposed} bottoms, got {len(bottoms)}")
    if len(layer.tops) != 1 + exposed:
        fail(f"needs {1 + exposed} tops, has {len(layer.tops)}")
    d = prod(x[2:])
    params = [(gates * h, d), (gates * h,)]
    macs = t * n * gates * h * d
    if len(bottoms) == 3 + exposed:
        static = bottoms[2]
        if static[0] != n:
            fail(f"static input must have {n} rows, got {static}")
        params.append((gates * h, prod(static[1:])))
        macs += n * gates * h * prod(static[1:])
    params.append((gates * h, h))
    macs += t * n * gates * h * h
    if gates == 1:
        params += [(h, h), (h,)]
        macs += t * n * h * h
    return Rule([(t, n, h)] + [(1, n, h)] * exposed, params, macs)


def _rnn(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Blobs W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o, in the unrolled net's order."""
    return _recurrent(layer, bottoms, gates=1, hidden_states=1)


def _lstm(layer: Layer, bottoms: list[Shape]) -> Rule:
    """Blobs W_xc, b_c, [W_xc_static], W_hc, in the unrolled net's order."""
    return _recurrent(layer, bottoms, gates=4, hidden_states=2)


def _lstm_unit(layer: Layer, bottoms: list[Shape]) -> Rule:
    c_prev, gates, _ = bottoms
    if gates[:2] != c_prev[:2] or gates[2] != 4 * c_prev[2]:
        fail(f"gate input {gates} does not fit the cell {c_prev} (needs 4x its channels)")
    return Rule([c_prev, c_prev])


def _gru_geometry(layer: Layer) -> tuple[int, int]:
    """(hidden size H, directions D): H from ``recurrent_param.num_output``, D 2 with ``gru_param {
    bidirectional: 1 }`` (a flag OpenCV reads as an integer)."""
    bidirectional = fork_param(layer.param, "gru_param", {"bidirectional": 0})["bidirectional"]
    if bidirectional not in (0, 1):
        fail(f"gru_param.bidirectional must be 0 or 1, got {bidirectional}")
    hidden = layer.param.recurrent_param.num_output
    if hidden <= 0:
        fail("GRU needs recurrent_param.num_output, its hidden size (OpenCV reads it from the blobs)")
    return hidden, 1 + bidirectional


def _gru(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(T, N, I) -> (T, N, D * H); blobs Wh (D * 3H, H), Wx (D * 3H, I), bias (D * 6H,), h0 (D * N, H),
    each the forward direction's, then the backward one's."""
    x = bottoms[0]
    if len(x) != 3:
        fail(f"GRU needs a (T, N, I) bottom, got {x}")
    t, n, i = x
    h, d = _gru_geometry(layer)
    return Rule([(t, n, d * h)], [(d * 3 * h, h), (d * 3 * h, i), (d * 6 * h,), (d * n, h)],
                d * t * n * 3 * h * (i + h))


def gru(ctx: LayerContext) -> None:
    """ONNX GRU (gates z, r, h; linear_before_reset), its (T, D, N, H) output laid out as (T, N, D * H) (a
    dynamic dim 0 is the sequence length; N stays fixed by h0, one row per sequence)."""
    wh, wx, bias, h0 = ctx.weights(4)
    hidden, directions = _gru_geometry(ctx.layer)
    steps, batch, _ = ctx.bottom_shape()
    y = ctx.node("GRU", [ctx.bottom(), ctx.const(wx.reshape(directions, 3 * hidden, -1), "W"),
                         ctx.const(wh.reshape(directions, 3 * hidden, hidden), "R"),
                         ctx.const(bias.reshape(directions, 6 * hidden), "B"), "",
                         ctx.const(h0.reshape(directions, batch, hidden), "initial_h")],
                 hidden_size=hidden, linear_before_reset=1,
                 direction="bidirectional" if directions == 2 else "forward")
    per_step = ctx.node("Transpose", [y], perm=[0, 2, 1, 3])
    ctx.reshape(per_step, (steps, batch, directions * hidden), keeps_batch=True, out=ctx.top())


def _gru_op(layer, bottoms, phase):
    import torch
    hidden, directions = _gru_geometry(layer)
    batch = bottoms[0][1]

    def direction(x, wx, wh, bias, h):
        gates_x = x @ wx.t() + bias[:3 * hidden]
        steps = []
        for gx in gates_x:
            gh = h @ wh.t() + bias[3 * hidden:]
            z = torch.sigmoid(gx[:, :hidden] + gh[:, :hidden])
            r = torch.sigmoid(gx[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
            candidate = torch.tanh(gx[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
            h = (1 - z) * candidate + z * h
            steps.append(h)
        return torch.stack(steps)

    def run(x, blobs):
        wh, wx, bias, h0 = blobs
        outputs = []
        for d in range(directions):
            rows, gates = slice(d * 3 * hidden, (d + 1) * 3 * hidden), slice(d * 6 * hidden, (d + 1) * 6 * hidden)
            sequence = x[0] if d == 0 else x[0].flip(0)
            y = direction(sequence, wx[rows], wh[rows], bias[gates], h0[d * batch:(d + 1) * batch])
            outputs.append(y if d == 0 else y.flip(0))
        return [torch.cat(outputs, dim=2)]
    return run


_NOT_EXPORTED = NotApplicable("no ONNX converter is written for recurrent layers")
_PINNED = NotApplicable("it mixes channels over time (pinned)")
_NO_TORCH = NotApplicable("no torch op is written for it yet")

declare(
    LayerType("RNN", shape=_rnn, export=_NOT_EXPORTED, channels=PIN, rewrite=_PINNED, train=_NO_TORCH,
              bottoms=(2, 4), tops=(1, 2)),
    LayerType("LSTM", shape=_lstm, export=_NOT_EXPORTED, channels=PIN, rewrite=_PINNED, train=_NO_TORCH,
              bottoms=(2, 5), tops=(1, 3)),
    LayerType("LSTMUnit", shape=_lstm_unit, export=_NOT_EXPORTED, channels=PIN, rewrite=_PINNED, train=_NO_TORCH,
              bottoms=3, tops=2),
    LayerType("GRU", shape=_gru, export=gru, channels=PIN, rewrite=_PINNED, train=Train(_gru_op)),
)
