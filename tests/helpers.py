"""Helpers shared by the test modules (imported as ``from helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
import yaml
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random γ, β and running statistics in every BatchNorm (fresh ones are identities, which would hide a
    wrong slice or a wrong fold); returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.95 + 0.05)
                m.bias.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def max_diff(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> float:
    """The largest absolute difference between two equally long sequences of tensors."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def self_scored_data(folder: Path, images: int, imgsz: int, seed: int, val_ratio: float) -> tuple[Path, list[str]]:
    """A synthetic set whose val split is its train split (an overfitting test scores the images it
    learned); the data.yaml path and the class names."""
    from yoloslim.data.synth import synthesize

    data = synthesize(folder, images=images, imgsz=imgsz, seed=seed, val_ratio=val_ratio, progress=False)
    cfg = yaml.safe_load(data.read_text())
    cfg["val"] = cfg["train"]
    data.write_text(yaml.safe_dump(cfg))
    return data, cfg["names"]


def train_interrupted_in_second_epoch(monkeypatch, cfg) -> None:
    """Run ``train(cfg)`` with a KeyboardInterrupt (Ctrl-C) at the start of its second epoch, after the first
    epoch's files were written; ``train`` is then as it was."""
    import pytest

    import yoloslim.engine.train as engine_train

    original = engine_train.train_one_epoch

    def killed_in_second_epoch(parts, loader, epoch, *args, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(parts, loader, epoch, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(engine_train, "train_one_epoch", killed_in_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            engine_train.train(cfg)


@contextlib.contextmanager
def fake_modules(classes: Mapping[str, Iterable[type]]) -> Iterator:
    """Register throw-away modules (module name -> its classes) in ``sys.modules``, as a checkpoint's
    pickle names them; parent packages are chained as attributes. Yields a function that removes them
    (so a test can load a file without them), and removes them on exit in any case."""
    mods = {name: types.ModuleType(name) for name in classes}
    for name, members in classes.items():
        for cls in members:
            setattr(mods[name], cls.__name__, cls)
        parent, _, child = name.rpartition(".")
        if parent in mods:
            setattr(mods[parent], child, mods[name])
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)

    def remove() -> None:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v

    try:
        yield remove
    finally:
        remove()
