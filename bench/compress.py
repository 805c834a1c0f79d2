"""Compression benchmark: baseline -> sparsity training -> network slimming at several ratios -> fine-tune.

Usage (from the repository root)::

    .venv/bin/python bench/compress.py --work runs/bench-compress          # YOLOv5s, the defaults below
    .venv/bin/python bench/compress.py --model yolov3-tiny --work runs/bench-compress-v3tiny

On the built-in synthetic data set (``yoloslim.data.synth``, written to ``<work>/data`` at the training
size and reused when present), for one model (``--model``, any preset):

1. ``baseline``: train from scratch for ``--epochs`` E;
2. ``sparse``: from the baseline, ``--sparse-epochs`` S with the L1 penalty ``--sr`` on the prunable BN γ
   (linear schedule, network slimming); with ``--sparse-epochs 0`` there is no such stage and the baseline
   itself is pruned;
3. ``prune``: slim the sparse model (one global γ threshold; or another ``--method``) at every
   ``--ratios`` value; a ratio that would empty a channel group is refused by the pruner, and is then
   retried keeping the 8 strongest channels of such groups (``--min-channels 8``; the JSON and the
   table say so);
4. ``finetune``: train each pruned model for ``--finetune-epochs`` F, as it is;
5. ``plus``: the fair reference "baseline+": the baseline trained S + F more epochs without sparsity,
   so it has seen as many epochs (E + S + F) as every fine-tuned model;
6. ``measure``: mAP@.5 and mAP@.5:.95 on the val split (at the training size), params, GFLOPs at
   ``--latency-imgsz`` (640), and batch-1 CPU latency at that size in PyTorch (Conv+BN fused) and ONNX
   Runtime, all candidates timed alternately in one loop (``yoloslim.deploy.bench.benchmark``), so the
   speed-ups are ratios taken side by side. Baseline, baseline+ and sparse share one architecture and
   are timed once; each pruned architecture is timed with its fine-tuned weights.

Every model is the EMA weights of its run's last epoch (``last``, never ``best``: the val split that
reports mAP does not also pick checkpoints). Each stage writes its model into ``<work>/models`` and is
skipped when that file exists; a training stage interrupted mid-way resumes from its last finished
epoch. ``--stages`` runs only some stages (the others' saved outputs are used), e.g. ``--stages
measure`` re-measures saved models. The results go to ``--json`` (default ``<work>/compress.json``) and
a Markdown table for docs/BENCHMARKS.md is printed with the command line above it.

Sizing. Defaults: 400 images (300 train + 100 val) at 192 px, E = 40, S = 10, F = 10, batch 8 with no
gradient accumulation, round-to 8; each model's run fits in about 40 minutes of one core, so two models
run side by side on the project's 2-core CPU (``OMP_NUM_THREADS=1`` each), and the latency is measured
afterwards on the idle machine with ``--stages measure`` (docs/BENCHMARKS.md has the commands):

- Measured (YOLOv5s, one thread, the other core busy): 24 s per 300-image epoch at 192 px; the run
  trains E + S + (S + F) = 70 full-model epochs plus 3 x F epochs of pruned models (113 / 78 / 70 s for
  10 epochs at ratios 0.5 / 0.7 / 0.8): 42 min with the 11 evaluations. YOLOv3-tiny: 34 min.
- 192 px keeps the set's smallest objects (6 % of the side) at 11 px; batch 8 gives 38 optimizer steps
  per epoch: in a compute-bound budget, more steps matter more than YOLOv5's accumulation to 64
  (``--nominal-batch`` equals the batch). The demo's YOLOv5n reached mAP@.5 0.177 at batch 16 and
  0.247 at batch 8 in the same epochs.

What this budget can and cannot show (YOLOv5s, the defaults): after 40 epochs (1,520 steps) from scratch
the baseline reaches mAP@.5 0.286 and is still learning (baseline+, 20 epochs more: 0.419); its BN γ are
still 1.00 +- 0.02. Ten epochs at ``--sr 0.01`` shrink them all alike (every γ about 0.86, none below
0.01), so the slimming threshold ranks channels by little more than noise, and every pruned model needs
its fine-tune (mAP@.5 0.002-0.009 right after pruning); the network-slimming forks train ~100k steps
with sr 1e-4 .. 1e-3. Compare the pruned models with baseline+ only. ``--sparse-epochs 0
--finetune-epochs 20`` prunes the baseline directly and gives the fine-tune those epochs instead (it ended
2 points of mAP@.5:.95 higher at every ratio). ``--method l1`` / ``l2`` prune the same sparse model by
filter norms instead (their files are named by method, so they can share a work folder with the slim
run).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import Stopwatch, command_line, environment, md_table

from yoloslim.data.synth import synthesize
from yoloslim.engine.train import TrainConfig, train
from yoloslim.engine.train_state import load_state
from yoloslim.errors import UserError
from yoloslim.log import logger, setup_logging
from yoloslim.models import MODELS
from yoloslim.models.io import atomic_write, read_info
from yoloslim.prune import METHODS
from yoloslim.workflows.report import write_json

STAGES = ("baseline", "sparse", "prune", "finetune", "plus", "measure")
FALLBACK_MIN_CHANNELS = 8  # kept per group when a ratio would empty one


@dataclass(frozen=True)
class Settings:
    """What the saved models depend on; a work folder made with other settings is refused."""

    model: str
    images: int
    val_ratio: float
    imgsz: int
    epochs: int
    sparse_epochs: int
    finetune_epochs: int
    sr: float
    batch: int
    nominal_batch: int
    seed: int
    round_to: int
    min_channels: int
    fold_bias: bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov5s", help="model preset (default yolov5s)")
    ap.add_argument("--images", type=int, default=400, help="synthetic images (train + val)")
    ap.add_argument("--val-ratio", type=float, default=0.25, help="fraction of the images held out for val")
    ap.add_argument("--imgsz", type=int, default=192, help="training / evaluation size")
    ap.add_argument("--epochs", type=int, default=40, help="baseline epochs E")
    ap.add_argument("--sparse-epochs", type=int, default=10, help="sparsity-training epochs S")
    ap.add_argument("--finetune-epochs", type=int, default=10, help="fine-tune epochs F")
    ap.add_argument("--sr", type=float, default=0.01, help="L1 strength on BN γ (linear schedule)")
    ap.add_argument("--ratios", default="0.5,0.7,0.8", help="pruning ratios, comma-separated")
    ap.add_argument("--method", default="slim", choices=METHODS,
                    help="pruning method applied to the sparse model (default slim)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--nominal-batch", type=int, default=None, help="accumulate to this (default: --batch)")
    ap.add_argument("--workers", type=int, default=1, help="data-loader workers")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data set and of training")
    ap.add_argument("--round-to", type=int, default=8, help="pruned widths are multiples of this")
    ap.add_argument("--min-channels", type=int, default=0, help="floor per channel group (0: refuse, then 8)")
    ap.add_argument("--fold-bias", action="store_true", help="fold removed channels' act(β) into next biases")
    ap.add_argument("--work", default="runs/bench-compress", help="work folder (data, runs, models)")
    ap.add_argument("--stages", default="all", help=f"some of {','.join(STAGES)} (default all)")
    ap.add_argument("--skip-latency", action="store_true", help="no latency measurement")
    ap.add_argument("--latency-imgsz", type=int, default=640, help="size of GFLOPs and latency")
    ap.add_argument("--latency-runs", type=int, default=30, help="timed rounds (every candidate once each)")
    ap.add_argument("--latency-seconds", type=float, default=300.0, help="time budget of the timed rounds")
    ap.add_argument("--threads", type=int, default=None, help="latency intra-op threads (default: torch's)")
    ap.add_argument("--json", dest="json_file", help="default <work>/compress.json")
    args = ap.parse_args(argv)
    if args.model not in MODELS:
        raise UserError(f"unknown --model {args.model!r}; presets: {', '.join(MODELS)}")
    try:
        args.ratios = sorted({float(r) for r in args.ratios.split(",") if r.strip()})
    except ValueError:
        raise UserError(f"--ratios must be numbers separated by commas, got {args.ratios!r}") from None
    if not args.ratios or not all(0 < r < 1 for r in args.ratios):
        raise UserError(f"--ratios must be in (0, 1), got {args.ratios}")
    stages = STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(","))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)} or all")
    args.stages = stages
    args.nominal_batch = args.nominal_batch or args.batch
    if args.sparse_epochs < 0:
        raise UserError(f"--sparse-epochs must be at least 0 (0: prune the baseline), got {args.sparse_epochs}")
    for key in ("images", "imgsz", "epochs", "finetune_epochs", "batch"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    return args


def label(method: str, ratio: float) -> str:
    """``slim``, ``0.5`` -> ``slim-50`` (the pruned model's name; ``slim-50-ft`` after fine-tuning)."""
    return f"{method}-{round(ratio * 100):02d}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the stages the command line asks for; returns the summary (``measure``) or the timings."""
    args = parse_args(argv)
    command = command_line(__file__, argv)
    work = Path(args.work)
    setup_logging(work)
    logger.info(f"command: {command}")
    settings = check_settings(work, args)
    models = work / "models"
    timings = _load_json(work / "timings.json")

    def timed(stage: str, fn: Any, *a: Any, **kw: Any) -> Any:
        with Stopwatch() as sw:
            out = fn(*a, **kw)
        setup_logging(work)  # training logs into its run folder; come back to ours
        timings[stage] = sw.to_dict()
        write_json(work / "timings.json", timings)
        logger.info(f"{stage}: {sw.wall:.0f} s wall, {sw.cpu:.0f} s CPU")
        return out

    data = data_set(work / "data", args)
    base = models / "baseline.safetensors"
    sparse = models / "sparse.safetensors" if args.sparse_epochs else base  # what is pruned
    plus = models / "baseline-plus.safetensors"
    e, s, f = args.epochs, args.sparse_epochs, args.finetune_epochs
    common = {"data": str(data), "batch": args.batch, "imgsz": args.imgsz, "workers": args.workers,
              "seed": args.seed, "nominal_batch": args.nominal_batch}
    if "baseline" in args.stages and not base.is_file():
        timed("baseline", train_stage, base, work / "runs" / "baseline", model=args.model, epochs=e, **common)
    if "sparse" in args.stages and not sparse.is_file():
        _need(base, "baseline")
        timed("sparse", train_stage, sparse, work / "runs" / "sparse", weights=str(base), epochs=s,
              sparsity=args.sr, sparsity_schedule="linear", **common)
    names = {r: label(args.method, r) for r in args.ratios}
    for r, name in names.items():
        pruned = models / f"{name}.safetensors"
        if "prune" in args.stages and not pruned.is_file():
            _need(sparse, "sparse" if args.sparse_epochs else "baseline")
            timed(f"prune {name}", prune_stage, sparse, pruned, r, args)
    for name in names.values():
        pruned, tuned = models / f"{name}.safetensors", models / f"{name}-ft.safetensors"
        if "finetune" in args.stages and not tuned.is_file():
            _need(pruned, "prune")
            timed(f"finetune {name}", train_stage, tuned, work / "runs" / f"{name}-ft", weights=str(pruned),
                  epochs=f, **common)
    if "plus" in args.stages and not plus.is_file():
        _need(base, "baseline")
        timed("plus", train_stage, plus, work / "runs" / "baseline-plus", weights=str(base), epochs=s + f,
              **common)
    if "measure" not in args.stages:
        return {"timings": timings}
    summary = timed("measure", measure, work, data, args)
    summary = {"command": command, "settings": asdict(settings), "environment": environment(),
               "data": {"path": str(data), "images": args.images, "imgsz": args.imgsz}, **summary,
               "timings": timings, "total_wall_s": round(sum(t["wall_s"] for t in timings.values()), 1)}
    json_file = Path(args.json_file) if args.json_file else work / "compress.json"
    write_json(json_file, summary)
    print_report(summary)
    print(f"\n(JSON: {json_file})")
    return summary


def check_settings(work: Path, args: argparse.Namespace) -> Settings:
    """Refuse a work folder whose saved models were made with other settings."""
    settings = Settings(args.model, args.images, args.val_ratio, args.imgsz, args.epochs, args.sparse_epochs,
                        args.finetune_epochs, args.sr, args.batch, args.nominal_batch, args.seed,
                        args.round_to, args.min_channels, args.fold_bias)
    path = work / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f"{k} {old.get(k)!r} there, {v!r} here" for k, v in asdict(settings).items()
                if old.get(k) != v]
        if diff:
            raise UserError(f"{work} holds models made with other settings ({'; '.join(diff)}); "
                            "choose another --work, or delete that folder")
    else:
        write_json(path, asdict(settings))
    return settings


