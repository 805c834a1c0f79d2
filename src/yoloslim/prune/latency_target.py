"""Pruning to a measured latency: search the pruning ratio whose model runs in the target time here.

FLOPs are a poor stand-in for speed (a cut to 30 % of the FLOPs can run only 1.3x faster), so
``--target-latency`` measures. The search is a bracketing one on the share of the prunable channels
kept, ``keep = 1 - ratio`` (latency falls as ``keep`` falls; the channel plan is the options' usual
one, with ``--round-to``'s fast widths): the unpruned model (``keep = 1``) is too slow, and the
smallest model the options can cut (``keep = floor``, the largest safe ratio) must be fast enough,
else the target is refused with what that smallest model measured. Each probe prunes at ``keep`` and
times the candidate alternately with the unpruned model (:func:`yoloslim.deploy.bench.compare_latency`,
medians of several runs); the candidate's latency is its time relative to the unpruned model's in the
same loop, times the unpruned model's latency measured at the start, so that a burst of load on the
machine, which slows both alike, does not move the estimate. Shapes already timed are not timed again.
The next ``keep`` is interpolated inside the bracket (at least a tenth of the bracket from either end,
so the bracket always shrinks) until a probe lands within :data:`LATENCY_TOLERANCE` of the target or
``max_probes`` are spent; then the probe nearest the target that is not slower than it is taken (the
widths are discrete: a narrow target may fall between two shapes).

:func:`search_latency` is the search alone, given any ``measure(keep) -> ms``: the tests drive it with
a deterministic function, never with timings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from yoloslim.deploy.bench import compare_latency, machine_info, measure_latency
from yoloslim.errors import UserError
from yoloslim.log import logger

LATENCY_TOLERANCE = 0.05  # relative distance to a --target-latency that counts as reached
MAX_PROBES = 8  # pruned candidates timed at most, besides the smallest one
MIN_BRACKET = 0.002  # stop when the bracket on the kept share is this narrow
WARMUP = 5  # untimed runs per model and timing (a new ONNX Runtime session's first runs are slow)
RETIMES = 2  # extra timings of a candidate whose latency contradicts the bracket (the median is kept)
LATENCY_BACKEND = "onnxruntime"  # --target-latency's default backend: what a deployment runs


@dataclass
class LatencyTarget:
    """What ``--target-latency`` asks for and how it is measured.

    Attributes:
        ms: the batch-1 latency to reach, in milliseconds, on this machine (0: ``share`` of the unpruned
            model's latency measured here).
        share: with ``ms`` 0, the target as a fraction of the unpruned model's latency (``--target-latency 50%``).
        backend: ``"onnxruntime"`` or ``"torch"`` (fused), as :func:`yoloslim.deploy.bench.compare_latency` times.
        imgsz: square input size of the timing.
        runs: timed runs per model and probe (medians; alternating with the unpruned model).
        threads: intra-op threads (None: the backend's default).
        tolerance: relative distance to ``ms`` that counts as reached.
        max_probes: candidates timed at most (besides the smallest one).
    """

    ms: float
    share: float | None = None
    backend: str = LATENCY_BACKEND
    imgsz: int = 640
    runs: int = 20
    threads: int | None = None
    tolerance: float = LATENCY_TOLERANCE
    max_probes: int = MAX_PROBES

    @classmethod
    def parse(cls, text: str | float, **timing: Any) -> LatencyTarget:
        """``"35"`` (milliseconds) or ``"50%"`` (of the unpruned model's latency), as ``--target-latency`` takes it."""
        raw = str(text).strip()
        try:
            if raw.endswith("%"):
                return cls(0.0, float(raw[:-1]) / 100, **timing)
            return cls(float(raw), **timing)
        except ValueError:
            raise UserError(f"--target-latency takes milliseconds (35) or a share of the unpruned model's latency "
                            f"(50%), got {text!r}") from None

    def check(self) -> None:
        if self.share is not None and not 0 < self.share < 1:
            raise UserError(f"--target-latency as a share must be between 0% and 100%, got {self.share:.0%}")
        if self.share is None and not self.ms > 0:
            raise UserError(f"--target-latency must be a positive number of milliseconds, got {self.ms}")
        if self.runs < 1:
            raise UserError(f"--latency-runs must be at least 1 with --target-latency, got {self.runs}")


@dataclass
class Probe:
    """One measured candidate: the share of the prunable channels it keeps (1 - ratio) and its latency (ms)."""

    keep: float
    ms: float


@dataclass
class LatencyFit:
    """The outcome of the search.

    Attributes:
        target_ms: the latency asked for.
        base_ms: the unpruned model's latency.
        keep: the share of the prunable channels the chosen plan keeps (its ratio is ``1 - keep``).
        ms: the chosen candidate's latency.
        within: ``ms`` is within the tolerance of the target.
        probes: every candidate measured, in order.
        machine: where it was measured (:func:`yoloslim.deploy.bench.machine_info`), filled by the caller.
        imgsz: the input size of the timings, filled by the caller.
    """

    target_ms: float
    base_ms: float
    keep: float
    ms: float
    within: bool
    probes: list[Probe] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    imgsz: int = 0

    @property
    def speedup(self) -> float:
        return self.base_ms / self.ms if self.ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("target_ms", "base_ms", "ms"):
            d[k] = round(d[k], 3)
        d["keep"] = round(self.keep, 5)
        d["ratio"] = round(1 - self.keep, 5)
        d["speedup"] = round(self.speedup, 3)
        d["probes"] = [{"ratio": round(1 - p.keep, 5), "ms": round(p.ms, 3)} for p in self.probes]
        return d


def search_latency(target_ms: float, base_ms: float, measure: Callable[[float], float], floor: float,
                   tolerance: float = LATENCY_TOLERANCE, max_probes: int = MAX_PROBES,
                   remeasure: Callable[[float], float] | None = None) -> LatencyFit:
    """Find the kept share in ``[floor, 1]`` whose pruned model's latency is ``target_ms``.

    Args:
        target_ms: the latency to reach.
        base_ms: the unpruned model's latency (``keep`` 1).
        measure: kept share of the prunable channels -> the latency (ms) of the model pruned to it.
        floor: the smallest kept share the options allow (1 - the largest safe ratio).
        tolerance: relative distance to ``target_ms`` that counts as reached.
        max_probes: candidates measured at most, besides the one at ``floor``.
        remeasure: like ``measure``, timing again and returning the median of every timing of that
            candidate; called (up to :data:`RETIMES` times) when a latency contradicts the bracket (slower
            than a candidate keeping more channels, or faster than one keeping fewer: noise on a busy
            machine), and before the smallest model is declared too slow.

    Raises:
        UserError: the unpruned model already meets the target, or the smallest model cannot.
    """
    if base_ms <= target_ms * (1 + tolerance):
        raise UserError(f"--target-latency {target_ms:g} ms: the unpruned model already runs in {base_ms:.2f} ms "
                        "here; nothing to prune for it")
    smallest = Probe(floor, measure(floor))
    probes = [smallest]
    for _ in range(RETIMES if remeasure else 0):  # before refusing, make sure it was not a burst of load
        if smallest.ms <= target_ms * (1 + tolerance):
            break
        smallest.ms = remeasure(floor)
    if smallest.ms > target_ms * (1 + tolerance):
        raise UserError(f"--target-latency {target_ms:g} ms cannot be reached: the smallest model these options "
                        f"cut (ratio {1 - floor:.3f}) runs in {smallest.ms:.2f} ms here (unpruned "
                        f"{base_ms:.2f} ms); widen --include, lower --round-to / --min-channels, or ask for "
                        f"{smallest.ms * (1 + tolerance):.1f} ms or more")
    lo, hi = smallest, Probe(1.0, base_ms)  # lo is fast enough, hi is too slow
    for _ in range(max_probes):
        if _close(lo, target_ms, tolerance) or hi.keep - lo.keep < MIN_BRACKET:
            break
        f = _next_keep(lo, hi, target_ms)
        p = Probe(f, measure(f))
        for _ in range(RETIMES if remeasure else 0):
            if lo.ms <= p.ms <= hi.ms:
                break
            logger.info(f"--target-latency: ratio {1 - f:.4f} measured {p.ms:.2f} ms, outside the bracket "
                        f"[{lo.ms:.2f}, {hi.ms:.2f}] ms: timing it again")
            p.ms = remeasure(f)
        probes.append(p)
        logger.info(f"--target-latency: ratio {1 - f:.4f} runs in {p.ms:.2f} ms (target {target_ms:.4g})")
        if p.ms > target_ms:
            hi = p
        else:
            lo = p
    best = _choose(probes, target_ms, tolerance)
    return LatencyFit(target_ms, base_ms, best.keep, best.ms, _close(best, target_ms, tolerance), probes)


def _close(p: Probe, target_ms: float, tolerance: float) -> bool:
    return abs(p.ms - target_ms) <= tolerance * target_ms


def _next_keep(lo: Probe, hi: Probe, target_ms: float) -> float:
    """Linear interpolation of the latency between the bracket's ends, kept a tenth of the bracket inside it."""
    width = hi.keep - lo.keep
    t = (target_ms - lo.ms) / (hi.ms - lo.ms) if hi.ms > lo.ms else 0.5
    t = min(max(t, 0.1), 0.9)
    return lo.keep + t * width


def _choose(probes: list[Probe], target_ms: float, tolerance: float) -> Probe:
    """The probe within the tolerance nearest the target; else the slowest one not slower than the target."""
    close = [p for p in probes if _close(p, target_ms, tolerance)]
    if close:
        return min(close, key=lambda p: (abs(p.ms - target_ms), -p.keep))
    fast = [p for p in probes if p.ms <= target_ms]
    return max(fast, key=lambda p: p.ms)


def prune_to_latency(model: nn.Module, target: LatencyTarget, prune: Callable[[float], Any], floor: float,
                     ) -> tuple[Any, LatencyFit]:
    """Prune ``model`` to ``target`` by measuring candidates on this machine.

    Args:
        model: the unpruned model (the reference every candidate is timed against).
        target: the latency and how to time it.
        prune: kept share (1 - ratio) -> a :class:`~yoloslim.prune.pipeline.PruneResult` (its ``model`` is timed).
        floor: the smallest kept share ``prune`` accepts.

    Returns:
        The result pruned at the chosen share, and the search's :class:`LatencyFit` (with the machine).
    """
    target.check()
    timing = {"backend": target.backend, "threads": target.threads}
    base = measure_latency(model, target.imgsz, runs=target.runs, warmup=WARMUP, **timing)["median_ms"]
    ms = target.ms or base * target.share
    logger.info(f"--target-latency {ms:.4g} ms: the unpruned model runs in {base:.2f} ms "
                f"({target.backend}, {target.imgsz} px, batch 1)")
    results: dict[float, Any] = {}
    timed: dict[tuple, list[float]] = {}  # kept widths -> latencies: equal shapes are timed once, unless retimed

    def measure(f: float, again: bool = False) -> float:
        if f not in results:
            results[f] = prune(f)
        result = results[f]
        shape = tuple(sorted((g, len(k)) for g, k in result.plan.keep.items()))
        if again or shape not in timed:
            lat = compare_latency({"candidate": result.model, "reference": model}, target.imgsz, target.runs,
                                  warmup=WARMUP, **timing)
            timed.setdefault(shape, []).append(lat["candidate"]["median_ms"] / lat["reference"]["median_ms"] * base)
        return float(np.median(timed[shape]))

    fit = search_latency(ms, base, measure, floor, target.tolerance, target.max_probes,
                         remeasure=lambda f: measure(f, again=True))
    fit.machine = machine_info(target.backend, target.threads)
    fit.imgsz = target.imgsz
    if not fit.within:
        logger.warning(f"--target-latency {ms:.4g} ms: no pruned shape measured within "
                       f"{target.tolerance:.0%}; kept the nearest one not slower than the target, {fit.ms:.2f} ms")
    return results[fit.keep], fit


def describe_fit(fit: dict[str, Any]) -> str:
    """One line for a model's history (``yoloslim info``): a :meth:`LatencyFit.to_dict` summarised (as it is,
    when it is not one)."""
    try:
        m = fit.get("machine") or {}
        verdict = "reached" if fit.get("within") else "not reached"
        return (f"{float(fit['ms']):.2f} ms at {fit.get('imgsz', '?')} px (target {float(fit['target_ms']):.4g} ms, "
                f"{verdict}; unpruned {float(fit['base_ms']):.2f} ms; {m.get('backend', '?')}, threads "
                f"{m.get('threads', '?')}, {m.get('cpu', '?')})")
    except (KeyError, TypeError, ValueError, AttributeError):
        return str(fit)
