"""docs/prune-darknet-yolov3.md, run: every ``yoloslim`` command of the guide, in order, on small inputs."""

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from yoloslim.cli import COMMANDS, main
from yoloslim.deploy.darknet_io import load_darknet, write_darknet
from yoloslim.models import build_model, model_spec
from yoloslim.models.darknet_cfg import parse_cfg
from yoloslim.models.io import load_model

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "prune-darknet-yolov3.md"
SMALL = {"--epochs": "1", "--imgsz": "64", "--batch": "8"}  # the guide's numbers, made test-sized
WORKERS = ("train", "val", "prune")  # commands that take --workers (0: no loader processes in tests)


def guide_commands() -> list[list[str]]:
    """The guide's command lines (``yoloslim ...`` lines of its console blocks), as argument lists."""
    blocks = re.findall(r"```console\n(.*?)```", GUIDE.read_text(), re.S)
    return [shlex.split(line)[1:] for b in blocks for line in b.splitlines() if line.startswith("yoloslim ")]


def small(args: list[str]) -> list[str]:
    out = [SMALL.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
    return out + (["--workers", "0"] if out[0] in WORKERS else [])


def test_the_guide_has_every_step():
    steps = [c[0] for c in guide_commands()]
    # the recipe (prune, prune layers, distilled fine-tune), then the forks' sparsity training + slim
    assert steps == ["import", "info", "val", "prune", "prune", "train", "val", "export", "train", "prune"]


@pytest.mark.slow
def test_the_guide_runs(tmp_path, tiny_data, monkeypatch):
    if "train" not in COMMANDS:
        pytest.skip("the train command is not registered yet")
    names = yaml.safe_load(Path(tiny_data).read_text())["names"]
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else names
    # the user's darknet files: a YOLOv3 with every width / 8, with random batch-norm statistics
    spec = model_spec("yolov3", nc=len(names))
    spec.channels = {k: max(4, v // 8) for k, v in spec.channels.items()}
    model = build_model(spec)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) * 0.9 + 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
    write_darknet(model, tmp_path / "yolov3-hand.cfg", tmp_path / "yolov3-hand.weights", imgsz=416)
    (tmp_path / "hand.names").write_text("\n".join(names) + "\n")
    os.symlink(Path(tiny_data).parent, tmp_path / "hand")
    monkeypatch.chdir(tmp_path)

    for args in guide_commands():
        assert main(small(args)) == 0, " ".join(args)

    before = parse_cfg((tmp_path / "yolov3-hand.cfg").read_text())
    after = parse_cfg((tmp_path / "yolov3-hand-pruned.cfg").read_text())
    assert len(after) == len(before) - 3 * 8  # 8 residual units (1x1, 3x3, shortcut) removed
    widths = lambda cfg: sum(s["filters"] for s in cfg if s["type"] == "convolutional")  # noqa: E731
    assert widths(after) < widths(before)
    tuned, info = load_model(tmp_path / "runs" / "finetune" / "weights" / "best.safetensors")
    assert [e["action"] for e in info.history][:1] == ["imported"]
    again, _ = load_darknet(tmp_path / "yolov3-hand-pruned.weights", cfg=tmp_path / "yolov3-hand-pruned.cfg")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(tuned.eval()(x), again(x), strict=True))
    cv2 = pytest.importorskip("cv2")
    if hasattr(cv2.dnn, "readNetFromDarknet"):  # and what darknet deployments read, reads it
        net = cv2.dnn.readNetFromDarknet("yolov3-hand-pruned.cfg", "yolov3-hand-pruned.weights")
        net.setInput(x.numpy())
        outs = net.forward(net.getUnconnectedOutLayersNames())
        assert sorted(o.shape[0] for o in outs) == [3 * 2 * 2, 3 * 4 * 4, 3 * 8 * 8]
        assert all(np.isfinite(o).all() for o in outs)
