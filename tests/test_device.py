"""--device, --half and --threads: the CUDA code paths as far as a CPU machine can run them.

CUDA is mocked (``torch.cuda.is_available`` / ``device_count`` / ``set_device``), so that the first run
on a GPU is not the first time this code runs; what needs a real GPU (kernels, NCCL) is not tested here.
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import pytest
import torch
from torch import nn

import yoloslim.data.dataset as dataset_mod
import yoloslim.device as device_mod
from yoloslim.cli import build_parser, main
from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.deploy.predict import Predictor
from yoloslim.device import check_half, default_threads, resolve_device, set_threads
from yoloslim.engine import ddp
from yoloslim.engine.ema import ModelEMA
from yoloslim.engine.evaluate import evaluate
from yoloslim.engine.train_epoch import Parts, amp_autocast, make_scaler, optimizer_step
from yoloslim.errors import UserError
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, save_model


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA devices, as far as the resolver can tell; records set_device calls."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    return calls


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("given, local_rank, expected", [
    ("cpu", 0, "cpu"), ("CPU", 0, "cpu"), (None, 0, "cuda:0"), ("", 1, "cuda:1"), ("cuda", 0, "cuda:0"),
    ("cuda", 1, "cuda:1"), ("cuda:1", 0, "cuda:1"), (" cuda:0 ", 1, "cuda:0"), ("1", 0, "cuda:1"),
    (0, 1, "cuda:0"),
])
def test_device_names_resolve_to_an_indexed_device(two_gpus, given, local_rank, expected):
    dev = resolve_device(given, local_rank)
    assert str(dev) == expected
    assert dev.type == "cpu" or dev.index is not None  # set_device needs an index


@pytest.mark.parametrize("given, message", [
    ("cuda:2", "there is no CUDA device 2 (this machine has 2: 0, 1)"), ("7", "no CUDA device 7"),
    ("0,1", "torchrun --nproc_per_node N"), ("cuda:0,1", "one device per process"),
    ("gpu", "not a device; use cpu, cuda, cuda:N, N or mps"), ("cuda:-1", "not a device"),
])
def test_unavailable_or_malformed_devices_get_one_line(two_gpus, given, message):
    with pytest.raises(UserError, match="^--device .*") as e:
        resolve_device(given)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_without_cuda_the_default_is_cpu_and_cuda_is_refused(no_gpu, monkeypatch):
    assert resolve_device(None) == torch.device("cpu") and device_mod.default_device() == "cpu"
    for name in ("cuda", "cuda:0", "0"):
        with pytest.raises(UserError, match=f"--device {name}: CUDA is not available here .* use --device cpu"):
            resolve_device(name)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="MPS\\) is not available here"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")


def test_half_is_refused_off_cuda():
    check_half(False, torch.device("cpu"))
    check_half(True, torch.device("cuda", 0))
    for dev in ("cpu", "mps"):
        with pytest.raises(UserError, match="--half runs float16 on a CUDA device only"):
            check_half(True, torch.device(dev))


# ---- DDP: the device set_device receives ------------------------------------------------------

def test_ddp_setup_gives_set_device_an_indexed_device(two_gpus, monkeypatch):
    """``torch.cuda.set_device(torch.device("cuda"))`` raises; an index-less device is the local rank's."""
    assert ddp.setup(ddp.Dist(), "cuda") == torch.device("cuda", 0)
    assert ddp.setup(ddp.Dist(), None) == torch.device("cuda", 0)  # the default on a GPU machine
    assert ddp.setup(ddp.Dist(), "cuda:1") == torch.device("cuda", 1)
    assert ddp.setup(ddp.Dist(), "cpu") == torch.device("cpu")
    assert two_gpus == [torch.device("cuda", 0), torch.device("cuda", 0), torch.device("cuda", 1)]

    joined = []
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(ddp.dist, "init_process_group", lambda backend, **kw: joined.append((backend, kw)))
    two_gpus.clear()
    # under torchrun each process takes its local rank's GPU, whatever index the command line named
    assert ddp.setup(ddp.Dist(rank=1, local_rank=1, world_size=2), "cuda:0") == torch.device("cuda", 1)
    assert two_gpus == [torch.device("cuda", 1)]
    assert joined == [("nccl", {"rank": 1, "world_size": 2})]
    assert ddp.setup(ddp.Dist(rank=1, local_rank=1, world_size=2), "cpu") == torch.device("cpu")
    assert joined[-1][0] == "gloo"


def test_ddp_local_rank_beyond_the_gpus_is_one_line(two_gpus):
    with pytest.raises(UserError, match="no CUDA device 2"):
        ddp.process_device(ddp.Dist(rank=2, local_rank=2, world_size=3), "cuda")


# ---- AMP: scaler and autocast are wired on CUDA, off elsewhere ---------------------------------

def test_amp_scaler_and_autocast_on_cuda_only(two_gpus):
    assert make_scaler(torch.device("cuda", 0)).is_enabled()
    assert not make_scaler(torch.device("cpu")).is_enabled()
    ctx = amp_autocast(torch.device("cuda", 0))
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda"
    assert isinstance(amp_autocast(torch.device("cpu")), contextlib.nullcontext)


class _Sparsity:
    """Adds a fixed sub-gradient to the BN γ, as BNSparsity does: must see unscaled gradients."""

    def apply(self, model: nn.Module, epoch: int, epochs: int) -> None:
        bn = model[1]
        bn.weight.grad.add_(0.5 * torch.sign(bn.weight.detach()))

    def hold_zeros(self, ema_model: nn.Module) -> None:
        """No target fraction: nothing is held at 0."""


