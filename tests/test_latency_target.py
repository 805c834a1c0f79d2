"""``prune --target-latency``: the search on a deterministic stand-in for the clock (no timing in tests), and
one small run end to end that checks only the plumbing (files, recorded latency and machine)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import randomize_bn
from yoloslim.cli import main
from yoloslim.errors import UserError
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, load_model, read_info, save_model
from yoloslim.models.profile import profile, total_gflops
from yoloslim.prune import latency_target
from yoloslim.prune.latency_target import LATENCY_TOLERANCE, LatencyTarget, search_latency
from yoloslim.workflows.prune import prune

BASE_MS = 100.0


def fake_latency(f: float) -> float:
    """A made-up monotone latency: a fixed overhead plus a part that grows with the share of channels kept."""
    return 12.0 + 88.0 * f ** 0.8


def stepped_latency(f: float) -> float:
    """Discrete shapes: the latency only changes every 0.1 of the kept share (as round-to widths do)."""
    return fake_latency(min(1.0, (int(f * 10) + 1) / 10))


@pytest.mark.parametrize("target", [80.0, 50.0, 30.0, 20.0])
def test_lands_within_tolerance(target):
    calls = []

    def measure(f):
        calls.append(f)
        return fake_latency(f)

    fit = search_latency(target, BASE_MS, measure, floor=0.05)
    assert fit.within
    assert abs(fit.ms - target) <= LATENCY_TOLERANCE * target
    assert fit.ms == fake_latency(fit.keep)
    assert [p.keep for p in fit.probes] == calls
    assert len(calls) <= 1 + 8
    assert fit.speedup == pytest.approx(BASE_MS / fit.ms)


def test_search_keeps_a_shrinking_bracket():
    """Every probe lies strictly inside the bracket of the probes before it: faster ones below, slower above."""
    target = 37.0
    fit = search_latency(target, BASE_MS, fake_latency, floor=0.02, tolerance=0.001, max_probes=8)
    lo, hi = 0.02, 1.0
    for p in fit.probes[1:]:
        assert lo < p.keep < hi
        if p.ms > target:
            hi = p.keep
        else:
            lo = p.keep
    assert hi - lo < 0.1  # 8 probes narrowed the bracket from 0.98
    assert fit.probes[0].keep == 0.02  # the smallest model is measured first


def test_a_timing_that_contradicts_the_bracket_is_taken_again():
    """Noise: the first timing of each candidate reads slower than the unpruned model (a burst of load); the search
    times it again and keeps the median of three."""
    timings: dict[float, list[float]] = {}

    def noisy(f):
        timings.setdefault(f, []).append(1.5 * BASE_MS if f != 0.05 else fake_latency(f))
        return timings[f][-1]

    def again(f):
        timings[f].append(fake_latency(f))
        return float(np.median(timings[f]))

    fit = search_latency(50.0, BASE_MS, noisy, floor=0.05, remeasure=again)
    assert fit.within and abs(fake_latency(fit.keep) - 50.0) <= LATENCY_TOLERANCE * 50.0
    retimed = [f for f, t in timings.items() if len(t) > 1]
    assert retimed and all(len(timings[f]) == 3 for f in retimed)  # two more timings: the median is the true one
    assert fit.ms == pytest.approx(fake_latency(fit.keep))


def test_the_smallest_model_is_timed_again_before_a_refusal():
    timings = iter([BASE_MS, fake_latency(0.05), fake_latency(0.05)])  # the first reading: a burst of load
    fit = search_latency(30.0, BASE_MS, lambda f: next(timings) if f == 0.05 else fake_latency(f), floor=0.05,
                         remeasure=lambda f: next(timings))
    assert fit.probes[0].ms == fake_latency(0.05) and fit.within


def test_unreachable_target_is_refused_with_what_was_measured():
    with pytest.raises(UserError, match=r"cannot be reached.*ratio 0\.800\).*runs in 36\.\d\d ms"):
        search_latency(20.0, BASE_MS, fake_latency, floor=0.2)


def test_target_above_the_unpruned_latency_is_refused():
    with pytest.raises(UserError, match="already runs in 100.00 ms"):
        search_latency(120.0, BASE_MS, fake_latency, floor=0.1)


def test_discrete_shapes_give_the_nearest_one_not_slower():
    # stepped: f in [0.3, 0.4) runs like f = 0.4 -> 54.28 ms; [0.2, 0.3) like 0.3 -> 45.59 ms: 50 ms falls
    # between, more than 5 % from either
    fit = search_latency(50.0, BASE_MS, stepped_latency, floor=0.05)
    assert not fit.within
    assert fit.ms == pytest.approx(45.59, abs=0.01) == stepped_latency(0.25)
    assert 0.2 <= fit.keep < 0.3


@pytest.fixture()
def weights(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model("yolov5n", nc=2))
    path = tmp_path / "base.safetensors"
    save_model(path, model, ModelInfo(model.spec, ["a", "b"], 64))
    return path


def flops_clock(monkeypatch):
    """Stand-in for the timings: a model's "latency" is 1 ms + 10 ms per GFLOP at the asked size (deterministic)."""
    def ms(model, imgsz):
        return 1.0 + 10.0 * total_gflops(profile(model, imgsz))

    def compare(models, imgsz, runs=50, warmup=5, **kw):
        return {k: {"median_ms": ms(m, imgsz)} for k, m in models.items()}

    monkeypatch.setattr(latency_target, "compare_latency", compare)
    monkeypatch.setattr(latency_target, "measure_latency",
                        lambda model, imgsz, **kw: {"median_ms": ms(model, imgsz)})
    return ms


