"""The ``prune`` verb as one library call: ``prune_files(PruneRequest(...))`` chooses the plan (given, by
criterion and ratio, to a budget or to a tolerance), applies it (compensated, reconstructed or retrained
when asked), writes the smaller pair with its plan, report and fine-tuning files, and returns what the
command line prints."""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .agreement import SCORE_THRESHOLD
from .errors import CaffeSurgeryError
from .pipeline import (DEFAULT_RATIOS, NetRequest, calibration_request, data_batches, group_scores, load,
                       open_calibration, runtime_options, sensitivity_measure, task_runtime_options,
                       validation_measure)

PROFILE_RUNS = 20  # timed runs behind the report's latencies (``profile``)


@dataclass(kw_only=True)
class PruneRequest(NetRequest):
    """Everything ``prune`` takes; the fields are its options (``--global`` is ``global_ranking``,
    ``--layer-ratio`` a list of (layer, ratio) pairs). Give ``plan`` or ``criterion``."""
    output: str
    plan: str | None = None
    criterion: str | None = None
    ratio: float | None = None
    keep: int | None = None
    global_ranking: bool = False
    min_keep: int = 1
    round_to: int = 1
    layer_ratio: list = field(default_factory=list)
    layers: list[str] | None = None
    protect: list[str] = field(default_factory=list)
    maxout_k: int | None = None
    maxout_units: bool = False
    tolerance: float | None = None
    metric: str = "auto"
    score_threshold: float = SCORE_THRESHOLD
    budget: str | None = None
    sensitivity: str | None = None
    ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))
    measure: str = "top1"
    retrain: str | None = None
    retrain_iter: int | None = None
    stats: str | None = None
    masks: int = 100
    seed: int = 0
    compensate: bool = False
    reconstruct: bool = False
    independent: bool = False
    calib_data: str | None = None
    calib_limit: int | None = None
    dry_run: bool = False
    profile: bool = False
    train_val: str | None = None
    solver: str | None = None
    precision: str = "fp32"


@dataclass
class PruneResult:
    """The plan applied, the report (also in PREFIX.report.json), its notes, and the files written by
    kind (``prototxt``, ``caffemodel``, ``plan.json``, ``report.json``, ...; none on a dry run)."""
    plan: object
    report: dict
    notes: list[str]
    outputs: dict[str, Path]


def _budget(request):
    from .selection import Budget

    if request.criterion and request.ratio is None and request.keep is None and request.maxout_k is None and (
            request.tolerance is None):
        raise CaffeSurgeryError("say how much to remove: --ratio, --keep, --maxout-k, --tolerance or --budget")
    if request.global_ranking and (request.keep is not None or request.layer_ratio):
        raise CaffeSurgeryError("--global sets one threshold over all layers from --ratio; --keep and --layer-ratio "
                                "set per-layer counts: use one or the other")
    return Budget(ratio=request.ratio, keep=request.keep, min_keep=request.min_keep, round_to=request.round_to,
                  overrides=dict(request.layer_ratio), global_ranking=request.global_ranking, maxout_k=request.maxout_k,
                  maxout_units=request.maxout_units)


def _budget_plan(request, model, source, groups, group_list, calibration, scores):
    """Per-group ratios reaching --budget with the least loss predicted by sensitivity curves (on the
    calibration data, or --sensitivity FILE), or by the scores without data."""
    from .budget import choose_ratios, parse_budget, plan_for, score_losses, total
    from .sensitivity import load_losses, sensitivity_curves

    kind, fraction = parse_budget(request.budget)
    ratios = request.ratios
    if request.sensitivity:
        losses, predicts = load_losses(request.sensitivity, groups), "loss from " + request.sensitivity
    elif source is not None:
        held = list(data_batches(model, calibration or source, request.batch_size, "sensitivity"))
        measure = sensitivity_measure(request, model, held)
        baseline, curves = sensitivity_curves(model, groups, group_list, scores, ratios, measure)
        losses = {groups.of_layer(name).id: {p.ratio: measure.loss(baseline, p.value) for p in points}
                  for name, points in curves.items()}
        predicts = f"{measure.name} loss, calibration data (unpruned {baseline:.4f})"
    else:
        losses, predicts = score_losses(group_list, scores, ratios), "fraction of score mass removed"
    chosen, predicted, reached = choose_ratios(model, groups, group_list, scores, losses, kind, fraction)
    about = {"criterion": request.criterion, "budget": {
        "target": request.budget, "reached": reached / total(model.shapes, kind),
        "ratios": {groups.groups[gid].name: ratio for gid, ratio in chosen.items()},
        "predicted_loss": predicted, "predicted_by": predicts}}
    return plan_for(scores, groups, group_list, chosen, about)


