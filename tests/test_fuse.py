"""Conv+BN fusion: fused == unfused for every model family, and the original is left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import randomize_bn
from yoloslim.deploy.fuse import count_batchnorms, fuse_conv_bn, fuse_model
from yoloslim.models import MODELS, build_model


def test_fuse_keeps_spec_and_does_not_share_weights():
    model = randomize_bn(build_model(MODELS["yolov5n"](2)))
    fused = fuse_model(model)
    assert fused.spec.to_json() == model.spec.to_json()
    assert not fused.training
    w0 = model.model[0].conv.weight.clone()
    with torch.no_grad():
        fused.model[0].conv.weight.zero_()
    assert torch.equal(model.model[0].conv.weight, w0)


def test_fuse_conv_bn_with_bias_groups_and_sequential():
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1, groups=2, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8, eps=1e-3))
    randomize_bn(seq, seed=3)
    x = torch.randn(2, 4, 16, 16)
    fused = fuse_model(seq)
    assert count_batchnorms(fused) == 0
    with torch.no_grad():
        assert (seq(x) - fused(x)).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="BatchNorm of 4 channels"):
        fuse_conv_bn(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(4))
