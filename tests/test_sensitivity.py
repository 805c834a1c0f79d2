"""``yoloslim sensitivity`` (each group pruned alone, recalibrated, scored) and ``prune --allocation``."""

from __future__ import annotations

import json

import cv2
import pytest
import torch

from helpers import max_diff, randomize_bn
from yoloslim.cli import main
from yoloslim.data.calibration import calibration_images
from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.errors import UserError
from yoloslim.models import create_model
from yoloslim.models.decode import preprocess
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.models.profile import profile, total_gflops
from yoloslim.prune import PruneOptions, prune_model
from yoloslim.prune.allocate import plan_channels
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.importance import FilterNorm
from yoloslim.prune.recalibrate import recalibrate_bn
from yoloslim.prune.sensitivity import GroupCurve, SensitivityCurves
from yoloslim.prune.surgery import apply_plan, mask_model
from yoloslim.workflows.sensitivity import sensitivity

SENSITIVE = "model.7.conv"  # the group the hand-made curves make costly to cut


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_data):
    names = load_data(tiny_data, warn=False).names
    model = randomize_bn(create_model("yolov5n", nc=len(names)))
    path = tmp_path_factory.mktemp("sens") / "model.safetensors"
    save_model(path, model, ModelInfo(model.spec, names, 96))
    return path


def test_sensitivity_entries_are_the_group_pruned_alone_and_scored(tmp_path, weights, tiny_data):
    out = tmp_path / "out"
    s = sensitivity(str(weights), str(tiny_data), method="l1", ratios=[0.3, 0.6], val_images=4, metric="output",
                    out=str(out), json_file=str(tmp_path / "s.json"), include=["model.1", "model.2"], workers=0,
                    calib_images=8, progress=False)
    groups = {g["name"]: g for g in s["groups"]}
    assert set(groups) == {"model.1.conv", "model.2.cv1.conv", "model.2.m.0.cv1.conv", "model.2.cv2.conv",
                           "model.2.cv3.conv"}
    assert groups["model.2.cv1.conv"]["producers"] == ["model.2.cv1.conv", "model.2.m.0.cv2.conv"]  # coupled
    assert s["evaluations"] == 10 and s["val_images"] == 4 and s["calib_images"] == 8
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads((out / "sensitivity.json").read_text())
    png = cv2.imread(str(out / "sensitivity.png"))
    assert png is not None and png.shape[0] >= 300 and png.shape[1] >= 500
    assert "model.2.cv1.conv" in (out / "sensitivity.txt").read_text()

    # one entry recomputed by hand: model.1.conv at 0.6 with the ordinary per-layer l1 plan
    model, _ = load_model(weights)
    model.eval()
    plan = plan_channels(model, ChannelGraph.trace(model), FilterNorm(1), ratio=0.6, include=["model.1.conv"],
                         global_rank=False, round_to=1)
    assert [len(k) for k in plan.keep.values()] == [32 - 19]
    cut = apply_plan(model, plan)
    calib = [preprocess(x, cut.spec) for x in calibration_images(str(tiny_data), 96, 8)]
    recalibrate_bn(cut, calib)
    recalibrate_bn(model, calib)  # the reference is the unpruned model recalibrated alike
    val = load_data(tiny_data, warn=False).splits["val"][:4]
    imgs = next(iter(create_loader(DetectionDataset(val, 96), batch_size=4, shuffle=False, workers=0)))[0]
    with torch.no_grad():
        ref, got = model(preprocess(imgs, model.spec)), cut.eval()(preprocess(imgs, cut.spec))
    dist = sum(float(((a - b) ** 2).sum()) for a, b in zip(got, ref, strict=True)) / sum(
        float((b ** 2).sum()) for b in ref)
    assert groups["model.1.conv"]["scores"][1] == pytest.approx(dist, rel=1e-4, abs=1e-6)
    assert groups["model.1.conv"]["loss"] == groups["model.1.conv"]["scores"]  # output: the loss is the distance


