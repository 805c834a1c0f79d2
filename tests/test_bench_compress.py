"""bench/compress.py end to end at toy size: every stage, the JSON, the table, resuming, refusals."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models.io import read_info

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _compress():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("compress")


TOY = ["--model", "yolov5n", "--images", "12", "--imgsz", "64", "--epochs", "1", "--sparse-epochs", "1",
       "--finetune-epochs", "1", "--sr", "0.01", "--ratios", "0.5", "--batch", "4", "--workers", "0",
       "--threads", "1", "--round-to", "1"]


@pytest.mark.slow
def test_compress_toy_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compress = _compress()
    work = tmp_path / "work"
    argv = [*TOY, "--work", str(work), "--latency-imgsz", "64", "--latency-runs", "5",
            "--latency-seconds", "1"]
    summary = compress.main(argv)
    out = capsys.readouterr().out

    # every stage left its model; the JSON holds every row
    models = work / "models"
    for name in ("baseline", "sparse", "slim-50", "slim-50-ft", "baseline-plus"):
        assert (models / f"{name}.safetensors").is_file(), name
    saved = json.loads((work / "compress.json").read_text())
    rows = {r["name"]: r for r in saved["models"]}
    assert list(rows) == ["baseline", "baseline+", "sparse", "slim-50", "slim-50-ft"]
    assert [rows[n]["epochs"] for n in rows] == [1, 3, 2, 2, 3]
    assert saved["command"].startswith("python bench/compress.py --model yolov5n")

    # one architecture for the unpruned three, a smaller one for the pruned pair
    base = rows["baseline"]
    assert rows["baseline+"]["params"] == rows["sparse"]["params"] == base["params"]
    assert rows["slim-50"]["params"] == rows["slim-50-ft"]["params"] < 0.6 * base["params"]
    assert 0.3 < rows["slim-50-ft"]["params_removed"] < 1 and 0 < rows["slim-50-ft"]["flops_removed"] < 1
    assert rows["slim-50"]["prune"]["method"] == "slim"
    assert rows["slim-50"]["prune"]["ratio"] == pytest.approx(0.5, abs=0.01)
    assert read_info(models / "slim-50-ft.safetensors").history[-1]["action"] == "fine-tuned"
    assert read_info(models / "sparse.safetensors").history[-1]["sparsity"] == 0.01

    # figures: mAP in range, deltas against baseline+, speed-ups against the baseline from one loop
    for r in rows.values():
        assert 0 <= r["map"] <= r["map50"] <= 1
        assert r["torch_ms"] > 0 and r["onnxruntime_ms"] > 0
    assert rows["baseline+"]["delta_map_vs_plus"] == 0
    assert rows["slim-50-ft"]["delta_map_vs_plus"] == pytest.approx(
        (rows["slim-50-ft"]["map"] - rows["baseline+"]["map"]) * 100, abs=1e-3)
    assert base["torch_speedup"] == base["onnxruntime_speedup"] == 1.0
    assert rows["slim-50"]["torch_ms"] == rows["slim-50-ft"]["torch_ms"]  # timed once per architecture
    assert set(rows["slim-50-ft"]["targets"]) == set(compress.TARGETS)
    assert summary["models"] == saved["models"]

    # the Markdown table
    assert "Command: `python bench/compress.py --model yolov5n" in out
    assert "| model | epochs | mAP50 | mAP50-95 | Δ mAP50-95 vs baseline+ |" in out
    assert out.count("| slim 0.5") == 3  # pruned, fine-tuned, and the targets row

    # a second run reuses every stage; a lost stage output is restored from its finished run
    (models / "slim-50-ft.safetensors").unlink()
    run_last = work / "runs" / "slim-50-ft" / "weights" / "last.safetensors"
    stamp = run_last.stat().st_mtime_ns
    again = compress.main([*TOY, "--work", str(work), "--skip-latency"])
    assert run_last.stat().st_mtime_ns == stamp  # copied from the finished run, not trained again
    assert (models / "slim-50-ft.safetensors").read_bytes() == run_last.read_bytes()
    assert [r["map"] for r in again["models"]] == [r["map"] for r in saved["models"]]
    assert again["models"][0]["torch_ms"] is None

    # another method shares the baseline and sparse models of the folder
    l1 = compress.main([*TOY, "--work", str(work), "--method", "l1", "--stages", "prune,measure",
                        "--skip-latency"])
    assert [r["name"] for r in l1["models"]] == ["baseline", "baseline+", "sparse", "l1-50"]
    assert l1["models"][3]["prune"]["method"] == "l1" and l1["models"][3]["params_removed"] > 0.3

    # --sparse-epochs 0 prunes the baseline itself (given here by copying this folder's data and baseline)
    direct = tmp_path / "direct"
    shutil.copytree(work / "data", direct / "data")
    (direct / "models").mkdir()
    shutil.copy(models / "baseline.safetensors", direct / "models")
    no_sparse = [*TOY[:8], "--sparse-epochs", "0", *TOY[10:]]
    d = compress.main([*no_sparse, "--work", str(direct), "--skip-latency"])
    assert [(r["name"], r["epochs"]) for r in d["models"]] == [("baseline", 1), ("baseline+", 2), ("slim-50", 1),
                                                               ("slim-50-ft", 2)]
    assert not (direct / "models" / "sparse.safetensors").exists()
    history = read_info(direct / "models" / "slim-50.safetensors").history
    assert [e["action"] for e in history] == ["trained", "pruned"]
    assert history[-1]["source"] == str(direct / "models" / "baseline.safetensors")

    # other settings in the same folder are refused
    with pytest.raises(UserError, match="other settings"):
        compress.main([*TOY[:6], "--epochs", "2", *TOY[8:], "--work", str(work), "--stages", "measure"])


def test_prune_stage_holds_groups_a_ratio_would_empty(tmp_path: Path) -> None:
    """Slimming at 0.95 empties groups: retried with the fallback floor, which the model file records."""
    from yoloslim.models import create_model
    from yoloslim.models.io import ModelInfo, save_model

    compress = _compress()
    src = tmp_path / "m.safetensors"
    model = create_model("yolov5n", nc=8)
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # distinct γ: a global 95 % threshold empties small groups
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.01
    save_model(src, model, ModelInfo(model.spec, [str(i) for i in range(8)], 64))
    args = compress.parse_args(["--model", "yolov5n", "--imgsz", "64"])
    out = compress.prune_stage(src, tmp_path / "p.safetensors", 0.95, args)
    event = compress.prune_event(out)
    assert event["min_channels"] == compress.FALLBACK_MIN_CHANNELS and event["held"]


def test_bad_arguments_are_refused() -> None:
    compress = _compress()
    for argv, msg in ((["--model", "yolov9"], "unknown --model"), (["--ratios", "0.5,1.2"], "--ratios"),
                      (["--stages", "train"], "unknown stage"), (["--epochs", "0"], "--epochs"),
                      (["--sparse-epochs", "-1"], "--sparse-epochs")):
        with pytest.raises(UserError, match=msg):
            compress.parse_args(argv)
