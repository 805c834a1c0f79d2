"""``yoloslim sensitivity``: prune each group alone at a few ratios, recalibrate, score; a table, JSON and a plot.

Li et al. 2017 (arXiv:1608.08710) §4.1: the sensitivity of a layer is how much the model loses when
that layer alone is pruned. Here the unit is the coupled group (:mod:`yoloslim.prune.graph`): channels
tied by a residual add or a concat can only be pruned together, so such a group is one row, and
its ``producers`` say which convs it spans. Every cut model is BN-recalibrated on the train split
(as ``prune`` does) and scored either by mAP@.5:.95 on the first ``--val-images`` val images
(``--metric map``) or by the proxy ``--metric output``: the relative squared distance of the raw
head outputs to the unpruned model's on those images (no NMS or matching; validated against mAP
in docs/BENCHMARKS.md). The reference, the unpruned model, is recalibrated the same way: a
recalibration alone moves mAP (a model trained with mosaic sees other statistics on plain images),
and that shift is no group's fault. ``prune --allocation sensitivity --sensitivity FILE`` reads the JSON.

``--data`` may also be a folder of unlabelled images (anything ``prune --calib`` reads) with ``--metric
output``: the curves of a pretrained model on pictures of the user's domain, no labels needed. The
cut models are then recalibrated on the folder's first ``--calib-images`` images and scored on its
first ``--val-images``: the same pictures when the two counts are alike, which a proxy can afford.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from yoloslim.data.calibration import calibration_images, is_data_set
from yoloslim.data.class_map import match_classes
from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.device import resolve_device
from yoloslim.engine.evaluate import evaluate
from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models.decode import preprocess
from yoloslim.models.head_classes import select_classes
from yoloslim.models.io import check_writable, load_model
from yoloslim.models.spec import check_imgsz
from yoloslim.prune.allocate import Allocator, score_groups
from yoloslim.prune.gradients import accumulate_gradients, train_batches
from yoloslim.prune.graph import ChannelGraph, Group
from yoloslim.prune.importance import importance_for
from yoloslim.prune.pipeline import METHODS, NEEDS_GRADIENTS, auto_method
from yoloslim.prune.recalibrate import recalibrate_bn
from yoloslim.prune.sensitivity import METRICS, GroupCurve, SensitivityCurves
from yoloslim.prune.surgery import apply_plan
from yoloslim.viz.sensitivity import plot_sensitivity
from yoloslim.workflows.report import table, write_json

RATIOS = (0.1, 0.3, 0.5, 0.7)
VAL_IMAGES = 64  # a val subset: every (group, ratio) is one evaluation
SENSITIVITY_CALIB_IMAGES = 64  # per evaluation; BN statistics settle after a few dozen images
QUIET = ("yoloslim.prune.recalibrate", "yoloslim.prune.allocate")  # one line per cut model would bury the bar


def parse_ratios(text: str) -> list[float]:
    """``"0.1,0.3"`` -> ``[0.1, 0.3]``: increasing, each in (0, 1)."""
    try:
        ratios = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--ratios must be comma-separated numbers like 0.1,0.3,0.5, got {text!r}") from None
    if not ratios or any(not 0 < r < 1 for r in ratios) or sorted(set(ratios)) != ratios:
        raise UserError(f"--ratios must be increasing fractions in (0, 1), got {text!r}")
    return ratios


class Scorer:
    """Scores a model on the val subset: mAP@.5:.95, or the output distance to ``reference``'s outputs."""

    def __init__(self, metric: str, reference: nn.Module, data: str, names: list[str], imgsz: int,
                 val_images: int, batch: int, workers: int, device: torch.device) -> None:
        self.metric, self.device = metric, device
        if not is_data_set(Path(data)):  # a folder of unlabelled images: the output proxy only
            self.inputs = list(calibration_images(data, imgsz, val_images, batch))
            self.images = sum(len(x) for x in self.inputs)
            self.reference = self._outputs(reference)
            return
        source = load_data(data, warn=False)
        samples = (source.splits.get("val") or source.splits.get("test") or [])[:val_images]
        if not samples:
            raise UserError(f"{data}: no val split to measure on")
        match = match_classes(names, source.names, None, nc=reference.spec.nc)
        self.ids = None if match.identity else match.ids
        self.names, self.images = source.names, len(samples)
        self.loader = create_loader(DetectionDataset(samples, imgsz), batch_size=batch, shuffle=False,
                                    workers=workers)
        if metric == "output":
            self.inputs = [imgs for imgs, *_ in self.loader]
            self.reference = self._outputs(reference)

    @torch.no_grad()
    def _outputs(self, model: nn.Module) -> list[torch.Tensor]:
        model = model.to(self.device).eval()
        outs = []
        for imgs in self.inputs:
            y = model(preprocess(imgs.to(self.device), model.spec))
            outs.extend(t.float().flatten().cpu() for t in (y if isinstance(y, (list, tuple)) else [y]))
        return outs

    def __call__(self, model: nn.Module) -> float:
        if self.metric == "output":
            num = sum(float(((a - b) ** 2).sum()) for a, b in zip(self._outputs(model), self.reference, strict=True))
            return num / max(sum(float((b ** 2).sum()) for b in self.reference), 1e-12)
        if self.ids is not None:
            model = select_classes(model, self.ids)
        return float(evaluate(model, self.loader, self.names, device=self.device, progress=False).metrics.map)


