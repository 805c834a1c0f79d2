import csv
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import yoloslim.engine.train as engine_train
from helpers import train_interrupted_in_second_epoch
from yoloslim.cli import main
from yoloslim.engine.ema import ModelEMA, run_horizon
from yoloslim.engine.optim import build_optimizer, lr_factor, warmup
from yoloslim.engine.train import TrainConfig, TrainingDiverged, train
from yoloslim.engine.train_setup import initial_model
from yoloslim.engine.train_state import load_state
from yoloslim.errors import UserError
from yoloslim.hyp import Hyp, load_hyp
from yoloslim.models import build_model, create_model, model_spec
from yoloslim.models.io import ModelInfo, load_model, save_model


def _cfg(data, out, **kw):
    base = dict(data=str(data), model="yolov5n", epochs=2, batch=4, imgsz=64, workers=0, seed=3,
                nominal_batch=8, device="cpu", out=str(out))
    base.update(kw)
    return TrainConfig(**base)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- hyper-parameters, optimiser, schedule, EMA ------------------------------------------------

def test_hyp_defaults_are_scratch_low_and_augment_keys_route_to_augment_config(tmp_path):
    h = Hyp()
    assert (h.lr0, h.lrf, h.momentum, h.weight_decay, h.warmup_epochs) == (0.01, 0.01, 0.937, 0.0005, 3.0)
    assert (h.box, h.cls, h.obj, h.anchor_t, h.fl_gamma) == (0.05, 0.5, 1.0, 4.0, 0.0)
    f = tmp_path / "hyp.yaml"
    f.write_text("lr0: 0.02\nmosaic: 0.0\nfliplr: 0.25\n")
    h = load_hyp(f)
    assert h.lr0 == 0.02 and h.augment.mosaic == 0.0 and h.augment.fliplr == 0.25 and h.augment.hsv_s == 0.7
    assert h.to_dict()["mosaic"] == 0.0


def test_a_pruned_models_fine_tune_has_no_warm_up_unless_a_file_says(tmp_path):
    assert load_hyp().warmup_epochs == 3.0 and load_hyp(pruned=True).warmup_epochs == 0.0
    f = tmp_path / "hyp.yaml"
    f.write_text("warmup_epochs: 1.0\n")
    assert load_hyp(f, pruned=True).warmup_epochs == 1.0
    assert load_hyp(pruned=True, family="yolov8").box == 7.5  # the family's defaults stay


def test_hyp_unknown_key_is_refused_with_suggestion(tmp_path):
    f = tmp_path / "hyp.yaml"
    f.write_text("lr0s: 0.02\n")
    with pytest.raises(UserError, match="unknown key 'lr0s' .did you mean 'lr0'"):
        load_hyp(f)
    f.write_text("mosiac: 1.0\n")
    with pytest.raises(UserError, match="did you mean 'mosaic'"):
        load_hyp(f)


def test_sgd_warmup():
    """(The three parameter groups of every optimizer: tests/test_optim.py.)"""
    model = create_model("yolov5n", nc=2)
    opt = build_optimizer(model, lr=0.01, momentum=0.937, weight_decay=5e-4)
    bias, weight, bn = opt.param_groups
    assert all(g["nesterov"] for g in opt.param_groups)
    warmup(opt, 0, 100, 1.0, momentum=0.937, warmup_momentum=0.8, warmup_bias_lr=0.1)
    assert (bias["lr"], weight["lr"], weight["momentum"]) == (0.1, 0.0, 0.8)
    warmup(opt, 50, 100, 1.0, momentum=0.937, warmup_momentum=0.8, warmup_bias_lr=0.1)
    assert bias["lr"] == pytest.approx(0.055) and weight["lr"] == pytest.approx(0.005)
    assert weight["momentum"] == pytest.approx(0.8685)


