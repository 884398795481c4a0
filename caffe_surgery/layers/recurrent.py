"""Recurrent layers: RNN, LSTM and LSTMUnit (shapes; pinned for pruning; not exported), and OpenCV's GRU.

OpenCV's GRU (probed against numpy): a (T, N, I) bottom, blobs Wh (3H, H), Wx (3H, I), bias (6H: the input
biases, then the hidden ones) and h0 (N, H), gates in the order update z, reset r, new n;
``n = tanh(Wx_n x + b_n + r * (Wh_n h + bh_n))`` (ONNX's linear_before_reset), ``h' = (1 - z) n + z h``;
the top is every step's h, (T, N, H). The hidden size comes from the blobs in OpenCV; the prototxt gives it
here as ``recurrent_param.num_output`` (which OpenCV ignores).
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


def _gru_hidden(layer: Layer) -> int:
    if fork_param(layer.param, "gru_param", {"bidirectional": 0})["bidirectional"]:
        fail("a bidirectional GRU is not supported")
    hidden = layer.param.recurrent_param.num_output
    if hidden <= 0:
        fail("GRU needs recurrent_param.num_output, its hidden size (OpenCV reads it from the blobs)")
    return hidden


def _gru(layer: Layer, bottoms: list[Shape]) -> Rule:
    """(T, N, I) -> (T, N, H); blobs Wh (3H, H), Wx (3H, I), bias (6H,), h0 (N, H)."""
    x = bottoms[0]
    if len(x) != 3:
        fail(f"GRU needs a (T, N, I) bottom, got {x}")
    t, n, i = x
    h = _gru_hidden(layer)
    return Rule([(t, n, h)], [(3 * h, h), (3 * h, i), (6 * h,), (n, h)], t * n * 3 * h * (i + h))


def gru(ctx: LayerContext) -> None:
    """ONNX GRU (gates z, r, h; linear_before_reset), its (T, 1, N, H) output squeezed to (T, N, H) (a dynamic
    dim 0 is the sequence length; N stays fixed by h0, one row per sequence)."""
    wh, wx, bias, h0 = ctx.weights(4)
    hidden = wh.shape[1]
    y = ctx.node("GRU", [ctx.bottom(), ctx.const(wx[None], "W"), ctx.const(wh[None], "R"),
                         ctx.const(bias.reshape(1, -1), "B"), "", ctx.const(h0[None], "initial_h")],
                 hidden_size=hidden, linear_before_reset=1)
    ctx.node("Squeeze", [y, ctx.ints([1], "axes")], ctx.top())


def _gru_op(layer, bottoms, phase):
    import torch
    hidden = _gru_hidden(layer)

    def run(x, blobs):
        wh, wx, bias, h = blobs
        gates_x = x[0] @ wx.t() + bias[:3 * hidden]
        steps = []
        for gx in gates_x:
            gh = h @ wh.t() + bias[3 * hidden:]
            z = torch.sigmoid(gx[:, :hidden] + gh[:, :hidden])
            r = torch.sigmoid(gx[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
            candidate = torch.tanh(gx[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
            h = (1 - z) * candidate + z * h
            steps.append(h)
        return [torch.stack(steps)]
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
