"""Pruning criteria at equal FLOPs: mAP right after pruning and after BN recalibration, no fine-tuning.

Every candidate goes through ``yoloslim prune`` itself (the workflow function), with
``--target-flops F`` so that all land on the same FLOPs, ``--data`` for the val mAP, and the
default recalibration on the train split. Candidates: Li et al.'s filter norms per layer (l1, l2)
and globally, network slimming (slim), DepGraph's group L2 norm per layer and globally with
per-group normalisation (group), first-order Taylor from 8 batches of the train split (taylor),
and iterative pruning in ``--steps`` steps with recalibration between them. ``--sensitivity FILE ...``
adds the allocation from each measured curve file (``yoloslim sensitivity --json``) for the file's method.

Train a model first (the figures in docs/BENCHMARKS.md come from a yolov5n trained 40 epochs on
300 synthetic images at 128 px; see there for the command), then::

    OMP_NUM_THREADS=1 python bench/criteria.py --weights W --data DATA --target-flops 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, md_table  # noqa: E402

from yoloslim.errors import UserError  # noqa: E402
from yoloslim.workflows.prune import prune  # noqa: E402

# label -> prune() arguments; a global ranking of an unsparse model empties groups: they keep 4 channels
CANDIDATES: dict[str, dict] = {
    "l1": {"method": "l1"},
    "l2": {"method": "l2"},
    "l1 --global": {"method": "l1", "global_rank": True, "min_channels": 4},
    "slim": {"method": "slim", "min_channels": 4},
    "group": {"method": "group"},
    "group --global": {"method": "group", "global_rank": True, "min_channels": 4},
    "taylor": {"method": "taylor"},
    "taylor --global": {"method": "taylor", "global_rank": True, "min_channels": 4},
    "l1 --steps 3": {"method": "l1", "steps": 3},
    "group --steps 3": {"method": "group", "steps": 3},
}


def run(weights: str, data: str, target_flops: float, candidates: list[str], imgsz: int | None = None,
        batch: int = 16, calib_images: int = 256) -> list[dict]:
    """One row per candidate: FLOPs kept, mAP@.5 / mAP@.5:.95 before, right after pruning, after recalibration."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, label in enumerate(candidates):
            try:
                s = prune(weights, ratio=None, target_flops=target_flops, data=data, imgsz=imgsz, batch=batch,
                          workers=0, latency_runs=0, calib_images=calib_images,
                          out=str(Path(tmp) / f"c{i}.safetensors"), **CANDIDATES[label])
            except UserError as e:
                rows.append({"candidate": label, "refused": str(e)})
                continue
            b, u = s["before"], s["uncalibrated"]
            a = s["recalibrated"] or s["after"]  # recalibrated, also when prune kept the pruned model instead
            rows.append({"candidate": label, "flops": round(a["gflops"] / b["gflops"], 4),
                         "before": [b["map50"], b["map"]], "pruned": [u["map50"], u["map"]],
                         "recalibrated": [a["map50"], a["map"]]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--target-flops", type=float, default=0.5)
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--imgsz", type=int)
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--sensitivity", nargs="+", default=[], metavar="FILE",
                    help="also the --allocation sensitivity candidate of each curve file")
    ap.add_argument("--json", dest="json_file")
    a = ap.parse_args()
    torch.set_num_threads(1)
    for f in a.sensitivity:
        curves = json.loads(Path(f).read_text())
        label = f"{curves['method']} --allocation sensitivity ({curves['metric']}, {Path(f).name})"
        CANDIDATES[label] = {"method": curves["method"], "allocation": "sensitivity", "sensitivity": f}
        a.candidates.append(label)
    rows = run(a.weights, a.data, a.target_flops, a.candidates, a.imgsz, calib_images=a.calib_images)
    done = [r for r in rows if "before" in r]
    if done:
        print(f"unpruned: mAP@.5 {done[0]['before'][0]:.4f}, mAP@.5:.95 {done[0]['before'][1]:.4f}")
    print(md_table(["criterion", "FLOPs", "mAP@.5 pruned", "mAP@.5 + recal", "mAP@.5:.95 pruned",
                    "mAP@.5:.95 + recal"],
                   [[r["candidate"], f"{r['flops']:.1%}", f"{r['pruned'][0]:.4f}", f"{r['recalibrated'][0]:.4f}",
                     f"{r['pruned'][1]:.4f}", f"{r['recalibrated'][1]:.4f}"] if "before" in r
                    else [r["candidate"], "refused", "-", "-", "-", "-"] for r in rows]))
    for r in rows:
        if "refused" in r:
            print(f"{r['candidate']}: {r['refused']}")
    print(command_line(__file__))
    if a.json_file:
        Path(a.json_file).write_text(json.dumps({"command": command_line(__file__), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
