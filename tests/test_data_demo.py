"""``yoloslim demo --quick``: every step's files, the before/after table; a second run reuses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from yoloslim.cli import main
from yoloslim.models.io import read_info
from yoloslim.workflows.demo import QUICK, STEPS

FIGURES = {"map50", "map", "params", "gflops", "latency_ms"}


@pytest.mark.slow
def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    quick = ["demo", "--out", str(out), "--quick", "--epochs", "1", "--finetune-epochs", "1", "--workers", "0"]
    assert main([*quick, "--json", str(tmp_path / "demo.json")]) == 0
    text = capsys.readouterr().out
    assert STEPS == 9 and all(f"[{i}/9]" in text for i in range(1, 10)) and "no problems found" in text
    lines = text.splitlines()
    assert lines[-6].split() == ["Metric", "Before", "(trained)", "After", "(pruned", "+", "fine-tuned)", "Change"]
    for label in ("mAP@.5 ", "mAP@.5:.95 ", "params ", "GFLOPs @128 ", "CPU latency ms (median, batch 1) ",
                  "pruning (group) ", "fine-tuning "):
        assert any(line.startswith(label) for line in lines), label
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert Path(summary["data_yaml"]).is_file() and (out / "yoloslim.log").is_file()
    assert sum(summary["data"]["images"].values()) == QUICK.images and summary["data"]["problems"] == 0
    assert Path(summary["train"]["weights"]).is_file() and summary["predict"]["images"] == 4
    assert 0 <= summary["val"]["map50"] <= 1 and len(list((out / "predict").glob("*.jpg"))) == 4

    # prune (auto: the group norm, with BN recalibration) -> fine-tune distilled from the trained model
    trained, pruned, tuned = (Path(summary[k]["weights"]) for k in ("train", "prune", "finetune"))
    assert pruned == out / "prune" / "pruned.safetensors" and tuned == out / "finetune" / "weights" / "last.safetensors"
    history = read_info(tuned).history
    assert [e["action"] for e in history] == ["trained", "pruned", "fine-tuned"]
    assert history[1]["method"] == "group" and history[1]["source"] == str(trained)
    assert history[1]["target_flops"] == 0.6 and history[2]["teacher"] == str(trained)
    ft_args = yaml.safe_load((out / "finetune" / "args.yaml").read_text())
    assert ft_args["config"]["no_aug_epochs"] == ft_args["config"]["epochs"]  # the fine-tune sees plain images
    assert ft_args["hyp"]["warmup_epochs"] == 0.0  # a pruned model's fine-tune: no warm-up
    report = json.loads((out / "prune" / "prune.json").read_text())
    assert report["method"] == "group" and report["after"]["map"] is not None
    assert report["calib"]["images"] > 0 and report["uncalibrated"]["map"] is not None  # mAP without and with
    assert summary["prune"]["uncalibrated"] == report["uncalibrated"]
    assert 0.5 < report["after"]["gflops"] / report["before"]["gflops"] < 0.7
    assert 0 <= summary["val_finetuned"]["map"] <= 1 and (out / "val_finetuned.json").is_file()

    # the before/after table's numbers: trained vs pruned + fine-tuned
    ba = summary["before_after"]
    assert set(ba["before"]) == set(ba["after"]) == FIGURES and ba["imgsz"] == 128
    assert ba["after"]["params"] == report["after"]["params"] < ba["before"]["params"]
    assert ba["after"]["gflops"] < ba["before"]["gflops"] and ba["after"]["latency_ms"] > 0
    assert ba["before"]["map"] == round(summary["val"]["map"], 5)

    stamp = (out / "data" / "settings.json").read_text()
    assert main([*quick, "--json", str(tmp_path / "again.json")]) == 0
    assert "(reused)" in capsys.readouterr().out
    again = json.loads((tmp_path / "again.json").read_text())
    assert all(again[k]["reused"] for k in ("train", "prune", "finetune"))
    assert again["before_after"]["after"]["params"] == ba["after"]["params"]
    assert (out / "data" / "settings.json").read_text() == stamp


def test_demo_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 2
    assert (tmp_path / "data" / "mine.txt").is_file()


def test_demo_refuses_zero_epochs(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path), "--quick", "--finetune-epochs", "0"]) == 2
    assert not (tmp_path / "data").exists()


def test_demo_prune_keeps_min_channels_when_the_ratio_would_empty_a_group(tiny_data: Path, tmp_path: Path) -> None:
    import torch
    import yaml

    from yoloslim.models import create_model
    from yoloslim.models.io import ModelInfo, save_model
    from yoloslim.workflows.demo import DemoPrune, DemoTrain, step_prune

    model = create_model("yolov5n", nc=8)
    with torch.no_grad():  # the weakest channel group by far: a global threshold empties it first
        model.get_submodule("model.2.cv2.bn").weight.fill_(1e-3)
    names = yaml.safe_load(tiny_data.read_text())["names"]
    sparse = save_model(tmp_path / "sparse.safetensors", model, ModelInfo(model.spec, names, 64))
    res = step_prune(str(sparse), tmp_path / "prune", DemoPrune(1, target_flops=0.5, method="slim"), tiny_data,
                     DemoTrain(epochs=1, imgsz=64, batch=8), workers=0, input_reused=False)
    assert res["held"] and not res["reused"] and res["after"]["params"] < res["before"]["params"]
    event = read_info(res["weights"]).history[-1]
    assert event["action"] == "pruned" and event["min_channels"] == 8 and event["held"] == res["held"]
