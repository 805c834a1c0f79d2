"""A model restricted to some of its classes: the head keeps the rows of those classes, in a new order.

Used to score a model on a data set that holds a subset of its classes (``val``, ``prune --data``)
and to fine-tune on such a subset (``train --weights``): the smaller head starts from the trained
rows instead of random ones. Which classes comes from :func:`yoloslim.data.class_map.match_classes`.

The head's class-bearing tensors are found, for every family alike, by building the architecture
twice on the ``meta`` device (no memory, no compute) with ``nc`` and ``nc + 1`` classes: a tensor
whose first dimension grows by ``k`` holds ``k`` groups (anchors; 1 for YOLOX's ``cls_preds``) of
``f`` fixed rows (box, objectness) followed by ``nc`` class rows. Everything else is copied as it is,
so ``select_classes(model, ids)`` gives exactly the original's outputs for those classes.
"""

from __future__ import annotations

import torch
from torch import nn

from yoloslim.models import build_model
from yoloslim.models.spec import ArchSpec


def class_layouts(spec: ArchSpec) -> dict[str, tuple[int, int]]:
    """State-dict keys whose first dimension depends on ``nc``: key -> ``(groups k, fixed rows f)``."""
    shapes = []
    for n in (spec.nc, spec.nc + 1):
        s = spec.copy()
        s.nc = n
        with torch.device("meta"):
            shapes.append({k: v.shape for k, v in build_model(s).state_dict().items()})
    out = {}
    for key, a in shapes[0].items():
        b = shapes[1][key]
        if a != b:
            k = b[0] - a[0]
            if k <= 0 or a[1:] != b[1:] or a[0] % k:
                raise ValueError(f"{key}: cannot tell its class rows apart ({tuple(a)} vs {tuple(b)})")
            out[key] = (k, a[0] // k - spec.nc)
    return out


def class_rows(k: int, f: int, nc: int, ids: list[int]) -> list[int]:
    """Rows of a ``(k * (f + nc), ...)`` tensor to take for classes ``ids`` (-1 entries are skipped)."""
    rows = []
    for g in range(k):
        base = g * (f + nc)
        rows += [base + j for j in range(f)] + [base + f + i for i in ids if i >= 0]
    return rows


def select_classes(model: nn.Module, ids: list[int]) -> nn.Module:
    """A new model whose head predicts classes ``ids`` of ``model`` (in that order).

    Args:
        model: a detector with a ``spec``.
        ids: the old class index of each new class; -1 for a class the model does not know, whose
            rows keep the new model's initial values (fine-tuning learns them).

    Returns:
        The new model (same device and dtype, train/eval mode of ``model``).
    """
    spec = model.spec
    new_spec = spec.copy()
    new_spec.nc = len(ids)
    new = build_model(new_spec)
    src, dst = model.state_dict(), new.state_dict()
    layouts = class_layouts(spec)
    known = [i for i in ids if i >= 0]
    new_pos = [p for p, i in enumerate(ids) if i >= 0]
    for key, t in dst.items():
        if key not in layouts:
            dst[key] = src[key]
            continue
        k, f = layouts[key]
        old = src[key][class_rows(k, f, spec.nc, known)]
        into = class_rows(k, f, len(ids), new_pos)
        t = t.clone()
        t[into] = old.to(t.dtype)
        dst[key] = t
    new.load_state_dict(dst)
    p = next(model.parameters())
    return new.to(device=p.device, dtype=p.dtype).train(model.training)