def test_prune_cli_to_a_latency_target_records_it(tmp_path, weights, monkeypatch, capsys):
    """The whole path (search, prune, save, report) with the stand-in clock: the numbers recorded are its."""
    ms = flops_clock(monkeypatch)
    model, _ = load_model(weights)
    base = ms(model, 96)
    target = round(0.6 * base, 3)
    out, js = tmp_path / "p.safetensors", tmp_path / "p.json"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--target-latency", str(target),
                 "--imgsz", "96", "--round-to", "1", "--out", str(out), "--json", str(js)]) == 0
    pruned, info = load_model(out)
    event = info.history[-1]
    lat = event["latency"]
    assert lat["within"] and abs(lat["ms"] - target) <= LATENCY_TOLERANCE * target
    assert lat["ms"] == pytest.approx(ms(pruned, 96), abs=1e-3)  # the saved model is the one measured
    assert lat["base_ms"] == pytest.approx(base, abs=1e-3) and lat["target_ms"] == target
    assert {"cpu", "threads", "backend", "torch", "onnxruntime"} <= set(lat["machine"])
    assert lat["machine"]["backend"] == "onnxruntime"  # the default backend of --target-latency
    assert lat["imgsz"] == 96
    capsys.readouterr()
    assert main(["info", "--weights", str(out)]) == 0
    assert f"latency={lat['ms']:.2f} ms at 96 px (target {target:.4g} ms, reached" in capsys.readouterr().out
    report = json.loads(js.read_text())
    assert report["after"]["latency_ms"] == pytest.approx(lat["ms"], abs=1e-3)
    assert report["target_latency"]["ratio"] == lat["ratio"] == round(1 - lat["keep"], 5)


def test_a_share_of_the_unpruned_latency(tmp_path, weights, monkeypatch):
    ms = flops_clock(monkeypatch)
    model, _ = load_model(weights)
    out = tmp_path / "p.safetensors"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--target-latency", "60%", "--imgsz", "96",
                 "--round-to", "1", "--out", str(out)]) == 0
    lat = read_info(out).history[-1]["latency"]
    assert lat["target_ms"] == pytest.approx(0.6 * ms(model, 96), abs=1e-3)
    assert abs(lat["ms"] - lat["target_ms"]) <= LATENCY_TOLERANCE * lat["target_ms"]


def test_latency_target_parsing():
    assert (LatencyTarget.parse("35").ms, LatencyTarget.parse("35").share) == (35.0, None)
    assert LatencyTarget.parse(" 50% ").share == 0.5
    with pytest.raises(UserError, match="milliseconds"):
        LatencyTarget.parse("fast")
    for bad in ("0%", "150%", "-3"):
        with pytest.raises(UserError, match="--target-latency"):
            LatencyTarget.parse(bad).check()


def test_prune_cli_refuses_an_unreachable_latency(tmp_path, weights, monkeypatch, capsys):
    flops_clock(monkeypatch)
    out = tmp_path / "p.safetensors"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--target-latency", "1.0",
                 "--imgsz", "96", "--out", str(out)]) != 0
    assert "cannot be reached" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_prune_to_a_generous_latency_with_real_timings(tmp_path, weights, capsys):
    """Real timings and a generous target (90 % of the unpruned latency: the smallest cut runs several times
    faster): asserts the plumbing only, files and records, never a time."""
    out, js, page = tmp_path / "p.safetensors", tmp_path / "p.json", tmp_path / "r.html"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--target-latency", "90%", "--backend",
                 "torch", "--imgsz", "64", "--latency-runs", "3", "--out", str(out), "--json", str(js),
                 "--report", str(page)]) == 0
    lat = read_info(out).history[-1]["latency"]
    assert lat["ms"] > 0 and lat["base_ms"] > 0 and lat["target_ms"] == pytest.approx(0.9 * lat["base_ms"], abs=1e-3)
    assert len(lat["probes"]) >= 1 and lat["machine"]["backend"] == "torch" and lat["machine"]["threads"] >= 1
    report = json.loads(js.read_text())
    assert report["target_latency"] == lat and report["after"]["latency_ms"] == pytest.approx(lat["ms"], abs=1e-3)
    assert "Latency target" in page.read_text()


@pytest.mark.slow
def test_prune_to_latency_with_real_timings(tmp_path, weights):
    """Real timings, an outcome that does not depend on them: no model runs in a microsecond. Asserts the
    refusal names what the smallest model measured; nothing is written."""
    out = tmp_path / "p.safetensors"
    with pytest.raises(UserError, match=r"cannot be reached.*runs in \d+\.\d\d ms"):
        prune(str(weights), method="l1", target_latency=0.001, backend="torch", imgsz=64, latency_runs=2,
              out=str(out))
    assert not out.exists()
