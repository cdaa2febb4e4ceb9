"""Which packs exist, what they are (licence, dimension, threshold), and loading them once per process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from common.errors import JobFailed
from common.packs.base import Aligner, ModelPack, ModelPackError, PackInfo
from common.packs.catalog import DLIB, default_threshold, family, licence, threshold_source
from common.packs.insightface_files import PackFiles, find_pack, is_pack_folder
from common.settings import ModelSettings
from schemas.jobs import ErrorCode

log = structlog.get_logger(__name__)


def _info(name: str, dim: int, crop_size: int, location: str) -> PackInfo:
    terms, commercial = licence(name)
    return PackInfo(
        name=name,
        family=family(name),
        dim=dim,
        crop_size=crop_size,
        licence=terms,
        commercial_use=commercial,
        threshold=default_threshold(name),
        threshold_source=threshold_source(name),
        location=location,
    )


@dataclass(frozen=True)
class PackListing:
    name: str
    info: PackInfo | None
    problem: str | None  # why the pack cannot be loaded, when it cannot


def pack_names(settings: ModelSettings) -> list[str]:
    """The dlib pack and every insightface-layout folder under the model root."""
    models = settings.model_root.expanduser() / "models"
    folders = sorted(path.name for path in models.iterdir() if is_pack_folder(path)) if models.is_dir() else []
    return [DLIB, *(name for name in folders if name != DLIB)]


class PackLibrary:
    """The packs of one process, each described and loaded once. During a re-index a stage serves jobs of two
    packs (the active one and the new one), so packs are looked up by the name each message carries."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self._packs: dict[str, ModelPack] = {}
        self._found: dict[str, tuple[PackInfo, PackFiles | Path]] = {}  # dlib: the weights folder of its package

    @property
    def default_name(self) -> str:
        return self.settings.model_pack

    def describe(self, name: str | None = None) -> PackInfo:
        """What the pack is, read from its files: no model code is imported, so the API (which only describes
        packs) does not pay the ~3 s of start-up CPU of importing insightface (which imports albumentations,
        matplotlib and scikit-image) nor hold those modules."""
        return self._find(name or self.default_name)[0]

    def get(self, name: str | None = None) -> ModelPack:
        """The pack, found on first use (its parts load when first called); ModelPackError when it is not
        installed here."""
        name = name or self.default_name
        if name not in self._packs:
            self._packs[name] = self._load(name)
        return self._packs[name]

    def aligner(self, name: str | None, crop_size: int | None) -> Aligner:
        """The pack's aligner without its weights (the align stage needs no model files), given the crop size
        the detect stage stamped on the job; without one, the pack is described from its files."""
        name = name or self.default_name
        if name == DLIB:
            from common.packs.dlib_pack import DlibAligner

            return DlibAligner()
        from common.packs.insightface_pack import ArcFaceAligner

        return ArcFaceAligner(crop_size or self.describe(name).crop_size)

    def listing(self) -> list[PackListing]:
        found = []
        for name in pack_names(self.settings):
            try:
                found.append(PackListing(name, self.describe(name), None))
            except ModelPackError as exc:
                found.append(PackListing(name, None, str(exc)))
        return found

    def _find(self, name: str) -> tuple[PackInfo, PackFiles | Path]:
        if name not in self._found:
            if name == DLIB:
                from common.packs import dlib_pack

                folder = dlib_pack.weights_folder()
                self._found[name] = (_info(name, dlib_pack.DIM, dlib_pack.CHIP_SIZE, str(folder)), folder)
            else:
                files = find_pack(self.settings, name)
                self._found[name] = (_info(name, files.dim, files.crop_size, str(files.directory)), files)
        return self._found[name]

    def _load(self, name: str) -> ModelPack:
        info, files = self._find(name)
        if not isinstance(files, PackFiles):
            from common.packs import dlib_pack

            return dlib_pack.DlibPack(files, info, self.settings)
        from common.packs.insightface_pack import InsightFacePack

        return InsightFacePack(files, info, self.settings)


def pack_for(packs: PackLibrary, name: str | None) -> ModelPack:
    """The pack a job was submitted with; a worker without it fails the job with the reason, not a retry loop."""
    try:
        return packs.get(name)
    except ModelPackError as exc:
        raise JobFailed(ErrorCode.PACK_UNAVAILABLE, str(exc)) from exc


def aligner_for(packs: PackLibrary, name: str | None, crop_size: int | None) -> Aligner:
    try:
        return packs.aligner(name, crop_size)
    except ModelPackError as exc:
        raise JobFailed(ErrorCode.PACK_UNAVAILABLE, str(exc)) from exc


def warmed_library(
    settings: ModelSettings, stage: str, *, warm_detector: bool = False, warm_recognizer: bool = False
) -> PackLibrary:
    """A stage's packs, with the configured one loaded now: a missing pack stops the process at start-up
    instead of failing its first job. Other packs (a re-index) load when a job asks for them."""
    packs = PackLibrary(settings)
    pack = packs.get()
    if warm_detector:
        pack.detect(np.zeros((64, 64, 3), dtype=np.uint8))
    if warm_recognizer:
        size = pack.info.crop_size
        pack.embed([np.zeros((size, size, 3), dtype=np.uint8)])
    log.info("stage.pack_loaded", stage=stage, **pack.info.summary())
    return packs
