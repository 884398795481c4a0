"""The training loop of Caffe's Solver::Solve: test, forward/backward over iter_size, display, update, snapshot.

Testing runs every ``test_interval`` iterations (at iteration 0 too when
``test_initialization``) and always once after the last iteration; snapshots
write the TRAIN net's layers with the current blobs.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import caffe_pb2
from ..data import Source
from ..errors import CaffeSurgeryError
from ..graph import TEST, TRAIN, Net
from ..io import read_weights
from ..model import attach_weights, weights_by_layer
from ..progress import progress as progress_bar
from ..save import save_caffemodel
from ..shapes import infer_shapes
from ..upgrade import upgrade_net
from .feed import Feed
from .params import DEFAULT_SEED
from .schedule import learning_rate
from .solver import Solver
from .solver_nets import SolverSetup, load_solver
from .torch_net import TorchNet, has_loss

log = logging.getLogger(__name__)


@dataclass
class TestScores:
    """Means over one test pass: the net's loss, its first Accuracy top, every scalar output by blob key."""

    iteration: int
    loss: float | None
    accuracy: float | None
    outputs: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a training run did: iterations, the last smoothed train loss, the test history, the output file."""

    iterations: int
    train_loss: float | None
    history: list[TestScores]
    output: str | None
    seconds: float
    device: str

    @property
    def accuracy(self) -> float | None:
        """The final test accuracy (first test net), if the nets test."""
        return self.history[-1].accuracy if self.history else None

    @property
    def loss(self) -> float | None:
        """The final test loss (first test net), if the nets test."""
        return self.history[-1].loss if self.history else None


def torch_device(device: str) -> torch.device:
    """'cpu', 'cuda' (which must be available) or 'auto' (cuda when available)."""
    if device not in ("auto", "cpu", "cuda"):
        raise CaffeSurgeryError(f"unknown device '{device}' (choose auto, cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise CaffeSurgeryError("device 'cuda' was requested but this PyTorch has no CUDA device")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def _net_dir(net: Net, setup: SolverSetup) -> str | None:
    """Where a net's relative data paths start: its file's folder, else the solver's."""
    return os.path.dirname(os.path.abspath(net.source)) if net.source and os.path.isfile(net.source) else setup.base_dir


class _ZeroMasks:
    """keep_zeros: the learnable blobs' zeros at the start, kept out of every update."""

    def __init__(self, model: TorchNet):
        self.masks = [(l.tensor, l.tensor != 0) for l in model.learnables if bool((l.tensor == 0).any())]

    def mask_gradients(self) -> None:
        for tensor, mask in self.masks:
            if tensor.grad is not None:
                tensor.grad.mul_(mask)

    @torch.no_grad()
    def mask_weights(self) -> None:
        for tensor, mask in self.masks:
            tensor.mul_(mask)


class _Trainer:
    """The state of one run: the TRAIN model and its feed, the test nets and theirs, the solver, the history."""

    def __init__(self, setup: SolverSetup, weights: list[str], device: torch.device,
                 train_data: Source | None, test_data: Source | None, keep_zeros: bool):
        param = setup.param
        seed = param.random_seed if param.random_seed >= 0 else DEFAULT_SEED
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.param, self.device, self.setup = param, device, setup
        if not has_loss(setup.train_net):
            raise CaffeSurgeryError("the TRAIN net has no loss layer (e.g. SoftmaxWithLoss) to minimise; train a "
                                    "train_val net, not a deploy net", file=setup.train_net.source)
        self.feed = Feed(setup.train_net, TRAIN, train_data, _net_dir(setup.train_net, setup), rng)
        tested = [(net, iters) for net, iters in zip(setup.test_nets, param.test_iter) if iters > 0]
        self.test_iters = [iters for _, iters in tested]
        self.test_feeds = [Feed(net, TEST, test_data, _net_dir(net, setup)) for net, _ in tested]
        nets = [(setup.train_net, self.feed)] + [(net, feed) for (net, _), feed in zip(tested, self.test_feeds)]
        shapes = [infer_shapes(net, data_shapes=feed.item_shapes) for net, feed in nets]
        for path in weights:
            stored = weights_by_layer(upgrade_net(read_weights(path)), path)
            for (net, _), net_shapes in zip(nets, shapes):
                for message in attach_weights(net, net_shapes, stored, path):
                    log.warning(message)
        self.model = TorchNet(setup.train_net, shapes[0], TRAIN, device=device, rng=rng)
        self.testers = [TorchNet(net, net_shapes, TEST, device=device, rng=rng, share_with=self.model)
                        for (net, _), net_shapes in zip(nets[1:], shapes[1:])]
        self.solver = Solver(param, self.model.learnables)
        self.masks = _ZeroMasks(self.model) if keep_zeros else None
        self.losses: deque[float] = deque(maxlen=max(param.average_loss, 1))
        self.history: list[TestScores] = []

    def step(self, iteration: int) -> None:
        """One iteration: forward/backward ``iter_size`` batches, then Caffe's update."""
        for learnable in self.model.learnables:
            learnable.tensor.grad = None
        loss = 0.0
        for _ in range(self.param.iter_size):
            batch_loss = self.model.loss(self.model(self.feed.next(self.device)))
            if batch_loss.requires_grad:
                batch_loss.backward()
            loss += float(batch_loss.detach()) / self.param.iter_size
        self.losses.append(loss)
        rate = learning_rate(self.param, iteration)
        if self.param.display and iteration % self.param.display == 0:
            log.info("iteration %d, loss = %.6g, lr = %.6g", iteration, self.smoothed_loss, rate)
        if self.masks:
            self.masks.mask_gradients()
        self.solver.apply_update(iteration, rate)
        if self.masks:
            self.masks.mask_weights()

    @property
    def smoothed_loss(self) -> float | None:
        """The mean loss over the last ``average_loss`` iterations (Caffe's displayed loss)."""
        return sum(self.losses) / len(self.losses) if self.losses else None

    @torch.no_grad()
    def test_all(self, iteration: int) -> None:
        """Run every test net (with test_iter > 0) for its test_iter batches; record the first one's means."""
        for index, (tester, feed, iters) in enumerate(zip(self.testers, self.test_feeds, self.test_iters)):
            scores = _test(tester, feed, iters, iteration, self.device)
            log.info("iteration %d, test net #%d: loss = %s, accuracy = %s", iteration, index, scores.loss,
                     scores.accuracy)
            if index == 0:
                self.history.append(scores)

    def snapshot(self, path: str) -> None:
        """Write the TRAIN net with its current blobs as a caffemodel."""
        self.model.store_blobs()
        save_caffemodel(self.setup.train_net, path)
        log.info("wrote %s", path)

    def close(self) -> None:
        for feed in [self.feed] + self.test_feeds:
            feed.close()


