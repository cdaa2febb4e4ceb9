"""``python -m operations.bench_detector``: the detector levers BENCHMARKS.md's profile weighs and keeps out, measured
again on a pack and a folder of photos. A developer's tool beside ``fecapass bench``; it prints markdown tables.

1. The input cut to the photo's shape. insightface resizes a photo to fit 640 x 640 and pads the rest with zeros;
   SCRFD takes any height and width, so the padding could stop at the next multiple of 32 (plus a margin of zeros).
   For each margin: the forward pass's CPU time against the square input's, how far the keypoints move, and the
   worst cosine between the recognizer's embeddings of the two alignments (the pipeline keeps 0.999).
2. onnxruntime's graph optimisation levels and memory arena, one thread: CPU ms of a 640 x 640 forward pass."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
from insightface.model_zoo.retinaface import RetinaFace

from common.imaging import decode
from common.packs.alignment import align_face
from common.packs.insightface_files import PackFiles, find_pack, load_session
from common.packs.library import PackLibrary
from common.settings import ModelSettings
from operations.bench import photo_files

MAX_PIXELS = 100_000_000
DET_SIZE = 640
MARGINS = (0, 32, 64, 128, 192)
UPSCALED = 10  # photos also measured at twice their size: larger faces, the same aspect ratios
OPTIMISATIONS = ("all", "extended", "basic")


def cut_input(height: int, width: int, margin: int) -> tuple[int, int]:
    """(width, height) of the detector's input for a photo, insightface's resize kept, padded to a multiple of 32."""
    if height / width > 1:
        new_height, new_width = DET_SIZE, int(DET_SIZE / (height / width))
    else:
        new_width, new_height = DET_SIZE, int(DET_SIZE * height / width)

    def padded(side: int) -> int:
        return min(DET_SIZE, -(-(side + margin) // 32) * 32)

    return padded(new_width), padded(new_height)


def timed_keypoints(model: RetinaFace, image: np.ndarray, size: tuple[int, int]) -> tuple[float, np.ndarray]:
    """CPU ms of one detection at the input ``size`` (width, height), and the keypoints it found."""
    started = time.process_time()
    _, keypoints = model.detect(image, input_size=size)
    return (time.process_time() - started) * 1000, np.asarray(keypoints, dtype=np.float32).reshape(-1, 5, 2)


def detector(files: PackFiles, settings: ModelSettings) -> RetinaFace:
    model = RetinaFace(model_file=str(files.detector), session=load_session(files.detector, settings, "detector"))
    model.prepare(ctx_id=0, input_size=(DET_SIZE, DET_SIZE), det_thresh=0.5)
    return model


def input_cut(settings: ModelSettings, images: list[np.ndarray]) -> list[str]:
    model = detector(find_pack(settings), settings)
    pack = PackLibrary(settings).get()
    rows = ["| margin px | square ms | cut ms | max keypoint shift px | worst cosine |", "|---|---|---|---|---|"]
    for margin in MARGINS:
        square_ms, cut_ms, shift, worst = 0.0, 0.0, 0.0, 1.0
        for image in images:
            height, width = image.shape[:2]
            spent, square_points = timed_keypoints(model, image, (DET_SIZE, DET_SIZE))
            square_ms += spent
            spent, cut_points = timed_keypoints(model, image, cut_input(height, width, margin))
            cut_ms += spent
            if len(square_points) != len(cut_points):
                shift = float("inf")  # a face found by one input and not the other
                continue
            for one, other in zip(square_points, cut_points, strict=True):
                shift = max(shift, float(np.abs(one - other).max()))
                a, b = pack.embed([align_face(image, points, pack.info.crop_size) for points in (one, other)])
                worst = min(worst, float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
        count = len(images)
        rows.append(f"| {margin} | {square_ms / count:.1f} | {cut_ms / count:.1f} | {shift:.2f} | {worst:.4f} |")
    return rows


def session_options(settings: ModelSettings) -> list[str]:
    blob = np.random.default_rng(0).random((1, 3, DET_SIZE, DET_SIZE), dtype=np.float32)
    files = find_pack(settings)
    rows = ["| graph optimisation | memory arena | forward ms (median of 6 x 8) |", "|---|---|---|"]
    for level in OPTIMISATIONS:
        for arena in (True, False):
            variant = settings.model_copy(update={"ort_graph_optimization": level, "ort_memory_arena": arena})
            session = load_session(files.detector, variant, "detector")
            feed = {session.get_inputs()[0].name: blob}
            session.run(None, feed)
            rounds = []
            for _ in range(6):
                started = time.process_time()
                for _ in range(8):
                    session.run(None, feed)
                rounds.append((time.process_time() - started) * 1000 / 8)
            rows.append(f"| {level} | {'on' if arena else 'off'} | {statistics.median(rounds):.1f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--photos-dir", type=Path, default=Path("../shared/faces/basic"))
    parser.add_argument("--photos", type=int, default=40, help="at most this many, each once")
    args = parser.parse_args(argv)
    onnxruntime.set_default_logger_severity(3)  # a cut input's outputs differ from the shapes the export recorded
    settings = ModelSettings(ort_threads=1)  # FECAPASS_MODEL_PACK / FECAPASS_MODEL_ROOT as for every command
    images = [
        decode(path.read_bytes(), MAX_PIXELS) for path in dict.fromkeys(photo_files(args.photos_dir, args.photos))
    ]
    images += [cv2.resize(image, None, fx=2, fy=2) for image in images[:UPSCALED]]
    print(f"Detector input cut to the photo's shape, {len(images)} photos, pack {settings.model_pack}:\n")
    print("\n".join(input_cut(settings, images)))
    print("\nSession options, the detector alone:\n")
    print("\n".join(session_options(settings)))


if __name__ == "__main__":
    main()