def test_sensitivity_cli_scores_map(tmp_path, weights, tiny_data):
    assert main(["sensitivity", "--weights", str(weights), "--data", str(tiny_data), "--method", "l1",
                 "--ratios", "0.5", "--val-images", "4", "--calib-images", "4", "--include", "model.1",
                 "--workers", "0", "--out", str(tmp_path / "o")]) == 0
    s = json.loads((tmp_path / "o" / "sensitivity.json").read_text())
    assert s["metric"] == "map" and s["ratios"] == [0.5] and [g["name"] for g in s["groups"]] == ["model.1.conv"]
    g = s["groups"][0]
    assert g["loss"][0] == pytest.approx(s["base"] - g["scores"][0], abs=1e-5)
    assert 0.0 <= g["scores"][0] <= 1.0
    for bad, msg in ((["--ratios", "0.5,0.3"], "increasing"), (["--method", "layer"], "channel method")):
        assert main(["sensitivity", "--weights", str(weights), "--data", str(tiny_data), *bad]) == 2, msg


def test_sensitivity_on_a_folder_of_unlabelled_images(tmp_path, weights, tiny_data, capsys):
    """No labels: the output proxy, recalibrated and scored on the folder's first images."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for s in load_data(tiny_data, warn=False).splits["val"]:
        (folder / s.path.name).write_bytes(s.path.read_bytes())
    s = sensitivity(str(weights), str(folder), method="l1", ratios=[0.6], val_images=4, metric="output",
                    out=str(tmp_path / "out"), include=["model.1"], workers=0, calib_images=6, progress=False)
    assert s["val_images"] == 4 and s["calib_images"] == 6 and [g["name"] for g in s["groups"]] == ["model.1.conv"]

    model, _ = load_model(weights)
    model.eval()
    cut = apply_plan(model, plan_channels(model, ChannelGraph.trace(model), FilterNorm(1), ratio=0.6,
                                          include=["model.1.conv"], global_rank=False, round_to=1))
    for m in (cut, model):
        recalibrate_bn(m, [preprocess(x, m.spec) for x in calibration_images(str(folder), 96, 6)])
    imgs = next(iter(calibration_images(str(folder), 96, 4, batch=4)))
    with torch.no_grad():
        ref, got = model(preprocess(imgs, model.spec)), cut.eval()(preprocess(imgs, cut.spec))
    dist = sum(float(((a - b) ** 2).sum()) for a, b in zip(got, ref, strict=True)) / sum(
        float((b ** 2).sum()) for b in ref)
    assert dist > 1e-4 and s["groups"][0]["scores"][0] == pytest.approx(dist, rel=1e-4, abs=1e-6)

    base = ["sensitivity", "--weights", str(weights), "--data", str(folder), "--out", str(tmp_path / "o2")]
    capsys.readouterr()
    assert main(base) == 2  # --metric map by default: no labels, no mAP
    assert "use --metric output" in capsys.readouterr().err
    assert main([*base, "--metric", "output", "--method", "taylor"]) == 2
    assert "needs the gradients" in capsys.readouterr().err
    assert main([*base, "--metric", "output", "--data", str(tmp_path / "nowhere")]) == 2
    assert "no such data set, folder" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


@pytest.fixture(scope="module")
def v5n(tmp_path_factory):
    """An untrained YOLOv5n with random batch norms, and hand-made curves: every group loses 0.1 per unit of ratio,
    the SENSITIVE group 10."""
    model = randomize_bn(create_model("yolov5n", nc=3))
    graph = ChannelGraph.trace(model)
    ratios = [0.25, 0.5, 0.75]
    curves = SensitivityCurves("m", "l1", "map", 0.5, ratios, [
        GroupCurve(g.name, g.size, list(g.producers), [0.5 - r * (10 if g.name == SENSITIVE else 0.1) for r in ratios],
                   [r * (10 if g.name == SENSITIVE else 0.1) for r in ratios]) for g in graph.prunable])
    path = tmp_path_factory.mktemp("curves") / "s.json"
    path.write_text(json.dumps(curves.to_dict()))
    return model, graph, path


def test_sensitivity_allocation_meets_the_flops_target_and_spares_the_sensitive_group(v5n):
    model, graph, path = v5n
    base = total_gflops(profile(model, 64))
    sens = prune_model(model, PruneOptions(method="l1", target_flops=0.6, allocation="sensitivity",
                                           sensitivity=str(path), round_to=1), graph=graph)
    uniform = prune_model(model, PruneOptions(method="l1", target_flops=0.6, allocation="uniform", round_to=1),
                          graph=graph)
    assert total_gflops(profile(sens.model, 64)) / base == pytest.approx(0.6, rel=0.02)
    assert 0.55 < total_gflops(profile(uniform.model, 64)) / base <= 0.6 * 1.02  # its ratio is shared: coarser steps
    g = graph.group_of(SENSITIVE)
    assert g.id not in sens.plan.keep  # kept whole: cutting anything else is cheaper
    assert len(uniform.plan.keep[g.id]) < g.size
    # masked == compact for the sensitivity plan
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b, ref = mask_model(model, sens.plan).eval()(x), sens.model.eval()(x), model(x)
    assert max_diff(a, b) < 1e-4 and max_diff(a, ref) > 1e-3


def test_sensitivity_allocation_by_ratio_and_its_refusals(v5n, tmp_path):
    model, graph, path = v5n
    r = prune_model(model, PruneOptions(method="l1", ratio=0.3, allocation="sensitivity", sensitivity=str(path),
                                        round_to=4), graph=graph)
    total = sum(g.size for g in graph.prunable)
    kept = sum(len(r.plan.keep.get(g.id, range(g.size))) for g in graph.prunable)
    assert 0.3 <= 1 - kept / total < 0.33
    assert all(len(k) % 4 == 0 for k in r.plan.keep.values())
    with pytest.raises(UserError, match="cannot reach"):
        prune_model(model, PruneOptions(method="l1", target_flops=0.05, allocation="sensitivity",
                                        sensitivity=str(path)), graph=graph)
    other = json.loads(path.read_text())
    other["groups"][0]["size"] += 1
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(UserError, match="another model"):
        prune_model(model, PruneOptions(method="l1", ratio=0.3, allocation="sensitivity",
                                        sensitivity=str(tmp_path / "other.json")), graph=graph)
    with pytest.raises(UserError, match="needs --sensitivity"):
        PruneOptions(method="l1", ratio=0.3, allocation="sensitivity").check()
    with pytest.raises(UserError, match="contradicts"):
        PruneOptions(method="l1", ratio=0.3, allocation="uniform", global_rank=True).check()
    # --allocation global is --global
    a = prune_model(model, PruneOptions(method="l1", ratio=0.3, allocation="global", min_channels=1), graph).plan.keep
    b = prune_model(model, PruneOptions(method="l1", ratio=0.3, global_rank=True, min_channels=1), graph).plan.keep
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prune_cli_allocation_sensitivity(tmp_path, v5n):
    model, _, path = v5n
    weights = tmp_path / "m.safetensors"
    save_model(weights, model, ModelInfo(model.spec, ["a", "b", "c"], 64))
    out = tmp_path / "p.safetensors"
    argv = ["prune", "--weights", str(weights), "--method", "l1", "--target-flops", "0.6", "--allocation",
            "sensitivity", "--sensitivity", str(path), "--latency-runs", "0", "--out", str(out)]
    assert main([*argv, "--json", str(tmp_path / "p.json")]) == 0
    s = json.loads((tmp_path / "p.json").read_text())
    assert s["after"]["gflops"] / s["before"]["gflops"] == pytest.approx(0.6, rel=0.03)
    assert main([*argv, "--steps", "2"]) == 2  # curves of the unpruned model: one step only
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.3", "--allocation", "uniform",
                 "--global", "--latency-runs", "0", "--out", str(out)]) == 2
