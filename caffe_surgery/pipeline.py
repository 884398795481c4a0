"""The steps the verbs share, as plain functions over a request: load a net and its data, build the
data and runtime options, gather statistics, score groups, judge a pruned net; and the data-driven
verbs (eval, relevance, sensitivity) as one call each.

A request is any object with the fields of ``NetRequest`` (the command line passes its parsed
arguments' values in one); the verbs' own fields come from the dataclasses below.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import caffe_pb2
from .errors import CaffeSurgeryError

DEFAULT_RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@dataclass
class NetRequest:
    """A net, its input shapes and, for the verbs that read data, the data and where it runs.

    ``input``/``top_shape``: (blob or layer name, shape) pairs; ``phase``: caffe_pb2.TRAIN or TEST;
    ``data``: a data spec (None: the net's own data layer); ``engine``: "local" or "ray"."""
    prototxt: str
    weights: str | None = None
    input: list = field(default_factory=list)
    phase: int = caffe_pb2.TEST
    top_shape: list = field(default_factory=list)
    data: str | None = None
    scale: float | None = None
    mean: list[float] | None = None
    skip: int | None = None
    limit: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    threads: int | None = None
    backend: str = "auto"
    engine: str = "local"
    address: str | None = None
    shards: int | None = None


@dataclass(kw_only=True)
class RelevanceRequest(NetRequest):
    """What ``relevance`` gathers: a data-driven criterion's statistics (``shard`` (I, N): only that part)."""
    criterion: str
    output: str
    layers: list[str] | None = None
    shard: tuple[int, int] | None = None


@dataclass(kw_only=True)
class SensitivityRequest(NetRequest):
    """What ``sensitivity`` measures: each group pruned alone at each ratio."""
    output: str
    criterion: str = "weight-l1"
    ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))
    layers: list[str] | None = None
    measure: str = "top1"


@dataclass
class SensitivityResult:
    """The unpruned net's figure, the curves per layer, what was measured and the files written."""
    baseline: float
    curves: dict
    measure: str
    paths: list


def data_request(request, net):
    """What the data arguments ask for, as a request a worker can open by itself."""
    from .dataflow import DataRequest, base_dir, batch_size_for

    return DataRequest(request.data, transform_parameter(request.scale, request.mean), request.limit,
                       batch_size=batch_size_for(net, request.batch_size),
                       directory=base_dir(net), skip=request.skip or 0)


def runtime_options(request) -> dict:
    """The onnxruntime/OpenCV options of a request: device, threads, backend."""
    return {"device": request.device, "threads": request.threads, "backend": request.backend}


def task_runtime_options(request) -> dict:
    """The runtime options of a pass's tasks: on Ray one onnxruntime thread per task (each task holds
    one CPU) unless --threads says otherwise, and onnxruntime unless --backend names another (workers
    probing on their own could choose differently, and the shards must be computed alike)."""
    on_ray = request.engine == "ray"
    return {**runtime_options(request), "threads": request.threads or (1 if on_ray else None),
            "backend": "onnxruntime" if on_ray and request.backend == "auto" else request.backend}


def transform_parameter(scale: float | None, mean: list[float] | None):
    """A TransformationParameter from a scale and per-channel means, or None to use the net's own."""
    if scale is None and mean is None:
        return None
    transform = caffe_pb2.TransformationParameter()
    if scale is not None:
        transform.scale = scale
    transform.mean_value.extend(mean or [])
    return transform