def _step(scaler: torch.amp.GradScaler) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    parts = Parts(model, model, opt, scaler, ModelEMA(model), None, _Sparsity())
    loss = model(torch.ones(2, 3, 8, 8)).square().sum() * 100  # gradients far beyond the clip norm of 10
    parts.scaler.scale(loss).backward()
    optimizer_step(parts, epoch=0, epochs=1, n_backward=2)
    return model


def test_scaled_step_unscales_before_sparsity_and_clipping(two_gpus):
    """The enabled (CUDA) scaler's step equals the plain one: sparsity and clipping see true gradients."""
    scaler = make_scaler(torch.device("cuda", 0))
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0
    scaled, plain = _step(scaler), _step(make_scaler(torch.device("cpu")))
    for a, b in zip(scaled.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert scaler._scale is not None and scaler._scale.device.type == "cpu"  # it followed the tensors


# ---- the model's dtype (float16 after --half) reaches the inputs ---------------------------------

def test_predictor_and_evaluate_feed_the_models_dtype(tiny_data):
    """float64 stands in for float16 (which CPUs barely run): inputs follow the model's dtype."""
    model = create_model("yolov5n", nc=8).eval()
    img = np.full((96, 96, 3), 127, np.uint8)
    ref = Predictor(model, imgsz=64)(img)
    dbl = Predictor(create_model("yolov5n", nc=8).eval().double(), imgsz=64)(img)
    assert len(ref.scores) == len(dbl.scores)
    source = load_data(tiny_data)
    loader = create_loader(DetectionDataset(source.splits["val"][:4], 64), 4, shuffle=False, workers=0)
    single = evaluate(model, loader, source.names, progress=False).metrics
    double = evaluate(model.double(), loader, source.names, progress=False).metrics
    assert abs(single.map50 - double.map50) < 1e-6


# ---- threads -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 1), (6, 3), (8, 4), (64, 4)])
def test_default_threads_is_half_the_cpus_capped(monkeypatch, cpus, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device_mod.os, "sched_getaffinity", lambda _: set(range(cpus)), raising=False)
    assert default_threads() == expected


def test_omp_num_threads_wins_and_bad_counts_are_refused(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    assert set_threads(None) == 3 and torch.get_num_threads() == 3
    with pytest.raises(UserError, match="--threads must be at least 1, got 0"):
        set_threads(0)


def test_threads_flag_reaches_torch(capsys):
    assert main(["info", "--model", "yolov5n", "--imgsz", "64", "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    assert main(["info", "--model", "yolov5n", "--imgsz", "64", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --threads must be at least 1, got 0"


def test_every_model_command_has_one_threads_flag():
    parser = build_parser()
    subs = {name: p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for name, p in a.choices.items()}
    for name in ("demo", "train", "prune", "val", "predict", "export", "bench", "info", "visualize"):
        helps = [a.help for a in subs[name]._actions if "--threads" in a.option_strings]
        assert helps == [device_mod.THREADS_HELP], name
    for name in ("train", "prune", "val", "predict", "bench"):
        assert any("--device" in a.option_strings for a in subs[name]._actions), name


# ---- the command line: one line for a device that is not there -----------------------------------

def test_commands_refuse_an_absent_gpu_and_half_on_cpu_in_one_line(no_gpu, tiny_data, tmp_path, capsys):
    model = create_model("yolov5n", nc=8)
    weights = save_model(tmp_path / "m.safetensors", model, ModelInfo(model.spec, [str(i) for i in range(8)], 64))
    image = next(p for p in (tiny_data.parent / "images" / "val").iterdir())
    commands = {
        "train": ["train", "--data", str(tiny_data), "--model", "yolov5n", "--out", str(tmp_path / "t")],
        "val": ["val", "--weights", str(weights), "--data", str(tiny_data)],
        "predict": ["predict", "--weights", str(weights), "--source", str(image), "--out", str(tmp_path / "p")],
        "prune": ["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.5",
                  "--out", str(tmp_path / "x.safetensors")],
        "bench": ["bench", "--weights", str(weights)],
    }
    for name, argv in commands.items():
        assert main([*argv, "--device", "cuda:0"]) == 2, name
        err = capsys.readouterr().err
        assert err == "error: --device cuda:0: CUDA is not available here (no GPU, or a CPU-only PyTorch); " \
                      "use --device cpu\n", name
    for argv in (commands["val"], commands["predict"]):
        assert main([*argv, "--device", "cpu", "--half"]) == 2
        assert "--half runs float16 on a CUDA device only" in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "p").exists()
    assert not (tmp_path / "x.safetensors").exists()


class _ThreadCount(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        return torch.get_num_threads()


def test_loader_workers_run_on_one_thread(tiny_data):
    """A worker process inherits the parent's thread count; with --threads 2 and --workers 2 that would be
    six threads on the cores, so every worker sets its own to 1."""
    source = load_data(tiny_data)
    loader = create_loader(DetectionDataset(source.splits["val"], 64), 4, shuffle=False, workers=1)
    assert loader.worker_init_fn is dataset_mod._worker_init and not loader.pin_memory
    torch.set_num_threads(2)
    counts = torch.utils.data.DataLoader(_ThreadCount(), batch_size=1, num_workers=1,
                                         worker_init_fn=dataset_mod._worker_init)
    assert [int(c) for c in counts] == [1, 1]
    assert torch.get_num_threads() == 2


def test_loaders_pin_memory_when_a_gpu_is_there(two_gpus, tiny_data):
    source = load_data(tiny_data)
    assert create_loader(DetectionDataset(source.splits["val"], 64), 4, shuffle=False, workers=0).pin_memory