def _plan(request, model, source, groups, group_list, calibration=None):
    """The plan to apply, the net to apply it to (weights may be adjusted) and notes for the report;
    data-driven statistics come from ``calibration`` (default ``source``), accuracy from ``source``."""
    from .plan import Plan
    from .pruning import make_plan, plan_by_similarity, random_masks_plan, tolerance_plan

    if request.plan:
        return Plan.load(request.plan), model.net, [], None
    if request.budget:
        scores, stats = group_scores(request, model, source, groups, group_list, calibration)
        return _budget_plan(request, model, source, groups, group_list, calibration, scores), model.net, [], stats
    budget = _budget(request)
    about = {"criterion": request.criterion}
    if request.criterion == "similarity":
        plan, net, notes = plan_by_similarity(model, groups, group_list, budget)
        return plan, net, notes, None
    if request.criterion == "random-masks":
        plan, _ = random_masks_plan(model, groups, group_list, budget, validation_measure(model, source, request)[1],
                                    request.masks, request.seed)
        return plan, model.net, [f"random-masks: best of {request.masks} masks"], None
    scores, stats = group_scores(request, model, source, groups, group_list, calibration)
    if request.tolerance is not None:
        metric, evaluator, _ = validation_measure(model, source, request)
        plan, _ = tolerance_plan(model, groups, group_list, scores, budget, evaluator, request.tolerance,
                                 about={**about, "metric": metric})
        return plan, model.net, [], stats
    return make_plan(scores, groups, group_list, budget, {**about, "ratio": request.ratio}), model.net, [], stats


def _pruned(request, model, source, calibration, groups, group_list, protected):
    """The plan, the pruned net and its shapes (compensated or reconstructed when asked), notes and refits."""
    from .plan import resolve_plan
    from .reconstruct import compensate, reconstruct
    from .surgery import apply_plan

    plan, net, notes, _ = _plan(request, model, source, groups, group_list, calibration)
    keep = resolve_plan(plan, net, groups, request.plan)
    if protected & {p for gid in keep for p in groups.groups[gid].producers}:
        raise CaffeSurgeryError(f"the plan prunes protected layers: {', '.join(sorted(protected))}", file=request.plan)
    refits = []
    if request.reconstruct:
        with _reconstruction_sums(request, model, calibration) as sums_of:
            pruned_net, pruned_shapes, refits, skipped = reconstruct(net, model.shapes, groups, keep, sums_of,
                                                                     sequential=not request.independent)
        return plan, pruned_net, pruned_shapes, notes + [r.note() for r in refits] + skipped, refits
    if request.compensate:
        held = list(data_batches(model, calibration, request.batch_size, "calibration"))
        net, refits, skipped = compensate(net, model.shapes, groups, keep, lambda: held,
                                          runtime_options=runtime_options(request))
        notes += [refit.note() for refit in refits] + skipped
    pruned_net, pruned_shapes = apply_plan(net, model.shapes, groups, keep)
    return plan, pruned_net, pruned_shapes, notes, refits


@contextmanager
def _reconstruction_sums(request, model, calibration):
    """How --reconstruct gathers each consumer's statistics: as shard tasks on Ray (one connection for all
    consumers), or here in one pass each over the calibration data, held in memory."""
    from .cluster import ray_connection
    from .reconstruct import cluster_sums, local_sums

    if request.engine == "ray":
        with ray_connection(request.address):
            yield cluster_sums(calibration_request(request, model.net), task_runtime_options(request),
                               request.shards, request.address)
    else:
        held = list(data_batches(model, calibration, request.batch_size, "calibration"))
        yield local_sums(lambda: held, runtime_options(request))


