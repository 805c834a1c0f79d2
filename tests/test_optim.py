"""``--optimizer``: each name builds its torch optimiser with the three groups; ``auto`` chooses by run length."""

import csv

import pytest
import torch
import yaml

from yoloslim.engine.optim import (
    AUTO_SGD_ABOVE_STEPS,
    build_optimizer,
    choose_optimizer,
    few_steps_advice,
    nominal_batch_for,
    optimizer_steps,
    warmup,
    warmup_iterations,
)
from yoloslim.errors import UserError
from yoloslim.hyp import family_defaults
from yoloslim.models import create_model


@pytest.mark.parametrize(("name", "cls"), [("SGD", torch.optim.SGD), ("Adam", torch.optim.Adam),
                                           ("adamw", torch.optim.AdamW)])
def test_each_name_builds_its_optimizer_with_three_groups(name, cls):
    model = create_model("yolov5n", nc=2)
    opt = build_optimizer(model, lr=0.003, momentum=0.9, weight_decay=5e-4, name=name)
    assert type(opt) is cls
    bias, weight, bn = opt.param_groups
    n_bias = sum(1 for n, _ in model.named_parameters() if n.endswith(".bias"))
    n_bn = sum(1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert (len(bias["params"]), len(bn["params"])) == (n_bias, n_bn)
    assert len(weight["params"]) == len(list(model.parameters())) - n_bias - n_bn
    assert (bias["weight_decay"], weight["weight_decay"], bn["weight_decay"]) == (0.0, 5e-4, 0.0)
    assert all(g["lr"] == g["initial_lr"] == 0.003 for g in opt.param_groups)
    if cls is torch.optim.SGD:
        assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    else:
        assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)
        # warm-up ramps the learning rates and leaves Adam's β1 alone (no "momentum" key appears)
        warmup(opt, 50, 100, 1.0, momentum=0.937, warmup_momentum=0.8, warmup_bias_lr=0.0)
        assert weight["lr"] == pytest.approx(0.0015) and bias["lr"] == pytest.approx(0.0015)
        assert "momentum" not in weight and weight["betas"] == (0.9, 0.999)


def test_auto_picks_adamw_for_short_runs_and_sgd_for_long_ones():
    # ultralytics counts optimiser steps at the nominal batch: ceil(images / max(batch, 64)) * epochs
    assert optimizer_steps(320, 16, 64, 30) == 150
    assert optimizer_steps(100, 128, 64, 3) == 3
    short = choose_optimizer("auto", lr0=0.01, momentum=0.937, warmup_bias_lr=0.1, steps=AUTO_SGD_ABOVE_STEPS, nc=8)
    assert (short.name, short.lr, short.momentum, short.warmup_bias_lr) == ("AdamW", 0.000833, 0.9, 0.0)
    assert choose_optimizer("auto", 0.01, 0.937, 0.1, steps=10, nc=80).lr == pytest.approx(0.000119)
    long = choose_optimizer("AUTO", 0.02, 0.937, 0.1, steps=AUTO_SGD_ABOVE_STEPS + 1, nc=8)
    assert (long.name, long.lr, long.momentum, long.warmup_bias_lr) == ("SGD", 0.01, 0.9, 0.0)


def test_explicit_names_keep_the_hyp_and_sgd_is_the_yolov5_recipe():
    sgd = choose_optimizer("sgd", lr0=0.01, momentum=0.937, warmup_bias_lr=0.1, steps=150, nc=8)
    assert (sgd.name, sgd.lr, sgd.momentum, sgd.warmup_bias_lr) == ("SGD", 0.01, 0.937, 0.1)
    adam = choose_optimizer("Adam", lr0=0.001, momentum=0.937, warmup_bias_lr=0.1, steps=150, nc=8)
    assert (adam.name, adam.lr, adam.momentum, adam.warmup_bias_lr) == ("Adam", 0.001, 0.937, 0.0)


