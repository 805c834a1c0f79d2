"""Check yoloslim's YOLOv8 / YOLO11 models against ultralytics' own, in two environments.

Step 1, in a separate environment holding ultralytics (never a dependency of yoloslim), writes for each
preset the reference model's parameter count, state dict (random weights, random batch-norm
statistics), a seeded input, its raw head maps and its decoded output::

    /tmp/refv5/bin/python bench/v8_reference.py dump --out /tmp/v8ref

Step 2, in yoloslim's environment, builds each preset, loads that state dict strictly and compares::

    python bench/v8_reference.py compare --out /tmp/v8ref

A trained ultralytics checkpoint against its import (``yoloslim import --from ultralytics``): step 1
runs the checkpoint's own model (its EMA weights, float32) on a seeded input, step 2 our imported
file on the same input::

    /tmp/refv5/bin/python bench/v8_reference.py dump --checkpoint last.pt --out /tmp/v8ckpt
    python bench/v8_reference.py compare --weights last.safetensors --out /tmp/v8ckpt

Our trained model scored by ultralytics' own validator: step 1 (here) writes its state dict as plain
tensors, step 2 (there) loads it into their model of the same name and runs their ``val``::

    python bench/v8_reference.py state --weights last.safetensors --out /tmp/v8ours
    /tmp/refv5/bin/python bench/v8_reference.py val --out /tmp/v8ours --data data.yaml --imgsz 160

Measured with ultralytics 8.4.190 (input 1x3x128x160): parameter counts and state-dict keys (names and
order) equal for all ten presets; raw maps equal to 1e-6, decoded boxes to 1e-4 pixels, class
probabilities to 1e-9.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

PRESETS = ["yolov8n", "yolov8s", "yolov8m", "yolov8l", "yolov8x", "yolo11n", "yolo11s", "yolo11m", "yolo11l",
           "yolo11x"]


def dump(out: Path, names: list[str]) -> None:
    """Run in the ultralytics environment: write ``{name}.pt`` per preset."""
    from ultralytics import YOLO  # only there

    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        torch.manual_seed(0)
        model = YOLO(f"{name}.yaml").model  # built from the yaml, nothing downloaded
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    k = m.num_features
                    m.weight.copy_(torch.rand(k, generator=g) * 0.9 + 0.1)
                    m.bias.copy_(torch.rand(k, generator=g) * 0.4 - 0.2)
                    m.running_mean.copy_(torch.rand(k, generator=g) * 0.2 - 0.1)
                    m.running_var.copy_(torch.rand(k, generator=g) + 0.5)
        model.eval()
        x = torch.rand(1, 3, 128, 160, generator=g)
        head, feats = model.model[-1], {}
        hook = head.register_forward_hook(lambda m, inputs, output, feats=feats: feats.update(x=inputs[0]))
        with torch.no_grad():
            decoded = model(x)[0]  # (1, 4 + nc, N): xywh pixels, class probabilities
            raw = [torch.cat((head.cv2[i](f), head.cv3[i](f)), 1) for i, f in enumerate(feats["x"])]
        hook.remove()
        torch.save({"params": sum(p.numel() for p in model.parameters()), "state": model.state_dict(), "x": x,
                    "raw": raw, "decoded": decoded}, out / f"{name}.pt")
        print(f"{name}: written")


def dump_checkpoint(path: Path, out: Path, imgsz: int = 160) -> None:
    """Run in the ultralytics environment: ``checkpoint.pt`` holds the raw maps of a trained checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # their pickle, in their environment
    model = (ckpt.get("ema") or ckpt["model"]).float().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, imgsz, imgsz, generator=g)
    head, feats = model.model[-1], {}
    hook = head.register_forward_hook(lambda m, inputs, output, feats=feats: feats.update(x=inputs[0]))
    with torch.no_grad():
        decoded = model(x)[0]
        raw = [torch.cat((head.cv2[i](f), head.cv3[i](f)), 1) for i, f in enumerate(feats["x"])]
    hook.remove()
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"params": sum(p.numel() for p in model.parameters()), "x": x, "raw": raw, "decoded": decoded},
               out / "checkpoint.pt")
    print(f"{path}: written {out / 'checkpoint.pt'}")


