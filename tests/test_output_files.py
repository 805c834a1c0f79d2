"""Output places refused before any work, file modes from the umask, and the one-line messages for files
given in the wrong place (a model file as ``--onnx``, a YOLOv5 checkpoint as ``--weights``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import torch
import yaml
from torch import nn

from yoloslim.cli import main
from yoloslim.data.dataset import load_data
from yoloslim.data.synth import synthesize
from yoloslim.engine.run_files import ResultsCSV
from yoloslim.engine.train_state import save_state
from yoloslim.errors import UserError
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, atomic_write, check_writable, read_info, save_model
from yoloslim.workflows.report import write_json


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    model = create_model("yolov5n", nc=2)
    path = tmp_path / "m.safetensors"
    save_model(path, model, ModelInfo(model.spec, ["a", "b"], 64))
    return path


@pytest.fixture()
def blocker(tmp_path: Path) -> Path:
    """A file standing where an output folder would have to be."""
    f = tmp_path / "blocker"
    f.write_text("a file, not a folder\n")
    return f


def _error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 with one line on stderr (no traceback); return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_check_writable_refuses_bad_places(tmp_path: Path, blocker: Path) -> None:
    assert check_writable(None, "--json") is None
    assert check_writable(tmp_path / "new" / "deeper" / "a.json", "--json") == tmp_path / "new" / "deeper" / "a.json"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    cases = [(blocker / "x.onnx", False, "blocker is a file, not a folder"),
             (blocker / "a" / "b" / "x.json", False, "blocker is a file, not a folder"),
             (tmp_path, False, "is a folder; give a file name"),
             (blocker, True, "is a file; give a folder"),
             (Path("/sys/x.onnx"), False, "cannot write in /sys")]
    for path, folder, words in cases:
        with pytest.raises(UserError, match=words):
            check_writable(path, "--out", folder=folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_every_command_refuses_an_unwritable_output_before_working(tmp_path: Path, weights: Path,
                                                                    blocker: Path, capsys) -> None:
    """Each data set and source below does not exist: the error must be about the output, so it came first."""
    w, nodata, bad = str(weights), str(tmp_path / "no-data.yaml"), str(blocker / "sub" / "x")
    commands = [
        (["export", "--weights", w, "--out", bad + ".onnx"], "--out"),
        (["export", "--weights", w, "--out", "/sys/x.onnx"], "--out /sys/x.onnx: cannot write in /sys"),
        (["export", "--weights", w, "--format", "darknet", "--out", bad + ".cfg"], "--out"),
        (["prune", "--weights", w, "--method", "slim", "--ratio", "0.5", "--out", bad + ".safetensors"], "--out"),
        (["prune", "--weights", w, "--method", "slim", "--ratio", "0.5", "--json", bad + ".json"], "--json"),
        (["train", "--data", nodata, "--model", "yolov5n", "--out", bad], "--out"),
        (["train", "--data", nodata, "--model", "yolov5n", "--out", str(tmp_path / "run"), "--json",
          bad + ".json"], "--json"),
        (["predict", "--weights", w, "--source", str(tmp_path / "no.jpg"), "--out", bad], "--out"),
        (["predict", "--weights", w, "--source", str(tmp_path / "no.jpg"), "--json", bad + ".json",
          "--out", str(tmp_path / "pred")], "--json"),
        (["val", "--weights", w, "--data", nodata, "--json", bad + ".json"], "--json"),
        (["val", "--weights", w, "--data", nodata, "--save-json", bad], "--save-json"),
        (["bench", "--weights", w, "--json", bad + ".json"], "--json"),
        (["data", "synth", "--out", bad], "--out"),
        (["data", "synth", "--out", str(tmp_path / "ds"), "--json", bad + ".json"], "--json"),
        (["data", "convert", "--voc", str(tmp_path / "no-voc"), "--out", bad], "--out"),
        (["data", "check", "--data", nodata, "--json", bad + ".json"], "--json"),
        (["info", "--weights", str(tmp_path / "no.safetensors"), "--json", bad + ".json"], "--json"),
        (["visualize", "--weights", str(tmp_path / "no.safetensors"), "--source", "x.jpg", "--layer", "model.0",
          "--out", bad], "--out"),
        (["demo", "--out", bad], "--out"),
    ]
    for argv, words in commands:
        err = _error_line(capsys, argv)
        assert err.startswith(f"error: {words}"), (argv, err)
        assert ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "m.safetensors"]


def test_write_errors_name_the_target_not_a_temporary_file(tmp_path: Path) -> None:
    def fail(tmp: str) -> None:
        raise OSError(28, "No space left on device", tmp)

    def check_fails(tmp: str) -> None:
        Path(tmp).write_text("not onnx")
        raise UserError(f"{tmp}: ONNX Runtime cannot load it")

    with pytest.raises(UserError) as e:
        atomic_write(tmp_path / "full.json", fail)
    assert str(e.value) == f"{tmp_path / 'full.json'}: cannot write (No space left on device)"
    with pytest.raises(UserError) as e:
        atomic_write(tmp_path / "m.onnx", check_fails)
    assert str(e.value) == f"{tmp_path / 'm.onnx'}: ONNX Runtime cannot load it"
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path, skip: Path | None = None) -> dict[str, str]:
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode))
            for p in root.rglob("*") if p.is_file() and p != skip}


def test_written_files_take_the_umask_mode(tmp_path: Path, weights: Path) -> None:
    """Under umask 022 every kind of file yoloslim writes is 0644, not mkstemp's 0600."""
    with umask(0o022):
        save_model(tmp_path / "w" / "model.safetensors", create_model("yolov5n", nc=2),
                   ModelInfo(create_model("yolov5n", nc=2).spec, ["a", "b"], 64))
        save_state(tmp_path / "w" / "state.pt", {"epoch": 1, "t": torch.zeros(2)})
        write_json(tmp_path / "w" / "summary.json", {"a": 1})
        csv = ResultsCSV(tmp_path / "w" / "results.csv")
        csv.add({"epoch": 0, "loss": 1.0})
        csv.add({"epoch": 1, "loss": 0.5, "map": 0.1})  # new column: the file is rewritten
        synthesize(tmp_path / "ds", images=2, imgsz=64, seed=0, progress=False)
        image = next((tmp_path / "ds" / "images").rglob("*.jpg"))
        assert main(["predict", "--weights", str(weights), "--source", str(image), "--out", str(tmp_path / "pred"),
                     "--save-txt", "--json", str(tmp_path / "pred.json")]) == 0
        assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "m.onnx")]) == 0
    modes = _modes(tmp_path, skip=weights)
    assert {Path(f).suffix for f in modes} >= {".safetensors", ".pt", ".json", ".csv", ".jpg", ".txt", ".onnx",
                                               ".yaml"}, modes
    assert set(modes.values()) == {"0o644"}, modes
    with umask(0o027):  # not a fixed 0644: the umask decides
        write_json(tmp_path / "strict" / "a.json", {"a": 1})
        save_state(tmp_path / "strict" / "s.pt", {"epoch": 1})
    assert set(_modes(tmp_path / "strict").values()) == {"0o640"}


