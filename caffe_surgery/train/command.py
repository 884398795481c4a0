"""The ``caffe-surgery train`` verb: open the data specs, train, print one summary line."""
from __future__ import annotations

from ..data import parse_data_spec
from ..io import read_weights
from ..report import format_written
from ..save import save_float32_weights
from .feed import feed_layer
from .solver_nets import load_solver
from .trainer import train


def _spec_source(spec: str | None, net, base_dir: str | None):
    """The source a data spec names, transformed as the net's data layer transforms its samples."""
    if not spec:
        return None
    return parse_data_spec(spec, feed_layer(net).param.transform_param, base_dir)


def train_command(solver: str, weights: str | None, max_iter: int | None, device: str, output: str,
                  train_data_spec: str | None, test_data_spec: str | None, keep_zeros: bool,
                  precision: str = "fp32") -> int:
    """Train from the command line's arguments; print iterations, final test accuracy/loss and time.

    ``precision="fp16"`` rewrites the trained caffemodel with half-float Convolution/InnerProduct blobs."""
    setup = load_solver(solver)
    train_data = _spec_source(train_data_spec, setup.train_net, setup.base_dir)
    test_data = _spec_source(test_data_spec, setup.test_nets[0], setup.base_dir) if setup.test_nets else None
    result = train(solver, weights=weights, max_iter=max_iter, device=device, train_data=train_data,
                   test_data=test_data, output=output, keep_zeros=keep_zeros)
    accuracy = "n/a" if result.accuracy is None else f"{result.accuracy:.4f}"
    loss = "n/a" if result.loss is None else f"{result.loss:.4f}"
    if precision == "fp16":
        save_float32_weights(read_weights(output), output, precision)
    print(f"trained {result.iterations} iterations on {result.device} in {result.seconds:.1f} s: "
          f"test accuracy {accuracy}, test loss {loss}")
    print(format_written([output], precision))
    return 0
