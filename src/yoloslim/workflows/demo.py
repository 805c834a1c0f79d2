"""``yoloslim demo``: the main job on the built-in data set, one step after the other.

Steps so far: (1) generate the synthetic data set in VOC format, (2) convert it to YOLO txt,
(3) check it and print its statistics, (4) train YOLOv5n on it, (5) validate the trained model,
(6) predict on a few val images; then a summary table. Sparsity training, pruning and the
before/after table are further steps of this same function, each a call to its workflow.

A second run in the same folder reuses what the first finished (data set, trained model) and
resumes an interrupted training.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from yoloslim.data.check import check_data, format_report
from yoloslim.data.convert import convert_voc
from yoloslim.data.synth import synthesize
from yoloslim.errors import UserError
from yoloslim.log import logger, setup_logging
from yoloslim.workflows.report import table, write_json


@dataclass(frozen=True)
class DemoData:
    """Size of the demo's data set: full, or ``--quick`` (for a smoke test in seconds)."""

    images: int
    imgsz: int
    seed: int = 0
    val_ratio: float = 0.2


FULL = DemoData(images=500, imgsz=320)
QUICK = DemoData(images=48, imgsz=128)


@dataclass(frozen=True)
class DemoTrain:
    """How the demo trains: model, epochs, image size, batch, and hyp overrides.

    Every batch is an optimiser step (no accumulation to 64 images): on a CPU-bound budget more
    steps matter more than YOLOv5's batch-size invariance.
    """

    epochs: int
    imgsz: int
    batch: int = 16
    model: str = "yolov5n"
    hyp: tuple[tuple[str, float], ...] = ()


# full: 400 train images at 256 px, about 15 s an epoch on a 2-core CPU (YOLOv5n trains at ~35 img/s
# there), so 40 epochs fit the 15-minute budget; quick: a smoke test whose 3 batches an epoch would
# spend the whole run in the 100-iteration warm-up, so it has none
FULL_TRAIN = DemoTrain(epochs=40, imgsz=256)
QUICK_TRAIN = DemoTrain(epochs=30, imgsz=128, hyp=(("warmup_epochs", 0.0),))
STEPS = 6


def demo(out: str | Path = "runs/demo", quick: bool = False, json_file: str | None = None,
         epochs: int | None = None, workers: int = 2) -> dict[str, Any]:
    """Run the demo into ``out`` and return its summary.

    Args:
        out: the run folder (log file, data set, weights, predictions and reports).
        quick: a small data set and a short training, for a smoke test.
        json_file: also write the summary as JSON.
        epochs: train this many epochs instead of the preset's.
        workers: data loader processes.
    """
    out = Path(out)
    setup_logging(out)
    settings = QUICK if quick else FULL
    train_settings = QUICK_TRAIN if quick else FULL_TRAIN
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {epochs}")
        train_settings = replace(train_settings, epochs=epochs)
    print(f"[1/{STEPS}] synthetic data set: {settings.images} images of {settings.imgsz} px, VOC format")
    voc_root, reused = step_synth(out / "data", settings)
    print(f"[2/{STEPS}] VOC -> YOLO txt{' (reused)' if reused else ''}")
    data_yaml = step_convert(voc_root, out / "data" / "yolo", settings, reused)
    print(f"[3/{STEPS}] check")
    check = step_check(data_yaml)
    data = {"images": check["images"], "boxes": check["boxes"], "problems": len(check["problems"])}
    ts = train_settings
    print(f"[4/{STEPS}] train {ts.model}: {ts.epochs} epochs at {ts.imgsz} px, batch {ts.batch}")
    trained = step_train(data_yaml, out / "train", ts, workers, reused)
    print(f"[5/{STEPS}] validate")
    scores = step_val(trained["weights"], data_yaml, ts, workers, out / "val.json")
    print(f"[6/{STEPS}] predict")
    predicted = step_predict(trained["weights"], data_yaml, ts, out)
    summary = {"out": str(out), "voc_root": str(voc_root), "data_yaml": str(data_yaml), "quick": quick,
               "data": data, "train": trained, "val": scores, "predict": predicted}
    print()
    print(summary_table(summary))
    if json_file:
        write_json(json_file, summary)
    return summary


def step_synth(data_dir: Path, settings: DemoData) -> tuple[Path, bool]:
    """Write the VOC data set into ``data_dir/voc`` unless the same one is already there.

    Returns:
        The VOC root and whether an existing data set was reused.
    """
    stamp = data_dir / "settings.json"
    voc = data_dir / "voc"
    if stamp.is_file():
        if json.loads(stamp.read_text()) == asdict(settings) and (data_dir / "yolo" / "data.yaml").is_file():
            logger.info(f"reusing the data set in {data_dir} (same settings)")
            return voc, True
        shutil.rmtree(data_dir)  # ours (it has our stamp), made with other settings
    elif data_dir.exists() and any(data_dir.iterdir()):
        raise UserError(f"{data_dir} exists and was not made by the demo; choose another --out")
    synthesize(voc, fmt="voc", images=settings.images, imgsz=settings.imgsz, seed=settings.seed,
               val_ratio=settings.val_ratio)
    return voc, False


