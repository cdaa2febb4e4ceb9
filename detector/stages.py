"""The detect and align stage handlers. No stream commands here: the runner owns those."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.errors import JobFailed, PoisonMessage
from common.handlers import HandlerResult, Outcome, per_message
from common.imaging import ImageError, ImageTooLarge, decode
from common.job_bytes import JobBytes
from common.packs import Face
from common.packs.library import PackLibrary, aligner_for, pack_for
from common.packs.regions import Region, raw_bytes, raw_pixels
from common.transient import region_blob_key
from detector.quality import sharpness
from schemas.jobs import ErrorCode
from schemas.results import DetectedFace, DetectResult, FinishedResult, Quality
from schemas.streams import AlignedFace, AlignedMessage, DetectedMessage, FaceBox, JobKind, JobMessage, Stage

# One face per photo is compared for these kinds: the largest, usually the subject.
LARGEST_FACE_ONLY = (JobKind.ENROLL, JobKind.VERIFY)


def load_image(objects: JobBytes, key: str, max_pixels: int) -> np.ndarray:
    """The photo, every pixel (both stages: see the comments where they call this)."""
    data = objects.get(key)
    try:
        return decode(data, max_pixels)
    except ImageTooLarge as exc:
        raise JobFailed(ErrorCode.IMAGE_TOO_LARGE, str(exc)) from exc
    except ImageError as exc:
        raise JobFailed(ErrorCode.UNDECODABLE_IMAGE, str(exc)) from exc


def from_wire(face: FaceBox) -> Face:
    return Face(
        box=np.asarray(face.box, dtype=np.float32),
        keypoints=np.asarray(face.keypoints, dtype=np.float32),
        score=face.score,
    )


def same_place(faces: list[Face], box: tuple[float, float, float, float]) -> Face | None:
    """The face found where an enrolled face was: each box holds the other's centre (detectors draw boxes of
    different sizes around one face, so overlap alone is a poor test); the closest centre wins."""
    stored = np.asarray(box, dtype=np.float32)
    centre = (stored[:2] + stored[2:]) / 2

    def holds(outer: np.ndarray, point: np.ndarray) -> bool:
        return bool(outer[0] <= point[0] <= outer[2] and outer[1] <= point[1] <= outer[3])

    candidates = [f for f in faces if holds(stored, (f.box[:2] + f.box[2:]) / 2) and holds(f.box, centre)]
    if not candidates:
        return None
    return min(candidates, key=lambda f: float(np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre)))


def to_wire(face: Face, source: int = 0) -> FaceBox:
    x1, y1, x2, y2 = (round(float(v), 2) for v in face.box)
    return FaceBox(
        box=(x1, y1, x2, y2),
        keypoints=[(round(float(x), 2), round(float(y), 2)) for x, y in face.keypoints],
        score=round(face.score, 4),
        source=source,
    )


class DetectHandler:
    stage = Stage.DETECT
    message_type = JobMessage

    def __init__(self, objects: JobBytes, packs: PackLibrary, max_image_pixels: int) -> None:
        self.objects = objects
        self.packs = packs
        self.max_image_pixels = max_image_pixels

    def handle(self, message: JobMessage) -> Outcome:
        try:
            return self._handle(message)
        except JobFailed:
            self.objects.discard(message)  # a failed job keeps no photo
            raise

    def _handle(self, message: JobMessage) -> Outcome:
        pack = pack_for(self.packs, message.pack)
        aligner = aligner_for(self.packs, pack.info.name, pack.info.crop_size)
        kept: list[FaceBox] = []
        regions: list[bytes] = []
        seen = 0
        for source, key in enumerate(message.image_keys):
            # Every pixel, as the plain insightface loop: on a photo decoded at 1/2 or 1/4 size through DCT scaling,
            # keypoints move by 0.4 to 16 px and embeddings land at cosine 0.92-0.9998 to the loop's
            # (BENCHMARKS.md, profile of the stages; tests/integration/test_embedding_equality.py).
            image = load_image(self.objects, key, self.max_image_pixels)
            faces = pack.detect(image)
            if not faces:
                where = "the second photo" if source else "the photo"
                raise JobFailed(ErrorCode.NO_FACE, f"no face found in {where}")
            if message.kind is JobKind.DETECT:
                self.objects.discard(message)
                return Outcome(result=FinishedResult.without_photos(detect_result(image, faces)))
            seen += len(faces) if source == 0 else 0
            for face in self._chosen(message, faces):
                wire = to_wire(face, source)
                # The align stage decodes no photo: it gets the pixels its warp reads for the face as the wire
                # carries it (keypoints rounded), raw (a memcpy each way; PNG at level 1 costs ms, BENCHMARKS.md).
                region = aligner.region(from_wire(wire), image.shape[:2])
                regions.append(raw_bytes(region.of(image)))
                kept.append(wire.model_copy(update={"region_box": region.as_tuple()}))
        keys = self.objects.put_regions(message, regions)
        kept = [face.model_copy(update={"region_key": key}) for face, key in zip(kept, keys, strict=True)]
        forward = message.advance(
            DetectedMessage, faces=kept, faces_seen=seen, pack=pack.info.name, crop_size=pack.info.crop_size
        )
        # The regions hold all the align stage reads: a transient photo goes with this write (an enroll's, in S3,
        # stays for its face row; a reindex's is that same enrolled photo).
        return Outcome(forward=forward, status_fields={"faces_seen": str(seen)}, release=message.image_keys)

    def _chosen(self, message: JobMessage, faces: list[Face]) -> list[Face]:
        if message.kind is JobKind.REINDEX:
            if message.face_box is None:
                raise PoisonMessage(ErrorCode.MALFORMED_MESSAGE, "reindex message without face_box")
            found = same_place(faces, message.face_box)
            if found is None:
                raise JobFailed(
                    ErrorCode.NO_FACE, f"pack {message.pack} finds no face where face {message.face_id} was enrolled"
                )
            return [found]
        if message.kind in LARGEST_FACE_ONLY:
            return [max(faces, key=lambda face: face.area)]
        return faces

    def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
        return per_message(self.handle)(messages)


def detect_result(image: np.ndarray, faces: list[Face]) -> DetectResult:
    return DetectResult(faces_seen=len(faces), faces=[detected_face(image, face) for face in faces])


def detected_face(image: np.ndarray, face: Face) -> DetectedFace:
    wire = to_wire(face)
    quality = Quality(size=round(face.min_side, 1), sharpness=round(sharpness(image, face.box), 1))
    return DetectedFace(box=wire.box, keypoints=wire.keypoints, score=wire.score, quality=quality)


def region_of(message: DetectedMessage, index: int, max_pixels: int) -> Region | None:
    """Face ``index``'s region of its photo, or None for an entry written before the detect stage sent regions. An
    entry cannot point the align stage at another job's blob (which its write would delete), at an S3 object, or at
    a canvas larger than a photo may be."""
    face = message.faces[index]
    if face.region_key is None and face.region_box is None:
        return None
    if face.region_key != region_blob_key(message.job_id, index) or face.region_box is None:
        raise PoisonMessage(ErrorCode.MALFORMED_MESSAGE, f"face {index} has no region_box or a foreign region_key")
    region = Region(*face.region_box)
    if min(region.x1, region.y1, region.width, region.height) < 0 or region.x2 * region.y2 > max_pixels:
        raise PoisonMessage(ErrorCode.MALFORMED_MESSAGE, f"region_box {face.region_box} is not a region of a photo")
    return region


def region_pixels(data: bytes, region: Region) -> np.ndarray:
    """The region's raw BGR bytes as pixels (read-only, no copy)."""
    pixels = raw_pixels(data, region.height, region.width)
    if pixels is None:
        raise PoisonMessage(
            ErrorCode.MALFORMED_MESSAGE, f"{len(data)} bytes of pixels for a {region.width}x{region.height} region"
        )
    return pixels


