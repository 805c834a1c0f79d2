"""Training throughput: images per second of one training step (forward, loss, backward, SGD step).

Usage:
    .venv/bin/python bench/train_step.py [--models yolov5n yolov5s] [--imgsz 320] [--batch 8]
                                         [--steps 10] [--warmup 2] [--threads N] [--json FILE]

Synthetic tensors (random images, a few random boxes per image), no data loading: the figure is
the model's forward + the family's loss (with the family's hyp defaults, ``load_hyp(family=...)``:
YOLOv8 / YOLO11 gains for those) + backward + the optimiser step, the same code path ``yoloslim
train`` runs. Reported: the median seconds per step over ``--steps`` timed steps after
``--warmup`` untimed ones, and ``batch / median`` images per second. The DESIGN.md reference on the
project machine: the ultralytics YOLOv5 step, yolov5n 22 img/s, yolov5s 8.2 img/s (batch 8, 320 px).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, environment, md_table  # noqa: E402

from yoloslim.engine.optim import build_optimizer  # noqa: E402
from yoloslim.hyp import Hyp, load_hyp  # noqa: E402
from yoloslim.loss import make_loss  # noqa: E402
from yoloslim.models import create_model  # noqa: E402
from yoloslim.workflows.report import write_json  # noqa: E402

REFERENCE = {"yolov5n": 22.0, "yolov5s": 8.2}  # img/s, ultralytics YOLOv5 on the project machine


def synthetic_batch(batch: int, imgsz: int, nc: int, boxes_per_image: int = 4,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (b, 3, S, S) in 0..1 and targets (N, 6) [img, cls, cx, cy, w, h] normalised."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(batch, 3, imgsz, imgsz, generator=g)
    n = batch * boxes_per_image
    img_idx = torch.arange(batch).repeat_interleave(boxes_per_image).float()
    cls = torch.randint(0, nc, (n,), generator=g).float()
    wh = torch.rand(n, 2, generator=g) * 0.4 + 0.05
    xy = torch.rand(n, 2, generator=g) * (1 - wh) + wh / 2
    return imgs, torch.cat((img_idx[:, None], cls[:, None], xy, wh), 1)


def build_step(name: str, imgsz: int, nc: int = 80) -> tuple[torch.nn.Module, Hyp, Any, torch.optim.Optimizer]:
    """Model ``name`` (seeded, train mode), the hyp its family trains with, its loss and optimiser."""
    torch.manual_seed(0)
    model = create_model(name, nc=nc).train()
    hyp = load_hyp(family=model.spec.family)  # the gains train uses for this family (YOLOv8: box 7.5 ...)
    loss_fn = make_loss(model, hyp, imgsz)
    opt = build_optimizer(model, hyp.lr0, hyp.momentum, hyp.weight_decay)
    return model, hyp, loss_fn, opt


def time_steps(name: str, imgsz: int, batch: int, steps: int, warmup: int, nc: int = 80) -> dict:
    """Median seconds per training step of model ``name``."""
    model, _hyp, loss_fn, opt = build_step(name, imgsz, nc)
    imgs, targets = synthetic_batch(batch, imgsz, nc)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss, _ = loss_fn(model(imgs), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"model": name, "imgsz": imgsz, "batch": batch, "steps": steps, "median_s": round(med, 4),
            "min_s": round(min(times), 4), "max_s": round(max(times), 4), "img_per_s": round(batch / med, 2),
            "reference_img_per_s": REFERENCE.get(name)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["yolov5n", "yolov5s"])
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--json", dest="json_file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    results = [time_steps(m, a.imgsz, a.batch, a.steps, a.warmup) for m in a.models]
    rows = []
    for r in results:
        ref = r["reference_img_per_s"]
        rows.append([r["model"], r["imgsz"], r["batch"], f"{r['median_s'] * 1000:.0f}",
                     f"{r['img_per_s']:.1f}", "" if ref is None else f"{ref:.1f}",
                     "" if ref is None else f"{r['img_per_s'] / ref:.2f}×"])
    headers = ["model", "imgsz", "batch", "ms/step (median)", "img/s", "reference img/s", "ratio"]
    print(md_table(headers, rows))
    print(f"\n`{command_line(__file__)}`")
    if a.json_file:
        write_json(a.json_file, {"results": results, "command": command_line(__file__),
                                 "environment": environment()})


if __name__ == "__main__":
    main()