def load(request, with_data: bool = False):
    """The model, plus its data source when the verb reads data (--data, else the net's data layer)."""
    from .dataflow import batch_size_for, input_layer, item_shapes
    from .model import load_model, load_net

    shapes = dict(request.input)
    source = None
    if with_data:
        net = load_net(request.prototxt, phase=request.phase)
        source = data_request(request, net).open(net)
        top = input_layer(net).tops[0].name
        shapes.setdefault(top, (batch_size_for(net, request.batch_size),) + tuple(source.shape))
    top_shapes: dict[str, list[tuple[int, ...]]] = {}
    for layer, shape in request.top_shape:
        top_shapes.setdefault(layer, []).append(shape)
    model = load_model(request.prototxt, request.weights, phase=request.phase, input_shapes=shapes,
                       data_shapes=item_shapes(request.prototxt), top_shapes=top_shapes)
    if source is not None:
        top = input_layer(model.net).tops[0]
        if tuple(model.shapes.blob(top)[1:]) != tuple(source.shape):
            raise CaffeSurgeryError(f"data samples are {tuple(source.shape)} but the net's '{top.name}' takes "
                                    f"{tuple(model.shapes.blob(top)[1:])}", file=source.name)
    return model, source


def data_batches(model, source, batch_size: int | None, desc: str):
    """The source in batches of ``batch_size`` (default: the data layer's, else 64)."""
    from .dataflow import batch_size_for, batches

    return batches(source, batch_size_for(model.net, batch_size), desc)


def statistics_pass(request, model, criterion, group_list, groups, data=None):
    """The criterion's statistics over the data (``data``, a DataRequest, default the request's data; its
    ``shard`` I/N: only that part), on the chosen engine."""
    from dataclasses import replace

    from .cluster import map_shards
    from .pruning import StatisticsTask, statistics_plan

    stats = statistics_plan(model, groups, group_list, criterion)
    data = replace(data or data_request(request, model.net), window=getattr(request, "shard", None) or (0, 1))
    task = StatisticsTask(criterion.name, tuple(g.id for g in group_list), task_runtime_options(request))
    stats.load_arrays(map_shards(task, model, data, request.shards, engine=request.engine, address=request.address,
                                 desc=f"relevance ({criterion.name})"), "the merged shards")
    return stats


def calibration_request(request, net):
    """The data statistics, compensation and reconstruction learn from: --calib-data, else --data, up to
    --calib-limit samples."""
    from dataclasses import replace

    data = data_request(request, net)
    if getattr(request, "calib_data", None):
        data = replace(data, spec=request.calib_data, skip=0, limit=None)
    calib_limit = getattr(request, "calib_limit", None)
    if calib_limit is not None:
        data = replace(data, limit=calib_limit if data.limit is None else min(data.limit, calib_limit))
    return data


def open_calibration(request, model, source):
    """The calibration source (``calibration_request``), checked to fit the net as the --data samples do."""
    calibration = calibration_request(request, model.net).open(model.net)
    if tuple(calibration.shape) != tuple(source.shape):
        raise CaffeSurgeryError(f"calibration samples are {tuple(calibration.shape)}, the --data samples "
                                f"{tuple(source.shape)}", file=calibration.name)
    return calibration


def validation_measure(model, source, request):
    """How a pruned net is judged on the (limited) data, batches decoded once and reused: top-1 accuracy, or
    agreement with the original net's outputs (--metric). Returns the metric, an evaluator ``(net, shapes) ->
    figure`` (higher is better; the original scores its accuracy, or 1.0) and the agreement (None for top-1)."""
    from .agreement import OutputAgreement, choose_metric
    from .evaluate import evaluate

    metric = choose_metric(model.net, source.has_labels, request.metric)
    held = list(data_batches(model, source, request.batch_size, "validation data"))
    if metric != "top1":
        measure = OutputAgreement(model.net, model.shapes, held, metric, runtime_options(request),
                                  request.score_threshold)
        return metric, measure.quality, measure

    def accuracy(net, shapes) -> float:
        return evaluate(net, shapes, held, (1,), runtime_options(request)).accuracy(1)

    return metric, accuracy, None