class AlignHandler:
    stage = Stage.ALIGN
    message_type = DetectedMessage

    def __init__(self, objects: JobBytes, packs: PackLibrary, max_image_pixels: int) -> None:
        self.objects = objects
        self.packs = packs
        self.max_image_pixels = max_image_pixels

    def handle(self, message: DetectedMessage) -> Outcome:
        try:
            return self._handle(message)
        except JobFailed:
            self.objects.discard(message)
            raise

    def _handle(self, message: DetectedMessage) -> Outcome:
        aligner = aligner_for(self.packs, message.pack, message.crop_size)
        faces = message.faces
        keys = message.image_keys
        regions = [region_of(message, index, self.max_image_pixels) for index in range(len(faces))]
        region_keys = [face.region_key for face in faces if face.region_key is not None]
        pixels = dict(zip(region_keys, self.objects.get_many(region_keys), strict=True))
        # An entry the detect stage wrote before regions: its photos, every pixel, as the plain insightface loop
        # (norm_crop's bilinear warp samples single pixels of a large face, so a crop warped from a JPEG decoded at
        # 1/2 or 1/4 size, DCT-averaged pixels, is a different crop: cosine 0.97 to 0.998 to the full-size one).
        sources = {face.source for face, region in zip(faces, regions, strict=True) if region is None}
        images = {source: load_image(self.objects, keys[source], self.max_image_pixels) for source in sources}
        aligned: list[AlignedFace] = []
        for index, (face, region) in enumerate(zip(faces, regions, strict=True)):
            if region is None or face.region_key is None:
                crop = aligner.align(images[face.source], from_wire(face))
            else:
                crop = aligner.align_region(region_pixels(pixels[face.region_key], region), region, from_wire(face))
            key = self.objects.put_crop(message, index, crop)
            aligned.append(AlignedFace(**face.model_dump(exclude={"region_key", "region_box"}), crop_key=key))
        # No later stage reads the photos or the regions: transient ones are deleted with this write (kept ones are
        # not touched; the detect stage already let the photos go, but an entry without regions did not).
        return Outcome(forward=message.advance(AlignedMessage, faces=aligned), release=[*keys, *region_keys])

    def handle_batch(self, messages: Sequence[DetectedMessage]) -> list[HandlerResult]:
        return per_message(self.handle)(messages)
