"""The LeNet maxout neuron-pruning experiment (Moya Rueda et al. 2017), reproduced end to end.

Train the maxout LeNet, count maxout wins on the training set with the
TEST-phase net, remove the least relevant neuron of every unit (k 4 -> 3 -> 2
-> 1) with retraining after each step, then prune weights by magnitude with
masked retraining; beyond the paper, also prune the convolution filters (ranked
by the RMS of their outputs, 5 % at a time with a stage of retraining after
each step) until the net is 85 % smaller than the unpruned one or a step costs
more than a tolerance below the unpruned net's test accuracy. The reference code's defects are fixed (rows copied to
u*k' + j, win counts sized for the current k, TEST-phase counting with a tie
rule). The nets are written by this module with the reference architecture
and solver settings; their Reshape copies the batch size (``dim: 0``) where
the reference files hard-code it, which changes nothing else.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import caffe_pb2
from .criteria import get_criterion
from .data import convert_data, parse_data_spec
from .deploy import deploy_net
from .errors import CaffeSurgeryError
from .evaluate import evaluate
from .graph import TEST, TRAIN
from .groups import build_groups
from .io import atomic_write
from .model import Model, load_model
from .plot import reproduction_figure, save_figure
from .pruning import gather, make_plan, score, statistics_plan
from .plan import Plan, resolve_plan
from .save import save_caffemodel, save_prototxt
from .selection import Budget, select
from .shapes import infer_shapes
from .sparsify import compressed_size, sparsify
from .surgery import apply_plan

TRAIN_BATCH, TEST_BATCH = 64, 100
REFERENCE_MAX_ITER = 3749  # the reference solver's max_iter for 60,000 training images
logger = logging.getLogger(__name__)
PAPER = {"neuron pruning": "-74% parameters, unchanged accuracy (LeNet-5, MNIST)",
         "weight pruning": "-92% parameters (LeNet-5, MNIST)"}


def lenet_maxout_text(source: str, batch: int, training: bool) -> str:
    """The maxout LeNet of the experiment: 20 and 52 5x5 filters, 64 maxout units of k = 4, 10 classes."""
    dropout = ('layer { name: "droppremax" type: "Dropout" bottom: "fc_3" top: "droppremax" '
               'include { phase: TRAIN } dropout_param { dropout_ratio: 0.5 } }\n') if training else ""
    premax_bottom = "droppremax" if training else "fc_3"
    xavier = 'weight_filler { type: "xavier" }'
    return f"""name: "lenet_maxout_{'train' if training else 'test'}"
