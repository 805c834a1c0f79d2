"""Sparsity training: the L1 sub-gradient lands on exactly the prunable γ, and drives them toward 0."""

import pytest
import torch
from torch import nn

from test_prune_graph import toy
from yoloslim.errors import UserError
from yoloslim.models import create_model
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.sparsity import TARGET_RAMP, BNSparsity, gamma_stats, save_gamma_histogram


def grads_after(model, sparsity=None, epoch=0, epochs=10):
    model.zero_grad()
    out = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    sum(o.square().mean() for o in out).backward()
    if sparsity:
        sparsity.apply(model, epoch, epochs)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bias", [False, True])
def test_apply_changes_exactly_the_prunable_bn_grads(bias):
    model = toy().train()
    graph = ChannelGraph.trace(model)
    sp = BNSparsity(model, sr=0.1, bias=bias, graph=graph)
    plain = grads_after(model)
    with torch.no_grad():
        model.stem.bn.weight[0] = -0.5  # sign matters
    plain = grads_after(model)
    sparse = grads_after(model, sp)
    prunable_bns = {m.module for g in graph.groups if g.prunable for m in g.bns}
    assert prunable_bns == {"stem.bn", "dw.bn", "pw.bn", "side.bn"}
    for name, g in plain.items():
        mod, pname = name.rsplit(".", 1)
        diff = sparse[name] - g
        if mod in prunable_bns and (pname == "weight" or (bias and pname == "bias")):
            p = model.get_submodule(mod).get_parameter(pname)
            assert torch.allclose(diff, 0.1 * torch.sign(p.detach()), atol=1e-6), name
        else:
            assert torch.equal(diff, torch.zeros_like(diff)), name  # a.bn, b.bn (fixed), convs, head
    assert sp.strength(5, 10) == pytest.approx(0.1)
    assert BNSparsity(model, 0.1, "linear", graph=graph).strength(5, 10) == pytest.approx(0.1 * (1 - 0.45))


def test_gamma_stats_and_histogram(tmp_path):
    model = create_model("yolov5n", nc=2)
    with torch.no_grad():
        model.get_submodule("model.2.cv2.bn").weight[:10] = 1e-3
    stats = gamma_stats(model)
    n = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert stats.values.numel() == n  # every YOLOv5 batch norm is prunable
    assert stats.fraction_below == pytest.approx(10 / n)
    assert sum(stats.hist) == n
    png = save_gamma_histogram(stats, tmp_path / "gamma.png", "epoch 0")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_target_ramps_the_due_fraction_and_zeroes_exactly_the_smallest(tmp_path):
    """A target with no training at all: the selected fraction follows the cubic ramp, the smallest |γ|
    are shrunk first, the rest are untouched, and by the ramp's end exactly the target fraction is 0."""
    model = create_model("yolov5n", nc=2)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.9 + 0.1)  # 0.1 .. 1.0
    start = gamma_stats(model)
    sp = BNSparsity(model, 0.0, target=0.4, batches_per_epoch=5)
    assert sp.due_fraction(0, 100) == 0.0 and sp.due_fraction(round(TARGET_RAMP[1] * 100), 100) == 0.4
    assert 0.0 < sp.due_fraction(30, 100) < 0.4 and sp.due_fraction(99, 100) == 0.4
    epochs, fractions = 20, []
    for epoch in range(epochs):
        for _ in range(5):
            sp.apply(model, epoch, epochs)
        fractions.append(sp.gamma_stats(model).fraction_below)
    assert fractions == sorted(fractions) and fractions[0] == 0.0
    end = gamma_stats(model)
    assert end.fraction_below == pytest.approx(0.4, abs=1 / end.values.numel())
    assert float((end.values == 0).float().mean()) == pytest.approx(0.4, abs=1 / end.values.numel())
    kept = end.values[end.values > 0]
    # the channels that were not selected keep their γ: the largest 60 % of the start's, unchanged
    assert torch.equal(kept.sort().values, start.values.sort().values[-kept.numel():])
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.data[bn.weight.data == 0] = 1e-5  # the optimizer step after a shrink moves its zeros a little
    ema = create_model("yolov5n", nc=2)  # an EMA that has not caught up: every γ still 1
    sp.hold_zeros(ema)  # the zeros of the last shrink, not the model's (no longer exact) values
    assert gamma_stats(ema).fraction_below == pytest.approx(end.fraction_below)
    assert float(gamma_stats(ema).values.max()) == 1.0
    with pytest.raises(UserError, match="--sparsity-target must be a fraction in"):
        BNSparsity(model, 0.0, target=1.5, batches_per_epoch=5)
    with pytest.raises(UserError, match="not both"):
        BNSparsity(model, 1e-3, target=0.5, batches_per_epoch=5)