def data_set(folder: Path, args: argparse.Namespace) -> Path:
    """The synthetic data set's data.yaml, written at the training size unless already there."""
    data = folder / "data.yaml"
    if data.is_file():
        logger.info(f"reusing the data set {data}")
        return data
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted synthesis (no data.yaml yet)
    logger.info(f"synthesizing {args.images} images of {args.imgsz} px into {folder}")
    return synthesize(folder, fmt="yolo", images=args.images, imgsz=args.imgsz, seed=args.seed,
                      val_ratio=args.val_ratio)


def train_stage(out: Path, run: Path, **cfg: Any) -> Path:
    """Train (or resume an interrupted run in ``run``), then copy the last EMA weights to ``out``."""
    state = run / "weights" / "last_state.pt"
    last = run / "weights" / "last.safetensors"
    if state.is_file():
        saved = load_state(state)
        if int(saved["epoch"]) < int(saved["config"]["epochs"]):
            logger.info(f"resuming {run} at epoch {int(saved['epoch']) + 1}")
            train(TrainConfig(resume=str(run), workers=cfg["workers"]))
    else:
        if run.exists():
            shutil.rmtree(run)  # a run that stopped before its first epoch ended
        train(TrainConfig(out=str(run), cache=True, val_every_epoch=False, **cfg))
    atomic_write(out, lambda tmp: shutil.copyfile(last, tmp))
    return out