layer {{ name: "images" type: "Data" top: "images" top: "label"
  transform_param {{ scale: 0.00392156862745 }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "images" top: "conv1"
  convolution_param {{ num_output: 20 kernel_size: 5 {xavier} bias_filler {{ type: "constant" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param {{ num_output: 52 kernel_size: 5 {xavier} bias_filler {{ type: "constant" }} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc_3" type: "InnerProduct" bottom: "pool2" top: "fc_3" inner_product_param {{ num_output: 256 {xavier} }} }}
layer {{ name: "relu3" type: "ReLU" bottom: "fc_3" top: "fc_3" }}
{dropout}layer {{ name: "premax" type: "Reshape" bottom: "{premax_bottom}" top: "premax"
  reshape_param {{ shape {{ dim: 0 dim: 64 dim: 4 dim: 1 }} }} }}
layer {{ name: "maxout" type: "Pooling" bottom: "premax" top: "maxout" pooling_param {{ pool: MAX global_pooling: true }} }}
layer {{ name: "fc_classes" type: "InnerProduct" bottom: "maxout" top: "fc_classes"
  inner_product_param {{ num_output: 10 {xavier} bias_filler {{ type: "constant" }} }} }}
layer {{ name: "class_proba" type: "Softmax" bottom: "fc_classes" top: "class_proba" }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc_classes" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "fc_classes" bottom: "label" top: "acc" }}
"""


def solver_param(train_net: Path, test_net: Path, max_iter: int) -> caffe_pb2.SolverParameter:
    """The reference solver: SGD, lr 0.01 with the "inv" policy, momentum 0.9, weight decay 5e-4."""
    return caffe_pb2.SolverParameter(
        train_net=str(train_net), test_net=[str(test_net)], test_iter=[0], test_interval=0, base_lr=0.01,
        lr_policy="inv", gamma=0.0001, power=0.75, momentum=0.9, weight_decay=0.0005, max_iter=max_iter,
        display=0, snapshot=0, random_seed=1, type="SGD")


@dataclass
class Stage:
    """One row of the results: what the net looks like and how well it does after this step."""

    name: str
    k: int
    params: int
    nonzero: int
    macs: int
    caffemodel_bytes: int
    deflated_bytes: int
    accuracy: float
    opencv_agrees: bool
    deploy_prototxt: str
    deploy_caffemodel: str


class Experiment:
    """The files and data of one reproduction run."""

    def __init__(self, out_dir: Path, train_lmdb: Path, test_lmdb: Path, max_iter: int, device: str,
                 resume: bool = False):
        self.out, self.train_lmdb, self.test_lmdb = out_dir, train_lmdb, test_lmdb
        self.max_iter, self.device, self.resume = max_iter, device, resume
        self.stages: list[Stage] = []

    def nets(self, name: str) -> tuple[Path, Path, Path]:
        folder = self.out / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "train.prototxt", folder / "test.prototxt", folder / "weights.caffemodel"

    def load(self, prototxt: Path, weights: Path | None, phase: int) -> Model:
        batch = TRAIN_BATCH if phase == TRAIN else TEST_BATCH
        return load_model(prototxt, weights, phase=phase, input_shapes={"images": (batch, 1, 28, 28)})

    def train(self, name: str, weights: Path | None, keep_zeros: bool = False, max_iter: int | None = None) -> Path:
        from .train import train

        train_net, test_net, output = self.nets(name)
        solver = solver_param(train_net, test_net, max_iter or self.max_iter)
        train(solver, weights=str(weights) if weights else None, device=self.device, output=output,
              keep_zeros=keep_zeros, progress=False)
        return output

    def test_source(self, model: Model):
        return parse_data_spec(f"lmdb:{self.test_lmdb}", model.net.layer("images").param.transform_param)

    def stage(self, name: str, k: int, build: Callable[[], None], keep: bool = True) -> Stage:
        """The stage's results: when resuming, those an earlier run of this folder recorded (its stage.json);
        else ``build`` writes the stage's nets and weights and they are recorded. ``keep`` adds it to the results."""
        stored = self.out / name / "stage.json"
        if self.resume and stored.is_file():
            stage = Stage(**json.loads(stored.read_text()))
        else:
            build()
            stage = self.record(name, k)
        if keep:
            self.stages.append(stage)
        return stage

    def record(self, name: str, k: int) -> Stage:
        """Evaluate the stage's TEST net, write its deploy pair and check OpenCV agrees with onnxruntime;
        the stage's row is written to its folder's stage.json."""
        _, test_net, weights = self.nets(name)
        model = self.load(test_net, weights, TEST)
        source = self.test_source(model)
        result = evaluate(model.net, model.shapes, source.iter_batches(TEST_BATCH), (1,), {"device": "cpu"})
        deployed = deploy_net(model.net, model.shapes)
        prototxt, caffemodel = self.out / name / "deploy.prototxt", self.out / name / "deploy.caffemodel"
        save_prototxt(deployed, prototxt)
        save_caffemodel(deployed, caffemodel)
        weights_all = [b for layer in model.net.layers for b in layer.blobs]
        params, macs = infer_shapes(deployed).totals()
        stage = Stage(name, k, params, int(sum(np.count_nonzero(b) for b in weights_all)),
                      macs, caffemodel.stat().st_size, compressed_size(caffemodel),
                      result.accuracy(1), _opencv_agrees(prototxt, caffemodel, source), str(prototxt), str(caffemodel))
        atomic_write(self.out / name / "stage.json", [json.dumps(asdict(stage)).encode()])
        return stage


def _opencv_agrees(prototxt: Path, caffemodel: Path, source, count: int = 50) -> bool:
    """OpenCV dnn loads the deploy pair and predicts the same classes as onnxruntime on ``count`` images."""
    import cv2

    from .runtime import Runtime

    images, _ = next(iter(source.head(count).iter_batches(count)))
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    predictions = []
    for image in images:
        net.setInput(image[None])
        predictions.append(int(net.forward().argmax()))
    deployed = load_model(prototxt, caffemodel, input_shapes={"images": (count, 1, 28, 28)})
    scores = Runtime(deployed.net, deployed.shapes).run(images)["class_proba"]
    return predictions == scores.argmax(axis=1).tolist()


def _prune_pair(exp: Experiment, source_stage: str, target_stage: str, plan: Plan) -> None:
    """Apply one plan to the stage's TRAIN and TEST nets; write the next stage's nets and weights."""
    train_in, test_in, weights_in = exp.nets(source_stage)
    train_out, test_out, weights_out = exp.nets(target_stage)
    for phase, prototxt, target in ((TRAIN, train_in, train_out), (TEST, test_in, test_out)):
        model = exp.load(prototxt, weights_in, phase)
        groups = build_groups(model.net, model.shapes)
        pruned, _ = apply_plan(model.net, model.shapes, groups, resolve_plan(plan, model.net, groups))
        save_prototxt(pruned, target)
        if phase == TRAIN:
            save_caffemodel(pruned, weights_out)


def _maxout_plan(exp: Experiment, stage: str, k_new: int) -> Plan:
    """Keep the k_new neurons of every unit that win most often on the training set (TEST-phase net)."""
    _, test_net, weights = exp.nets(stage)
    model = exp.load(test_net, weights, TEST)
    groups = build_groups(model.net, model.shapes)
    group = groups.of_layer("fc_3")
    criterion = get_criterion("maxout-wins")
    stats = statistics_plan(model, groups, [group], criterion)
    train_data = parse_data_spec(f"lmdb:{exp.train_lmdb}", model.net.layer("images").param.transform_param)
    gather(model, stats, groups, train_data.iter_batches(TEST_BATCH), {"device": "cpu"})
    scores = score(model, groups, [group], criterion, stats)
    kept = select([group], scores, Budget(maxout_k=k_new))[group.id]
    return Plan({"fc_3": kept.tolist()}, about={"criterion": "maxout-wins", "k": k_new})


def _conv_step_plan(exp: Experiment, stage: str, ratio: float) -> Plan:
    """Remove ``ratio`` of the conv1/conv2 filters, ranked together by the RMS of their outputs on 5,000
    training images (this LeNet has no ReLU after its convolutions, so APoZ would count signs)."""
    _, test_net, weights = exp.nets(stage)
    model = exp.load(test_net, weights, TEST)
    groups = build_groups(model.net, model.shapes)
    group_list = [groups.of_layer("conv1"), groups.of_layer("conv2")]
    criterion = get_criterion("activation-l2")
    stats = statistics_plan(model, groups, group_list, criterion)
    train_data = parse_data_spec(f"lmdb:{exp.train_lmdb}", model.net.layer("images").param.transform_param)
    gather(model, stats, groups, train_data.head(5000).iter_batches(TEST_BATCH), {"device": "cpu"})
    scores = score(model, groups, group_list, criterion, stats)
    return make_plan(scores, groups, group_list, Budget(ratio=ratio, global_ranking=True),
                     {"criterion": criterion.name, "ratio": ratio})


def _conv_pruning(exp: Experiment, tolerance: float, target_params: int, step: float = 0.05,
                  max_steps: int = 40) -> list[dict]:
    """Prune conv filters step by step (``step`` of them each time), retraining a whole stage after each
    step, until the net has at most ``target_params`` parameters or a step's test accuracy falls more than
    ``tolerance`` points below the unpruned net's (k = 4); the last accepted net becomes stage k1_conv."""
    reference = exp.stages[0].accuracy
    start = next(s for s in exp.stages if s.name == "k1")
    curve = [{"step": 0, "params": start.params, "accuracy": start.accuracy, "accepted": True}]
    accepted, params = "k1", start.params
    for number in range(1, max_steps + 1):
        if params <= target_params:
            break
        name = f"k1_conv_step{number}"
        stage = exp.stage(name, 1, lambda: _conv_step(exp, accepted, name, step), keep=False)
        within = 100.0 * (reference - stage.accuracy) <= tolerance
        curve.append({"step": number, "params": stage.params, "accuracy": stage.accuracy, "accepted": within})
        if not within:
            break
        accepted, params = name, stage.params
    _copy_stage(exp, accepted, "k1_conv")
    return curve


def _conv_step(exp: Experiment, source_stage: str, target_stage: str, ratio: float) -> None:
    """Remove ``ratio`` of the source stage's conv filters and retrain the result as a whole stage."""
    _prune_pair(exp, source_stage, target_stage, _conv_step_plan(exp, source_stage, ratio))
    exp.train(target_stage, exp.nets(target_stage)[2])


def _maxout_step(exp: Experiment, k: int) -> None:
    """Stage k{k}: keep the k most winning neurons of every unit of stage k{k+1}, then retrain."""
    plan = _maxout_plan(exp, f"k{k + 1}", k)
    plan.save(exp.out / f"k{k}.plan.json")
    _prune_pair(exp, f"k{k + 1}", f"k{k}", plan)
    exp.train(f"k{k}", exp.nets(f"k{k}")[2])


def _copy_stage(exp: Experiment, source: str, target: str) -> None:
    for path_in, path_out in zip(exp.nets(source), exp.nets(target)):
        path_out.write_bytes(path_in.read_bytes())


def _sparsify_stage(exp: Experiment, source_stage: str, target_stage: str, sparsity: float) -> None:
    """Magnitude-prune every weight layer of a stage, then retrain with the zeros kept."""
    train_in, test_in, weights_in = exp.nets(source_stage)
    train_out, test_out, weights_out = exp.nets(target_stage)
    model = exp.load(train_in, weights_in, TRAIN)
    sparse, _ = sparsify(model.net, sparsity=sparsity)
    save_caffemodel(sparse, weights_out)
    for source, target in ((train_in, train_out), (test_in, test_out)):
        target.write_text(source.read_text())
    exp.train(target_stage, weights_out, keep_zeros=True)


def write_results(exp: Experiment, curve: list[dict]) -> dict:
    """results.json, results.md (with the paper's figures) and results.png (accuracy vs parameters)."""
    base = exp.stages[0]
    rows = [asdict(s) | {"params_change": s.params / base.params - 1, "nonzero_change": s.nonzero / base.nonzero - 1}
            for s in exp.stages]
    document = {"stages": rows, "paper": PAPER, "conv_pruning_steps": curve, "max_iter": exp.max_iter}
    atomic_write(exp.out / "results.json", [json.dumps(document, indent=1).encode()])
    lines = ["# LeNet maxout pruning, reproduced", "",
             "| stage | k | parameters | non-zero | change (non-zero) | MACs/image | caffemodel | deflated | test accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['k']} | {row['params']:,} | {row['nonzero']:,} | "
                     f"{100 * row['nonzero_change']:+.1f}% | {row['macs']:,} | {row['caffemodel_bytes']:,} | "
                     f"{row['deflated_bytes']:,} | {row['accuracy']:.4f} |")
    lines += ["", "Paper (Moya Rueda et al. 2017): neuron pruning " + PAPER["neuron pruning"] + "; with weight pruning "
              + PAPER["weight pruning"] + ".", "",
              f"Every stage's deploy pair loads in OpenCV dnn and predicts as onnxruntime does: "
              f"{all(s.opencv_agrees for s in exp.stages)}."]
    atomic_write(exp.out / "results.md", ["\n".join(lines).encode() + b"\n"])
    try:
        save_figure(reproduction_figure(document), exp.out / "results.png")
    except CaffeSurgeryError as exc:  # matplotlib missing: the results stand without their chart
        logger.warning("results.png not written: %s", exc)
    return document


def reproduce_lenet(train_spec: str, test_spec: str, out_dir: str | os.PathLike, *, max_iter: int | None = None,
                    train_limit: int | None = None, test_limit: int | None = None, device: str = "auto",
                    weight_sparsity: float = 0.75, conv_tolerance: float = 0.2, conv_target: float = 0.85,
                    conv_max_steps: int = 40, resume: bool = False, log=print) -> dict:
    """Run the whole experiment; return the results document (also written to ``out_dir``). ``conv_target``
    is the share of the unpruned net's parameters at which conv-filter pruning stops; ``resume`` reuses the
    stages an earlier run with the same data and settings finished in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_lmdb, test_lmdb = out / "data" / "train_lmdb", out / "data" / "test_lmdb"
    count = convert_data(train_spec, str(train_lmdb), limit=train_limit, overwrite=True)
    test_count = convert_data(test_spec, str(test_lmdb), limit=test_limit, overwrite=True)
    if count < TRAIN_BATCH or test_count < 1:
        raise CaffeSurgeryError(f"too little data: {count} training and {test_count} test samples")
    iterations = max_iter or max(1, round(REFERENCE_MAX_ITER * count / 60000))
    exp = Experiment(out, train_lmdb, test_lmdb, iterations, device, resume)
    log(f"data: {count} training, {test_count} test samples; {iterations} iterations per training")

    def train_k4() -> None:
        train_net, test_net, _ = exp.nets("k4")
        train_net.write_text(lenet_maxout_text(str(train_lmdb), TRAIN_BATCH, True))
        test_net.write_text(lenet_maxout_text(str(test_lmdb), TEST_BATCH, False))
        exp.train("k4", None)

    log(f"k4: {exp.stage('k4', 4, train_k4)}")
    for k in (3, 2, 1):
        log(f"k{k}: {exp.stage(f'k{k}', k, lambda: _maxout_step(exp, k))}")
    log(f"k1_sparse: {exp.stage('k1_sparse', 1, lambda: _sparsify_stage(exp, 'k1', 'k1_sparse', weight_sparsity))}")
    target_params = int((1.0 - conv_target) * exp.stages[0].params)
    curve = _conv_pruning(exp, conv_tolerance, target_params, max_steps=conv_max_steps)
    log(f"k1_conv: {exp.stage('k1_conv', 1, lambda: None)}")
    log(f"k1_conv_sparse: "
        f"{exp.stage('k1_conv_sparse', 1, lambda: _sparsify_stage(exp, 'k1_conv', 'k1_conv_sparse', weight_sparsity))}")
    return write_results(exp, curve)
