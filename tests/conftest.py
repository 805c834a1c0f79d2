"""Shared fixtures: tiny models and data, all written into tmp_path."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread each, pytest-xdist uses the cores

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> None:
    """Every test starts from seed 0 on one intra-op thread: tiny models run faster on one thread than on
    two busy cores (pytest-xdist uses the cores), and a test that changes the count cannot leak it."""
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    """A YOLO-format synthetic data set: 16 train + 8 val images of 96 px, 8 classes; the data.yaml Path."""
    from yoloslim.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("tiny_data"), fmt="yolo", images=24, imgsz=96, seed=0,
                      val_ratio=1 / 3, progress=False)