def compare_weights(weights: Path, out: Path) -> None:
    """Run in yoloslim's environment: the imported ``weights`` on the input :func:`dump_checkpoint` used."""
    from yoloslim.models.decode import DecodedModel
    from yoloslim.models.io import load_model

    ref = torch.load(out / "checkpoint.pt", weights_only=True)
    model, _info = load_model(weights)
    model.eval()
    with torch.no_grad():
        raw = model(ref["x"])
        rows = DecodedModel(model).eval()(ref["x"])  # (b, N, 5 + nc)
    theirs = ref["decoded"].transpose(1, 2)  # (b, N, 4 + nc)
    d_raw = max(float((a - b).abs().max()) for a, b in zip(raw, ref["raw"], strict=True))
    d_box = float((rows[..., :4] - theirs[..., :4]).abs().max())
    d_cls = float((rows[..., 5:] - theirs[..., 4:]).abs().max())
    n = sum(p.numel() for p in model.parameters())
    print(f"{weights}: params {n:,} (checkpoint {ref['params']:,}), raw {d_raw:.1e}, boxes {d_box:.1e} px, "
          f"classes {d_cls:.1e}")


def write_state(weights: Path, out: Path) -> None:
    """Run in yoloslim's environment: ``state.pt``, our model's state dict (ultralytics' key layout), as plain data."""
    from yoloslim.models.io import load_model

    model, info = load_model(weights)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"name": info.spec.name, "names": list(info.names), "state": model.state_dict()}, out / "state.pt")
    print(f"{weights}: written {out / 'state.pt'} ({info.spec.name}, {len(info.names)} classes)")


def their_val(out: Path, data: str, imgsz: int) -> None:
    """Run in the ultralytics environment: their validator on the model :func:`write_state` wrote."""
    from ultralytics import YOLO  # only there
    from ultralytics.nn.tasks import DetectionModel

    ours = torch.load(out / "state.pt", weights_only=True)
    yolo = YOLO(f"{ours['name']}.yaml")  # built from the yaml, nothing downloaded
    yolo.model = DetectionModel(f"{ours['name']}.yaml", nc=len(ours["names"]), verbose=False)
    yolo.model.load_state_dict(ours["state"], strict=True)
    yolo.model.names = dict(enumerate(ours["names"]))
    m = yolo.val(data=data, imgsz=imgsz, batch=16, device="cpu", plots=False, workers=0)
    print(f"ultralytics val: mAP@.5 {m.box.map50:.4f}, mAP@.5:.95 {m.box.map:.4f}")


def compare(out: Path, names: list[str]) -> None:
    """Run in yoloslim's environment: load each reference state dict into our preset and compare."""
    from yoloslim.models import create_model
    from yoloslim.models.decode import DecodedModel
    from yoloslim.models.io import load_state_strict

    for name in names:
        ref = torch.load(out / f"{name}.pt", weights_only=True)
        model = create_model(name)
        same_keys = list(model.state_dict()) == list(ref["state"])
        load_state_strict(model, ref["state"], source=name)
        model.eval()
        with torch.no_grad():
            raw = model(ref["x"])
            rows = DecodedModel(model).eval()(ref["x"])[0]  # (N, 5 + nc)
        theirs = ref["decoded"][0].T  # (N, 4 + nc)
        d_raw = max(float((a - b).abs().max()) for a, b in zip(raw, ref["raw"], strict=True))
        d_box = float((rows[:, :4] - theirs[:, :4]).abs().max())
        d_cls = float((rows[:, 5:] - theirs[:, 4:]).abs().max())
        n = sum(p.numel() for p in model.parameters())
        print(f"{name}: params {n:,} (ref {ref['params']:,}), keys in the same order: {same_keys}, "
              f"raw {d_raw:.1e}, boxes {d_box:.1e} px, classes {d_cls:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["dump", "compare", "state", "val"])
    p.add_argument("--out", type=Path, default=Path("/tmp/v8ref"))
    p.add_argument("--models", nargs="*", default=PRESETS)
    p.add_argument("--checkpoint", type=Path, help="dump: a trained ultralytics .pt instead of the presets")
    p.add_argument("--weights", type=Path, help="compare: its import (.safetensors) instead of the presets")
    p.add_argument("--imgsz", type=int, default=160, help="dump --checkpoint, val: the input size")
    p.add_argument("--data", help="val: the data.yaml to score on")
    a = p.parse_args()
    if a.step == "state":
        write_state(a.weights, a.out)
    elif a.step == "val":
        their_val(a.out, a.data, a.imgsz)
    elif a.step == "dump":
        dump_checkpoint(a.checkpoint, a.out, a.imgsz) if a.checkpoint else dump(a.out, a.models)
    else:
        compare_weights(a.weights, a.out) if a.weights else compare(a.out, a.models)


if __name__ == "__main__":
    main()