def prune_stage(sparse: Path, out: Path, ratio: float, args: argparse.Namespace) -> Path:
    """Prune ``sparse`` at ``ratio`` into ``out`` with ``--method`` (the ``yoloslim prune`` workflow)."""
    from yoloslim.workflows.prune import prune

    kw = {"weights": str(sparse), "method": args.method, "ratio": ratio, "round_to": args.round_to,
          "fold_bias": args.fold_bias, "imgsz": args.imgsz, "out": str(out), "latency_runs": 0,
          "json_file": str(out.with_suffix(".json"))}
    try:
        prune(min_channels=args.min_channels, **kw)
    except UserError as err:
        if args.min_channels or args.method == "layer":
            raise
        logger.warning(f"{err}; pruning again, keeping the {FALLBACK_MIN_CHANNELS} strongest channels "
                       "of such groups")
        prune(min_channels=FALLBACK_MIN_CHANNELS, **kw)
    return out


@dataclass(frozen=True)
class Entry:
    """One model of the report: ``arch`` is shared by models of one architecture (timed once)."""

    name: str
    title: str
    path: Path
    epochs: int
    arch: str
    timed: bool = False  # these weights stand for the architecture in the latency loop


def entries(work: Path, args: argparse.Namespace) -> list[Entry]:
    """Every model the stages make, in report order (missing files included)."""
    m = work / "models"
    e, s, f = args.epochs, args.sparse_epochs, args.finetune_epochs
    out = [Entry("baseline", "baseline", m / "baseline.safetensors", e, "baseline", timed=True),
           Entry("baseline+", "baseline+", m / "baseline-plus.safetensors", e + s + f, "baseline")]
    if s:
        out.append(Entry("sparse", "sparse", m / "sparse.safetensors", e + s, "baseline"))
    for r in args.ratios:
        name = label(args.method, r)
        out += [Entry(name, f"{args.method} {r:g}, pruned", m / f"{name}.safetensors", e + s, name),
                Entry(f"{name}-ft", f"{args.method} {r:g} + fine-tune", m / f"{name}-ft.safetensors",
                      e + s + f, name, timed=True)]
    return out