def test_lr_schedules_run_from_one_to_lrf():
    for cos in (False, True):
        assert lr_factor(0, 10, 0.01, cos) == pytest.approx(1.0)
        assert lr_factor(10, 10, 0.01, cos) == pytest.approx(0.01)
    assert lr_factor(5, 10, 0.01, False) == pytest.approx(0.505)
    assert lr_factor(5, 10, 0.01, True) == pytest.approx(0.505)
    assert lr_factor(2, 10, 0.01, True) > lr_factor(2, 10, 0.01, False)


def test_ema_decay_ramp_and_buffers():
    model = create_model("yolov5n", nc=2)
    ema = ModelEMA(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.model[0].bn.num_batches_tracked.fill_(7)
    ema.update(model)
    d = 0.9999 * (1 - math.exp(-1 / 2000))
    k = "model.0.conv.weight"
    expected = d * (model.state_dict()[k] - 1.0) + (1 - d) * model.state_dict()[k]
    torch.testing.assert_close(ema.ema.state_dict()[k], expected)
    assert int(ema.ema.model[0].bn.num_batches_tracked) == 7
    assert not any(p.requires_grad for p in ema.ema.parameters())


@pytest.mark.parametrize("per_epoch, decay, tau", [
    (2000, 0.9999, 2000.0),    # epochs of 2,000 updates or more: YOLOv5's EMA
    (1849, 1 - 1 / 9245, 1849.0),  # COCO at batch 64: within 1e-5 of it
    (38, 1 - 1 / 190, 38.0),   # 300 images at batch 8: five epochs of averaging, a one-epoch ramp
    (0, 0.8, 1.0),             # an empty count still gives a working average
])
def test_ema_averages_over_at_most_five_epochs(per_epoch, decay, tau):
    ema = ModelEMA.for_epoch_length(nn.Linear(1, 1), per_epoch)
    assert ema.decay == pytest.approx(decay) and ema.tau == pytest.approx(tau)


def test_ema_of_a_small_data_set_averages_the_noise_that_yolov5s_constants_pass_through():
    model = nn.Linear(1, 1, bias=False)
    small, coco = ModelEMA.for_epoch_length(model, 10), ModelEMA(model)
    for t in range(100):  # ten epochs of ten updates, the weight jumping between +1 and -1
        model.weight.data.fill_((-1) ** t)
        small.update(model)
        coco.update(model)
    assert abs(small.ema.weight.item()) < 0.05
    assert coco.ema.weight.item() < -0.9  # after 100 updates, YOLOv5's decay is 0.05: the raw weight


@pytest.mark.parametrize("epochs, horizon", [(40, 1.0), (100, 2.5), (200, 5.0), (300, 5.0), (4, 0.1)])
def test_ema_horizon_is_a_fortieth_of_the_run_and_at_most_five_epochs(epochs, horizon):
    assert run_horizon(epochs) == pytest.approx(horizon)


def test_an_ema_shorter_than_one_update_is_the_raw_weights():
    model = nn.Linear(1, 1, bias=False)
    ema = ModelEMA.for_epoch_length(model, 10, horizon_epochs=0.05)  # half an update
    assert ema.decay == 0.0
    model.weight.data.fill_(3.0)
    ema.update(model)
    assert ema.ema.weight.item() == 3.0


def test_training_sizes_its_ema_by_its_steps_per_epoch_and_its_length(tiny_data, tmp_path, monkeypatch):
    seen, make = [], ModelEMA.for_epoch_length
    monkeypatch.setattr(ModelEMA, "for_epoch_length",
                        lambda model, n, h: seen.append((n, h)) or make(model, n, h))
    train(_cfg(tiny_data, tmp_path / "run", epochs=2, plots=False))
    assert seen == [(2, 0.05)]  # 16 images, batch 4, accumulated to 8: two steps per epoch; 2.5 % of 2 epochs


# ---- starting points ---------------------------------------------------------------------------

def test_checkpoint_with_other_class_count_keeps_backbone_and_neck(tmp_path):
    src = create_model("yolov5n", nc=3)
    path = save_model(tmp_path / "m.safetensors", src, ModelInfo(src.spec, ["a", "b", "c"], 64))
    model, info = initial_model(None, str(path), [f"c{i}" for i in range(5)], 64)
    assert info.spec.nc == 5 and model.spec.nc == 5
    for k in ("model.0.conv.weight", "model.23.cv3.conv.weight"):
        torch.testing.assert_close(model.state_dict()[k], src.state_dict()[k])
    assert model.state_dict()["model.24.m.0.weight"].shape[0] == 3 * (5 + 5)


def test_pruned_checkpoint_is_trained_as_it_is(tiny_data, tmp_path):
    spec = model_spec("yolov5n", nc=8)
    spec.channels["model.4.m.0.cv1.conv"] = 5
    spec.channels["model.8.cv2.conv"] = 24
    src = build_model(spec)
    names = yaml.safe_load(tiny_data.read_text())["names"]
    info = ModelInfo(spec, names, 64).with_event("pruned", method="slim")
    path = save_model(tmp_path / "pruned.safetensors", src, info)
    res = train(_cfg(tiny_data, tmp_path / "run", model=None, weights=str(path), epochs=1))
    model, out_info = load_model(res.last)
    assert out_info.spec.channels == spec.channels
    assert [e["action"] for e in out_info.history] == ["pruned", "fine-tuned"]
    assert out_info.history[-1]["epochs"] == 1
    assert (res.run_dir / "results.csv").is_file() and (res.run_dir / "yoloslim.log").is_file()
    assert res.best.is_file()


def test_sparsity_training_drives_gamma_toward_zero_and_logs_it(tiny_data, tmp_path):
    from yoloslim.prune.sparsity import gamma_stats

    src = create_model("yolov5n", nc=8)
    with torch.no_grad():  # γ of a trained-looking model: small, spread over 0..0.1
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.0, 0.1)
    before = gamma_stats(src).fraction_below
    names = yaml.safe_load(tiny_data.read_text())["names"]
    path = save_model(tmp_path / "m.safetensors", src, ModelInfo(src.spec, names, 64))
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("warmup_epochs: 0\n")
    res = train(_cfg(tiny_data, tmp_path / "run", model=None, weights=str(path), sparsity=0.1, hyp=str(hyp),
                     optimizer="SGD", nominal_batch=4, val_every_epoch=False))
    fractions = [float(r["sparsity/gamma_below_1e-2"]) for r in _rows(res.run_dir / "results.csv")]
    assert before + 0.05 < fractions[0] < fractions[1]
    assert res.metrics["gamma_below_1e-2"] == pytest.approx(fractions[1], abs=1e-5)
    for epoch in (1, 2):
        png = res.run_dir / "gamma" / f"epoch{epoch:03d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, info = load_model(res.last)
    assert info.history[-1]["action"] == "sparse-trained" and info.history[-1]["sparsity"] == 0.1