def step_convert(voc_root: Path, yolo_dir: Path, settings: DemoData, reused: bool) -> Path:
    """Convert the VOC data set to YOLO txt (keeping its ImageSets split); returns the data.yaml."""
    data_yaml = yolo_dir / "data.yaml"
    if not reused:
        if yolo_dir.exists():
            shutil.rmtree(yolo_dir)
        res = convert_voc(voc_root, yolo_dir, seed=settings.seed)
        data_yaml = res.data_yaml
        stamp = yolo_dir.parent / "settings.json"
        stamp.write_text(json.dumps(asdict(settings)) + "\n")
    return data_yaml


def step_check(data_yaml: Path) -> dict[str, Any]:
    """Check the converted data set, print its statistics; a problem here is a bug, so it raises."""
    report = check_data(data_yaml)
    print(format_report(report))
    if not report.ok:
        raise RuntimeError(f"the demo's own data set has {len(report.problems)} problem(s)")
    return report.summary()


def step_train(data_yaml: Path, run: Path, ts: DemoTrain, workers: int, data_reused: bool) -> dict[str, Any]:
    """Train ``ts.model`` into ``run``; reuse a finished run of the same settings, resume an interrupted one.

    Returns:
        ``{"weights", "epochs", "imgsz", "seconds", "reused"}`` (``weights``: the last EMA weights).
    """
    from yoloslim.engine.checkpoint import load_state
    from yoloslim.workflows.train import train

    stamp = run / "demo_settings.json"
    state_file = run / "weights" / "last_state.pt"
    wanted = json.dumps(asdict(ts))
    last = run / "weights" / "last.safetensors"
    t0 = time.perf_counter()
    same = data_reused and stamp.is_file() and stamp.read_text() == wanted and state_file.is_file()
    done = same and int(load_state(state_file)["epoch"]) >= ts.epochs
    if done:
        logger.info(f"reusing the trained model {last} (same settings)")
    elif same:
        train(resume=str(run), workers=workers)
    else:
        if run.exists():
            shutil.rmtree(run)  # ours, from other settings or an older data set
        run.mkdir(parents=True)
        stamp.write_text(wanted)
        hyp = run.parent / "demo_hyp.yaml"
        hyp.write_text("".join(f"{k}: {v}\n" for k, v in ts.hyp))
        train(data=str(data_yaml), model=ts.model, epochs=ts.epochs, batch=ts.batch, imgsz=ts.imgsz,
              hyp=str(hyp), workers=workers, out=str(run), device="cpu", cache=True, nominal_batch=ts.batch,
              val_every_epoch=False)
    return {"weights": str(last), "model": ts.model, "epochs": ts.epochs, "imgsz": ts.imgsz,
            "seconds": round(time.perf_counter() - t0, 1), "reused": bool(done)}


def step_val(weights: str, data_yaml: Path, ts: DemoTrain, workers: int, json_file: Path) -> dict[str, Any]:
    """Score the trained model on the val split (the ``yoloslim val`` workflow)."""
    from yoloslim.workflows.val import val

    res = val(weights=weights, data=str(data_yaml), imgsz=ts.imgsz, workers=workers, json_file=str(json_file))
    return {k: res[k] for k in ("map50", "map", "precision", "recall", "speed_ms") if k in res}


def step_predict(weights: str, data_yaml: Path, ts: DemoTrain, out: Path, images: int = 4) -> dict[str, Any]:
    """Draw the detections on the first few val images (the ``yoloslim predict`` workflow)."""
    from yoloslim.data.dataset import load_data
    from yoloslim.workflows.predict import predict

    samples = out / "predict_samples"
    if samples.exists():
        shutil.rmtree(samples)
    samples.mkdir(parents=True)
    for s in load_data(data_yaml, warn=False).splits["val"][:images]:
        shutil.copyfile(s.path, samples / s.path.name)
    target = out / "predict"
    if target.exists():
        shutil.rmtree(target)
    res = predict(source=str(samples), weights=weights, imgsz=ts.imgsz, out=str(target), progress=False)
    return {"images": res["frames"], "detections": res["detections"], "out": res["out"]}


def summary_table(summary: dict[str, Any]) -> str:
    """What the demo did and reached, as one table."""
    from yoloslim.engine.checkpoint import load_model
    from yoloslim.engine.profile import count_params, profile, total_gflops

    tr, va, pr = summary["train"], summary["val"], summary["predict"]
    model, _ = load_model(tr["weights"])
    images, boxes = summary["data"]["images"], summary["data"]["boxes"]
    n_boxes = sum(sum(per_class.values()) for per_class in boxes.values())  # split -> class -> count
    trained = " (reused)" if tr["reused"] else f" in {tr['seconds']:.0f} s"
    rows = [
        ["data set", f"{images.get('train', 0)} train / {images.get('val', 0)} val images, {n_boxes} boxes"],
        ["model", f"{tr['model']}: {count_params(model):,} params, "
                  f"{total_gflops(profile(model, tr['imgsz'])):.2f} GFLOPs at {tr['imgsz']} px"],
        ["training", f"{tr['epochs']} epochs{trained}"],
        ["mAP@.5", f"{va['map50']:.3f}"],
        ["mAP@.5:.95", f"{va['map']:.3f}"],
        ["precision / recall", f"{va['precision']:.3f} / {va['recall']:.3f}"],
        ["predictions", f"{pr['detections']} boxes on {pr['images']} images in {pr['out']}"],
        ["weights", tr["weights"]],
    ]
    return table(["demo", ""], rows)