def measure(work: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """mAP, params, GFLOPs and latency of every saved model, with the ratios to the baselines."""
    from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
    from yoloslim.engine.evaluate import evaluate
    from yoloslim.models.io import load_model
    from yoloslim.models.profile import count_params, profile, total_gflops

    present = [x for x in entries(work, args) if x.path.is_file()]
    if not present:
        raise UserError(f"no saved models in {work / 'models'}: run the training stages first")
    source = load_data(data)
    loader = create_loader(DetectionDataset(source.splits["val"], args.imgsz), batch_size=2 * args.batch,
                           shuffle=False, workers=args.workers)
    cache_path = work / "evals.json"  # mAP per model file, so that re-measuring only re-times
    cache = _load_json(cache_path)
    rows, nets = [], {}
    for x in present:
        model, _ = load_model(x.path)
        model.eval()
        st = x.path.stat()
        stamp = f"{st.st_size}-{st.st_mtime_ns}-{args.imgsz}"
        ev = cache.get(x.name)
        if not ev or ev.get("stamp") != stamp:
            logger.info(f"evaluating {x.name} on {len(loader.dataset)} val images")
            m = evaluate(model, loader, source.names).metrics
            ev = {"stamp": stamp, **{k: round(float(getattr(m, k)), 5) for k in ("map50", "map", "precision",
                                                                                  "recall")}}
            cache[x.name] = ev
            write_json(cache_path, cache)
        row = {"name": x.name, "title": x.title, "file": str(x.path), "epochs": x.epochs, "arch": x.arch,
               **{k: ev[k] for k in ("map50", "map", "precision", "recall")},
               "params": count_params(model),
               "gflops": round(total_gflops(profile(model, args.latency_imgsz)), 4)}
        pe = prune_event(x.path)
        if pe:
            keys = ("method", "ratio", "held", "min_channels", "round_to", "fold_bias")
            row["prune"] = {k: pe[k] for k in keys if k in pe}
        rows.append(row)
        if x.timed or x.arch not in nets:
            nets[x.arch] = model
    latency: dict[str, dict[str, dict[str, float]]] = {}
    if not args.skip_latency:
        from yoloslim.deploy.bench import benchmark

        logger.info(f"timing {len(nets)} architectures at {args.latency_imgsz} px, batch 1, alternately")
        lat = benchmark(nets, args.latency_imgsz, ("torch", "onnxruntime"), threads=args.threads,
                        runs=args.latency_runs, warmup=5, max_seconds=args.latency_seconds)
        latency = {arch: {b: v.to_dict() for b, v in per.items()} for arch, per in lat.items()}
    _derive(rows, latency)
    return {"val_images": len(loader.dataset), "eval_imgsz": args.imgsz, "latency_imgsz": args.latency_imgsz,
            "latency": {"threads": args.threads, "runs": args.latency_runs, "per_arch": latency},
            "models": rows}


TARGETS = {  # DESIGN.md's performance table, for the fine-tuned models
    "params removed >= 85 %": ("params_removed", 0.85),
    "FLOPs removed >= 75 %": ("flops_removed", 0.75),
    "mAP50-95 drop <= 1 pt": ("delta_map_vs_plus", -1.0),
    "ORT speed-up >= 3.5x": ("onnxruntime_speedup", 3.5),
    "torch speed-up >= 2.5x": ("torch_speedup", 2.5),
}


def _derive(rows: list[dict[str, Any]], latency: dict[str, dict[str, dict[str, float]]]) -> None:
    """Add removed fractions, mAP deltas (points), latencies and speed-ups (baseline / model) to the rows."""
    by = {r["name"]: r for r in rows}
    base, plus = by.get("baseline"), by.get("baseline+")
    ref_lat = latency.get("baseline")
    for r in rows:
        if base:
            r["params_removed"] = round(1 - r["params"] / base["params"], 5)
            r["flops_removed"] = round(1 - r["gflops"] / base["gflops"], 5)
            r["delta_map_vs_baseline"] = round((r["map"] - base["map"]) * 100, 3)
        r["delta_map_vs_plus"] = round((r["map"] - plus["map"]) * 100, 3) if plus else None
        lat = latency.get(r["arch"])
        for b in ("torch", "onnxruntime"):
            r[f"{b}_ms"] = lat[b]["median_ms"] if lat else None
            ok = lat and ref_lat
            r[f"{b}_speedup"] = round(ref_lat[b]["median_ms"] / lat[b]["median_ms"], 3) if ok else None
        if r["name"].endswith("-ft"):
            r["targets"] = {k: None if r.get(key) is None else r[key] >= v
                            for k, (key, v) in TARGETS.items()}


def print_report(s: dict[str, Any]) -> None:
    """The Markdown for docs/BENCHMARKS.md: the command, the table, what the columns mean, the targets."""
    rows = s["models"]
    held = [r for r in rows if r.get("prune", {}).get("held")]
    print(f"\nCommand: `{s['command']}`\n")
    print(md_table(
        ["model", "epochs", "mAP50", "mAP50-95", "Δ mAP50-95 vs baseline+", "params", "params removed",
         f"GFLOPs@{s['latency_imgsz']}", "FLOPs removed", "torch ms", "ORT ms", "torch speed-up",
         "ORT speed-up"],
        [[r["title"] + (" *" if r in held else ""), r["epochs"], f"{r['map50']:.3f}", f"{r['map']:.3f}",
          _num(r["delta_map_vs_plus"], "{:+.1f}"), f"{r['params'] / 1e6:.2f} M",
          _pct(r.get("params_removed")),
          f"{r['gflops']:.2f}", _pct(r.get("flops_removed")), _num(r["torch_ms"], "{:.1f}"),
          _num(r["onnxruntime_ms"], "{:.1f}"), _num(r["torch_speedup"], "{:.2f}×"),
          _num(r["onnxruntime_speedup"], "{:.2f}×")] for r in rows]))
    env = s["environment"]
    lat = s["latency"]
    print(f"\nmAP on the {s['val_images']} val images at {s['eval_imgsz']} px (EMA weights of each run's "
          "last epoch); Δ in points against baseline+ (the baseline trained as many epochs as the "
          f"fine-tuned models). GFLOPs (conv + BN) and latency at {s['latency_imgsz']} px, batch 1, "
          f"median of up to {lat['runs']} alternating rounds, {env['cpu']} (CPUs: {env['cpus']}, "
          f"threads: {lat['threads'] or env['torch_threads']}), torch {env['torch']} (Conv+BN fused), "
          f"onnxruntime {env['onnxruntime']}; speed-ups are baseline / model from the same loop; "
          "baseline, baseline+ and sparse share one architecture. "
          f"Whole run: {s['total_wall_s'] / 60:.0f} min.")
    for r in held:
        p = r["prune"]
        if not r["name"].endswith("-ft"):
            print(f"* {r['title']} (and fine-tuned): the ratio would have emptied {len(p['held'])} channel "
                  f"group(s); they kept their {p.get('min_channels')} strongest channels: "
                  + ", ".join(p["held"]))
    tuned = [r for r in rows if "targets" in r]
    if tuned:
        names = list(TARGETS)
        print("\nDESIGN.md targets (fine-tuned models):\n")
        marks = {None: "—", True: "yes", False: "no"}
        print(md_table(["model", *names],
                       [[r["title"], *(marks[r["targets"][k]] for k in names)] for r in tuned]))


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else fmt.format(x)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f} %"


def prune_event(path: Path) -> dict[str, Any] | None:
    """The ``pruned`` history entry of a model file (method, ratio, held groups, min_channels)."""
    events = [e for e in read_info(path).history if e.get("action") == "pruned"]
    return events[-1] if events else None


def _need(path: Path, stage: str) -> None:
    if not path.is_file():
        raise UserError(f"{path} is missing: run the {stage} stage first (--stages {stage},...)")


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    import sys

    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
