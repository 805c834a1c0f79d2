"""Channel splits for the pruning graph (:mod:`yoloslim.prune.graph`): which convs' outputs are split
along the channels, into which pieces, and whether a split falls on the boundaries of a layout's sources.

YOLOv8's C2f / C3k2 / C2PSA split their first conv's output in two (``a, b = cv1(x).split(sizes, 1)``).
The graph starts one channel source per piece at such a conv, so that each piece is a group of its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

SplitRequest = tuple[str, Any]  # ("split", sizes or size) | ("chunk", n)


def split_request(node: fx.Node) -> SplitRequest | None:
    """``("split", sizes or size)`` / ``("chunk", n)`` when ``node`` splits a tensor on the channel dimension."""
    if node.op == "call_method":
        kind = node.target
    elif node.op == "call_function":
        kind = {torch.split: "split", torch.chunk: "chunk"}.get(node.target)
    else:
        kind = None
    if kind not in ("split", "chunk") or len(node.args) < 2:
        return None
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    return (kind, node.args[1]) if dim in (1, -3) else None


def piece_sizes(req: SplitRequest | None, total: int) -> list[int] | None:
    """The piece widths a split request cuts ``total`` channels into (None when they do not add up)."""
    if req is None:
        return None
    kind, arg = req
    if kind == "chunk" and isinstance(arg, int) and arg > 0:
        step = -(-total // arg)
        sizes = [min(step, total - i) for i in range(0, total, step)]
    elif isinstance(arg, int) and arg > 0:
        sizes = [min(arg, total - i) for i in range(0, total, arg)]
    elif isinstance(arg, (list, tuple)) and all(isinstance(v, int) and v > 0 for v in arg):
        sizes = list(arg)
    else:
        return None
    return sizes if sum(sizes) == total else None


def cut_points(sizes: list[int]) -> list[int]:
    """Where each piece ends: the running sums of ``sizes``."""
    out, total = [], 0
    for n in sizes:
        total += n
        out.append(total)
    return out


def find_splits(graph: fx.Graph, modules: dict[str, nn.Module],
                passthrough: tuple[type[nn.Module], ...]) -> dict[str, list[int]]:
    """Conv name -> the pieces its output is cut into, for every non-grouped conv whose output reaches a
    channel split through batch norms and ``passthrough`` modules only (several splits: every cut)."""
    out: dict[str, list[int]] = {}
    for node in graph.nodes:
        req = split_request(node)
        src = node.args[0] if req is not None else None
        while isinstance(src, fx.Node) and src.op == "call_module":
            name = str(src.target)
            m = modules[name]
            if isinstance(m, nn.Conv2d):
                sizes = piece_sizes(req, m.out_channels) if m.groups == 1 else None
                if sizes is not None:
                    cuts = set(cut_points(out.get(name, [m.out_channels]))) | set(cut_points(sizes)) | {0}
                    ends = sorted(cuts)
                    out[name] = [b - a for a, b in zip(ends, ends[1:], strict=False)]
                break
            if not isinstance(m, (nn.BatchNorm2d, *passthrough)):
                break
            src = src.args[0]
    return out


def split_ranges(source_sizes: list[int], req: SplitRequest | None) -> list[tuple[int, int]] | None:
    """For a layout whose sources have ``source_sizes``: each piece of the split as a ``(first, end)`` range
    of sources; None when the split cuts through a source."""
    sizes = piece_sizes(req, sum(source_sizes))
    bounds = cut_points(source_sizes)
    if sizes is None or not set(cut_points(sizes)) <= set(bounds):
        return None
    ranges, i = [], 0
    for end in cut_points(sizes):
        j = bounds.index(end) + 1
        ranges.append((i, j))
        i = j
    return ranges