def prune_group_alone(model: nn.Module, graph: ChannelGraph, group: Group, scores: torch.Tensor,
                      ratio: float) -> nn.Module | None:
    """``model`` with ``ratio`` of ``group``'s channels removed (its weakest by ``scores``, at least one kept);
    None when that removes no channel. The curves are measured at the exact ratios (``round_to=1``); the
    allocation rounds the widths it picks."""
    plan = Allocator([group], {group.id: scores}, global_rank=False, round_to=1, min_channels=1).plan(graph, ratio)
    return apply_plan(model, plan) if plan.keep else None


def sensitivity(weights: str, data: str, method: str = "auto", ratios: list[float] | tuple[float, ...] = RATIOS,
                val_images: int = VAL_IMAGES, metric: str = "map", out: str = "sensitivity",
                json_file: str | None = None, include: list[str] | None = None, imgsz: int | None = None,
                batch: int = 16, workers: int = 2, calib_images: int = SENSITIVITY_CALIB_IMAGES,
                no_calib: bool = False, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Measure every selected group's sensitivity; write ``sensitivity.{txt,json,png}`` into ``out``.

    Args:
        weights: a yoloslim model file.
        data: data.yaml or a VOC root: val images to score on, train images to recalibrate on; or, with
            ``metric="output"``, a folder of unlabelled images (or a video) for both.
        method: the channel importance choosing which channels go (``auto``: as ``prune`` chooses with data).
        ratios: the ratios to prune each group at, increasing.
        val_images: score on the first N images of the val split.
        metric: ``map`` (mAP@.5:.95) or ``output`` (the proxy: output distance to the unpruned model).
        out: the folder for the table, the JSON and the plot.
        json_file: also write the JSON here.
        include: measure only groups with a producer under these module-name prefixes.
        imgsz: image size (default: the model file's).
        batch: batch size of the evaluations.
        workers: data-loader workers.
        calib_images: recalibrate every cut model's batch norms on this many train images.
        no_calib: score the cut models without recalibration.
        device: where the scoring runs; the pruning and the recalibration run on the CPU.
        progress: show a tqdm bar.

    Returns:
        The JSON summary (:class:`~yoloslim.prune.sensitivity.SensitivityCurves` as a dict).
    """
    if method not in METHODS or method == "layer":
        raise UserError(f"--method must be a channel method ({', '.join(m for m in METHODS if m != 'layer')}), "
                        f"got {method!r}")
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if val_images < 1:
        raise UserError(f"--val-images must be at least 1, got {val_images}")
    if not Path(data).exists():
        raise UserError(f"--data {data}: no such data set, folder, image or video")
    if not is_data_set(Path(data)):
        if metric != "output":
            raise UserError(f"--data {data} is not a data set (no data.yaml, no VOC Annotations/): without labels "
                            "there is no mAP; use --metric output, the output distance to the unpruned model")
        if method in NEEDS_GRADIENTS:
            raise UserError(f"--method {method} needs the gradients of the detection loss, so labels: --data {data} "
                            "has none; use a method that needs no data (l1, l2, group, slim, auto)")
    ratios = parse_ratios(",".join(str(r) for r in ratios))
    out_dir = Path(out)
    check_writable(out_dir, "--out", folder=True)
    check_writable(json_file, "--json")
    dev = resolve_device(device)
    model, info = load_model(weights)
    model.eval()
    imgsz = int(imgsz or info.imgsz)
    check_imgsz(imgsz, model.spec)
    if method == "auto":
        method = auto_method()[0]
    calib = [] if no_calib else [preprocess(x, model.spec) for x in calibration_images(data, imgsz, calib_images,
                                                                                          batch)]
    reference = copy.deepcopy(model)  # recalibrated like every cut model, so that a loss is the cut's alone
    if calib:
        recalibrate_bn(reference, calib)
    scorer = Scorer(metric, reference, data, list(info.names), imgsz, val_images, batch, workers, dev)
    graph = ChannelGraph.trace(model)
    groups = graph.select(include)
    if method in NEEDS_GRADIENTS:
        accumulate_gradients(model, train_batches(data, imgsz, batch, workers=workers), imgsz=imgsz)
    scores = score_groups(model, groups, importance_for(method, False))
    model.zero_grad(set_to_none=True)
    groups = [g for g in groups if g.id in scores]
    base = 0.0 if metric == "output" else scorer(reference)
    del reference
    curves = SensitivityCurves(weights=str(weights), method=method, metric=metric, base=_digits(base),
                               ratios=ratios, val_images=scorer.images, calib_images=0 if no_calib else
                               sum(len(x) for x in calib))
    bar = tqdm(total=len(groups) * len(ratios), desc="sensitivity", unit="cut", disable=not progress)
    for name in QUIET:
        logger.disable(name)
    try:
        for g in groups:
            values = []
            for r in ratios:
                cut = prune_group_alone(model, graph, g, scores[g.id], r)
                if cut is None:  # too few channels for this ratio to remove one: nothing changes
                    values.append(base)
                else:
                    if calib:
                        recalibrate_bn(cut, calib)
                    values.append(scorer(cut))
                    curves.evaluations += 1
                bar.update()
            loss = values if metric == "output" else [base - v for v in values]
            curves.groups.append(GroupCurve(g.name, g.size, list(g.producers), [_digits(v) for v in values],
                                            [_digits(v) for v in loss]))
    finally:
        for name in QUIET:
            logger.enable(name)
        bar.close()
    summary = curves.to_dict()
    out_dir.mkdir(parents=True, exist_ok=True)
    text = _table(curves)
    print(text)
    (out_dir / "sensitivity.txt").write_text(text + "\n")
    write_json(out_dir / "sensitivity.json", summary)
    if json_file:
        write_json(json_file, summary)
    plot_sensitivity(curves, out_dir / "sensitivity.png")
    logger.info(f"{curves.evaluations} cut models scored -> {out_dir}/sensitivity.{{txt,json,png}}")
    return summary


def _digits(v: float) -> float:
    """Six significant digits (output distances can be 1e-5)."""
    return float(f"{v:.6g}")


def _table(c: SensitivityCurves) -> str:
    what = "mAP@.5:.95" if c.metric == "map" else "output distance"
    rows = [[g.name, g.size, len(g.producers), *g.scores] for g in
            sorted(c.groups, key=lambda g: g.loss[-1], reverse=True)]
    head = table(["group", "channels", "producers", *(f"r={r:g}" for r in c.ratios)], rows)
    base = f"; unpruned {c.base:.4f}" if c.metric == "map" else ""
    return (f"{what} after pruning each group alone ({c.method}, {c.val_images} val images{base}); "
            f"most sensitive first; producers > 1: coupled convs pruned together\n{head}")
