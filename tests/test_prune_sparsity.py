"""Sparsity training: the L1 sub-gradient lands on exactly the prunable γ, and drives them toward 0."""

import pytest
import torch
from torch import nn

from test_prune_graph import toy
from yoloslim.models import create_model
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.sparsity import BNSparsity, gamma_stats, save_gamma_histogram


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


@pytest.mark.slow
def test_sparsity_training_drives_gamma_toward_zero(tiny_data):
    from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
    from yoloslim.loss import make_loss
    from yoloslim.models.decode import preprocess

    source = load_data(tiny_data)
    dataset = DetectionDataset(source.splits["train"], 64)
    loader = create_loader(dataset, batch_size=8, shuffle=True, workers=0)
    fractions, means = {}, {}
    for sr in (0.0, 1.0):  # strong: a handful of steps must show the effect
        torch.manual_seed(0)
        model = create_model("yolov5n", nc=len(source.names)).train()
        loss_fn = make_loss(model, imgsz=64)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sp = BNSparsity(model, sr=sr)
        for _ in range(3):
            for imgs, targets, _, _ in loader:
                loss, _ = loss_fn(model(preprocess(imgs, model.spec)), targets)
                opt.zero_grad()
                loss.backward()
                sp.apply(model, 0, 1)
                opt.step()
        stats = sp.gamma_stats(model, threshold=0.5)
        fractions[sr], means[sr] = stats.fraction_below, float(stats.values.mean())
    assert fractions[0.0] < 0.05 and fractions[1.0] > 0.5
    assert means[1.0] < 0.6 * means[0.0]
