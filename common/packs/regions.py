"""The part of a photo an aligner reads for one face, and the photo's coordinates to warp it in.

The detect stage holds the decoded photo; the align stage needs only the pixels its warp samples. Each aligner says
which rectangle that is (``Aligner.region``): the crop's corners mapped back into the photo, widened by the
pixels bilinear sampling reads beyond them, clipped to the photo. The align stage then warps that rectangle
alone.

It warps it on a canvas in the photo's own coordinates (``on_canvas``), not with the transform translated by the
rectangle's origin: OpenCV 5's warpAffine computes source positions in float32, so a translated transform samples a
hair away from the original one and about four crops in five differ from the full photo's in some pixel (by one
level). On the canvas the warp does the very same arithmetic as on the photo, and every pixel it reads is either
the photo's (inside the rectangle) or beyond the photo's edge, where the canvas ends too (the rectangle is clipped to
the photo, so where it touches an edge the canvas stops there): the crop is byte-identical. The canvas reaches
only from the photo's corner to the rectangle's far corner and is zero-filled memory that is never read outside the
rectangle (large zeroed allocations are mapped lazily).

A region travels from the detect stage to the align stage, and a crop from the align stage to the embed stage, as
raw BGR bytes (``raw_bytes``, ``raw_pixels``): a memcpy each way, where even PNG at level 0 costs a crop ~0.35 ms to
encode and ~0.1 ms to decode for about as many bytes. The size comes from elsewhere (the entry's region_box, the
pack's crop_size), so the bytes need no header.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Beyond floor(x) and floor(x) + 1, what bilinear sampling reads: room for a transform computed in float32.
SAMPLING_MARGIN = 2


@dataclass(frozen=True)
class Region:
    """A rectangle of photo pixels: columns x1 to x2 and rows y1 to y2, the far ones excluded."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.x1, self.y1, self.x2, self.y2

    def of(self, image: np.ndarray) -> np.ndarray:
        """The rectangle's pixels of the photo (a view)."""
        return image[self.y1 : self.y2, self.x1 : self.x2]


def covering(points: np.ndarray, image_size: tuple[int, int], margin: float) -> Region:
    """The pixels a sampler reads around ``points`` (N x 2, x then y, in photo pixels): each point's pixel and the
    next, ``margin`` more on every side, clipped to the photo (``image_size``: height, width)."""
    height, width = image_size
    x1 = min(width, max(0, math.floor(float(points[:, 0].min()) - margin)))
    y1 = min(height, max(0, math.floor(float(points[:, 1].min()) - margin)))
    x2 = max(x1, min(width, math.floor(float(points[:, 0].max()) + margin) + 2))
    y2 = max(y1, min(height, math.floor(float(points[:, 1].max()) + margin) + 2))
    return Region(x1, y1, x2, y2)


def on_canvas(pixels: np.ndarray, region: Region) -> np.ndarray:
    """``pixels`` (the region's) where they were in the photo, on zeros from the photo's corner to the region's far
    corner: what the aligner warps in the photo's coordinates (see the module's docstring)."""
    if pixels.shape[:2] != (region.height, region.width):
        raise ValueError(f"region pixels are {pixels.shape[:2]}, the region is {region.height}x{region.width}")
    canvas = np.zeros((max(region.y2, 1), max(region.x2, 1), *pixels.shape[2:]), dtype=pixels.dtype)
    canvas[region.y1 : region.y2, region.x1 : region.x2] = pixels
    return canvas


def raw_bytes(pixels: np.ndarray) -> bytes:
    """``pixels`` (H x W x 3 uint8, BGR) as raw bytes, row by row (C order, whatever the array's strides: a view of
    a photo is copied out)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"raw pixels are H x W x 3 uint8, not {pixels.shape} {pixels.dtype}")
    return pixels.tobytes()


def raw_pixels(data: bytes, height: int, width: int) -> np.ndarray | None:
    """``raw_bytes``' inverse: a read-only view of ``data``, no copy; None where ``data`` is not height x width x 3
    bytes (the caller knows what that means for its message)."""
    if height < 0 or width < 0 or len(data) != height * width * 3:
        return None
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
