"""The gallery-aware search threshold: the per-pack false-match curves, the rule that picks a threshold from the
gallery's size, its overrides, and the tail fit that extrapolates the curve past the pairs measured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from common.packs import catalog
from common.packs.catalog import (
    CURVES_FILE,
    DLIB,
    FMR_CURVES,
    FMR_POINTS,
    default_threshold,
    fmr_curve,
    gallery_threshold,
    threshold_for_rate,
)
from indexer.threshold import SearchThreshold
from operations.calibrate import Calibration, ImpostorTail

ROOT = Path(__file__).resolve().parents[2]
SIZES = [0, 1, 5, 10, 33, 100, 999, 1_000, 10_000, 100_000, 333_333, 1_000_000, 10_000_000, 10**9, 10**12]


def test_every_calibrated_pack_has_a_curve_measured_at_the_listed_rates() -> None:
    assert set(FMR_CURVES) == set(catalog.CALIBRATED_THRESHOLDS)
    for pack, curve in FMR_CURVES.items():
        assert tuple(fmr for fmr, _ in curve) == FMR_POINTS, pack
        thresholds = [t for _, t in curve]
        assert thresholds == sorted(thresholds), f"{pack}: a rarer rate needs a higher threshold"
        assert all(-1.0 <= t <= 1.0 for t in thresholds)


def test_the_curves_in_code_are_the_ones_calibration_md_shows() -> None:
    report = (ROOT / "CALIBRATION.md").read_text()
    stored = json.loads(CURVES_FILE.read_text())
    for pack, points in stored.items():
        section = report[report.index(f"<!-- section:{pack} -->") : report.index(f"<!-- /section:{pack} -->")]
        table = dict(re.findall(r"^\| (\d\.?\d*e-\d+) \| ([0-9.]+) \| (?:pairs|tail fit) \|", section, re.M))
        assert {float(rate): float(t) for rate, t in table.items()} == {rate: t for rate, t in points}, pack


@pytest.mark.parametrize("pack", [*sorted(FMR_CURVES), "buffalo_l"])
def test_the_threshold_rises_with_the_gallery_and_stays_within_the_curve(pack: str) -> None:
    curve = fmr_curve(pack)
    assert curve is not None
    chosen = [gallery_threshold(pack, size, 0.1) for size in SIZES]
    assert chosen == sorted(chosen)
    # Clamped to the curve's ends: no threshold below what was measured for the commonest rate, none past the last.
    assert chosen[0] == chosen[1] == curve[0][1]
    assert chosen[-1] == chosen[-2] == curve[-1][1]
    assert chosen[-4] < chosen[-3] == curve[-1][1]  # 10M faces still reads the curve: its last point is 0.1 / 10M


def test_the_threshold_is_the_curve_at_the_rate_the_gallery_allows() -> None:
    curve = dict(FMR_CURVES["buffalo_sc_lite"])
    # 0.1 false matches per search: 1,000 faces need a rate of 1e-4 per comparison, a million 1e-7.
    assert gallery_threshold("buffalo_sc_lite", 1_000, 0.1) == curve[1e-4]
    assert gallery_threshold("buffalo_sc_lite", 1_000_000, 0.1) == curve[1e-7]
    assert gallery_threshold("buffalo_sc_lite", 1_000_000, 1.0) == curve[1e-6]  # more false matches allowed
    between = gallery_threshold("buffalo_sc_lite", 3_000, 0.1)
    assert curve[1e-4] < between <= curve[3e-5]
    # Interpolated and rounded up: never a rate above the one asked for.
    assert threshold_for_rate(((1e-2, 0.2), (1e-3, 0.3)), 10**-2.5) == pytest.approx(0.25, abs=1e-4)
    assert threshold_for_rate(((1e-2, 0.2), (1e-3, 0.3)), 10**-2.5) >= 0.25


def test_small_galleries_get_a_lower_threshold_than_the_fixed_one_and_a_million_a_higher() -> None:
    # What the issue measured: dlib's fixed 0.93 (for 1,000 faces) rejects many same-person pairs in a small
    # gallery; buffalo_sc_lite's 0.27 expects ~900 false matches per search of a million.
    for pack in FMR_CURVES:
        assert gallery_threshold(pack, 10, 0.1) < default_threshold(pack), pack
        assert gallery_threshold(pack, 1_000_000, 0.1) > default_threshold(pack), pack


def test_a_pack_without_a_curve_keeps_its_fixed_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "FMR_CURVES", {k: v for k, v in FMR_CURVES.items() if k != DLIB})
    assert fmr_curve(DLIB) is None
    assert gallery_threshold(DLIB, 10, 0.1) == gallery_threshold(DLIB, 10**7, 0.1) == default_threshold(DLIB)
    # An insightface pack not calibrated here borrows buffalo_sc_lite's curve.
    assert fmr_curve("antelopev2") == FMR_CURVES["buffalo_sc_lite"]


class Counter:
    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = 0

    def __call__(self, pack: str, collection_id: int) -> int:
        self.calls += 1
        return self.size


def test_a_request_and_the_setting_override_the_gallery_rule() -> None:
    now = [0.0]
    sizes = Counter(50_000)
    rule = SearchThreshold(None, 0.1, sizes, clock=lambda: now[0], cache_seconds=5.0)
    chosen = rule.choose("buffalo_sc_lite", None)
    assert (chosen.source, chosen.gallery_size) == ("gallery", 50_000)
    assert chosen.value == gallery_threshold("buffalo_sc_lite", 50_000, 0.1)
    requested = rule.choose("buffalo_sc_lite", 0.2)
    assert (requested.value, requested.source, requested.gallery_size) == (0.2, "request", 50_000)
    setting = SearchThreshold(0.6, 0.1, sizes)
    assert (setting.choose("buffalo_sc_lite", None).value, setting.choose("buffalo_sc_lite", None).source) == (
        0.6,
        "setting",
    )
    assert setting.choose("buffalo_sc_lite", 0.3).source == "request"  # the request wins over the setting


def test_the_gallery_size_is_counted_again_only_after_the_cache_expires() -> None:
    now = [100.0]
    sizes = Counter(10)
    rule = SearchThreshold(None, 0.1, sizes, clock=lambda: now[0], cache_seconds=5.0)
    low = rule.choose("buffalo_sc_lite", None).value
    sizes.size = 1_000_000
    now[0] += 4.9
    assert rule.choose("buffalo_sc_lite", None).value == low and sizes.calls == 1
    now[0] += 0.2
    grown = rule.choose("buffalo_sc_lite", None)
    assert sizes.calls == 2 and grown.gallery_size == 1_000_000 and grown.value > low


def calibration(all_different: np.ndarray) -> Calibration:
    same = np.array([0.9, 0.8, 0.7])
    return Calibration("synthetic", 6, same, np.array([0.0, 0.1, 0.2]), [], 0.0, all_different.astype(np.float32))


def test_the_tail_fit_recovers_an_exponential_tail() -> None:
    rng = np.random.default_rng(7)
    scores = rng.exponential(0.05, 1_000_000)  # P(s >= t) = exp(-t / 0.05)
    tail = ImpostorTail.fit(scores)
    assert tail.fitted_shape == pytest.approx(0.0, abs=0.1)
    for fmr in (1e-5, 1e-7, 1e-8):
        assert tail.threshold_for(fmr) == pytest.approx(-0.05 * np.log(fmr), rel=0.08)


def test_extrapolation_errs_towards_a_higher_threshold_on_a_light_tail() -> None:
    # A Gaussian tail thins faster than the exponential the fit falls back to: predicted rates are too high, so
    # the thresholds are at least the true ones (a stranger is not let in by the extrapolation).
    rng = np.random.default_rng(11)
    sigma = 0.1
    curve = calibration(rng.normal(0.0, sigma, 1_000_000)).fmr_curve()
    true_quantile = {1e-6: 4.753 * sigma, 1e-7: 5.199 * sigma, 1e-8: 5.612 * sigma}
    for fmr, threshold in curve:
        if fmr in true_quantile:
            assert threshold >= true_quantile[fmr] - 1e-3, fmr
    assert [t for _, t in curve] == sorted(t for _, t in curve)
    # Where the pairs are enough, the curve reads them: 1 in 100 of a normal is above 2.326 sigma.
    assert dict(curve)[1e-2] == pytest.approx(2.326 * sigma, abs=0.002)
