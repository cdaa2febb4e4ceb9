"""The model classes on the real offline packs: detection against labels, alignment, embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from insightface.utils.face_align import arcface_dst

from common.imaging import decode
from common.packs import ModelPackError
from common.packs.alignment import align_face, similarity_transform
from common.packs.arcface import FaceRecognizer
from common.packs.insightface_files import find_pack, load_session
from common.packs.scrfd import FaceDetector
from common.settings import ModelSettings
from tests.shared_data import MODEL_ROOT, PACK, iou, labels, require_basic, require_pack


def load_models(pack: str = PACK) -> tuple[FaceDetector, FaceRecognizer]:
    require_pack(pack)
    settings = ModelSettings(model_pack=pack, model_root=MODEL_ROOT)
    files = find_pack(settings)
    return (
        FaceDetector(load_session(files.detector, settings, "detector"), files.detector),
        FaceRecognizer(load_session(files.recognizer, settings, "recognizer"), files.recognizer),
    )


@pytest.fixture(scope="module")
def models() -> tuple[FaceDetector, FaceRecognizer]:
    return load_models()


def photo(name: str) -> np.ndarray:
    return decode((require_basic() / name).read_bytes(), 100_000_000)


def test_missing_pack_is_a_clear_error_not_a_download(tmp_path: Path) -> None:
    settings = ModelSettings(model_pack="buffalo_l", model_root=tmp_path)
    with pytest.raises(ModelPackError, match=r"buffalo_l.*not found at .*models/buffalo_l"):
        find_pack(settings)
    assert not (tmp_path / "models").exists()  # nothing was downloaded or created


def test_pack_without_recognizer_is_refused(tmp_path: Path) -> None:
    folder = require_pack()
    (tmp_path / "models" / "half").mkdir(parents=True)
    (tmp_path / "models" / "half" / "det.onnx").symlink_to(folder / "det_500m.onnx")
    with pytest.raises(ModelPackError, match="no recognizer"):
        find_pack(ModelSettings(model_pack="half", model_root=tmp_path))


def test_detector_finds_every_labelled_face(models: tuple[FaceDetector, FaceRecognizer]) -> None:
    detector, _ = models
    by_file: dict[str, list[tuple[float, float, float, float]]] = {}
    for row in labels():
        if row.box is not None:
            by_file.setdefault(row.file, []).append(row.box)
    for file, boxes in by_file.items():
        found = detector.detect(photo(file))
        assert len(found) == len(boxes), file
        for face, box in zip(found, sorted(boxes), strict=True):  # both sorted left to right
            assert iou(face.box.tolist(), box) > 0.9, file
            assert face.keypoints.shape == (5, 2)


def test_no_face_in_a_tight_aligned_crop(models: tuple[FaceDetector, FaceRecognizer]) -> None:
    detector, _ = models
    assert detector.detect(photo("aligned112_tom_hanks.png")) == []


def test_min_face_size_filters_small_faces() -> None:
    require_pack()
    settings = ModelSettings(model_pack=PACK, model_root=MODEL_ROOT)
    files = find_pack(settings)
    strict = FaceDetector(load_session(files.detector, settings, "detector"), files.detector, min_face_size=120)
    faces = strict.detect(photo("multi_group_t1.jpg"))  # six faces, all about 100-150 px
    assert all(face.min_side >= 120 for face in faces) and len(faces) < 6


def test_alignment_puts_keypoints_on_the_arcface_template() -> None:
    rng = np.random.default_rng(1)
    template = arcface_dst.astype(np.float64)
    # A face scaled x3, rotated 20 degrees and moved: alignment must undo exactly that.
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    keypoints = (template @ rotation.T) * 3 + np.array([400, 250]) + rng.normal(0, 0.01, template.shape)
    matrix = similarity_transform(keypoints.astype(np.float32))
    mapped = keypoints @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, template, atol=0.1)
    crop = align_face(np.zeros((800, 800, 3), np.uint8), keypoints.astype(np.float32))
    assert crop.shape == (112, 112, 3)


def test_embeddings_are_unit_length_and_batch_independent(
    models: tuple[FaceDetector, FaceRecognizer],
) -> None:
    detector, recognizer = models
    image = photo("multi_group_t1.jpg")
    crops = [align_face(image, face.keypoints) for face in detector.detect(image)]
    batch = recognizer.embed(crops)
    assert batch.shape == (6, 512) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([recognizer.embed([crop]) for crop in crops])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-4)
    assert recognizer.embed([]).shape == (0, 512)


def test_same_person_is_closer_than_different_people(models: tuple[FaceDetector, FaceRecognizer]) -> None:
    detector, recognizer = models

    def embedding(name: str) -> np.ndarray:
        image = photo(name)
        face = max(detector.detect(image), key=lambda f: f.area)
        return recognizer.embed([align_face(image, face.keypoints)])[0]

    obama_1, obama_2, biden = embedding("obama_1.jpg"), embedding("obama_2.jpg"), embedding("biden_1.jpg")
    assert float(obama_1 @ obama_2) > 0.5
    assert float(obama_1 @ biden) < 0.3


def test_128_dimension_pack_reports_its_dimension() -> None:
    _, recognizer = load_models("mbf128_lite")
    assert recognizer.dim == 128 and recognizer.crop_size == 112