@pytest.mark.slow
def test_sparsity_target_reaches_its_fraction_in_a_short_run(tiny_data, tmp_path):
    """``train --sparsity auto --sparsity-target 0.5`` from scratch in 4 short epochs, with the default
    optimiser: the prunable fraction under 1e-2 crosses 0.5, and the γ split into a spike at 0 and
    channels that stay large (two modes, nothing in between)."""
    import csv

    from yoloslim.models.io import load_model
    from yoloslim.workflows.train import train

    res = train(data=str(tiny_data), model="yolov5n", epochs=4, batch=4, nominal_batch=4, imgsz=64,
                sparsity="auto", sparsity_target=0.5, workers=0, out=str(tmp_path / "run"), device="cpu",
                val_every_epoch=False)
    with open(res.run_dir / "results.csv", newline="") as f:
        fractions = [float(row["sparsity/gamma_below_1e-2"]) for row in csv.DictReader(f)]
    assert fractions == sorted(fractions) and fractions[0] < 0.5 <= fractions[-1], fractions
    model, info = load_model(res.last)  # the EMA weights the run saved
    saved = gamma_stats(model)
    assert saved.fraction_below >= 0.5
    assert float(saved.values.sort().values[int(0.6 * saved.values.numel())]) > 0.5  # the kept mode stays large
    assert info.history[-1]["action"] == "sparse-trained" and info.history[-1]["sparsity_target"] == 0.5


@pytest.mark.slow
def test_sparsity_training_drives_gamma_below_1e_2(tiny_data, tmp_path):
    """``yoloslim train --sparsity`` through the real loop from scratch: the fraction of prunable γ below 1e-2
    rises from 0 (every γ starts at 1) to most of them, in results.csv and in the trained weights; the saved
    (EMA) model's γ fall with them."""
    import csv

    from yoloslim.engine.train_state import load_state
    from yoloslim.models.io import load_model
    from yoloslim.workflows.train import train

    start = gamma_stats(create_model("yolov5n", nc=8))
    assert start.fraction_below == 0.0 and float(start.values.min()) == 1.0
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("warmup_epochs: 0\nlr0: 0.2\n")  # 40 steps: a strong penalty and large steps from the first
    res = train(data=str(tiny_data), model="yolov5n", epochs=5, batch=2, nominal_batch=2, imgsz=64, sparsity=10.0,
                hyp=str(hyp), optimizer="SGD", workers=0, out=str(tmp_path / "run"), device="cpu",
                val_every_epoch=False)
    with open(res.run_dir / "results.csv", newline="") as f:
        fractions = [float(row["sparsity/gamma_below_1e-2"]) for row in csv.DictReader(f)]
    assert len(fractions) == 5 and fractions == sorted(fractions), fractions  # never falls back
    assert fractions[0] < 0.05 and fractions[-1] > 0.5, fractions
    model, info = load_model(res.last)  # the EMA weights the run saved
    raw = load_state(res.run_dir / "weights" / "last_state.pt")["model"]  # the trained weights themselves
    model.load_state_dict(raw)
    trained = gamma_stats(model)
    assert trained.fraction_below > 0.5 and float(trained.values.median()) < 1e-2
    model, _ = load_model(res.last)
    saved = gamma_stats(model)
    # the EMA averages this whole 5-epoch run (at most 5 epochs, yoloslim.engine.ema): it lags the raw γ
    assert float(saved.values.median()) < 0.05, saved.values.median()
    assert info.history[-1]["action"] == "sparse-trained" and info.history[-1]["sparsity"] == 10.0
