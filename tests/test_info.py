import json

import torch

from yoloslim.cli import main
from yoloslim.engine.train_state import save_state


def test_info_layers_add_up_to_the_total(tmp_path, capsys):
    assert main(["info", "--model", "yolov5n", "--nc", "3", "--imgsz", "64", "--layers",
                 "--json", str(tmp_path / "i.json")]) == 0
    summary = json.loads((tmp_path / "i.json").read_text())
    assert sum(layer["params"] for layer in summary["layers"]) == summary["params"]
    assert summary["conv_gflops"] < summary["gflops"]
    assert "model.2.m.0.cv1" in capsys.readouterr().out


def test_info_on_a_training_state_says_what_it_is(tmp_path, capsys):
    save_state(tmp_path / "last_state.pt", {"epoch": 1, "t": torch.zeros(2)})
    assert main(["info", "--weights", str(tmp_path / "last_state.pt")]) == 2
    err = capsys.readouterr().err
    assert "training state" in err and "--resume" in err and err.count("\n") == 1


def test_info_refuses_an_imgsz_off_the_stride(capsys):
    assert main(["info", "--model", "yolov5n", "--imgsz", "70"]) == 2
    assert capsys.readouterr().err.strip().endswith("--imgsz must be a positive multiple of 32, got 70")
