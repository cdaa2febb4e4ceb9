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

# Default "same person" cosine similarity per pack, measured with `fecapass calibrate` on the LFW pairs in
# ../shared/faces/lfw_gray (see CALIBRATION.md): the lowest value with no different-person pair accepted,
# plus a margin. FECAPASS_SIMILARITY_THRESHOLD or a request's threshold overrides it.
CALIBRATED_THRESHOLDS: dict[str, float] = {"buffalo_sc_lite": 0.24, "mbf128_lite": 0.31, DLIB: 0.93}
# InsightFace's ArcFace recognizers trained on WebFace600K / Glint360K put different people below ~0.25.
UNCALIBRATED_THRESHOLD = 0.30


def default_threshold(pack: str) -> float:
    return CALIBRATED_THRESHOLDS.get(pack, UNCALIBRATED_THRESHOLD)


def threshold_source(pack: str) -> str:
    if pack in CALIBRATED_THRESHOLDS:
        return "calibrated on LFW pairs (CALIBRATION.md)"
    return "not calibrated here: run `fecapass calibrate` on your own pairs"


def family(pack: str) -> str:
    return "dlib" if pack == DLIB else "insightface"


def known_facts(pack: str) -> dict[str, object]:
    """What is known of a pack from its name alone (no model files): for processes that load none."""
    licence, commercial = LICENCES.get(pack, UNKNOWN_LICENCE)
    return {
        "name": pack,
        "family": family(pack),
        "licence": licence,
        "commercial_use": commercial,
        "threshold": default_threshold(pack),
        "threshold_source": threshold_source(pack),
    }