def test_run_folders_are_numbered_and_resume_finds_the_latest(tmp_path):
    import os

    from yoloslim.engine.run_files import new_run_dir
    from yoloslim.engine.train_setup import find_resume_state

    project = tmp_path / "runs" / "train"
    assert [new_run_dir(project).name for _ in range(3)] == ["exp1", "exp2", "exp3"]
    for i, name in enumerate(("exp1", "exp3")):
        state = project / name / "weights" / "last_state.pt"
        state.parent.mkdir(parents=True)
        state.write_bytes(b"")
        os.utime(state, (1000 + i, 1000 + i))
    assert find_resume_state("", project) == project / "exp3" / "weights" / "last_state.pt"
    assert find_resume_state(str(project / "exp1"), project) == project / "exp1" / "weights" / "last_state.pt"
    with pytest.raises(UserError, match="no weights/last_state.pt"):
        find_resume_state(str(project / "exp2"), project)
    with pytest.raises(UserError, match="no interrupted run"):
        find_resume_state("", tmp_path / "elsewhere")


# ---- resume, divergence ------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    straight = train(_cfg(tiny_data, tmp_path / "a"))
    train_interrupted_in_second_epoch(monkeypatch, _cfg(tiny_data, tmp_path / "b"))
    assert load_state(tmp_path / "b" / "weights" / "last_state.pt")["epoch"] == 1
    resumed = train(TrainConfig(resume=str(tmp_path / "b"), workers=0))

    assert resumed.run_dir == tmp_path / "b"
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(straight.run_dir / "weights" / name), load_file(resumed.run_dir / "weights" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    sa = load_state(straight.run_dir / "weights" / "last_state.pt")
    sb = load_state(resumed.run_dir / "weights" / "last_state.pt")
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    groups = sa["optimizer"]["param_groups"]  # --optimizer auto on 2 epochs: AdamW, lr 0.002·5/(4 + 8 classes)
    assert [tuple(g["betas"]) for g in groups] == [(0.9, 0.999)] * 3
    assert [g["initial_lr"] for g in groups] == [0.000833] * 3 and "decoupled_weight_decay" in groups[1]
    assert _rows(straight.run_dir / "results.csv") == _rows(resumed.run_dir / "results.csv")
    assert [r["epoch"] for r in _rows(resumed.run_dir / "results.csv")] == ["1", "2"]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    original = engine_train.train_one_epoch

    def nan_in_second_epoch(parts, loader, epoch, *args, **kw):
        if epoch == 1:
            loss_fn = parts.loss_fn

            def poisoned(raw, targets):
                loss, items = loss_fn(raw, targets)
                return loss * float("nan"), items

            parts.loss_fn = poisoned
        return original(parts, loader, epoch, *args, **kw)

    monkeypatch.setattr(engine_train, "train_one_epoch", nan_in_second_epoch)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, batch 1.*last good checkpoint"):
        train(_cfg(tiny_data, tmp_path / "run", val_every_epoch=False))
    weights = tmp_path / "run" / "weights"
    model, info = load_model(weights / "last.safetensors")
    assert info.history[-1]["epochs"] == 1
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert load_state(weights / "last_state.pt")["epoch"] == 1


def test_absurd_learning_rate_stops_before_any_checkpoint(tiny_data, tmp_path):
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 1.0e+38\nwarmup_epochs: 0\n")
    with pytest.raises(TrainingDiverged) as err:
        train(_cfg(tiny_data, tmp_path / "run", hyp=str(hyp), optimizer="SGD", nominal_batch=4, epochs=1))
    msg = str(err.value)
    assert "\n" not in msg and "at epoch 1, batch" in msg and "no checkpoint was written" in msg
    assert not (tmp_path / "run" / "weights" / "last.safetensors").exists()


# ---- bad input ---------------------------------------------------------------------------------

def test_bad_checkpoint_path_gets_one_line(tiny_data, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_data), "--weights", str(tmp_path / "nope.safetensors"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope.safetensors: no such file" in err[0]
    assert not (tmp_path / "run").exists()


def test_data_without_labels_gets_one_line(tiny_data, tmp_path, capsys):
    root = tmp_path / "nolabels"
    cfg = yaml.safe_load(tiny_data.read_text())
    src = tiny_data.parent
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        for img in (src / cfg[split]).iterdir():
            (root / "images" / split / img.name).write_bytes(img.read_bytes())
    cfg.update(path=str(root))
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["train", "--data", str(root / "data.yaml"), "--model", "yolov5n", "--imgsz", "64",
                 "--out", str(tmp_path / "run")])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(err) == 1 and "has a label" in err[0]


def test_resume_of_nothing_and_missing_flags_are_refused(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert main(["train", "--data", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "no such run folder" in err and "exactly one of --model" in err


def test_resume_with_a_new_setting_is_refused_not_ignored(tiny_data, tmp_path, capsys):
    code = main(["train", "--resume", str(tmp_path / "run"), "--epochs", "200", "--imgsz", "320"])
    err = capsys.readouterr().err
    assert code == 2 and "--epochs, --imgsz cannot change" in err and "--weights" in err