def _retrainer(request):
    from .retrain import Retrainer

    return Retrainer(request.retrain, request.retrain_iter, request.device)


def prune_files(request: PruneRequest) -> PruneResult:
    """Prune by plan, by criterion and ratio, to a budget or to an accuracy tolerance (optionally retraining);
    write the smaller pair, its plan and report (and the fine-tuning files of a training net); nothing is
    written on a dry run."""
    from .check import check_files
    from .criteria import get_criterion
    from .dataflow import input_layer, item_shapes
    from .deploy import deploy_net
    from .finetune import finetune_files, is_train_val
    from .groups import build_groups
    from .io import atomic_write, write_text
    from .pruning import chosen_groups
    from .report import prune_report
    from .reshape import reshape_net
    from .save import save_pair
    from .shapes import infer_shapes

    if (request.plan is None) == (request.criterion is None):
        raise CaffeSurgeryError("say how to prune: give a plan or a criterion (one of them)")
    criterion = get_criterion(request.criterion) if request.criterion else None
    if request.compensate and request.reconstruct:
        raise CaffeSurgeryError("--compensate and --reconstruct are alternatives: choose one")
    if request.retrain and request.tolerance is not None and (request.compensate or request.reconstruct or request.plan):
        raise CaffeSurgeryError("--retrain with --tolerance ranks by --criterion and retrains instead of refitting")
    needs_data = bool(request.data) or request.tolerance is not None or request.compensate or request.reconstruct or (
        criterion is not None and criterion.needs_data and not (request.stats and criterion.score is not None))
    model, source = load(request, with_data=needs_data)
    calibration = open_calibration(request, model, source) if source is not None else None
    metric, evaluator, measure = validation_measure(model, source, request) if source is not None else (None, None, None)
    protected = set(request.protect)

    def chosen(groups):
        return [g for g in chosen_groups(groups, request.layers, maxout_only=request.criterion == "maxout-wins")
                if not protected & set(g.producers)]

    groups = build_groups(model.net, model.shapes)
    retrained_from = None
    if request.retrain and request.tolerance is not None:
        from .retrain import tolerance_with_retraining

        pruned_net, pruned_shapes, plan, _ = tolerance_with_retraining(
            model, chosen, lambda current, g, g_list: group_scores(request, current, source, g, g_list, calibration)[0],
            evaluator, request.tolerance, _retrainer(request), about={"criterion": request.criterion, "metric": metric})
        notes, refits = [f"retrained after each of {len(plan.about['curve']) - 1} rounds (curve in the plan)"], []
    else:
        plan, pruned_net, pruned_shapes, notes, refits = _pruned(request, model, source, calibration, groups,
                                                                 chosen(groups), protected)
        if request.retrain and not request.dry_run:
            retrained_from = pruned_net
            pruned_net = _retrainer(request).retrain(pruned_net, pruned_shapes, plan)
    report = prune_report(model.shapes, pruned_shapes, model.net, pruned_net)
    report["notes"] = notes
    report["refits"] = [refit.as_dict() for refit in refits]
    if request.dry_run:
        return PruneResult(plan, report, notes, {})
    prefix = Path(request.output)
    if source is not None:
        if measure is None:
            report["accuracy"] = {"before": evaluator(model.net, model.shapes),
                                  "after": evaluator(pruned_net, pruned_shapes), "samples": len(source)}
            if retrained_from is not None:
                report["accuracy"]["before_retraining"] = evaluator(retrained_from, pruned_shapes)
                notes.append(f"top-1 before retraining {report['accuracy']['before_retraining']:.4f}")
        else:
            report["agreement"] = {"metric": metric, **measure.figures(pruned_net, pruned_shapes), "samples": len(source)}
            if metric == "agreement":
                report["agreement"]["score_threshold"] = request.score_threshold
    if "budget" in plan.about:
        report["budget"] = plan.about["budget"]
        if "accuracy" in report and request.measure == "top1" and not request.sensitivity:
            report["budget"]["predicted_accuracy"] = report["accuracy"]["before"] - report["budget"]["predicted_loss"]
            notes.append(f"budget: predicted top-1 {report['budget']['predicted_accuracy']:.4f}, measured "
                         f"{report['accuracy']['after']:.4f}")
        notes.append(f"budget {report['budget']['target']}: reached {report['budget']['reached']:.3f}, ratios "
                     + ", ".join(f"{k} {v:g}" for k, v in report["budget"]["ratios"].items())
                     + f"; predicted loss {report['budget']['predicted_loss']:.4g} ({report['budget']['predicted_by']})")
    if request.profile:
        from .profile import latency_ms

        report["latency_ms"] = {"backend": "onnxruntime", "batch": report["batch"], "runs": PROFILE_RUNS,
                                "before": latency_ms(model.net, model.shapes, PROFILE_RUNS, request.threads),
                                "after": latency_ms(pruned_net, pruned_shapes, PROFILE_RUNS, request.threads)}
    outputs = {kind: Path(f"{prefix}.{kind}") for kind in ("prototxt", "caffemodel", "plan.json", "report.json")}
    train_val = request.train_val or (request.prototxt if is_train_val(model.net.to_proto()) else None)
    if request.solver and not train_val:
        raise CaffeSurgeryError("--solver needs the training net: pass --train-val FILE")
    images = input_layer(pruned_net).tops[0]
    finetuning = finetune_files(prefix, train_val, plan, model.net, pruned_net,
                                {images.name: tuple(pruned_shapes.blob(images)[1:])}, request.solver) if train_val else {}
    written = deploy_net(pruned_net, pruned_shapes) if train_val == request.prototxt else pruned_net
    written = reshape_net(written, dict(request.input))
    save_pair(written, prefix, request.precision)
    written_shapes = pruned_shapes if written is pruned_net else infer_shapes(written, data_shapes=item_shapes(
        request.prototxt, {name: shape[1:] for name, shape in request.input}))
    problems = check_files(outputs["prototxt"], outputs["caffemodel"],
                           input_shapes={t.name: tuple(written_shapes.blob(t)) for l in written.layers
                                         if not l.bottoms for t in l.tops})
    if problems:
        for path in (outputs["prototxt"], outputs["caffemodel"]):
            path.unlink()
        raise CaffeSurgeryError("internal error: the pruned pair fails check: " + "; ".join(problems))
    for path, message in finetuning.items():
        write_text(path, message)
        outputs[path.name[len(prefix.name) + 1:]] = path
    report["files"] = {"caffemodel": [Path(request.weights).stat().st_size, outputs["caffemodel"].stat().st_size]}
    if request.precision == "fp16":
        notes.append(_fp16_change(written, written_shapes, outputs, evaluator if source is not None else None,
                                  measure if source is not None else None, report))
    plan.save(outputs["plan.json"])
    atomic_write(outputs["report.json"], [json.dumps(report, indent=1).encode("utf-8")])
    return PruneResult(plan, report, notes, outputs)


def _fp16_change(net, shapes, outputs, evaluator, measure, report) -> str:
    """The fp16 note of a pruned pair: the probe difference and, with data, the figure read back in fp16
    (top-1 accuracy, or agreement with the original net)."""
    from .model import load_model
    from .precision import fp16_note

    note = fp16_note(net, shapes, outputs["prototxt"], outputs["caffemodel"])
    if evaluator is None:
        return note
    written = load_model(outputs["prototxt"], outputs["caffemodel"], input_shapes={
        t.name: tuple(shapes.blob(t)) for layer in net.layers if not layer.bottoms for t in layer.tops})
    if measure is not None:
        report["agreement"]["after_fp16"] = measure.figures(written.net, written.shapes)
        return f"{note}; agreement read back in fp16: {report['agreement']['after_fp16']}"
    report["accuracy"]["after_fp16"] = evaluator(written.net, written.shapes)
    return f"{note}; top-1 accuracy {report['accuracy']['after_fp16']:.4f} in fp16"