def test_predict_onnx_given_a_model_file_or_junk(tmp_path: Path, weights: Path, capsys) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(bytes(range(256)) * 4)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), torch.zeros(64, 64, 3, dtype=torch.uint8).numpy())
    base = ["predict", "--backend", "onnxruntime", "--source", str(image), "--out", str(tmp_path / "p")]
    err = _error_line(capsys, [*base, "--onnx", str(weights)])
    assert "a .safetensors model file, not an ONNX file; pass it as --weights" in err
    err = _error_line(capsys, [*base, "--onnx", str(junk)])
    assert err.startswith(f"error: {junk}: not an ONNX file") and "DecodeError" not in err.split("(")[0]


def _yolov5_repo_checkpoint(path: Path) -> Path:
    """A tiny file shaped like a YOLOv5 repo checkpoint: a pickled ``models.yolo.DetectionModel``."""
    mod = types.ModuleType("models.yolo")

    class DetectionModel(nn.Module):
        __module__ = "models.yolo"

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

    DetectionModel.__qualname__ = "DetectionModel"
    mod.DetectionModel = DetectionModel
    saved = {k: sys.modules.get(k) for k in ("models", "models.yolo")}
    sys.modules["models"], sys.modules["models.yolo"] = types.ModuleType("models"), mod
    try:
        torch.save({"epoch": -1, "model": DetectionModel(), "optimizer": None}, path)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return path


def test_val_tells_a_yolov5_checkpoint_from_a_training_state(tmp_path: Path, tiny_data: Path, capsys) -> None:
    foreign = _yolov5_repo_checkpoint(tmp_path / "best.pt")
    err = _error_line(capsys, ["val", "--weights", str(foreign), "--data", str(tiny_data)])
    assert f"`yoloslim import --from yolov5 {foreign} --out best.safetensors`" in err and "--resume" not in err
    state = tmp_path / "last_state.pt"
    save_state(state, {"config": {}, "hyp": {}, "spec": "{}", "optimizer": {}, "rng": {}, "epoch": 1})
    with pytest.raises(UserError, match="yoloslim training state .* `yoloslim train --resume`"):
        read_info(state)


def test_synth_data_yaml_reads_its_own_folder_after_a_copy(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "a", images=4, imgsz=64, seed=0, progress=False)
    assert "path" not in yaml.safe_load(data.read_text())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    src = load_data(tmp_path / "b" / "data.yaml")
    assert src.root == (tmp_path / "b").resolve()
    assert all(s.path.is_relative_to((tmp_path / "b").resolve()) for ss in src.splits.values() for s in ss)
    assert sum(len(s) for s in src.splits.values()) == 4


def test_data_check_of_a_set_without_images_fails(tmp_path: Path, capsys) -> None:
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "names": ["a"]}))
    js = tmp_path / "check.json"
    assert main(["data", "check", "--data", str(data), "--json", str(js)]) == 1
    out = capsys.readouterr().out
    assert "no problems found" not in out and "the train split has no usable images" in out
    assert json.loads(js.read_text())["ok"] is False


def test_prune_data_of_another_class_count_fails_before_writing(tmp_path: Path, weights: Path,
                                                                tiny_data: Path, capsys) -> None:
    out = tmp_path / "pruned.safetensors"
    err = _error_line(capsys, ["prune", "--weights", str(weights), "--method", "slim", "--ratio", "0.3",
                               "--data", str(tiny_data), "--out", str(out), "--latency-runs", "0"])
    assert "not among the model's 2 classes" in err
    assert not out.exists()
