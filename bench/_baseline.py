"""The compression benchmark's baseline: trained in chunks until it has converged, or its budget ends.

Issue 12 (item 6) asks for a baseline that has stopped learning before anything is pruned: its val
mAP@.5:.95 gains under half a point over the last 10 epochs. A run of fixed length cannot know
when that happens, so the baseline trains in chunks of ``chunk`` epochs, each a run of its own
started from the previous chunk's last EMA weights (``yoloslim train --weights``, validated every
epoch), and stops after the first chunk that ends converged, or at ``max_epochs``. Each chunk is
resumable like any run; a finished chunk is never trained again.

Converged means: the best val mAP@.5:.95 of the last ``window`` epochs is less than ``min_gain``
above the best of every epoch before them (the best-so-far curve has flattened; one noisy epoch
neither makes nor breaks it), and that best is at least ``min_map`` (a flat curve near zero is a
model that has not started learning). The chunks after the first train with the same recipe minus its
warm-up: each chunk's learning rate decays from lr0 again, warm restarts as in SGDR (Loshchilov and
Hutter, arXiv:1608.03983), so the convergence test sees the ends of annealed cycles.

Cycles of ``chunk`` epochs anneal less than a longer run does: in session 5 a YOLOv3-tiny baseline
"converged" by that test (0.372 after 110 epochs) gained 6.2 points in one more run of 20 epochs (the
control). So the chunks are followed by **settling runs** of ``settle_epochs`` epochs each (F, the
control's recipe: ``yoloslim train --weights`` of the previous model, with its warm-up), into
``settle-NN``, until one gains less than ``min_gain`` at its last epoch over the model it started from,
or ``max_settle`` runs are spent. The model the last run started from is the baseline, and that run's
result is the control: the baseline trained F more epochs, shown by the same run to have stopped
learning (or, if the runs ran out, reported as not converged).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yoloslim.log import logger


@dataclass(frozen=True)
class Convergence:
    """How long the baseline trains, and when it counts as converged."""

    max_epochs: int
    chunk: int = 10
    window: int = 10
    min_gain: float = 0.005  # mAP@.5:.95, i.e. half a point
    min_map: float = 0.05  # a plateau below this has not started learning: not converged
    settle_epochs: int = 0  # F: settling runs of this many epochs after the chunks (0: none)
    max_settle: int = 3  # at most this many settling runs


@dataclass
class BaselineRecord:
    """What the baseline's training did: per-epoch val mAP@.5:.95, chunks, whether it converged."""

    epochs: int = 0
    converged: bool = False
    gain: float | None = None  # best of the last window minus best before it
    chunks: list[str] = field(default_factory=list)
    maps: list[float] = field(default_factory=list)
    chunks_converged: bool = False  # the chunks' own test (the settling runs decide ``converged``)
    settle: list[dict[str, Any]] = field(default_factory=list)  # run, start and end mAP, gain

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gain_over_window(maps: list[float], window: int) -> float | None:
    """Best mAP of the last ``window`` epochs minus the best before them (None: not enough epochs yet)."""
    if len(maps) <= window:
        return None
    return max(maps[-window:]) - max(maps[:-window])


def read_maps(run: Path) -> list[float]:
    """Val mAP@.5:.95 of every validated epoch of a run (its ``results.csv``)."""
    path = run / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [float(r["metrics/mAP50-95"]) for r in csv.DictReader(f) if r.get("metrics/mAP50-95")]


def train_until_converged(runs: Path, conv: Convergence, train_chunk: Callable[..., Path],
                          model: str) -> tuple[Path, Path | None, BaselineRecord]:
    """Train chunk after chunk into ``runs/chunk-NN`` until converged or ``conv.max_epochs``, then the
    settling runs ``runs/settle-NN`` (when ``conv.settle_epochs``).

    Args:
        runs: the folder of the chunks' run folders.
        conv: the budget and the convergence test.
        train_chunk: ``train_chunk(run, epochs=E, model=NAME | weights=FILE, settle=bool) -> last weights``
            (trains, or resumes, or only returns the weights of a finished run; ``settle``: a settling
            run, trained with the control's recipe).
        model: the preset the first chunk trains from scratch.

    Returns:
        The baseline's weights, the control's (the last settling run's; None without settling runs) and
        the record.
    """
    rec = BaselineRecord()
    weights: Path | None = None
    while rec.epochs < conv.max_epochs:
        n = min(conv.chunk, conv.max_epochs - rec.epochs)
        run = runs / f"chunk-{len(rec.chunks) + 1:02d}"
        source = {"weights": str(weights)} if weights else {"model": model}
        weights = train_chunk(run, epochs=n, settle=False, **source)
        rec.chunks.append(run.name)
        rec.epochs += n
        rec.maps += read_maps(run)
        rec.gain = gain_over_window(rec.maps, conv.window)
        rec.converged = rec.gain is not None and rec.gain < conv.min_gain and max(rec.maps) >= conv.min_map
        logger.info(f"baseline: {rec.epochs} epochs, val mAP@.5:.95 {rec.maps[-1]:.4f}"
                    + ("" if rec.gain is None else f", gain over the last {conv.window} epochs "
                       f"{rec.gain * 100:+.2f} points") + (": converged" if rec.converged else ""))
        if rec.converged:
            break
    if weights is None:
        raise ValueError("max_epochs must be at least 1")
    rec.chunks_converged = rec.converged
    control = None
    if conv.settle_epochs and conv.max_settle:
        weights, control = _settle(runs, conv, train_chunk, weights, rec)
    if not rec.converged:
        logger.warning("the baseline did not converge within its budget (the report says so)")
    return weights, control, rec


def _settle(runs: Path, conv: Convergence, train_run: Callable[..., Path], weights: Path,
            rec: BaselineRecord) -> tuple[Path, Path]:
    """The settling runs (see the module's docstring): ``(baseline, control)`` weights; ``rec`` gains them."""
    start = rec.maps[-1]
    rec.converged = False
    for k in range(1, conv.max_settle + 1):
        run = runs / f"settle-{k:02d}"
        control = train_run(run, epochs=conv.settle_epochs, settle=True, weights=str(weights))
        end = read_maps(run)[-1]
        gain = end - start
        rec.settle.append({"run": run.name, "start_map": start, "end_map": end, "gain": round(gain, 6)})
        rec.converged = gain < conv.min_gain and end >= conv.min_map
        logger.info(f"baseline: settling run {k} ({conv.settle_epochs} epochs), val mAP@.5:.95 {start:.4f} -> "
                    f"{end:.4f} ({gain * 100:+.2f} points)" + (": converged" if rec.converged else ""))
        if rec.converged or k == conv.max_settle:
            break
        rec.epochs += conv.settle_epochs  # this run's result is the next run's start: part of the baseline
        weights, start = control, end
    return weights, control
