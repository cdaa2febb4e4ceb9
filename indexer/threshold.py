"""The search threshold: the request's, else FECAPASS_SIMILARITY_THRESHOLD, else chosen from the gallery's size so
that one search expects at most FECAPASS_FALSE_MATCHES_PER_SEARCH false matches (CALIBRATION.md).

The gallery is the collection searched: a search compares the photo with that collection's faces only, so a small
collection gets the lower threshold its size allows, whatever the other collections hold."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from common.packs.catalog import gallery_threshold
from schemas.results import ThresholdSource

# A gallery's size moves slowly against the threshold curve (x10 faces: ~+0.03 similarity): counting it again every
# few seconds is exact enough and keeps a count(*) off every search.
GALLERY_SIZE_SECONDS = 5.0


@dataclass(frozen=True)
class ChosenThreshold:
    value: float
    source: ThresholdSource
    gallery_size: int


class SearchThreshold:
    def __init__(
        self,
        setting: float | None,
        false_matches_per_search: float,
        gallery_size: Callable[[str, int], int],  # (pack, collection id) -> faces
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_seconds: float = GALLERY_SIZE_SECONDS,
    ) -> None:
        self.setting = setting
        self.false_matches_per_search = false_matches_per_search
        self._count = gallery_size
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._sizes: dict[tuple[str, int], tuple[float, int]] = {}

    def gallery_size(self, pack: str, collection_id: int = 1) -> int:
        now = self._clock()
        cached = self._sizes.get((pack, collection_id))
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        size = self._count(pack, collection_id)
        self._sizes[(pack, collection_id)] = (now, size)
        return size

    def choose(self, pack: str, requested: float | None, collection_id: int = 1) -> ChosenThreshold:
        size = self.gallery_size(pack, collection_id)
        if requested is not None:
            return ChosenThreshold(requested, "request", size)
        if self.setting is not None:
            return ChosenThreshold(self.setting, "setting", size)
        return ChosenThreshold(gallery_threshold(pack, size, self.false_matches_per_search), "gallery", size)
