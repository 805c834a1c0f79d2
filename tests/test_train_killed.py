"""Interrupted runs lose nothing: training killed with SIGKILL (in the middle of checkpoint writes and at
seeded random moments), then resumed, ends with the same weights as a run that was never interrupted.

The training runs in a forked process (``os.fork``: no second torch import), on one thread, without
data-loader workers. ``YOLOSLIM_TEST_SLOW_WRITES`` holds every finished temporary file for a moment
before its rename, so the test can see a write in progress (its ``.NAME.*.tmp`` file) and kill the
process right then.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from yoloslim.cli import main
from yoloslim.data.synth import synthesize
from yoloslim.engine.train_state import load_state
from yoloslim.models.io import load_model

SLOW_WRITE_SECONDS = 0.2
RUN_LIMIT_SECONDS = 300
ARGS = ["--model", "yolov5n", "--epochs", "3", "--batch", "4", "--imgsz", "64", "--workers", "0", "--seed", "5",
        "--device", "cpu"]
EPOCHS = int(ARGS[ARGS.index("--epochs") + 1])
DONE = ("finished", "killed after its last epoch")  # the endings after which the run's weights are final
# What ends each interrupted run: ("write", file name, n) kills during the n-th write of that file in the
# run; ("after", seconds) kills after a seeded random delay, wherever the run is then.
rng = random.Random(11)
KILLS = [("write", "last_state.pt", 2), ("write", "last.safetensors", 1), ("after", rng.uniform(0.2, 3.0)),
         ("write", "last_state.pt", 1), ("after", rng.uniform(0.2, 3.0))]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _everything_present_loads(run: Path) -> None:
    """No half-written file: every model file and state file in the run folder reads back whole."""
    for f in (run / "weights").glob("*.safetensors"):
        load_model(f)
    if (run / "weights" / "last_state.pt").exists():
        assert load_state(run / "weights" / "last_state.pt")["epoch"] >= 1
    if (run / "results.csv").exists():
        assert all(r["epoch"].isdigit() for r in _rows(run / "results.csv"))


def _run_until(argv: list[str], kill: tuple, weights: Path) -> str:
    """Fork a process that runs ``yoloslim train argv`` (forked, so torch is imported once); kill it with
    SIGKILL as ``kill`` says. Returns how the run ended."""
    pid = os.fork()
    if pid == 0:  # the training process
        code = 1
        try:
            os.environ["YOLOSLIM_TEST_SLOW_WRITES"] = str(SLOW_WRITE_SECONDS)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            code = main(["train", *argv])
        finally:
            os._exit(code)
    start, seen, writing = time.monotonic(), 0, False
    while not (status := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() - start > RUN_LIMIT_SECONDS:  # a hung child fails the test, never the suite
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the training process of {argv} ran longer than {RUN_LIMIT_SECONDS} s")
        if kill[0] == "after" and time.monotonic() - start >= kill[1]:
            break
        if kill[0] == "write":
            now = any(weights.glob(f".{kill[1]}.*.tmp"))
            seen += now and not writing
            writing = now
            if now and seen == kill[2]:
                break
        time.sleep(0.01)
    else:
        assert os.waitstatus_to_exitcode(status[1]) == 0, f"the run of {argv} failed"
        return "finished"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "killed during a write" if kill[0] == "write" else "killed"


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes_to_the_same_weights(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", images=8, imgsz=64, seed=1, val_ratio=0.25, progress=False)
    assert main(["train", "--data", str(data), *ARGS, "--out", str(tmp_path / "straight")]) == 0

    run = tmp_path / "killed"
    weights = run / "weights"
    endings = []
    for kill in [*KILLS, ("never",)]:
        resumable = (weights / "last_state.pt").exists()
        argv = ["--resume", str(run)] if resumable else ["--data", str(data), *ARGS, "--out", str(run)]
        endings.append(_run_until(argv, kill, weights))
        _everything_present_loads(run)
        if endings[-1] == "killed" and load_state(weights / "last_state.pt")["epoch"] >= EPOCHS:
            # killed after its last epoch was saved (in the closing report or pictures, which a slow machine
            # reaches within the random delay): nothing is left to resume, and --resume says so
            assert main(["train", "--resume", str(run)]) == 2
            endings[-1] = "killed after its last epoch"
        if endings[-1] in DONE:
            break
    assert endings.count("killed during a write") >= 2 and endings[-1] in DONE, endings
    if endings[-1] == "finished":
        assert not list(run.rglob(".*.tmp"))  # a resumed run clears what killed runs left behind

    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(tmp_path / "straight" / "weights" / name), load_file(weights / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert _rows(tmp_path / "straight" / "results.csv") == _rows(run / "results.csv")
