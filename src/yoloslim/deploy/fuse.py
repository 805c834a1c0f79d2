"""Conv + BatchNorm fusion: fold every BatchNorm into the convolution that feeds it.

In eval mode a BatchNorm is an affine map per channel, ``y = γ (x - μ) / sqrt(σ² + ε) + β``, so it
can be absorbed into the preceding convolution's weights and bias. The fused model computes the
same function (to float rounding) with one layer fewer per block.

Pairs are found generically, for every family: a module whose ``conv`` attribute is a ``Conv2d``
and whose ``bn`` attribute is a ``BatchNorm2d`` (the ``Conv`` block of every family), and a
``Conv2d`` directly followed by a ``BatchNorm2d`` inside an ``nn.Sequential``. The BatchNorm is
replaced by ``nn.Identity`` so the parent's ``forward`` runs unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``Conv2d`` with bias computing ``bn(conv(x))`` of the eval-mode pair.

    Args:
        conv: the convolution (with or without bias).
        bn: the BatchNorm2d applied to its output; uses the running statistics.

    Returns:
        A convolution with the same geometry whose weight and bias include the BatchNorm.
    """
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm of {bn.num_features} channels after a conv of {conv.out_channels}")
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused = fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        w = conv.weight.double()  # (c_out, c_in/g, kh, kw)
        mean = bn.running_mean.double() if bn.running_mean is not None else torch.zeros_like(w[:, 0, 0, 0])
        var = bn.running_var.double() if bn.running_var is not None else torch.ones_like(w[:, 0, 0, 0])
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + bn.eps)  # (c_out,)
        b = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
        fused.weight.copy_((w * scale.view(-1, 1, 1, 1)).to(fused.weight.dtype))
        fused.bias.copy_(((b - mean) * scale + beta).to(fused.bias.dtype))
    return fused


def fuse_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every Conv+BatchNorm pair folded.

    The original model is never modified. Attributes such as ``spec`` and ``head_convs`` survive
    the copy, so the fused model can be decoded and exported like the original.

    Args:
        model: any yoloslim detector (or any module built from ``conv``/``bn`` blocks).

    Returns:
        The fused copy, in eval mode.
    """
    fused = copy.deepcopy(model).eval()
    for parent in list(fused.modules()):
        conv, bn = getattr(parent, "conv", None), getattr(parent, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            parent.conv = fuse_conv_bn(conv, bn)
            parent.bn = nn.Identity()
        if isinstance(parent, nn.Sequential):
            _fuse_sequential(parent)
    return fused


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm2d layers left in ``model`` (0 after a complete fusion)."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _fuse_sequential(seq: nn.Sequential) -> None:
    """Fold ``Conv2d`` → ``BatchNorm2d`` neighbours inside a Sequential, in place."""
    keys = list(seq._modules)
    for a, b in zip(keys, keys[1:], strict=False):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            seq._modules[a] = fuse_conv_bn(conv, bn)
            seq._modules[b] = nn.Identity()
