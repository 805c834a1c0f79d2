import csv
import os
import subprocess
import sys

import pytest

from yoloslim.engine.train_state import load_state
from yoloslim.models.io import load_model


@pytest.mark.slow
def test_ddp_two_gloo_processes_train_one_epoch(tiny_data, tmp_path):
    """``torchrun --nproc_per_node 2`` on CPU: gloo, DistributedSampler, DDP; rank 0 alone writes."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "yoloslim", "train", "--data", str(tiny_data), "--model", "yolov5n", "--imgsz", "64",
           "--batch", "8", "--epochs", "1", "--workers", "0", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2" in proc.stderr  # the run announced two processes
    model, info = load_model(out / "weights" / "last.safetensors")
    assert info.history[-1]["action"] == "trained" and info.history[-1]["epochs"] == 1
    state = load_state(out / "weights" / "last_state.pt")
    assert state["epoch"] == 1 and state["ema"]["updates"] == 2  # 16 images, 8 per rank, 4 per batch: 2 steps
    with open(out / "results.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]
    assert proc.stdout.count("run folder") == 1  # only rank 0 prints the summary
