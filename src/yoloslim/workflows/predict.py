"""``yoloslim predict``: detect objects in an image, a folder, a video or a camera stream.

Writes annotated images (same file names) or an annotated ``.mp4`` per video into ``--out``, and
with ``--save-txt`` a YOLO-format ``labels/<name>.txt`` per image or frame (``cls cx cy w h conf``,
normalised to the original image). Video and camera runs show the frame rate they sustain, reading,
inference, drawing and writing included.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from yoloslim.deploy.draw import draw_detections, draw_fps
from yoloslim.deploy.predict import Detections, Predictor
from yoloslim.deploy.sources import Frame, Source, open_source
from yoloslim.device import check_half, resolve_device
from yoloslim.errors import UserError
from yoloslim.models.io import atomic_write, check_writable, load_model
from yoloslim.workflows.report import write_json

BACKENDS = ("torch", "onnxruntime")


def predict(source: str, weights: str | None = None, imgsz: int | None = None, conf: float = 0.25,
            iou: float = 0.45, max_det: int = 300, fuse: bool = False, backend: str = "torch",
            onnx: str | None = None, save_txt: bool = False, out: str | None = None,
            threads: int | None = None, json_file: str | None = None,
            progress: bool = True, device: str | None = None, half: bool = False) -> dict[str, Any]:
    """Run a detector over ``source`` and write the annotated result to ``out``.

    Args:
        source: image file, folder of images, video file or camera id.
        weights: a yoloslim model file (optional with ``--backend onnxruntime --onnx FILE``).
        imgsz: letterbox size; by default the model file's (or the ONNX file's) size.
        conf: minimum score of a detection.
        iou: NMS IoU threshold.
        max_det: detections kept per image.
        fuse: fold Conv+BN first (PyTorch; identical detections, faster).
        backend: ``torch`` or ``onnxruntime``.
        onnx: the exported file for ``onnxruntime`` (default: ``<weights stem>.onnx`` next to the weights).
        save_txt: also write YOLO-format txt files under ``out/labels``.
        out: output folder (default: a new ``runs/predict/expN``).
        threads: ONNX Runtime intra-op threads (PyTorch's are the process's, set by the command line).
        json_file: write the summary (and every image's detections) as JSON.
        progress: show a tqdm bar.
        device: where the torch backend runs (None: cuda when available, else cpu); ONNX Runtime runs
            on the CPU.
        half: float16 inference (torch backend on CUDA).

    Returns:
        ``{"source", "kind", "out", "frames", "detections", "fps", "speed_ms", "results": [...]}``.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}; choose from {', '.join(BACKENDS)}")
    check_writable(out or "runs/predict", "--out", folder=True)
    check_writable(json_file, "--json")
    src = open_source(source)  # a missing source fails before the model loads
    try:
        predictor, names = _predictor(weights, imgsz, conf, iou, max_det, fuse, backend, onnx, threads,
                                      device, half)
        out_dir = _out_dir(out, src)
        run = _run_images if src.kind == "image" else _run_stream
        results, frames, seconds = run(src, predictor, names, out_dir, save_txt, progress)
    finally:
        src.close()
    fps = frames / seconds if seconds > 0 else 0.0
    summary = {
        "source": str(source), "kind": src.kind, "out": str(out_dir), "backend": backend, "fused": fuse,
        "imgsz": predictor.imgsz, "frames": frames, "detections": sum(len(r["scores"]) for r in results),
        "fps": round(fps, 2), "speed_ms": {k: round(v, 3) for k, v in predictor.timing.mean().items()},
        "results": results,
    }
    sp = summary["speed_ms"]
    print(f"{frames} {'image' if src.kind == 'image' else 'frame'}{'s' if frames != 1 else ''}, "
          f"{summary['detections']} detections; {sp['pre']:.1f} ms pre-process, "
          f"{sp['infer']:.1f} ms inference, {sp['nms']:.1f} ms NMS per image at {predictor.imgsz} px"
          + (f"; sustained {fps:.1f} FPS" if src.kind != "image" else "") + f"; results in {out_dir}")
    if json_file:
        write_json(json_file, summary)
    return summary


def _predictor(weights: str | None, imgsz: int | None, conf: float, iou: float, max_det: int, fuse: bool,
               backend: str, onnx: str | None, threads: int | None, device: str | None = None,
               half: bool = False) -> tuple[Predictor, list[str]]:
    if backend == "torch":
        if weights is None:
            raise UserError("--weights is required with --backend torch")
        dev = resolve_device(device)
        check_half(half, dev)
        model, info = load_model(weights, device=dev)
        if half:
            model.half()
        size = int(imgsz or info.imgsz)
        return Predictor(model, imgsz=size, conf=conf, iou=iou, max_det=max_det, fuse=fuse), info.names
    if half:
        raise UserError("--half is for the torch backend on CUDA; ONNX Runtime runs the exported file as it is")
    if onnx is None:
        if weights is None:
            raise UserError("--backend onnxruntime needs --onnx FILE (or --weights, exported beside it)")
        onnx = str(Path(weights).with_suffix(".onnx"))
        if not Path(onnx).is_file():
            raise UserError(f"{onnx}: no exported file; run `yoloslim export --weights {weights}` "
                            "or pass --onnx")
    import json

    from yoloslim.deploy.onnx_export import read_metadata

    if not Path(onnx).is_file():
        raise UserError(f"{onnx}: no such ONNX file")
    meta = read_metadata(onnx)
    if "names" not in meta:
        raise UserError(f"{onnx}: not a yoloslim ONNX export (no metadata); export it with `yoloslim export`")
    if weights is not None:
        spec = load_model(weights)[0].spec
        if spec.family != meta.get("family") or str(spec.nc) != meta.get("nc"):
            raise UserError(f"{onnx} was exported from a {meta.get('family')} model with {meta.get('nc')} "
                            f"classes, but {weights} is a {spec.family} model with {spec.nc}")
    size = int(imgsz or meta.get("imgsz", 640))
    names = json.loads(meta["names"])
    return Predictor(onnx=onnx, imgsz=size, conf=conf, iou=iou, max_det=max_det, threads=threads), names


