"""``yoloslim prune``: a trained model in, a compact model file out, with an honest before/after report."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloslim.data.calibration import calibration_images
from yoloslim.data.class_map import match_classes
from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.data.source import DataSource
from yoloslim.deploy.bench import BACKENDS, compare_latency
from yoloslim.deploy.layer_latency import per_layer_latency
from yoloslim.device import resolve_device
from yoloslim.engine.evaluate import evaluate
from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models.decode import preprocess
from yoloslim.models.head_classes import select_classes
from yoloslim.models.io import ModelInfo, check_writable, load_model, read_info, save_model
from yoloslim.models.profile import count_params, profile, total_gflops
from yoloslim.models.spec import check_imgsz
from yoloslim.prune.gradients import train_batches
from yoloslim.prune.iterative import Recalibrate, prune_in_steps
from yoloslim.prune.latency_target import LATENCY_BACKEND, LatencyTarget
from yoloslim.prune.pipeline import NEEDS_GRADIENTS, PruneOptions, PruneResult, prune_model
from yoloslim.prune.recalibrate import CALIB_IMAGES, recalibrate_bn
from yoloslim.prune.sensitivity import SensitivityCurves
from yoloslim.viz.report import ReportParts, write_report
from yoloslim.workflows.report import table, write_json


def prune(weights: str, method: str = "auto", ratio: float | None = None, target_flops: float | None = None,
          target_params: float | None = None, blocks: int | None = None, global_rank: bool = False,
          include: list[str] | None = None, round_to: int | None = None, min_channels: int = 0, fold_bias: bool = False,
          data: str | None = None, imgsz: int | None = None, batch: int = 16, workers: int = 2,
          out: str | None = None, json_file: str | None = None, latency_runs: int = 20,
          steps: int = 1, finetune_epochs: int = 0, calib: str | None = None, calib_images: int = CALIB_IMAGES,
          no_calib: bool = False, class_map: str | None = None,
          device: str | None = None, allocation: str | None = None,
          sensitivity: str | None = None, target_latency: float | str | None = None, backend: str | None = None,
          threads: int | None = None, report: str | None = None) -> dict[str, Any]:
    """Prune ``weights``, write the compact model and print the Metric / Before / After table.

    Args:
        weights: a yoloslim model file.
        method: one of :data:`yoloslim.prune.pipeline.METHODS` (``auto``: the benchmark's winner).
        ratio: fraction of prunable channels (removable blocks for ``layer``) to remove.
        target_flops: instead, the pruned model's FLOPs as a fraction of the original.
        target_params: instead, its parameters as a fraction of the original.
        blocks: for ``layer``, how many blocks to remove.
        global_rank: one ranking over all channels instead of the same ratio per layer.
        include: module-name prefixes: prune only there (plus what is coupled to them).
        round_to: pruned widths are multiples of this (None: :data:`yoloslim.prune.allocate.ROUND_TO`).
        min_channels: keep this many channels of a group a ratio would empty, instead of refusing.
        fold_bias: fold removed channels' constant act(β) into the following convs' biases.
        data: a data set (data.yaml or VOC root): also report mAP@.5 and mAP@.5:.95 on its val split.
        imgsz: image size for FLOPs, latency and mAP (default: the model file's).
        batch: batch size of the mAP evaluation.
        workers: data-loader workers of the mAP evaluation.
        out: the compact model file (default ``<weights stem>-<method>.safetensors`` beside it).
        json_file: also write ``{"before": {...}, "after": {...}, "layers": [...]}``.
        latency_runs: timed batch-1 runs per model, alternating (0: skip latency).
        steps: iterative pruning in this many steps (with ``finetune_epochs`` of training between them).
        finetune_epochs: epochs of fine-tuning after each step but the last (needs ``data``).
        calib: recalibrate the pruned model's batch norms on these images (a data set's train split, a
            folder of images, an image or a video); default: ``data``'s train split when given.
        calib_images: recalibrate on at most this many images.
        no_calib: do not recalibrate, even with ``data``.
        class_map: a YAML file mapping ``data``'s class names to the model's (default: by name; a
            subset of the model's classes is scored, and fine-tuned, alone).
        device: where the latency, the mAP and the fine-tuning run (None: cuda when available, else
            cpu); the pruning and the recalibration run on the CPU.
        allocation: one of :data:`yoloslim.prune.allocate.ALLOCATIONS` (None: the method's default).
        sensitivity: for ``allocation="sensitivity"``, the curves ``yoloslim sensitivity --json`` wrote.
        target_latency: instead of an amount, the batch-1 latency to reach on this machine, at ``imgsz``: ms,
            or ``"50%"`` of the unpruned model's (:mod:`yoloslim.prune.latency_target`; ``latency_runs`` runs
            per candidate).
        backend: how latency is timed, for ``target_latency`` and the report: ``onnxruntime`` or ``torch``
            (None: :data:`LATENCY_BACKEND` with ``target_latency``, else torch).
        threads: intra-op threads of the timings (None: PyTorch's current setting).
        report: also write the self-contained HTML pruning report there (:mod:`yoloslim.viz.report`).

    Returns:
        The summary written to ``json_file``.
    """
    opts = PruneOptions(method=method, ratio=ratio, target_flops=target_flops, target_params=target_params,
                        blocks=blocks, global_rank=global_rank or None, include=list(include or []),
                        round_to=round_to, min_channels=min_channels, fold_bias=fold_bias,
                        allocation=allocation, sensitivity=sensitivity)
    if target_latency is not None:
        opts.target_latency = LatencyTarget.parse(target_latency, backend=backend or LATENCY_BACKEND, imgsz=imgsz or 0,
                                                  runs=latency_runs, threads=threads or torch.get_num_threads())
        if steps > 1:
            raise UserError("--target-latency measures one cut: use --steps 1")
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    opts.check()
    opts = opts.resolve()
    if allocation == "sensitivity" and steps > 1:
        raise UserError("--allocation sensitivity follows curves measured on the unpruned model: use --steps 1")
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be at least 0, got {finetune_epochs}")
    if class_map and not data:
        raise UserError("--class-map maps the classes of --data to the model's; give --data too")
    if finetune_epochs and not data:
        raise UserError("--finetune-epochs needs --data (the data set to fine-tune on between steps)")
    if calib and no_calib:
        raise UserError("--calib and --no-calib contradict each other; give one of them")
    if finetune_epochs and steps == 1:
        raise UserError("--finetune-epochs fine-tunes between --steps; with one step, prune and then run "
                        "`yoloslim train --weights PRUNED --data DATA`")
    out_path = Path(out) if out else Path(weights).with_name(f"{Path(weights).stem}-{opts.method}.safetensors")
    check_writable(out_path, "--out")
    check_writable(json_file, "--json")
    check_writable(report, "--report")
    dev = resolve_device(device)  # a missing GPU is refused before any work
    model, info = load_model(weights)
    names_before = list(info.names)
    model.eval()
    imgsz = int(imgsz or info.imgsz)
    check_imgsz(imgsz, model.spec)
    if opts.target_latency is not None:
        opts.target_latency.imgsz = imgsz
        opts.target_latency.check()
    source = _measuring_data(data, names_before, model.spec.nc, class_map) if data else None
    calib_source = None if no_calib else (calib or data)
    recal = (_recalibrator(calib_source, imgsz, calib_images, batch, source if calib_source == data else None)
             if calib_source else None)
    method = opts.method
    batches = (train_batches(data, imgsz, batch, workers=workers, loaded=source)
               if method in NEEDS_GRADIENTS and data else None)
    t0 = time.perf_counter()
    step_log: list[dict[str, Any]] = []
    if steps == 1:
        result = prune_model(model, opts, batches=batches)
    else:
        # distilled from the unpruned model, unless a class map makes the student's classes another set
        teacher = None if class_map else weights
        finetune = (_finetuner(data, finetune_epochs, imgsz, batch, workers, class_map, dev, teacher=teacher)
                    if finetune_epochs else None)
        step_dir = out_path.with_name(f"{out_path.stem}-steps")
        result, info, records = prune_in_steps(model, info, opts, steps, step_dir, source=str(weights),
                                               finetune=finetune, recalibrate=recal, batches=batches)
        step_log = [dataclasses.asdict(r) for r in records]
    seconds = time.perf_counter() - t0
    pruned = result.model.eval()
    uncalibrated = copy.deepcopy(pruned) if recal and data else None  # for the report's mAP before recalibration
    calibrated = recal(pruned) if recal else 0
    event = {"method": method, "ratio": round(result.ratio, 6), "source": str(weights)}
    if steps > 1:
        event.update(steps=steps, finetune_epochs=finetune_epochs)
    if result.latency is not None:  # where and how fast: the measured latency and the machine
        event["latency"] = result.latency.to_dict()
    for key, value in (("target_flops", target_flops), ("target_params", target_params), ("blocks", blocks),
                       ("include", include), ("round_to", opts.rounding if method != "layer" else None),
                       ("min_channels", min_channels or None), ("held", result.held or None),
                       ("removed_blocks", result.removed_blocks or None), ("fold_bias", fold_bias or None),
                       ("global", opts.global_rank or None),
                       ("allocation", allocation), ("sensitivity", sensitivity),
                       ("calib", calib_source if calibrated else None),
                       ("calib_images", calibrated or None)):
        if value is not None:
            event[key] = value
    pruned_info = ModelInfo(pruned.spec, info.names, info.imgsz, info.history)  # history without this cut yet
    new_info = pruned_info.with_event("pruned", **event)
    save_model(out_path, pruned, new_info)
    logger.info(f"pruned in {seconds:.2f}s -> {out_path}")

    before, after = _figures(model, imgsz), _figures(pruned, imgsz)
    model, pruned = model.to(dev), pruned.to(dev)
    uncalibrated = uncalibrated.to(dev) if uncalibrated is not None else None
    timing = backend or "torch"
    if result.latency is not None:  # measured by the search, alternating with the unpruned model
        timing = result.latency.machine["backend"]
        before["latency_ms"], after["latency_ms"] = round(result.latency.base_ms, 4), round(result.latency.ms, 4)
    elif latency_runs > 0:
        lat = compare_latency({"before": model, "after": pruned}, imgsz, runs=latency_runs, warmup=3,
                              backend=timing, threads=threads)
        before["latency_ms"], after["latency_ms"] = lat["before"]["median_ms"], lat["after"]["median_ms"]
    uncalibrated_maps, recalibrated_maps, kept = None, None, True
    pr_curves: dict[str, Any] | None = {} if report else None
    if source is not None:
        models = {"before": (model, names_before), "after": (pruned, new_info.names)}
        if uncalibrated:
            models["pruned"] = (uncalibrated, new_info.names)
        maps = _evaluate(models, source, imgsz, batch, workers, dev, class_map,
                         **({"curves": pr_curves} if pr_curves is not None else {}))
        before.update(maps["before"])
        after.update(maps["after"])
        uncalibrated_maps = maps.get("pruned")
        if uncalibrated_maps and after["map"] < uncalibrated_maps["map"]:
            lowered = (f"BN recalibration lowered mAP@.5:.95 on the val split ({uncalibrated_maps['map']:.4f} -> "
                       f"{after['map']:.4f})")
            if calib:  # asked for by name: keep it
                logger.warning(f"{lowered}; kept, as --calib asks")
            else:  # the --data default: keep the statistics the model was trained with
                logger.warning(f"{lowered}: kept the trained statistics (--calib {data} forces recalibration)")
                recalibrated_maps, kept = dict(after), False
                if pr_curves and "pruned" in pr_curves:  # the report draws the model written
                    pr_curves["after"] = pr_curves["pruned"]
                pruned = uncalibrated
                after.update(uncalibrated_maps)
                save_model(out_path, pruned, pruned_info.with_event("pruned", **event, calib_kept=False))
    layers = _layer_rows(model, pruned, result)
    summary = {"weights": str(weights), "out": str(out_path), "method": method, "ratio": result.ratio,
               "imgsz": imgsz, "device": str(dev), "seconds": round(seconds, 3), "held": result.held,
               "removed_blocks": result.removed_blocks, "steps": step_log, "before": before, "after": after,
               "calib": {"source": calib_source, "images": calibrated, "kept": kept} if calibrated else None,
               "uncalibrated": uncalibrated_maps, "recalibrated": recalibrated_maps, "layers": layers,
               "latency_backend": timing if before["latency_ms"] is not None else None,
               "target_latency": result.latency.to_dict() if result.latency is not None else None}
    _print_report(summary)
    if json_file:
        write_json(json_file, summary)
    if report:
        layer_latency = None
        if before["latency_ms"] is not None:
            layer_latency = {label: per_layer_latency(m, imgsz, (timing,), latency_runs or 3, threads=threads)[timing]
                             for label, m in (("before", model), ("after", pruned))}
        write_report(report, ReportParts(
            summary, model, pruned, read_info(out_path).history,
            sensitivity=SensitivityCurves.load(sensitivity) if sensitivity else None, layer_latency=layer_latency,
            pr_curves={k: v for k, v in pr_curves.items() if k in ("before", "after")} if pr_curves else None))
        logger.info(f"pruning report -> {report}")
    return summary


def _finetuner(data: str | None, epochs: int, imgsz: int, batch: int, workers: int, class_map: str | None,
               device: torch.device, teacher: str | None = None):
    """``fn(model_file, run_dir) -> best model file``: fine-tuning between pruning steps, distilling from
    ``teacher`` (the unpruned model) as ``train --teacher`` does."""
    from yoloslim.engine.train import TrainConfig, train

    def finetune(model_file: Path, run_dir: Path) -> tuple[Path, dict[str, Any]]:
        run = train(TrainConfig(data=str(data), weights=str(model_file), epochs=epochs, batch=batch,
                                imgsz=imgsz, workers=workers, out=str(run_dir), class_map=class_map,
                                device=str(device), teacher=teacher))
        return run.best, {k: v for k, v in run.metrics.items() if isinstance(v, (int, float))}

    return finetune


def _recalibrator(source: str, imgsz: int, limit: int, batch: int, loaded: DataSource | None) -> Recalibrate:
    """``fn(model) -> images used``: BN recalibration on ``source`` (the images are resolved now, so a
    bad ``--calib`` fails before any pruning); ``loaded``: that data set, when already read."""
    images = calibration_images(source, imgsz, limit, batch, loaded=loaded)
    logger.info(f"BN recalibration on up to {limit} images of {source} ({images.kind})")

    def recalibrate(model: nn.Module) -> int:
        return recalibrate_bn(model, (preprocess(x, model.spec) for x in images))

    return recalibrate


def _figures(model: nn.Module, imgsz: int) -> dict[str, Any]:
    return {"params": count_params(model), "gflops": round(total_gflops(profile(model, imgsz)), 4),
            "latency_ms": None, "map50": None, "map": None}


def _measuring_data(data: str, names: list[str], nc: int, class_map: str | None) -> DataSource:
    """The data set of ``--data``, read and its classes matched to the model's before anything is pruned or
    written (a class the model does not know is one clear line)."""
    source = load_data(data)
    match_classes(names, source.names, class_map, nc=nc)
    if not (source.splits.get("val") or source.splits.get("test")):
        raise UserError(f"{data}: no val split to measure mAP on")
    return source


def _evaluate(models: dict[str, tuple[nn.Module, list[str]]], source: DataSource, imgsz: int, batch: int,
              workers: int, device: torch.device, class_map: str | None = None,
              curves: dict[str, Any] | None = None) -> dict[str, dict]:
    """mAP@.5 and mAP@.5:.95 of each ``(model, class names)`` on the data set's val split, on its classes
    (``curves``: also collect each model's PR curves there, by label)."""
    samples = source.splits.get("val") or source.splits.get("test")
    loader = create_loader(DetectionDataset(samples, imgsz), batch_size=batch, shuffle=False, workers=workers)
    out = {}
    for label, (model, names) in models.items():
        match = match_classes(names, source.names, class_map, nc=model.spec.nc)
        if not match.identity:
            logger.info(f"{label}: scoring {match.describe()}")
            model = select_classes(model, match.ids)
        result = evaluate(model, loader, source.names, device=device)
        m = result.metrics
        if curves is not None and result.detections is not None:
            curves[label] = result.detections.curves()
        out[label] = {"map50": round(float(m.map50), 5), "map": round(float(m.map), 5)}
    return out


def _layer_rows(model: nn.Module, pruned: nn.Module, result: PruneResult) -> list[dict[str, Any]]:
    """Per conv: channels in and out before and after (layer pruning: removed blocks' convs show 0)."""
    before = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    after = {n: m for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    rows = []
    for name, m in before.items():
        now = result.renamed.get(name, name)
        new = after.get(now) if now else None
        rows.append({"name": name, "c_in_before": m.in_channels, "c_out_before": m.out_channels,
                     "c_in_after": new.in_channels if new else 0,
                     "c_out_after": new.out_channels if new else 0})
    return rows


def _print_report(s: dict[str, Any]) -> None:
    b, a = s["before"], s["after"]
    changed = [r for r in s["layers"]
               if (r["c_in_before"], r["c_out_before"]) != (r["c_in_after"], r["c_out_after"])]
    if changed:
        print(table(["layer", "c_in before", "c_in after", "c_out before", "c_out after"],
                    [[r["name"], r["c_in_before"], r["c_in_after"], r["c_out_before"],
                      r["c_out_after"] if r["c_out_after"] else "removed"] for r in changed]))
        print(f"({len(changed)} of {len(s['layers'])} convs changed)\n")
    pre = s.get("uncalibrated")  # mAP of the pruned model before BN recalibration
    rec = s.get("recalibrated") or a  # and after it (``a`` unless recalibration was not kept)
    rows = []
    for key, label, fmt in (("params", "params", "{:,}"), ("gflops", f"GFLOPs @{s['imgsz']}", "{:.3f}"),
                            ("latency_ms", f"{_device_label(s['device'])} latency ms (median, batch 1)",
                             "{:.2f}"),
                            ("map50", "mAP@.5", "{:.4f}"), ("map", "mAP@.5:.95", "{:.4f}")):
        if b.get(key) is None:
            continue
        change = (a[key] - b[key]) / b[key] * 100 if b[key] else 0.0
        mid = [fmt.format(pre.get(key, a[key])), fmt.format(rec.get(key, a[key]))] if pre else [fmt.format(a[key])]
        rows.append([label, fmt.format(b[key]), *mid, f"{change:+.1f} %"])
    head = ["Metric", "Before", "Pruned", "Recalibrated"] if pre else ["Metric", "Before", "After"]
    print(table([*head, "Change"], rows))
    extra = f"; held by --min-channels: {', '.join(s['held'])}" if s["held"] else ""
    blocks = f"; removed blocks: {', '.join(s['removed_blocks'])}" if s["removed_blocks"] else ""
    if s.get("calib"):
        kept = "" if s["calib"]["kept"] else " (not kept: it lowered mAP@.5:.95; the file has the Pruned model)"
        print(f"batch norms recalibrated on {s['calib']['images']} images of {s['calib']['source']}{kept}")
    if a.get("latency_ms") and b.get("latency_ms"):  # what speed the cut bought, beside what FLOPs it removed
        print(f"the cut bought {b['latency_ms'] / a['latency_ms']:.2f}x speed ({s['latency_backend']}, batch 1, "
              f"{s['imgsz']} px) for {b['gflops'] / a['gflops']:.2f}x fewer FLOPs")
    fit = s.get("target_latency")
    if fit:
        m = fit["machine"]
        reached = "reached" if fit["within"] else "not reached within 5 %; the nearest faster shape"
        print(f"--target-latency {fit['target_ms']:.4g} ms {reached}: {fit['ms']:.2f} ms at ratio {fit['ratio']:.3f} "
              f"({len(fit['probes'])} candidates; {m['backend']}, threads {m['threads']}, {m['cpu']})")
    print(f"{s['method']} at ratio {s['ratio']:.4g} in {s['seconds']:.2f}s -> {s['out']}{extra}{blocks}")


def _device_label(device: str) -> str:
    """``CPU`` for the report's latency row as before; ``cuda:0`` and the like as they are."""
    return "CPU" if device == "cpu" else device
