"""bench/recipe.py's yolov8n row and ultralytics scoring, and bench/train_step.py's loss gains, at toy size."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_import_ultralytics import write_checkpoint
from yoloslim.data.synth import synthesize
from yoloslim.workflows.importer import read_names

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.mark.parametrize(("name", "box", "dfl"), [("yolov8n", 7.5, 1.5), ("yolov5n", 0.05, 1.5)])
def test_train_step_takes_the_family_gains(name: str, box: float, dfl: float) -> None:
    train_step = _bench("train_step")
    model, hyp, loss_fn, _opt = train_step.build_step(name, 64, nc=3)
    assert (hyp.box, hyp.cls, hyp.dfl) == (box, 0.5, dfl)
    imgs, targets = train_step.synthetic_batch(2, 64, 3)
    loss, items = loss_fn(model(imgs), targets)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert ("dfl" in items) == (name == "yolov8n")


def test_ultralytics_last_epoch_reads_their_padded_columns(tmp_path: Path) -> None:
    recipe = _bench("recipe")
    csv = tmp_path / "results.csv"
    csv.write_text("                  epoch,  metrics/mAP50(B),  metrics/mAP50-95(B)\n"
                   "                      1,           0.01,                0.005\n"
                   "                      2,        0.16013,              0.09007\n")
    assert recipe.ultralytics_last_epoch(csv) == {"epoch": 2, "map50": 0.1601, "map": 0.0901}


@pytest.mark.slow
def test_defaults_recipe_and_an_ultralytics_run_scored_by_us(tmp_path: Path) -> None:
    recipe = _bench("recipe")
    data = synthesize(tmp_path / "data", fmt="yolo", images=10, imgsz=64, seed=0, progress=False)
    run = tmp_path / "their_run"
    (run / "weights").mkdir(parents=True)
    write_checkpoint(run / "weights" / "last.pt", names=read_names(data))
    (run / "results.csv").write_text("epoch,metrics/mAP50(B),metrics/mAP50-95(B)\n3,0.25,0.125\n")
    work = tmp_path / "work"
    recipe.main(["--work", str(work), "--model", "yolov8n", "--recipes", "defaults", "--data", str(data),
                 "--epochs", "1", "--batch", "4", "--imgsz", "64", "--workers", "0", "--threads", "1",
                 "--score-ultralytics", str(run)])
    rows = json.loads((work / "recipe.json").read_text())["rows"]
    ours, theirs = rows
    # the family's defaults, resolved by train: YOLOv8's close-mosaic 10, a step on every batch (auto, short run)
    assert (ours["recipe"], ours["model"], ours["no_aug_epochs"], ours["nominal_batch"]) == ("defaults", "yolov8n",
                                                                                             10, 4)
    assert (theirs["recipe"], theirs["model"], theirs["epochs"]) == ("ultralytics", "yolov8n", 3)
    assert (theirs["their_map50"], theirs["their_map"]) == (0.25, 0.125)
    assert theirs["round_trip_max_diff"] == 0.0
    assert 0.0 <= theirs["map"] <= theirs["map50"] <= 1.0
    assert (work / "ultralytics" / "last.safetensors").is_file()
    assert json.loads((work / "ultralytics" / "val.json").read_text())["map"] == pytest.approx(theirs["map"], abs=1e-4)


@pytest.mark.slow
def test_timing_alternates_the_recipes_and_gives_ratios(tmp_path: Path) -> None:
    recipe = _bench("recipe")
    data = synthesize(tmp_path / "data", fmt="yolo", images=8, imgsz=64, seed=0, progress=False)
    work = tmp_path / "work"
    recipe.main(["--work", str(work), "--recipes", "old,defaults", "--data", str(data), "--batch", "4",
                 "--imgsz", "64", "--workers", "0", "--threads", "1", "--timing", "2", "--timing-epochs", "1"])
    saved = json.loads((work / "timing.json").read_text())
    old, new = saved["rows"]
    assert (old["recipe"], new["recipe"], saved["epochs"]) == ("old", "defaults", 1)
    assert len(old["runs"]) == len(new["runs"]) == 2 and min(old["runs"] + new["runs"]) > 0
    assert old["ratio"] == 1.0
    assert new["ratio"] == pytest.approx(new["seconds_per_epoch"] / old["seconds_per_epoch"], rel=1e-2)
    # each timed run is a real training of the recipe: one epoch, the optimizer it names
    for name, optimizer in (("old", "SGD"), ("defaults", "auto")):
        args = yaml.safe_load((work / "timing" / name / "args.yaml").read_text())["config"]
        assert (args["epochs"], args["optimizer"]) == (1, optimizer)
    assert not (work / "recipe.json").exists()  # timing scores nothing


@pytest.mark.parametrize("argv", [["--timing", "-1"], ["--timing", "2", "--timing-epochs", "0"]])
def test_bad_timing_arguments_are_refused(tmp_path: Path, argv: list[str]) -> None:
    recipe = _bench("recipe")
    with pytest.raises(SystemExit, match="--timing"):
        recipe.main(["--work", str(tmp_path), *argv])
    assert not (tmp_path / "data").exists()  # refused before anything is written
