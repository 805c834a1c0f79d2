"""``yoloslim prune``: channel (slim, l1, l2) or layer pruning into a compact model file."""

from __future__ import annotations

import argparse

from yoloslim.cli.options import add_device, add_threads
from yoloslim.deploy.bench import BACKENDS
from yoloslim.prune.allocate import ALLOCATIONS, ROUND_TO
from yoloslim.prune.latency_target import LATENCY_BACKEND


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model (slim, l1, l2 or layer) into a compact model file")
    p.add_argument("--weights", required=True, help="a yoloslim model file (.safetensors)")
    p.add_argument("--method", default="auto",
                   help="auto (default: the criterion the benchmark found least damaging); slim: global BN-γ "
                        "threshold; l1/l2: filter norms; group: group L2 norm (DepGraph); taylor: first-order "
                        "Taylor on --data; layer: remove residual blocks")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--ratio", type=float,
                        help="fraction of prunable channels (layer: of removable blocks)")
    amount.add_argument("--target-flops", type=float,
                        help="FLOPs of the result as a fraction of the original")
    amount.add_argument("--target-params", type=float,
                        help="parameters of the result as a fraction of the original")
    amount.add_argument("--target-latency", metavar="MS|P%",
                        help="prune until the batch-1 latency measured on this machine (at --imgsz, on --backend) "
                             "is within 5 %% of MS milliseconds, or of P %% of the unpruned model's; refused, with "
                             "what the smallest model measured, when it cannot be reached")
    amount.add_argument("--blocks", type=int, help="layer: number of residual blocks to remove")
    p.add_argument("--global", dest="global_rank", action="store_true",
                   help="l1/l2/group/taylor: one ranking over all channels instead of the same ratio per layer "
                        "(group/taylor: each group's scores divided by their mean)")
    p.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="how many channels each group loses: uniform (the same ratio), global (one ranking; "
                        "= --global) or sensitivity (the least predicted loss, from --sensitivity)")
    p.add_argument("--sensitivity", metavar="FILE.json",
                   help="with --allocation sensitivity: the curves `yoloslim sensitivity --json` wrote")
    p.add_argument("--include", nargs="+", metavar="NAME",
                   help="prune only under these module-name prefixes (a stage or a single conv) and what is "
                        "coupled to them")
    p.add_argument("--round-to", type=int, default=None,
                   help=f"keep pruned widths multiples of N, the widths that run fast (default {ROUND_TO}; 1: exact "
                        "counts)")
    p.add_argument("--min-channels", type=int, default=0,
                   help="keep the N strongest channels of a group a ratio would empty, instead of refusing")
    p.add_argument("--fold-bias", action="store_true",
                   help="fold removed channels' constant act(β) into the next convs' biases")
    p.add_argument("--data", help="data.yaml or VOC root: also report mAP before and after on its val split")
    p.add_argument("--class-map", metavar="FILE",
                   help="with --data: YAML 'data set name: model name' lines (default: match classes by name)")
    p.add_argument("--imgsz", type=int, default=None,
                   help="image size for FLOPs, latency, mAP (default: the file's)")
    p.add_argument("--batch", type=int, default=16, help="batch size of the mAP evaluation (default 16)")
    p.add_argument("--workers", type=int, default=2, help="data-loader workers for --data (default 2)")
    p.add_argument("--latency-runs", type=int, default=20,
                   help="timed batch-1 runs per model, alternating before/after (0: skip; default 20)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help=f"how latency is timed: onnxruntime or torch (fused) (default: {LATENCY_BACKEND} with "
                        "--target-latency, else torch)")
    p.add_argument("--report", metavar="FILE.html",
                   help="also write the pruning report: one self-contained HTML page (tables and pictures)")
    p.add_argument("--steps", type=int, default=1,
                   help="prune in K steps (fine-tuned between them with --finetune-epochs)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="fine-tune epochs between --steps (needs --data)")
    p.add_argument("--calib", metavar="SOURCE",
                   help="recalibrate the pruned model's batch norms on these images: a data set (its train "
                        "split) or a folder of images (default: --data's train split)")
    p.add_argument("--calib-images", type=int, default=None, metavar="N",
                   help="recalibrate on at most N images (default 256)")
    p.add_argument("--no-calib", action="store_true", help="do not recalibrate the batch norms, even with --data")
    add_device(p)
    add_threads(p)
    p.add_argument("--out", help="output model file (default: <weights>-<method>.safetensors)")
    p.add_argument("--json", dest="json_file",
                   help="also write before/after figures and per-layer widths as JSON")
    p.set_defaults(func=lambda a: _run(a))


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.prune import prune

    prune(weights=a.weights, method=a.method, ratio=a.ratio, target_flops=a.target_flops,
          target_params=a.target_params, blocks=a.blocks, global_rank=a.global_rank, include=a.include,
          round_to=a.round_to, min_channels=a.min_channels, fold_bias=a.fold_bias, data=a.data, imgsz=a.imgsz,
          batch=a.batch, workers=a.workers, out=a.out, json_file=a.json_file, latency_runs=a.latency_runs,
          steps=a.steps, finetune_epochs=a.finetune_epochs, calib=a.calib, no_calib=a.no_calib,
          class_map=a.class_map, device=a.device, allocation=a.allocation, sensitivity=a.sensitivity,
          target_latency=a.target_latency, backend=a.backend, threads=a.threads, report=a.report,
          **({"calib_images": a.calib_images} if a.calib_images is not None else {}))
    return 0
