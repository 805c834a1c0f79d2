"""The bootstrap over val images: the weighted accumulation equals COCO's on copied images; intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from yoloslim.engine.bootstrap import ImageMatches, draws, map_interval, paired_difference
from yoloslim.engine.metrics import DetectionMetrics


def _scene(rng: np.random.Generator, nc: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ng = int(rng.integers(0, 8))
    xy = rng.uniform(0, 300, (ng, 2))
    return np.concatenate((xy, xy + rng.uniform(8, 80, (ng, 2))), 1), rng.integers(0, nc, ng), rng.random(ng) < 0.1


def _detect(rng: np.random.Generator, gb: np.ndarray, gc: np.ndarray, nc: int, skill: float,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of a detector: a found box is jittered less, and scored higher, the more ``skill``."""
    found = rng.random(len(gc)) < skill
    db = gb[found] + rng.normal(0, 6 * (1.2 - skill), (int(found.sum()), 4))
    dc, score = gc[found], rng.uniform(0.3, 1.0, int(found.sum())) * skill
    junk = int(rng.integers(0, 6))
    xy = rng.uniform(0, 300, (junk, 2))
    db = np.concatenate((db, np.concatenate((xy, xy + 30), 1)))
    return db, np.concatenate((dc, rng.integers(0, nc, junk))), np.concatenate((score, rng.uniform(0, 0.6, junk)))


def _models(n_img: int, nc: int = 3, skills: tuple[float, ...] = (0.9,), seed: int = 0,
            copies: np.ndarray | None = None) -> list[DetectionMetrics]:
    """Detectors scored on the same ``n_img`` random images; with ``copies``, image i is added copies[i] times."""
    rng = np.random.default_rng(seed)
    out = [DetectionMetrics([f"c{k}" for k in range(nc)]) for _ in skills]
    next_id = 0
    for i in range(n_img):
        gb, gc, ign = _scene(rng, nc)
        ease = rng.uniform(0.4, 1.0)  # hard images are hard for every detector
        dets = [_detect(rng, gb, gc, nc, s * ease) for s in skills]
        for _ in range(1 if copies is None else int(copies[i])):
            for m, (db, dc, ds) in zip(out, dets, strict=True):
                m.add(next_id, gb, gc, ign, db, ds, dc, width=400, height=400)
            next_id += 1
    return out


def test_every_image_once_is_the_val_set_mAP() -> None:
    (m,) = _models(60)
    res = m.compute()
    maps = ImageMatches.from_metrics(m).maps(np.ones((1, 60)))[0]
    assert maps[0] == pytest.approx(res.map50, abs=1e-12)
    assert maps.mean() == pytest.approx(res.map, abs=1e-12)


def test_a_draw_scores_as_the_images_copied_that_often() -> None:
    counts = draws(40, rounds=3, seed=5)
    assert counts.shape == (3, 40) and (counts.sum(1) == 40).all() and (counts == 0).any()
    (m,) = _models(40)
    got = ImageMatches.from_metrics(m).maps(counts)
    for row, c in zip(got, counts, strict=True):
        (copied,) = _models(40, copies=c)
        res = copied.compute()
        assert row[0] == pytest.approx(res.map50, abs=1e-12)
        assert row.mean() == pytest.approx(res.map, abs=1e-12)


def test_interval_holds_the_value_and_narrows_with_more_images() -> None:
    small = map_interval(ImageMatches.from_metrics(_models(30)[0]), rounds=300)["map"]
    large = map_interval(ImageMatches.from_metrics(_models(480)[0]), rounds=300)["map"]
    for iv in (small, large):
        assert iv.low < iv.value < iv.high and iv.rounds == 300 and iv.level == 0.95
    # the width falls as one over the square root of the images: 16 times the images, about a quarter
    assert (large.high - large.low) < 0.5 * (small.high - small.low)


def test_paired_difference_sees_a_worse_model_and_nothing_against_itself() -> None:
    good, bad = (ImageMatches.from_metrics(m) for m in _models(100, skills=(0.9, 0.6)))
    same = paired_difference(good, good, rounds=200)["map"]
    assert same.value == same.low == same.high == 0.0 and same.above_zero == 1.0
    diff = paired_difference(good, bad, rounds=200)
    for key in ("map50", "map"):
        iv = diff[key]
        assert iv.high < 0 and iv.above_zero == 0.0 and iv.low < iv.value < iv.high
    # pairing removes what the images do to both: narrower than the two intervals taken apart
    apart = map_interval(good, rounds=200)["map"], map_interval(bad, rounds=200)["map"]
    assert diff["map"].high - diff["map"].low < max(iv.high - iv.low for iv in apart)


def test_paired_difference_refuses_different_images() -> None:
    (a,) = _models(30, seed=1)
    (b,) = _models(31, seed=1)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(ImageMatches.from_metrics(a), ImageMatches.from_metrics(b))


def test_matches_round_trip_through_a_file(tmp_path: Path) -> None:
    (m,) = _models(25)
    matches = ImageMatches.from_metrics(m)
    matches.save(tmp_path / "m.npz")
    back = ImageMatches.load(tmp_path / "m.npz")
    counts = draws(25, rounds=20, seed=2)
    np.testing.assert_array_equal(back.maps(counts), matches.maps(counts))
    assert back.nc == 3 and back.det_tp.dtype == bool