def test_unknown_optimizer_is_one_clear_line(tiny_data, tmp_path, capsys):
    with pytest.raises(UserError, match=r"^--optimizer must be one of SGD, Adam, AdamW, auto, got 'adamx'$"):
        choose_optimizer("adamx", 0.01, 0.937, 0.1, 150, 8)
    from yoloslim.cli import main

    code = main(["train", "--data", str(tiny_data), "--model", "yolov5n", "--optimizer", "adamx",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--optimizer must be one of SGD, Adam, AdamW, auto" in err[0], err
    assert not (tmp_path / "run").exists()




def test_negative_nominal_batch_is_one_clear_line(tiny_data, tmp_path, capsys):
    from yoloslim.cli import main

    code = main(["train", "--data", str(tiny_data), "--model", "yolov5n", "--nominal-batch", "-1",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err == ["error: --nominal-batch must be at least 1 (or 0: auto), got -1"], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("requested, optimizer, images, batch, epochs, expected", [
    (32, "auto", 320, 16, 30, 32),          # given: kept
    (0, "auto", 320, 16, 30, 16),           # auto, short (150 steps at 64): a step on every batch
    (0, "AUTO", 320, 16, 30, 16),           # any spelling
    (0, "SGD", 320, 16, 30, 64),            # YOLOv5's recipe accumulates to 64
    (0, "AdamW", 320, 16, 30, 64),
    (0, "auto", 64_000, 16, 11, 64),        # auto, long (11,000 steps at 64): accumulate as SGD does
    (0, "auto", 64_000, 16, 10, 16),        # exactly 10,000 steps is still short
])
def test_nominal_batch_auto(requested, optimizer, images, batch, epochs, expected):
    assert nominal_batch_for(requested, optimizer, images, batch, epochs) == expected


def test_a_short_auto_run_steps_on_every_batch(tiny_data, tmp_path):
    """The resolved nominal batch is what the run uses and records (args.yaml, and so the resume state)."""
    from yoloslim.engine.train import TrainConfig, train

    res = train(TrainConfig(data=str(tiny_data), model="yolov5n", epochs=1, batch=4, imgsz=64, workers=0,
                            plots=False, device="cpu", out=str(tmp_path / "run")))
    args = yaml.safe_load((res.run_dir / "args.yaml").read_text())
    assert args["config"]["nominal_batch"] == 4


@pytest.mark.parametrize("requested, optimizer, nominal, batch, steps, warns", [
    (0, "AdamW", 64, 8, 20, True),       # named: accumulates 8 batches into each of 20 steps
    (0, "SGD", 64, 8, 499, True),
    (0, "SGD", 64, 8, 500, False),       # long enough
    (8, "AdamW", 8, 8, 20, False),       # --nominal-batch given: the user chose
    (0, "auto", 8, 8, 20, False),        # auto steps on every batch of a short run
    (0, "AdamW", 64, 64, 20, False),     # nothing accumulates
])
def test_few_steps_advice(requested, optimizer, nominal, batch, steps, warns):
    advice = few_steps_advice(requested, optimizer, nominal, batch, steps)
    assert (advice is not None) == warns
    if warns:
        assert f"only {steps} optimiser steps" in advice and f"--nominal-batch {batch}" in advice


@pytest.mark.parametrize(("extra", "warns"), [({}, True), ({"nominal_batch": 4}, False)])
def test_a_short_run_with_a_named_optimizer_says_how_few_steps_it_takes(tiny_data, tmp_path, extra, warns):
    from yoloslim.engine.train import TrainConfig, train

    res = train(TrainConfig(data=str(tiny_data), model="yolov5n", epochs=1, batch=4, imgsz=64, workers=0,
                            plots=False, device="cpu", optimizer="AdamW", out=str(tmp_path / "run"), **extra))
    hits = [line.split(" | ", 2)[1:] for line in (res.run_dir / "yoloslim.log").read_text().splitlines()
            if "optimiser step" in line]
    assert hits == ([["WARNING", "only 1 optimiser step: --optimizer AdamW accumulates 16 batches of 4 into each "
                      "(nominal batch 64); on a run this short, --nominal-batch 4 steps on every batch, as "
                      "--optimizer auto does"]] if warns else [])


def test_warmup_iterations_floor_is_the_family_s():
    assert warmup_iterations(3.0, 20) == 100  # YOLOv5: at least 100 iterations
    assert warmup_iterations(3.0, 20, family_defaults("yolov5").min_warmup_iters) == 100
    assert warmup_iterations(3.0, 20, family_defaults("yolov8").min_warmup_iters) == 60  # ultralytics 8.4: 3 epochs
    assert warmup_iterations(3.0, 50, 100) == 150
    assert warmup_iterations(0.0, 20, 100) == 0 == warmup_iterations(0.0, 20, 0)


@pytest.mark.parametrize(("model", "n_warmup"), [("yolov8n", 12), ("yolov5n", 100)])
def test_a_run_warms_up_over_its_family_s_length(tiny_data, tmp_path, model, n_warmup):
    """16 images, batch 4: 4 batches an epoch; the weights' lr after batch 4 (iteration 3) is 3/n_warmup of lr0."""
    from yoloslim.engine.train import TrainConfig, train

    res = train(TrainConfig(data=str(tiny_data), model=model, epochs=1, batch=4, imgsz=64, workers=0, plots=False,
                            device="cpu", out=str(tmp_path / "run")))
    row = next(csv.DictReader((res.run_dir / "results.csv").read_text().splitlines()))
    lr0 = round(0.002 * 5 / (4 + 8), 6)  # auto: AdamW
    assert float(row["lr/weight"]) == pytest.approx(lr0 * 3 / n_warmup, rel=1e-6)
