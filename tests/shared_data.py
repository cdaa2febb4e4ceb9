"""Where the read-only models and photos live (../shared beside the checkout) and how to read labels."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("FECAPASS_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
MODEL_ROOT = SHARED
BASIC = SHARED / "faces" / "basic"
LFW = SHARED / "faces" / "lfw_gray"
PACK = "buffalo_sc_lite"


def require_pack(pack: str = PACK) -> Path:
    folder = MODEL_ROOT / "models" / pack
    if not folder.is_dir():
        pytest.skip(f"model pack {pack} not found at {folder} (../shared is not beside this checkout)")
    return folder


def require_basic() -> Path:
    if not (BASIC / "labels.csv").is_file():
        pytest.skip(f"test photos not found at {BASIC} (../shared is not beside this checkout)")
    return BASIC


@dataclass(frozen=True)
class LabelledFace:
    file: str
    face_index: int
    identity: str
    role: str
    box: tuple[float, float, float, float] | None


def labels() -> list[LabelledFace]:
    rows = []
    with (require_basic() / "labels.csv").open() as handle:
        for row in csv.DictReader(handle):
            box = (float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"])) if row["x1"] else None
            rows.append(LabelledFace(row["file"], int(row["face_index"]), row["identity"], row["role"], box))
    return rows


def iou(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
