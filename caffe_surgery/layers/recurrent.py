"""Recurrent layers: RNN, LSTM and LSTMUnit (shapes; pinned for pruning; not exported)."""
from __future__ import annotations

from math import prod

from ..graph import Layer
from .channels import PIN
from .registry import LayerType, NotApplicable, declare
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
)
