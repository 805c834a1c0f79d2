"""``yoloslim demo``: the main job on the built-in data set, one step after the other.

Steps so far: (1) generate the synthetic data set in VOC format, (2) convert it to YOLO txt,
(3) check it and print its statistics. Training, sparsity training, pruning and the before/after
table are further steps of this same function, each a call to its workflow.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from yoloslim.data.check import check_data, format_report
from yoloslim.data.convert import convert_voc
from yoloslim.data.synth import synthesize
from yoloslim.errors import UserError
from yoloslim.log import logger, setup_logging
from yoloslim.workflows.report import write_json


@dataclass(frozen=True)
class DemoData:
    """Size of the demo's data set: full, or ``--quick`` (for a smoke test in seconds)."""

    images: int
    imgsz: int
    seed: int = 0
    val_ratio: float = 0.2


FULL = DemoData(images=500, imgsz=320)
QUICK = DemoData(images=48, imgsz=128)


def demo(out: str | Path = "runs/demo", quick: bool = False, json_file: str | None = None) -> dict[str, Any]:
    """Run the demo into ``out`` and return its summary.

    Args:
        out: the run folder (log file, data set, later weights and reports).
        quick: a small data set (and, later, short training) for a smoke test.
        json_file: also write the summary as JSON.
    """
    out = Path(out)
    setup_logging(out)
    settings = QUICK if quick else FULL
    print(f"[1/3] synthetic data set: {settings.images} images of {settings.imgsz} px, VOC format")
    voc_root, reused = step_synth(out / "data", settings)
    print(f"[2/3] VOC -> YOLO txt{' (reused)' if reused else ''}")
    data_yaml = step_convert(voc_root, out / "data" / "yolo", settings, reused)
    print("[3/3] check")
    check = step_check(data_yaml)
    data = {"images": check["images"], "boxes": check["boxes"], "problems": len(check["problems"])}
    summary = {"out": str(out), "voc_root": str(voc_root), "data_yaml": str(data_yaml), "quick": quick,
               "data": data}
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
