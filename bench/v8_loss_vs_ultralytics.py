"""yoloslim's YOLOv8 loss against ultralytics' ``v8DetectionLoss`` on the same seeded raw maps and targets.

Usage:
    .venv/bin/python bench/v8_loss_vs_ultralytics.py --ref-python /tmp/refv5/bin/python [--seeds 1 2 3 4]

For each seed: three 160 px images (maps of 20, 10, 5 cells, 4 classes, random DFL and class logits),
up to 12 overlapping boxes per image (sides 1.6-82 px, so boxes smaller than a cell occur) and one
image without boxes. ultralytics runs in its own environment (``--ref-python``: a venv with
ultralytics installed, never a dependency of yoloslim) on the same tensors, saved to a temporary
file; the script prints both losses' items (gains applied) and the largest difference of the
gradients with respect to the raw maps.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

from yoloslim.hyp import load_hyp
from yoloslim.loss.yolov8 import YOLOv8Loss
from yoloslim.models import model_spec

NC = 4
REFERENCE = """
import sys, torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.loss import v8DetectionLoss
d = torch.load(sys.argv[1])
m = DetectionModel("yolov8n.yaml", nc=d["nc"], verbose=False)
m.args = get_cfg()
raw = [r.clone().requires_grad_(True) for r in d["raw"]]
preds = {"boxes": torch.cat([r[:, :64].flatten(2) for r in raw], 2),
         "scores": torch.cat([r[:, 64:].flatten(2) for r in raw], 2), "feats": raw}
t = d["targets"]
loss, _ = v8DetectionLoss(m)(preds, {"batch_idx": t[:, 0], "cls": t[:, 1:2], "bboxes": t[:, 2:6]})
loss.sum().backward()
torch.save({"items": (loss.detach() / t.new_tensor(raw[0].shape[0])).tolist(), "grads": [r.grad for r in raw]},
           sys.argv[2])
"""


def inputs(seed: int) -> dict:
    """Seeded raw maps (3, 64 + NC, s, s) for s = 20, 10, 5 and targets (N, 6) in 0..1."""
    g = torch.Generator().manual_seed(seed)
    raw = [torch.randn(3, 64 + NC, s, s, generator=g) * 2 for s in (20, 10, 5)]
    for r in raw:
        r[:, 64:] -= 2.0
    rows = []
    for img, n in ((0, 12), (1, 5), (2, 0)):
        for _ in range(n):
            c = torch.rand(2, generator=g) * 0.6 + 0.2
            wh = torch.rand(2, generator=g) * 0.5 + 0.01
            rows.append([img, int(torch.randint(NC, (1,), generator=g)), *c.tolist(), *wh.tolist()])
    return {"raw": raw, "targets": torch.tensor(rows), "nc": NC}


def ours(data: dict) -> tuple[list[float], list[torch.Tensor]]:
    """Our items (box, cls, dfl) and the gradients of the loss with respect to the raw maps."""
    holder = nn.Module()
    holder.spec = model_spec("yolov8n", NC)
    raw = [r.clone().requires_grad_(True) for r in data["raw"]]
    loss, items = YOLOv8Loss(holder, load_hyp(family="yolov8"))(raw, data["targets"])
    loss.backward()
    return [float(items[k]) for k in ("box", "cls", "dfl")], [r.grad for r in raw]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-python", required=True, help="python of an environment with ultralytics")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    args = ap.parse_args()
    print("| seed | ultralytics box, cls, dfl | yoloslim box, cls, dfl | max abs gradient difference (max gradient) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            data = inputs(seed)
            src, out = Path(tmp) / "inputs.pt", Path(tmp) / "ref.pt"
            torch.save(data, src)
            subprocess.run([args.ref_python, "-c", REFERENCE, str(src), str(out)], check=True,
                           capture_output=True)
            ref = torch.load(out)
            items, grads = ours(data)
            diff = max(float((a - b).abs().max()) for a, b in zip(grads, ref["grads"], strict=True))
            top = max(float(b.abs().max()) for b in ref["grads"])
            print(f"| {seed} | {', '.join(f'{v:.4f}' for v in ref['items'])} | "
                  f"{', '.join(f'{v:.4f}' for v in items)} | {diff:.1e} ({top:.3f}) |")


if __name__ == "__main__":
    main()