def group_scores(request, model, source, groups, group_list, calibration=None):
    """Scores per group id by --criterion, and the statistics read (thinet and the data-driven criteria
    learn from ``calibration``, default ``source``)."""
    from .criteria import get_criterion
    from .pruning import score, statistics_plan

    criterion = get_criterion(request.criterion)
    if criterion.name == "thinet":
        from .thinet import thinet_scores

        held = list(data_batches(model, calibration or source, request.batch_size, "thinet statistics"))
        return thinet_scores(model.net, model.shapes, groups, group_list, lambda: held, runtime_options(request)), None
    if criterion.score is None:
        raise CaffeSurgeryError(f"criterion '{criterion.name}' chooses what to remove itself; it gives no scores")
    stats = None
    if criterion.needs_data:
        stats = statistics_plan(model, groups, group_list, criterion)
        if getattr(request, "stats", None):
            import numpy as np
            with np.load(request.stats) as arrays:
                stats.load_arrays(arrays, request.stats)
        else:
            stats = statistics_pass(request, model, criterion, group_list, groups,
                                    calibration_request(request, model.net))
    return score(model, groups, group_list, criterion, stats), stats


def sensitivity_measure(request, model, batches):
    """What sensitivity measures: top-1 on labelled data, else the outputs' relative error."""
    from .sensitivity import output_error, top1

    if request.measure == "output-error":
        return output_error(model, batches, runtime_options(request))
    return top1(batches, runtime_options(request))



def evaluate_data(request: NetRequest, top_k=(1,)):
    """Top-k accuracy (and loss) of the request's net on its data, on the chosen engine (``Evaluation``)."""
    import time

    from .cluster import map_shards
    from .evaluate import Evaluation, EvaluationTask

    model, _ = load(request, with_data=True)
    started = time.perf_counter()
    task = EvaluationTask(tuple(top_k), task_runtime_options(request))
    counts = map_shards(task, model, data_request(request, model.net), request.shards, engine=request.engine,
                        address=request.address, desc="eval")
    return Evaluation.from_arrays(counts, time.perf_counter() - started)


def relevance_file(request: RelevanceRequest):
    """Gather a data-driven criterion's statistics (optionally one shard) into ``request.output`` (.npz);
    return the statistics and the groups they cover."""
    from .criteria import get_criterion
    from .groups import build_groups
    from .pruning import chosen_groups

    criterion = get_criterion(request.criterion)
    if not criterion.needs_data or criterion.score is None:
        raise CaffeSurgeryError(f"criterion '{criterion.name}' gathers no relevance statistics; use it directly "
                                "with prune")
    model, source = load(request, with_data=True)
    groups = build_groups(model.net, model.shapes)
    group_list = chosen_groups(groups, request.layers, maxout_only=criterion.name == "maxout-wins")
    stats = statistics_pass(request, model, criterion, group_list, groups)
    about = {"criterion": criterion.name, "layers": ",".join(g.name for g in group_list),
             "shard": f"{request.shard[0]}/{request.shard[1]}" if request.shard else "0/1"}
    stats.save(request.output, about)
    return stats, group_list


def sensitivity_files(request: SensitivityRequest) -> SensitivityResult:
    """Prune each group alone at each ratio and measure the net; write PREFIX.csv, .json and .png."""
    from .cluster import ray_connection
    from .groups import build_groups
    from .pruning import chosen_groups
    from .sensitivity import sensitivity_curves, top1_on_ray, write_sensitivity

    model, source = load(request, with_data=True)
    groups = build_groups(model.net, model.shapes)
    group_list = chosen_groups(groups, request.layers)
    scores, _ = group_scores(request, model, source, groups, group_list)
    if request.engine == "ray":
        if request.measure != "top1":
            raise CaffeSurgeryError("--engine ray measures top-1 only; --measure output-error runs here")
        with ray_connection(request.address):
            measure = top1_on_ray(data_request(request, model.net), task_runtime_options(request), request.shards,
                                  request.address)
            baseline, curves = sensitivity_curves(model, groups, group_list, scores, request.ratios, measure)
    else:
        measure = sensitivity_measure(request, model, list(data_batches(model, source, request.batch_size,
                                                                        "sensitivity")))
        baseline, curves = sensitivity_curves(model, groups, group_list, scores, request.ratios, measure)
    paths = write_sensitivity(request.output, baseline, curves, measure,
                              {"criterion": request.criterion, "samples": len(source)})
    return SensitivityResult(baseline, curves, measure.name, paths)
