"""What this project knows about packs by name: licence terms and calibrated thresholds. Data only, so that
processes that never load a model (the index stage, the API) can use it."""

from __future__ import annotations

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