def _test(tester: TorchNet, feed: Feed, iters: int, iteration: int, device: torch.device) -> TestScores:
    """Caffe's Test: means over ``iters`` batches of the loss and of every scalar net output."""
    outputs = [v.key for v in tester.net.outputs()]
    accuracy = next((l.tops[0].key for l in tester.net.layers if l.type == "Accuracy"), None)
    sums: dict[str, float] = {}
    loss = 0.0
    for _ in range(iters):
        values = tester(feed.next(device))
        loss += float(tester.loss(values))
        for key in dict.fromkeys(outputs + ([accuracy] if accuracy else [])):
            if values[key].numel() == 1:
                sums[key] = sums.get(key, 0.0) + float(values[key])
    means = {key: value / iters for key, value in sums.items()}
    return TestScores(iteration, loss / iters if tester.loss_weights else None,
                      means.get(accuracy) if accuracy else None, means)


def _snapshot_prefix(setup: SolverSetup) -> str:
    """snapshot_prefix, else (as Caffe) the solver file's path without its extension."""
    if setup.param.snapshot_prefix:
        return setup.param.snapshot_prefix
    return os.path.splitext(setup.path)[0] if setup.path else "snapshot"


def _weights_list(weights: str | os.PathLike | list | None, param: caffe_pb2.SolverParameter) -> list[str]:
    if weights is None:
        return list(param.weights)
    return [str(w) for w in weights] if isinstance(weights, (list, tuple)) else [str(weights)]


def train(solver: str | os.PathLike | caffe_pb2.SolverParameter, *, weights=None, max_iter: int | None = None,
          device: str = "auto", train_data: Source | None = None, test_data: Source | None = None,
          output: str | os.PathLike | None = None, keep_zeros: bool = False, progress: bool = True) -> TrainResult:
    """Train the solver's net as Caffe would and write the final weights to ``output`` (if given).

    ``weights``: caffemodel(s) to start from (default: the solver's ``weights``), copied into the
    train and test nets by layer name; ``max_iter`` replaces the solver's (poly follows it);
    ``train_data``/``test_data`` replace the sources of the nets' data layers (batch sizes kept);
    ``keep_zeros`` keeps every learnable value that is exactly zero at the start at zero (masked
    fine-tuning of a pruned model). Fillers and dropout are seeded by ``random_seed``, else
    ``DEFAULT_SEED``.
    """
    started = time.perf_counter()
    setup = load_solver(solver)
    param = setup.param
    if max_iter is not None:
        param.max_iter = max_iter
    run = _Trainer(setup, _weights_list(weights, param), torch_device(device), train_data, test_data, keep_zeros)
    try:
        bar = progress_bar(param.max_iter, "train", unit="it") if progress else contextlib.nullcontext()
        with bar:
            for iteration in range(param.max_iter):
                if param.test_interval and iteration % param.test_interval == 0 and (
                        iteration or param.test_initialization):
                    run.test_all(iteration)
                run.step(iteration)
                if param.snapshot and (iteration + 1) % param.snapshot == 0:
                    run.snapshot(f"{_snapshot_prefix(setup)}_iter_{iteration + 1}.caffemodel")
                if progress:
                    bar.update()
        run.test_all(param.max_iter)
        if output is not None:
            run.snapshot(str(output))
    finally:
        run.close()
    return TrainResult(param.max_iter, run.smoothed_loss, run.history, None if output is None else str(output),
                       time.perf_counter() - started, run.device.type)
