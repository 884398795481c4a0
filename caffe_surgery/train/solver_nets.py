"""The solver prototxt and the nets it names: one TRAIN net and its TEST nets, as Caffe's Solver::Init builds them.

Net files are looked up relative to the solver's folder, then the cwd.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .. import caffe_pb2
from ..data.paths import resolve_path
from ..errors import CaffeSurgeryError
from ..graph import TEST, TRAIN, Net, build_net
from ..io import read_net_text, read_solver
from ..upgrade import upgrade_net, upgrade_solver


@dataclass
class SolverSetup:
    """An upgraded SolverParameter, its file and the folder its relative paths start from, and its nets."""

    param: caffe_pb2.SolverParameter
    path: str | None
    base_dir: str | None
    train_net: Net
    test_nets: list[Net]


def _read_net(path: str, base_dir: str | None, where: str) -> tuple[caffe_pb2.NetParameter, str]:
    resolved = resolve_path(path, base_dir)
    if not os.path.exists(resolved):
        places = f"{base_dir} or the current directory" if base_dir else "the current directory"
        raise CaffeSurgeryError(f"net file '{path}' not found (looked in {places})", file=where)
    try:
        return upgrade_net(read_net_text(resolved)), resolved
    except CaffeSurgeryError as exc:
        raise exc.with_file(resolved)


def _build(net_param: caffe_pb2.NetParameter, state: caffe_pb2.NetState, phase: int, source: str) -> Net:
    """Caffe's net state: the net's own ``state`` merged with the solver's train/test state."""
    merged = caffe_pb2.NetState()
    merged.MergeFrom(net_param.state)
    merged.MergeFrom(state)
    return build_net(net_param, phase=phase, level=merged.level, stages=tuple(merged.stage), source=source)


def _train_net(param: caffe_pb2.SolverParameter, base_dir: str | None, where: str) -> Net:
    given = [name for name in ("train_net_param", "train_net", "net_param", "net")
             if (param.HasField(name) if name.endswith("_param") else getattr(param, name))]
    if len(given) != 1:
        raise CaffeSurgeryError("the solver must name exactly one train net (net, net_param, train_net or "
                                f"train_net_param), it names {', '.join(given) or 'none'}", file=where)
    kind = given[0]
    if kind.endswith("_param"):
        net_param, source = getattr(param, kind), f"{where}:{kind}"
    else:
        net_param, source = _read_net(getattr(param, kind), base_dir, where)
    return _build(net_param, param.train_state, TRAIN, source)


def _test_nets(param: caffe_pb2.SolverParameter, base_dir: str | None, where: str) -> list[Net]:
    """test_net_param entries, then test_net files, then the generic net once per remaining test_iter."""
    specs = [(net, f"{where}:test_net_param[{i}]") for i, net in enumerate(param.test_net_param)]
    specs += [_read_net(path, base_dir, where) for path in param.test_net]
    generic = param.HasField("net_param") or bool(param.net)
    if generic and len(param.test_iter) > len(specs):
        net, source = ((param.net_param, f"{where}:net_param") if param.HasField("net_param")
                       else _read_net(param.net, base_dir, where))
        specs += [(net, source)] * (len(param.test_iter) - len(specs))
    if len(param.test_iter) != len(specs):
        raise CaffeSurgeryError(f"the solver gives {len(param.test_iter)} test_iter values for {len(specs)} test nets",
                                file=where)
    if len(param.test_state) not in (0, len(specs)):
        raise CaffeSurgeryError(f"the solver gives {len(param.test_state)} test_state values for {len(specs)} "
                                "test nets", file=where)
    states = list(param.test_state) or [caffe_pb2.NetState()] * len(specs)
    return [_build(net, state, TEST, source) for (net, source), state in zip(specs, states)]


def load_solver(solver: str | os.PathLike | caffe_pb2.SolverParameter) -> SolverSetup:
    """Read (a path) or take (a message) a solver, upgrade it, and build its train and test nets."""
    if isinstance(solver, caffe_pb2.SolverParameter):
        raw, path, base_dir, where = solver, None, None, "solver"
    else:
        raw, path = read_solver(solver), str(solver)
        base_dir, where = os.path.dirname(os.path.abspath(path)), path
    try:
        param = upgrade_solver(raw)
    except CaffeSurgeryError as exc:
        raise exc.with_file(where)
    return SolverSetup(param, path, base_dir, _train_net(param, base_dir, where), _test_nets(param, base_dir, where))