def _out_dir(out: str | None, src: Source) -> Path:
    if out is None:
        from yoloslim.engine.run_files import new_run_dir

        return new_run_dir("runs/predict")
    out_dir = Path(out)
    if src.kind == "image":
        folder = Path(src.name) if Path(src.name).is_dir() else Path(src.name).parent
        if out_dir.resolve() == folder.resolve():
            raise UserError(f"--out {out} is the source folder: the annotated images would overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _run_images(src: Source, predictor: Predictor, names: list[str], out_dir: Path, save_txt: bool,
                progress: bool) -> tuple[list[dict], int, float]:
    results, n = [], 0
    start = time.perf_counter()
    bar = tqdm(src, total=src.total, desc="predict", unit="img", disable=not progress or (src.total or 0) < 2)
    for frame in bar:
        det = predictor(frame.img)
        img = draw_detections(frame.img, det.boxes, det.scores, det.classes, names)
        _write_image(out_dir / frame.name, img)
        if save_txt:
            _write_txt(out_dir / "labels" / f"{Path(frame.name).stem}.txt", det)
        results.append(_result(frame, det))
        n += 1
        t = predictor.timing
        lines = [f"{n}/{src.total} {frame.name} ({det.width}x{det.height}): {det.summary(names)} "
                 f"({t.pre + t.infer + t.nms:.1f} ms)"]
        lines += [f"  {names[c] if c < len(names) else c} {s:.2f} [{', '.join(f'{v:.1f}' for v in b)}]"
                  for b, s, c in zip(det.boxes, det.scores, det.classes, strict=True)]
        tqdm.write("\n".join(lines))
    return results, n, time.perf_counter() - start


def _run_stream(src: Source, predictor: Predictor, names: list[str], out_dir: Path, save_txt: bool,
                progress: bool) -> tuple[list[dict], int, float]:
    """A video file or camera: one annotated video, the sustained FPS in the bar and on the frames."""
    stem = Path(src.stem).stem
    writer: cv2.VideoWriter | None = None
    results, n, fps = [], 0, 0.0
    start = time.perf_counter()
    bar = tqdm(src, total=src.total, desc=f"predict {src.name}", unit="frame", disable=not progress)
    try:
        for frame in bar:
            det = predictor(frame.img)
            img = draw_fps(draw_detections(frame.img, det.boxes, det.scores, det.classes, names), fps)
            if writer is None:
                writer = _video_writer(out_dir / f"{stem}.mp4", src.fps or 30.0, img.shape[1], img.shape[0])
            writer.write(img)
            if save_txt:
                _write_txt(out_dir / "labels" / f"{stem}_{frame.index}.txt", det)
            results.append(_result(frame, det))
            n += 1
            fps = n / (time.perf_counter() - start)
            bar.set_postfix(fps=f"{fps:.1f}", det=len(det))
    except KeyboardInterrupt:  # a camera runs until interrupted; keep what was written
        pass
    finally:
        bar.close()
        if writer is not None:
            writer.release()
    seconds = time.perf_counter() - start
    if n:
        print(f"{src.name}: {n} frames in {seconds:.1f} s, sustained {n / seconds:.1f} FPS")
    return results, n, seconds


def _video_writer(path: Path, fps: float, w: int, h: int) -> cv2.VideoWriter:
    """An mp4v ``.mp4`` writer, or an MJPG ``.avi`` when this OpenCV cannot write mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        writer = cv2.VideoWriter(str(path.with_suffix(".avi")), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise UserError(f"{path}: cannot write a video here (no mp4v or MJPG encoder)")
    return writer


def _write_image(path: Path, img: np.ndarray) -> None:
    """Write in the source's format, or as PNG (same stem) when OpenCV cannot encode that format."""
    try:
        ok, buf = cv2.imencode(path.suffix, img)
    except cv2.error:
        ok = False
    if not ok:
        path = path.with_suffix(".png")
        ok, buf = cv2.imencode(".png", img)
    atomic_write(path, lambda tmp: buf.tofile(tmp))


def _write_txt(path: Path, det: Detections) -> None:
    text = "".join(line + "\n" for line in det.yolo_lines())
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _result(frame: Frame, det: Detections) -> dict[str, Any]:
    return {"name": frame.name, "frame": frame.index, "boxes": np.round(det.boxes, 3).tolist(),
            "scores": np.round(det.scores, 5).tolist(), "classes": det.classes.tolist()}
