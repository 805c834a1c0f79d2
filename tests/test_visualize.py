"""``yoloslim visualize``: one feature-map grid per layer, tiles where the layout says, helpful errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from yoloslim.cli import main
from yoloslim.errors import UserError
from yoloslim.models import MODELS, build_model, model_spec
from yoloslim.models.io import ModelInfo, save_model
from yoloslim.prune.pipeline import PruneOptions, prune_model
from yoloslim.viz.feature_maps import GridLayout, capture, feature_grid, resolve_layers


def _files(tmp_path, name="yolov5n", imgsz=64):
    spec = model_spec(name, nc=2)
    model = build_model(spec).eval()
    weights = save_model(tmp_path / f"{name}.safetensors", model, ModelInfo(spec, ["a", "b"], imgsz))
    img = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    source = tmp_path / "img.png"
    cv2.imwrite(str(source), img)
    return model, weights, source


def _tile_region(img, layout: GridLayout, k):
    r, c = divmod(k, layout.cols)
    y, x = layout.pad + r * (layout.tile_h + layout.pad), layout.pad + c * (layout.tile_w + layout.pad)
    return img[y:y + layout.tile_h, x:x + layout.tile_w]


def test_one_picture_per_layer_with_expected_tiles(tmp_path):
    model, weights, source = _files(tmp_path)
    out = tmp_path / "maps"
    argv = ["visualize", "--weights", str(weights), "--source", str(source), "--layer", "model.4",
            "--layer", "model.2.cv1.conv", "--layer", "model.24", "--out", str(out), "--max-channels", "16",
            "--json", str(tmp_path / "v.json")]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "v.json").read_text())
    files = sorted(p.name for p in out.iterdir())
    # model.2.cv1.conv is the Conv2d itself; model.24 (Detect) returns one map per stride
    assert files == ["model.2.cv1.conv.png", "model.24_0.png", "model.24_1.png", "model.24_2.png",
                     "model.4.png"]
    for f in files:  # the annotated picture: input, grid, colour bar
        img = cv2.imread(str(out / f))
        assert img is not None and img.shape[0] >= 500 and img.shape[1] >= 800
    assert all("pruned" not in r for r in summary["layers"])

    # model.4 of yolov5n: 64 channels at stride 8 -> 8x8 maps; 16 shown in a 4x4 grid of 48 px tiles
    row = next(r for r in summary["layers"] if r["module"] == "model.4")
    assert row["shape"] == [64, 8, 8] and row["channels_shown"] == 16 and row["grid"] == [4, 4]
    fmap = capture(model, torch.rand(1, 3, 64, 64), ["model.4"])["model.4"][0][0]  # (64, 8, 8)
    img, layout = feature_grid(fmap, 16)
    assert layout == GridLayout(16, 64, 4, 4, 48, 48, 2)
    assert img.shape == (*layout.shape, 3) == (202, 202, 3)
    white = (img == 255).all(axis=2)
    for k in range(16):
        assert not (_tile_region(img, layout, k) == 255).all(axis=2).any()  # viridis never paints white
    assert white[0].all() and white[:, 50].all()  # the separators

    # Detect level 0: 3 anchors x (5 + 2) = 21 channels, 16 shown
    head = next(r for r in summary["layers"] if r["file"].endswith("model.24_0.png"))
    assert head["shape"] == [21, 8, 8] and head["channels_shown"] == 16


def _red_pixels(path) -> int:
    img = cv2.imread(str(path)).astype(int)  # BGR; the frames are #d62728
    return int(((abs(img[:, :, 2] - 214) < 20) & (abs(img[:, :, 1] - 39) < 20) & (abs(img[:, :, 0] - 40) < 20)).sum())


def test_mark_pruned_frames_the_channels_the_plan_removes(tmp_path):
    model, weights, source = _files(tmp_path)
    base = ["visualize", "--weights", str(weights), "--source", str(source), "--layer", "model.2.cv1",
            "--layer", "model.4"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "marked"), "--mark-pruned", "l1:0.5",
                 "--json", str(tmp_path / "v.json")]) == 0
    rows = {r["module"]: r for r in json.loads((tmp_path / "v.json").read_text())["layers"]}
    plan = prune_model(model, PruneOptions(method="l1", ratio=0.5)).plan
    for module, conv in (("model.2.cv1", "model.2.cv1.conv"), ("model.4", "model.4.cv3.conv")):
        c = rows[module]["shape"][0]
        kept = plan.index(plan.graph.calls[conv].outputs)
        assert rows[module]["pruned"] == sorted(set(range(c)) - set(kept.tolist())), module
        assert 0 < len(rows[module]["pruned"]) < c
        assert _red_pixels(tmp_path / "marked" / f"{module}.png") > 100
        assert _red_pixels(tmp_path / "plain" / f"{module}.png") == 0
    assert main([*base, "--out", str(tmp_path / "x"), "--mark-pruned", "layer:0.5"]) == 2


def test_grid_tiles_are_the_normalised_channels():
    fmap = torch.zeros(5, 4, 6)
    fmap[1] = torch.arange(24.0).view(4, 6)  # a ramp: darkest top-left, brightest bottom-right
    fmap[2] = 3.0  # constant: drawn black-ish (0 after normalisation)
    img, layout = feature_grid(fmap, max_channels=4, min_tile=12, pad=1)
    assert (layout.rows, layout.cols, layout.tile_h, layout.tile_w, layout.channels) == (2, 2, 8, 12, 4)
    assert img.shape[:2] == layout.shape == (19, 27)
    ramp = cv2.cvtColor(_tile_region(img, layout, 1), cv2.COLOR_BGR2GRAY).astype(int)
    assert ramp[0, 0] < ramp[-1, -1]
    zero = cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0]
    assert (_tile_region(img, layout, 2) == zero).all()


def test_unknown_layer_lists_close_names(tmp_path, capsys):
    model, weights, source = _files(tmp_path)
    with pytest.raises(UserError, match=r"model\.4\.cv1") as e:
        resolve_layers(model, ["model.4.cv9"])
    assert "no layer named 'model.4.cv9'" in str(e.value)
    assert resolve_layers(model, ["model.4.cv1.conv", "model.9"]) == {"model.4.cv1.conv": "model.4.cv1.conv",
                                                                     "model.9": "model.9"}
    rc = main(["visualize", "--weights", str(weights), "--source", str(source), "--layer", "modle.4",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "model.4" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", [n for n in ("yolox-nano", "yolov3-tiny") if n in MODELS])
def test_other_families_by_module_name(tmp_path, name):
    model, _, _ = _files(tmp_path, name)
    layer = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][3]
    maps = capture(model, torch.rand(1, 3, 64, 64), [layer])
    assert len(maps[layer]) == 1 and maps[layer][0].shape[0] == 1
