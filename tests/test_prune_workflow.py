"""``yoloslim prune`` end to end: compact file, report JSON, history, round trip in a fresh process."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import randomize_bn
from yoloslim.cli import main
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, load_model, read_info, save_model


@pytest.fixture()
def weights(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model("yolov5n", nc=2))
    path = tmp_path / "base.safetensors"
    save_model(path, model, ModelInfo(model.spec, ["a", "b"], 64).with_event("trained", epochs=1))
    return path


@pytest.mark.parametrize("method,amount", [("slim", ["--ratio", "0.5"]), ("layer", ["--blocks", "2"]),
                                           ("l2", ["--target-flops", "0.5", "--round-to", "4"])])
def test_prune_cli_writes_compact_model_and_report(tmp_path, weights, method, amount):
    out, js = tmp_path / "pruned.safetensors", tmp_path / "report.json"
    code = main(["prune", "--weights", str(weights), "--method", method, *amount, "--imgsz", "64",
                 "--latency-runs", "2", "--out", str(out), "--json", str(js)])
    assert code == 0
    report = json.loads(js.read_text())
    for side in ("before", "after"):
        assert set(report[side]) == {"params", "gflops", "latency_ms", "map50", "map"}
        assert report[side]["latency_ms"] > 0
    assert report["after"]["params"] < report["before"]["params"]
    assert report["layers"] and {"name", "c_out_before", "c_out_after"} <= set(report["layers"][0])
    info = read_info(out)
    assert [e["action"] for e in info.history] == ["trained", "pruned"]
    assert info.history[-1]["method"] == method and info.history[-1]["source"] == str(weights)
    if method == "l2":
        assert abs(report["after"]["gflops"] / report["before"]["gflops"] - 0.5) < 0.01


@pytest.mark.slow
def test_round_trip_in_a_fresh_process(tmp_path, weights):
    out = tmp_path / "pruned.safetensors"
    assert main(["prune", "--weights", str(weights), "--method", "slim", "--ratio", "0.6", "--out", str(out),
                 "--latency-runs", "0"]) == 0
    model, _ = load_model(out)
    x = torch.rand(1, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        ref = model.eval()(x)
    code = (
        "import sys, torch\n"
        "from yoloslim.models.io import load_model\n"
        f"m, _ = load_model(r'{out}')\n"
        f"x = torch.load(r'{tmp_path / 'x.pt'}')\n"
        "with torch.no_grad():\n"
        f"    torch.save(m.eval()(x), r'{tmp_path / 'y.pt'}')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env=env)
    got = torch.load(tmp_path / "y.pt")
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, got, strict=True))


def test_unsafe_ratio_exits_2_with_the_safe_ratio(tmp_path, weights, capsys):
    out = tmp_path / "never.safetensors"
    code = main(["prune", "--weights", str(weights), "--method", "slim", "--ratio", "0.99",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "largest safe ratio is" in err and err.count("\n") == 1
    assert not out.exists()


def test_prune_with_data_reports_map(tmp_path, tiny_data):
    from yoloslim.data.dataset import load_data

    names = load_data(tiny_data).names
    model = randomize_bn(create_model("yolov5n", nc=len(names)))
    weights = tmp_path / "base.safetensors"
    save_model(weights, model, ModelInfo(model.spec, names, 64))
    js = tmp_path / "r.json"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.3",
                 "--data", str(tiny_data), "--latency-runs", "0", "--workers", "0", "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    for side in ("before", "after"):
        assert 0.0 <= report[side]["map50"] <= 1.0 and 0.0 <= report[side]["map"] <= report[side]["map50"]
        assert report[side]["latency_ms"] is None


def test_iterative_steps_compound_to_the_ratio(tmp_path, weights):
    js, out = tmp_path / "r.json", tmp_path / "it.safetensors"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.5", "--steps", "2",
                 "--round-to", "1", "--latency-runs", "0", "--out", str(out), "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert [s["step"] for s in report["steps"]] == [1, 2]
    assert report["steps"][0]["amount"] == "--ratio 0.2929"
    assert abs(report["ratio"] - 0.5) < 0.03  # (1 - 0.293)^2 = 0.5 of the channels left
    assert (tmp_path / "it-steps" / "step2.safetensors").is_file()
    assert [e["action"] for e in read_info(out).history] == ["trained", "pruned", "pruned", "pruned"]


def test_iterative_layer_steps_name_blocks_of_the_original(tmp_path, weights):
    js = tmp_path / "r.json"
    assert main(["prune", "--weights", str(weights), "--method", "layer", "--blocks", "3", "--steps", "3",
                 "--latency-runs", "0", "--out", str(tmp_path / "l.safetensors"), "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert len(report["removed_blocks"]) == 3
    gone = [r["name"] for r in report["layers"] if r["c_out_after"] == 0]
    assert len(gone) == 6 and all(any(n.startswith(b + ".") for b in report["removed_blocks"]) for n in gone)


@pytest.mark.slow
def test_iterative_pruning_with_finetuning(tmp_path, tiny_data):
    from yoloslim.data.dataset import load_data

    names = load_data(tiny_data).names
    model = randomize_bn(create_model("yolov5n", nc=len(names)))
    weights = tmp_path / "base.safetensors"
    save_model(weights, model, ModelInfo(model.spec, names, 64))
    js, out = tmp_path / "r.json", tmp_path / "it.safetensors"
    assert main(["prune", "--weights", str(weights), "--method", "slim", "--target-flops", "0.5",
                 "--steps", "2", "--finetune-epochs", "1", "--data", str(tiny_data), "--imgsz", "64",
                 "--batch", "8", "--workers", "0", "--latency-runs", "0", "--out", str(out),
                 "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["steps"][0]["finetuned"] and report["steps"][1]["finetuned"] is None
    assert abs(report["after"]["gflops"] / report["before"]["gflops"] - 0.5) <= 0.02 * 0.5
    actions = [e["action"] for e in read_info(out).history]
    assert actions == ["pruned", "fine-tuned", "pruned", "pruned"]
    runs = list(tmp_path.rglob("args.yaml"))  # the fine-tune between the steps distilled from the original
    args = yaml.safe_load(runs[0].read_text())
    assert len(runs) == 1 and args["config"]["teacher"] == str(weights)
    assert args["hyp"]["warmup_epochs"] == 0.0  # a pruned model's fine-tune starts without warm-up
