"""Check ``yoloslim import --from ultralytics`` against ultralytics itself, in two environments.

Step 1, in a separate environment holding ultralytics (never a dependency of yoloslim), writes for each
model a checkpoint as ultralytics' ``strip_optimizer`` leaves a ``best.pt`` (the model in half
precision, ``ema`` None, ``train_args``, ``version``; random batch-norm statistics and class biases so
that the scores vary), and the model's parameter count, state-dict keys and decoded output
``(1, 4 + nc, N)`` for a seeded input::

    /tmp/refv5/bin/python bench/ultralytics_import_check.py dump --out /tmp/v8import_ref

Step 2, in yoloslim's environment (no ultralytics), imports each checkpoint through the restricted
unpickler and compares its output in the ultralytics layout::

    python bench/ultralytics_import_check.py compare --out /tmp/v8import_ref

Measured with ultralytics 8.4.190 (input 1x3x128x160; the table in docs/prune-yolov8.md, "How we
checked"): yolov8n/s/m/l, yolo11n/s/m/l and yolov5nu/su/mu import with the reference's parameter counts
and state-dict keys (in the same order but for YOLOv5u's C3 blocks, whose ``m`` yoloslim lists before
``cv3``); boxes equal to 1e-4 pixels (3e-6 relative), class scores to 1e-7.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

MODELS = ["yolov8n", "yolov8s", "yolov8m", "yolov8l", "yolo11n", "yolo11s", "yolo11m", "yolo11l", "yolov5nu",
          "yolov5su"]


def dump(out: Path, names: list[str]) -> None:
    """Run in the ultralytics environment: ``{name}-ultralytics.pt`` and ``{name}-ref.pt`` per model."""
    import ultralytics  # only there
    from ultralytics import YOLO

    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = YOLO(f"{name}.yaml").model.eval()  # built from the yaml, nothing downloaded
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    k = m.num_features
                    m.running_mean.copy_(torch.randn(k, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(k, generator=g) * 0.5 + 0.5)
                    m.weight.copy_(torch.rand(k, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(k, generator=g) * 0.1)
            for branch in model.model[-1].cv3:
                branch[-1].bias.zero_()  # class priors of 0.5 instead of ultralytics' 0.01
        half = copy.deepcopy(model).half()
        for p in half.parameters():
            p.requires_grad = False
        torch.save({"epoch": -1, "best_fitness": None, "model": half, "ema": None, "updates": None,
                    "optimizer": None, "train_args": {"model": f"{name}.yaml", "imgsz": 640},
                    "version": ultralytics.__version__}, out / f"{name}-ultralytics.pt")
        x = torch.rand(1, 3, 128, 160, generator=g)
        with torch.no_grad():
            decoded = copy.deepcopy(half).float()(x)[0]  # the file's half-rounded weights, in float32
        torch.save({"params": sum(p.numel() for p in model.parameters()), "keys": list(model.state_dict()),
                    "x": x, "decoded": decoded}, out / f"{name}-ref.pt")
        print(f"{name}: written")


def compare(out: Path, names: list[str]) -> None:
    """Run in yoloslim's environment: import each checkpoint and compare with the reference's output."""
    from yoloslim.deploy.import_ultralytics import import_ultralytics
    from yoloslim.deploy.onnx_export import UltralyticsLayout
    from yoloslim.models.decode import DecodedModel

    for name in names:
        ref = torch.load(out / f"{name}-ref.pt", weights_only=True)
        model, info = import_ultralytics(out / f"{name}-ultralytics.pt")
        with torch.no_grad():
            ours = UltralyticsLayout(DecodedModel(model)).eval()(ref["x"])  # (1, 4 + nc, N)
        d = (ours - ref["decoded"]).abs()
        rel = float((d[:, :4] / ref["decoded"][:, :4].abs().clamp(min=1)).max())
        n = sum(p.numel() for p in model.parameters())
        print(f"{name} ({info.spec.name}): params {n:,} (ref {ref['params']:,}), keys in the same order: "
              f"{list(model.state_dict()) == ref['keys']}, boxes {float(d[:, :4].max()):.1e} px ({rel:.1e} "
              f"relative), scores {float(d[:, 4:].max()):.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["dump", "compare"])
    p.add_argument("--out", type=Path, default=Path("/tmp/v8import_ref"))
    p.add_argument("--models", nargs="*", default=MODELS)
    a = p.parse_args()
    (dump if a.step == "dump" else compare)(a.out, a.models)


if __name__ == "__main__":
    main()
