"""Every pack behind the one interface the stages use, on the real weights and photos."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from common.errors import JobFailed
from common.imaging import decode
from common.packs import Face, ModelPack, ModelPackError
from common.packs.catalog import CALIBRATED_THRESHOLDS, DLIB, LICENCES, UNCALIBRATED_THRESHOLD, default_threshold
from common.packs.library import PackLibrary, pack_for
from common.settings import ModelSettings
from detector.stages import same_place
from operations.calibrate import HEADER, calibrate
from operations.reports import merged
from schemas.jobs import ErrorCode
from tests.shared_data import LFW, MODEL_ROOT, labels, require_basic, require_pack

PACKS = [DLIB, "buffalo_sc_lite", "mbf128_lite"]


@pytest.fixture(scope="module")
def library() -> PackLibrary:
    return PackLibrary(ModelSettings(model_pack=DLIB, model_root=MODEL_ROOT))


def pack_of(library: PackLibrary, name: str) -> ModelPack:
    if name != DLIB:
        require_pack(name)
    return library.get(name)


def photo(name: str) -> np.ndarray:
    return decode((require_basic() / name).read_bytes(), 100_000_000)


def centre(box: np.ndarray | tuple[float, ...]) -> np.ndarray:
    return (np.asarray(box[:2], dtype=np.float32) + np.asarray(box[2:4], dtype=np.float32)) / 2


@pytest.mark.parametrize("name", PACKS)
def test_each_pack_finds_aligns_and_embeds_every_labelled_face(library: PackLibrary, name: str) -> None:
    pack = pack_of(library, name)
    info = pack.info
    for row in labels():
        if row.role not in ("single", "multi") or row.box is None:
            continue
        faces = pack.detect(photo(row.file))
        # Detectors draw boxes of their own size: the labelled face is found when each box holds the other's centre.
        found = same_place(faces, row.box)
        assert found is not None, (name, row.file, row.identity)
        assert found.keypoints.shape == (5, 2)
        crop = pack.align(photo(row.file), found)
        assert crop.shape == (info.crop_size, info.crop_size, 3) and crop.dtype == np.uint8
        # The align stage's aligner (no weights loaded) makes exactly the pack's crop.
        np.testing.assert_array_equal(library.aligner(name, info.crop_size).align(photo(row.file), found), crop)
    vectors = pack.embed([crop, crop])
    assert vectors.shape == (2, info.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert pack.embed([]).shape == (0, info.dim)


@pytest.mark.parametrize("name", PACKS)
def test_each_pack_tells_people_apart_at_its_own_threshold(library: PackLibrary, name: str) -> None:
    pack = pack_of(library, name)

    def embedding(file: str) -> np.ndarray:
        image = photo(file)
        face = max(pack.detect(image), key=lambda f: f.area)
        return pack.embed([pack.align(image, face)])[0]

    threshold = pack.info.threshold
    obama = [embedding(f"obama_{n}.jpg") for n in (1, 2, 3)]
    others = [embedding(file) for file in ("biden_1.jpg", "kit_harington_1.jpeg", "rose_leslie_1.jpg")]
    for index, first in enumerate(obama):
        for second in obama[index + 1 :]:
            assert float(first @ second) >= threshold, name
        for other in others:
            assert float(first @ other) < threshold, name


def forward_passes(model: str) -> tuple[float, float]:
    """This process's (passes, CPU seconds) of ``model``'s forward passes so far (common.metrics)."""
    passes = REGISTRY.get_sample_value("fecapass_model_forward_passes_total", {"model": model})
    seconds = REGISTRY.get_sample_value("fecapass_model_forward_cpu_seconds_total", {"model": model})
    return passes or 0.0, seconds or 0.0


@pytest.mark.parametrize("name", PACKS)
def test_each_pack_counts_its_forward_passes_by_model(library: PackLibrary, name: str) -> None:
    pack = pack_of(library, name)
    size = pack.info.crop_size
    crops = [np.random.default_rng(n).integers(0, 255, (size, size, 3), dtype=np.uint8) for n in range(3)]
    pack.detect(np.zeros((480, 640, 3), dtype=np.uint8))  # the weights loaded (and any probe run) before counting
    pack.embed(crops[:1])
    detector, recognizer = forward_passes("detector"), forward_passes("recognizer")
    pack.detect(np.full((480, 640, 3), 128, dtype=np.uint8))
    after_detect = forward_passes("detector")
    assert after_detect[0] == detector[0] + 1 and after_detect[1] > detector[1], name
    assert forward_passes("recognizer") == recognizer, name  # a detection is not counted as the recognizer's
    pack.embed(crops)
    after_embed = forward_passes("recognizer")
    assert after_embed[0] == recognizer[0] + 1 and after_embed[1] > recognizer[1], name  # one batch, one pass
    assert forward_passes("detector") == after_detect, name


def test_dlib_batches_give_the_same_vectors_as_one_by_one(library: PackLibrary) -> None:
    pack = library.get(DLIB)
    image = photo("multi_kit_with_rose.jpg")
    crops = [pack.align(image, face) for face in pack.detect(image)]
    assert len(crops) == 2
    np.testing.assert_allclose(pack.embed(crops), np.vstack([pack.embed([c]) for c in crops]), atol=1e-5)


def test_listing_describes_each_pack_and_flags_folders_it_cannot_load(tmp_path: Path) -> None:
    shared = require_pack()
    (tmp_path / "models" / "broken").mkdir(parents=True)
    (tmp_path / "models" / "broken" / "det.onnx").symlink_to(shared / "det_500m.onnx")
    (tmp_path / "models" / "mine").mkdir()
    for file in shared.glob("*.onnx"):
        (tmp_path / "models" / "mine" / file.name).symlink_to(file)
    listing = {entry.name: entry for entry in PackLibrary(ModelSettings(model_root=tmp_path)).listing()}
    assert set(listing) == {DLIB, "broken", "mine"}
    dlib = listing[DLIB].info
    assert dlib is not None and (dlib.dim, dlib.crop_size, dlib.commercial_use) == (128, 150, True)
    mine = listing["mine"].info
    assert mine is not None and (mine.family, mine.dim, mine.crop_size) == ("insightface", 512, 112)
    assert mine.licence.startswith("unknown") and not mine.commercial_use
    assert listing["broken"].info is None and "no recognizer" in (listing["broken"].problem or "")


def test_describing_packs_imports_no_model_code() -> None:
    """The API describes the active pack at start-up and on /health/ready: reading a pack's files must not import
    insightface (with albumentations, matplotlib, scikit-image) nor onnx, seconds of start-up CPU for a process
    that runs no model."""
    require_pack()
    probe = (
        "import sys; from pathlib import Path; from common.packs.library import PackLibrary;"
        " from common.settings import ModelSettings;"
        f" listing = PackLibrary(ModelSettings(model_root=Path({str(MODEL_ROOT)!r}))).listing();"
        " print(' '.join(f'{e.name}:{e.info.dim}' for e in listing if e.info));"
        " print(' '.join(sorted(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    described, modules = run.stdout.splitlines()
    assert {"dlib:128", "buffalo_sc_lite:512", "mbf128_lite:128"} <= set(described.split())
    loaded = {name.partition(".")[0] for name in modules.split()}
    assert loaded & {"insightface", "onnx", "albumentations", "matplotlib", "skimage"} == set()
    assert "common.packs.insightface_pack" not in modules.split() and "onnxruntime" in loaded


def test_a_pack_missing_on_a_worker_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    packs = PackLibrary(ModelSettings(model_root=tmp_path))
    with pytest.raises(ModelPackError, match=r"buffalo_l.*not found"):
        packs.get("buffalo_l")
    with pytest.raises(JobFailed) as failure:
        pack_for(packs, "buffalo_l")
    assert failure.value.code == ErrorCode.PACK_UNAVAILABLE
    assert not (tmp_path / "models").exists()  # nothing downloaded


def test_licences_and_thresholds_of_known_packs() -> None:
    assert LICENCES[DLIB][1] is True
    assert all(not LICENCES[name][1] for name in ("buffalo_l", "antelopev2", "buffalo_sc_lite", "mbf128_lite"))
    assert default_threshold("some_new_pack") == UNCALIBRATED_THRESHOLD
    # The thresholds in the code are the ones `fecapass calibrate` measured and wrote down.
    report = (Path(__file__).resolve().parents[2] / "CALIBRATION.md").read_text()
    chosen = dict(re.findall(r"Chosen default threshold of `([^`]+)` for search: \*\*([0-9.]+)\*\*", report))
    assert set(chosen) == set(CALIBRATED_THRESHOLDS)
    for pack, value in chosen.items():
        assert default_threshold(pack) == float(value), pack


def face(box: tuple[float, float, float, float]) -> Face:
    return Face(box=np.asarray(box, dtype=np.float32), keypoints=np.zeros((5, 2), np.float32), score=1.0)


def test_same_place_finds_the_enrolled_face_among_several() -> None:
    left, right = face((0, 0, 100, 120)), face((300, 10, 380, 110))
    # The same face drawn tighter by another detector is still found; a box elsewhere is not.
    assert same_place([left, right], (310, 20, 370, 100)) is right
    assert same_place([left, right], (150, 0, 250, 100)) is None
    assert same_place([], (0, 0, 10, 10)) is None


def test_calibration_measures_a_pack_and_keeps_other_packs_sections(tmp_path: Path) -> None:
    require_pack("mbf128_lite")
    if not (LFW / "pairs.tsv").is_file():
        pytest.skip(f"LFW pairs not found at {LFW}")
    lines = (LFW / "pairs.tsv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    subset = tmp_path / "lfw"
    subset.mkdir()
    (subset / "images").symlink_to(LFW / "images")
    same = [row for row in rows if row.endswith("\t1")][:15]
    different = [row for row in rows if row.endswith("\t0")][:15]
    (subset / "pairs.tsv").write_text("\n".join([header, *same, *different]) + "\n")
    result = calibrate(ModelSettings(model_pack="mbf128_lite", model_root=MODEL_ROOT), subset)
    assert result.pairs == 30 and len(result.same) == 15 and len(result.different) == 15
    assert result.auc() > 0.9
    assert -1 <= result.strict_threshold() <= result.search_threshold() <= 1.05
    report = merged(merged("", HEADER, "dlib", "dlib numbers"), HEADER, "x", "old x numbers")
    assert report.startswith(HEADER) and "dlib numbers" in report and report.count("<!-- section:") == 2
    again = merged(report, HEADER, "x", "new x numbers")
    assert "old x numbers" not in again and again.count("new x numbers") == 1 and "dlib numbers" in again


def fecapass(*args: str) -> subprocess.CompletedProcess[str]:
    # A process of its own: the command configures logging for its process, which must not be pytest's.
    env = {**os.environ, "FECAPASS_MODEL_ROOT": str(MODEL_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "operations.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_models_commands_list_check_and_pull() -> None:
    require_pack()
    listed = fecapass("models", "list").stdout
    assert "dlib: dlib, 128-d embeddings, 150px crops" in listed and "commercial use: yes" in listed
    assert "buffalo_sc_lite: insightface, 512-d embeddings" in listed and "commercial use: no" in listed
    checked = fecapass("models", "check", "buffalo_sc_lite", str(require_basic() / "multi_two_people.jpg"))
    assert "2 face(s)" in checked.stdout and checked.stdout.count("embedding norm 1.000") == 2
    assert "nothing to pull" in fecapass("models", "pull", "dlib").stdout
    missing = fecapass("models", "check", "no_such_pack", str(require_basic() / "obama_1.jpg"))
    assert missing.returncode == 2 and "no_such_pack" in missing.stderr
