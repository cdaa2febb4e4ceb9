"""What this project knows about packs by name: licence terms and calibrated thresholds. Data only, so that
processes that never load a model (the index stage, the API) can use it."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

DLIB = "dlib"

INSIGHTFACE_TERMS = "InsightFace pretrained weights: non-commercial research only"
# Licence terms of the packs this project knows; anything else is reported as unknown (and not commercial).
LICENCES: dict[str, tuple[str, bool]] = {
    **{
        name: (INSIGHTFACE_TERMS, False)
        for name in ("buffalo_l", "buffalo_m", "buffalo_s", "buffalo_sc", "antelopev2", "buffalo_sc_lite")
    },
    "mbf128_lite": (f"SCRFD: {INSIGHTFACE_TERMS}; MobileFaceNet trained on MS-Celeb-1M: research only", False),
    DLIB: ("CC0 1.0 (face_recognition_models weights); dlib itself: Boost Software License 1.0", True),
}
UNKNOWN_LICENCE = ("unknown: check the terms of the files in the pack folder", False)

# Default "same person" cosine similarity per pack, measured with `fecapass calibrate` on the LFW photos in
# ../shared/faces/lfw_gray (see CALIBRATION.md): no listed different-person pair accepted, and at most one false
# match per search of 1,000 enrolled faces. FECAPASS_SIMILARITY_THRESHOLD or a request's threshold overrides it.
CALIBRATED_THRESHOLDS: dict[str, float] = {"buffalo_sc_lite": 0.27, "mbf128_lite": 0.37, DLIB: 0.93}
# Packs not calibrated here (buffalo_l, ...): InsightFace's ArcFace recognizers share buffalo_sc_lite's training
# data and loss, so its value is the best guess until `fecapass calibrate` runs on them.
UNCALIBRATED_THRESHOLD = 0.27


# (false-match rate per comparison, threshold) points per pack, rarer rates last, measured by `fecapass calibrate`
# (CALIBRATION.md says how rates rarer than its pairs are extrapolated).
FmrCurve = tuple[tuple[float, float], ...]
CURVES_FILE = Path(__file__).with_name("fmr_curves.json")
# The rates a curve is measured at: 1 in 100 down to 1 in 100 million (0.1 false matches per search of 10M faces).
FMR_POINTS: tuple[float, ...] = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 3e-8, 1e-8)
# Packs without a curve of their own: the insightface recognizers share buffalo_sc_lite's training (see above).
UNCALIBRATED_CURVE_OF = "buffalo_sc_lite"


def _load_curves(path: Path) -> dict[str, FmrCurve]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {pack: tuple((float(fmr), float(t)) for fmr, t in points) for pack, points in data.items()}


FMR_CURVES: dict[str, FmrCurve] = _load_curves(CURVES_FILE)


def fmr_curve(pack: str) -> FmrCurve | None:
    """The pack's false-match curve; an uncalibrated insightface pack borrows buffalo_sc_lite's; dlib-like others
    have none."""
    found = FMR_CURVES.get(pack)
    if found is None and family(pack) == "insightface":
        found = FMR_CURVES.get(UNCALIBRATED_CURVE_OF)
    return found


def threshold_for_rate(curve: FmrCurve, fmr: float) -> float:
    """The curve's threshold at per-comparison false-match rate ``fmr``, interpolated linearly in log(rate);
    clamped to the curve's ends: a rate commoner than its first point gets the first point's threshold (tiny
    galleries are not given thresholds that far below what was measured), a rarer rate than its last gets the last
    (the extrapolation is not stretched further)."""
    if fmr >= curve[0][0]:
        return curve[0][1]
    if fmr <= curve[-1][0]:
        return curve[-1][1]
    for (high_rate, low_t), (low_rate, high_t) in itertools.pairwise(curve):
        if low_rate <= fmr <= high_rate:
            span = math.log(high_rate) - math.log(low_rate)
            part = (math.log(high_rate) - math.log(fmr)) / span if span > 0 else 1.0
            # Rounded up: never a rate above the one asked for.
            return math.ceil((low_t + part * (high_t - low_t)) * 10_000 - 1e-6) / 10_000
    return curve[-1][1]


def gallery_threshold(pack: str, gallery_size: int, false_matches_per_search: float) -> float:
    """The search threshold at which a search of ``gallery_size`` faces expects at most ``false_matches_per_search``
    false matches: per-comparison false-match rate <= false_matches_per_search / N. A pack without a curve keeps
    its fixed calibrated threshold."""
    curve = fmr_curve(pack)
    if curve is None:
        return default_threshold(pack)
    return threshold_for_rate(curve, false_matches_per_search / max(gallery_size, 1))


def default_threshold(pack: str) -> float:
    return CALIBRATED_THRESHOLDS.get(pack, UNCALIBRATED_THRESHOLD)


def threshold_source(pack: str) -> str:
    if pack in CALIBRATED_THRESHOLDS:
        return "calibrated on LFW pairs (CALIBRATION.md)"
    return "not calibrated here: run `fecapass calibrate` on your own pairs"


def licence(pack: str) -> tuple[str, bool]:
    """The pack's licence terms, and whether they allow commercial use (unknown packs: no)."""
    return LICENCES.get(pack, UNKNOWN_LICENCE)


def family(pack: str) -> str:
    return "dlib" if pack == DLIB else "insightface"


def known_facts(pack: str) -> dict[str, object]:
    """What is known of a pack from its name alone (no model files): for processes that load none."""
    terms, commercial = licence(pack)
    return {
        "name": pack,
        "family": family(pack),
        "licence": terms,
        "commercial_use": commercial,
        "threshold": default_threshold(pack),
        "threshold_source": threshold_source(pack),
    }
